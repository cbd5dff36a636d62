"""The one-command CPU demo: synthetic scribble dataset -> nnU-Net plan/train/predict -> dense evaluation."""
