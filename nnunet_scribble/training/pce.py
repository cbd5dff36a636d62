"""nnUNetTrainerPCE: the partial-label baseline ("nnU-Net + partial labels").

Loss: nnU-Net's ignore-aware Dice + cross-entropy on scribbled voxels, with deep supervision, exactly as
stock nnU-Net trains a dataset with an ``ignore`` label. The one difference to stock is the scribble
base's padding rule: patch padding outside the image is ``ignore``, not background. Every method is
compared with this trainer.
"""
from nnunet_scribble.training.budget_variants import add_budget_variants
from nnunet_scribble.training.scribble_trainer import nnUNetTrainerScribble


class nnUNetTrainerPCE(nnUNetTrainerScribble):
    """Partial cross-entropy (+ partial Dice) baseline: ``L = L_part``."""


__all__ = ["nnUNetTrainerPCE"] + add_budget_variants(nnUNetTrainerPCE, globals())
