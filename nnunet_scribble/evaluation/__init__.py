"""Evaluation of predictions against dense reference labels (Dice, HD95 in mm)."""
