"""MaCo loss terms: hand-computed values and stop-gradients, 2D and 3D shapes."""

import math

import pytest
import torch

from nnunet_scribble.losses.maco import (context_consistency_loss, cosine_consistency_loss,
                                         cpl_loss, enhanced_prediction, enhanced_prediction_loss)


def _pred_2d():
    # (1, 2, 1, 3): two classes, three voxels
    return torch.tensor([[[[0.2, 0.5, 0.9]], [[0.8, 0.5, 0.1]]]], requires_grad=True)


def test_cpl_loss_only_non_zero_targets():
    y = _pred_2d()
    c = torch.tensor([[[[1.0, 0.5, 0.0]], [[0.0, 0.0, 0.0]]]])
    # class 0: ((0.2-1)^2 + (0.5-0.5)^2) / 2 = 0.32; class 1 has no target
    loss = cpl_loss(y, c)
    assert loss.item() == pytest.approx(0.32, abs=1e-6)
    loss.backward()
    # voxels without a target get no gradient; d/dy00 = 2*(0.2-1)/2 = -0.8
    assert y.grad[0, 0, 0, 2] == 0 and y.grad[0, 1].abs().sum() == 0
    assert y.grad[0, 0, 0, 0].item() == pytest.approx(-0.8, abs=1e-6)


def test_cpl_loss_two_classes_and_batch():
    y = _pred_2d().detach()
    c = torch.tensor([[[[1.0, 0.5, 0.0]], [[0.0, 0.6, 1.0]]]])
    # class 1: ((0.5-0.6)^2 + (0.1-1)^2) / 2 = 0.41 -> (0.32 + 0.41) / 2 = 0.365
    assert cpl_loss(y, c).item() == pytest.approx(0.365, abs=1e-6)
    # a sample without any target does not count; a second sample with target 0.32 does
    yb = torch.cat([y, y, y])
    cb = torch.cat([c, torch.zeros_like(c), torch.tensor([[[[1.0, 0.5, 0.0]], [[0.0] * 3]]])])
    assert cpl_loss(yb, cb).item() == pytest.approx((0.365 + 0.32) / 2, abs=1e-6)


def test_cpl_loss_3d_and_empty():
    y = torch.full((2, 3, 2, 2, 2), 1 / 3, requires_grad=True)
    c = torch.zeros(2, 3, 2, 2, 2)
    loss = cpl_loss(y, c)
    assert loss.item() == 0.0
    loss.backward()  # still differentiable
    c[1, 2, 0, 0, 0] = 1.0
    c[1, 2, 1, 1, 1] = 0.5
    # ((1/3 - 1)^2 + (1/3 - 1/2)^2) / 2 = (4/9 + 1/36) / 2 = 17/72
    assert cpl_loss(y, c).item() == pytest.approx(17 / 72, abs=1e-6)
    with pytest.raises(ValueError):
        cpl_loss(y, c[:, :2])


def test_cosine_value_and_stop_gradient_2d():
    a = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]], [[[0.3, 0.7]], [[0.7, 0.3]]]], requires_grad=True)
    b = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]], [[[0.3, 0.7]], [[0.7, 0.3]]]], requires_grad=True)
    loss = cosine_consistency_loss(a, b)
    # sample 0: cos([1,0,0,0],[1,1,0,0]) = 1/sqrt2; sample 1: identical -> 0
    assert loss.item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2, abs=1e-6)
    loss.backward()
    assert b.grad is None
    # d(1 - cos)/da = -(b/(|a||b|) - (a.b) a/(|a|^3 |b|)) = [0, -1/sqrt2, 0, 0], / batch 2
    g0 = a.grad[0].flatten()
    assert torch.allclose(g0, torch.tensor([0.0, -1 / math.sqrt(2) / 2, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(a.grad[1], torch.zeros(2, 1, 2), atol=1e-6)


def test_context_consistency_gradient_reaches_masked_only_3d():
    torch.manual_seed(0)
    y_m = torch.softmax(torch.randn(2, 3, 4, 5, 6), 1).requires_grad_(True)
    y = torch.softmax(torch.randn(2, 3, 4, 5, 6), 1).requires_grad_(True)
    loss = context_consistency_loss(y_m, y)
    loss.backward()
    assert y.grad is None and y_m.grad is not None and y_m.grad.abs().sum() > 0
    assert context_consistency_loss(y.detach(), y.detach()).item() == pytest.approx(0.0, abs=1e-6)
    # scale invariance per sample: 1 - cos(2a, a) = 0
    assert cosine_consistency_loss(2 * y.detach(), y.detach()).item() == pytest.approx(0.0, abs=1e-6)


def test_enhanced_prediction_value_2d():
    # voxel 0 inside GC, voxel 1 outside; background channel 0 untouched
    y = torch.tensor([[[[0.2, 0.6]], [[0.5, 0.3]], [[0.3, 0.1]]]], requires_grad=True)
    gc = torch.tensor([[[[True, False]]]])
    y_e = enhanced_prediction(y, gc)
    assert not y_e.requires_grad
    assert torch.allclose(y_e, torch.tensor([[[[0.2, 0.6]], [[0.5, 0.0]], [[0.3, 0.0]]]]))
    loss = enhanced_prediction_loss(y, gc)
    # y.y_e = 0.74, |y|^2 = 0.84, |y_e|^2 = 0.74 -> cos = sqrt(0.74/0.84)
    assert loss.item() == pytest.approx(1 - math.sqrt(0.74 / 0.84), abs=1e-6)
    loss.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    # another background channel index
    y_e2 = enhanced_prediction(y, gc, background_channel=2)
    assert torch.allclose(y_e2[0, :, 0, 1], torch.tensor([0.0, 0.0, 0.1]))


def test_enhanced_prediction_3d_full_region_is_zero_loss():
    y = torch.softmax(torch.randn(2, 4, 3, 4, 5), 1).requires_grad_(True)
    gc = torch.ones(2, 1, 3, 4, 5, dtype=torch.bool)
    assert enhanced_prediction_loss(y, gc).item() == pytest.approx(0.0, abs=1e-6)
    gc[0, 0, 0] = False
    loss = enhanced_prediction_loss(y, gc)
    assert loss.item() > 0
    loss.backward()
    assert y.grad[1].abs().max() < 1e-6  # sample 1: y_e == y, cos = 1 is a maximum -> zero gradient
    with pytest.raises(ValueError):
        enhanced_prediction(y, gc[:, :, :2])
