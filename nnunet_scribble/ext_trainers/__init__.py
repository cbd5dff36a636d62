"""Folder that ``nnUNet_extTrainer`` points at (``nnunet-scribble trainers-path``).

nnU-Net imports the modules in this folder as top-level modules, so they only re-export trainers
defined in the installed package (classes defined here would not pickle into augmentation workers).
This ``__init__`` is not imported by that lookup.
"""
import os

TRAINERS_PATH = os.path.dirname(os.path.abspath(__file__))
