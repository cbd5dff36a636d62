"""Scribble-supervised nnU-Net trainers (one module per method) and their shared base."""
