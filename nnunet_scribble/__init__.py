"""nnU-Net v2 plugin for training segmentation networks from scribbles."""

__version__ = "0.1.0"
