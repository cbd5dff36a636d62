"""CFR's 0.5 (CE + Dice) loss against hand-computed values."""
from __future__ import annotations

import math

import torch

from nnunet_scribble.losses.cfr import ce_dice_loss


def test_ce_dice_by_hand_with_an_ignored_voxel():
    # voxel 0: p = (0.5, 0.5), label 0; voxel 1: p = (0.75, 0.25), label 1; voxel 2: ignored (label 2)
    logits = torch.tensor([[[[0.0, math.log(3.0), 9.0]], [[0.0, 0.0, -9.0]]]])   # (1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 2]]])
    ce = (-math.log(0.5) - math.log(0.25)) / 2
    dice0 = 2 * 0.5 / (0.5 ** 2 + 0.75 ** 2 + 1)          # squared probabilities, one-hot sum 1
    dice1 = 2 * 0.25 / (0.5 ** 2 + 0.25 ** 2 + 1)
    expected = 0.5 * (ce + 1 - (dice0 + dice1) / 2)
    assert abs(float(ce_dice_loss(logits, labels, ignore_index=2)) - expected) < 1e-4
    # the ignored voxel's logits do not matter; labels with a channel axis are accepted
    logits2 = logits.clone()
    logits2[0, :, 0, 2] = torch.tensor([-5.0, 5.0])
    assert torch.allclose(ce_dice_loss(logits2, labels[:, None], ignore_index=2), ce_dice_loss(logits, labels, 2))


def test_all_ignored_gives_zero_with_a_graph():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = ce_dice_loss(logits, torch.full((2, 4, 4), 3), ignore_index=3)
    assert float(loss) == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
