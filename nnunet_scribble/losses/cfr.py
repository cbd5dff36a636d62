"""CFR's loss as a pure torch function (N-D): ``0.5 (CE + Dice)`` on the voxels that carry a label.

The official CFR code fine-tunes SAM and supervises the re-trained network's pseudo-label term with the
same pair: cross-entropy plus a soft Dice over all classes (background included) with squared
probabilities in the denominator, summed over the whole batch, each weighted 0.5. Voxels whose label is
``ignore_index`` (unlabeled voxels, scribble gaps, the padding tiles of a slice grid) are left out of
both; a batch without any labeled voxel gives a zero loss that still has a gradient graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_scribble.losses.dmpls import soft_dice_loss

__all__ = ["ce_dice_loss"]


def ce_dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """``0.5 * (CE(logits, labels) + (1 - mean_c Dice_c))`` over the voxels whose label is not ``ignore_index``.

    Args:
        logits: ``(B, C, *spatial)``.
        labels: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer labels in ``[0, C)`` or ``ignore_index``.
    """
    if labels.ndim == logits.ndim:
        labels = labels[:, 0]
    labels = labels.long()
    if ignore_index is not None and not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.float(), labels, ignore_index=-100 if ignore_index is None else ignore_index)
    dice = soft_dice_loss(torch.softmax(logits.float(), 1), labels, ignore_index=ignore_index,
                          include_background=True, batch_dice=True, squared_pred=True)
    return 0.5 * (ce + dice)
