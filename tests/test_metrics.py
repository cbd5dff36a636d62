"""Dice and HD95 against hand-computed values (incl. anisotropic spacing and empty masks)."""
import numpy as np
import pytest

from nnunet_scribble.evaluation.metrics import dice, hd95, label_metrics, surface


def test_dice_hand_computed():
    ref = np.zeros((1, 6), bool); ref[0, 0:4] = True     # 4 voxels
    pred = np.zeros((1, 6), bool); pred[0, 2:5] = True   # 3 voxels, 2 overlap
    assert dice(pred, ref) == pytest.approx(2 * 2 / 7)
    assert dice(np.zeros(5, bool), np.zeros(5, bool)) == 1.0
    assert dice(np.ones(5, bool), np.zeros(5, bool)) == 0.0


def test_surface_of_filled_square_is_its_ring():
    m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    s = surface(m)
    assert s.sum() == 8 and not s[2, 2]
    # touching the image border: the border voxels are surface too
    assert surface(np.ones((3, 3), bool)).sum() == 8


def test_hd95_single_voxels_anisotropic():
    ref = np.zeros((4, 5), bool); ref[0, 0] = True
    pred = np.zeros((4, 5), bool); pred[0, 3] = True
    # 3 voxels apart along x with spacing 0.5 mm -> 1.5 mm
    assert hd95(pred, ref, spacing=(2.0, 0.5)) == pytest.approx(1.5)
    pred = np.zeros((4, 5), bool); pred[2, 0] = True
    # 2 voxels apart along y with spacing 2 mm -> 4 mm
    assert hd95(pred, ref, spacing=(2.0, 0.5)) == pytest.approx(4.0)


def test_hd95_pools_both_directions_before_the_percentile():
    ref = np.zeros((1, 6), bool); ref[0, 0:4] = True
    pred = np.zeros((1, 6), bool); pred[0, 0:2] = True
    # 1-voxel-thick masks: every voxel is surface. pred->ref: 0, 0; ref->pred: 0, 0, 1, 2 (voxels).
    # Pooled [0,0,0,0,1,2]; 95th percentile at rank 4.75 -> 1 + 0.75 * (2 - 1) = 1.75 voxels; x spacing 3 mm.
    assert hd95(pred, ref, spacing=(1.0, 3.0)) == pytest.approx(1.75 * 3.0)


def test_hd95_3d_spacing_applies_per_axis():
    ref = np.zeros((3, 3, 3), bool); ref[0, 1, 1] = True
    pred = np.zeros((3, 3, 3), bool); pred[2, 1, 2] = True
    # offset (2, 0, 1) voxels with spacing (5, 1, 0.7) mm -> sqrt(10^2 + 0.7^2)
    assert hd95(pred, ref, spacing=(5.0, 1.0, 0.7)) == pytest.approx(np.hypot(10.0, 0.7))


def test_empty_conventions():
    empty = np.zeros((4, 3), bool)
    one = empty.copy(); one[1, 1] = True
    assert hd95(empty, empty, (1.0, 1.0)) == 0.0
    # exactly one empty: image diagonal in mm = sqrt((4*2)^2 + (3*1)^2)
    assert hd95(one, empty, (2.0, 1.0)) == pytest.approx(np.hypot(8.0, 3.0))
    assert hd95(empty, one, (2.0, 1.0)) == pytest.approx(np.hypot(8.0, 3.0))


def test_label_metrics_per_class():
    ref = np.array([[0, 1, 1, 2]])
    pred = np.array([[0, 1, 2, 2]])
    m = label_metrics(pred, ref, (1.0, 1.0), [1, 2])
    assert m[1]["Dice"] == pytest.approx(2 * 1 / 3)
    assert m[2]["Dice"] == pytest.approx(2 * 1 / 3)
    assert m[1]["n_pred"] == 1 and m[1]["n_ref"] == 2
    assert m[1]["HD95"] == pytest.approx(np.percentile([0, 0, 1], 95))
