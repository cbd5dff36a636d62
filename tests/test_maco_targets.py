"""MaCo building blocks: CPL targets, GC region, MCM masks (hand-computed expectations)."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from nnunet_scribble.targets.cpl import cpl_cutoff_distance, cpl_targets
from nnunet_scribble.targets.gc_region import gc_region
from nnunet_scribble.targets.mcm import apply_mcm, mcm_keep_mask, scribble_cubes

IGN = 3  # ignore label for 3 classes (0 background, 1, 2)


def _batched(function, scribbles, *args, **kwargs):
    """``function`` on every ``(1, *spatial)`` map of a ``(B, 1, *spatial)`` numpy array or tensor, stacked."""
    is_torch = not isinstance(scribbles, np.ndarray)
    arr = scribbles.detach().cpu().numpy() if is_torch else scribbles
    if arr.ndim < 3 or arr.shape[1] != 1:
        raise ValueError(f"expected (B, 1, *spatial) scribble maps, got shape {arr.shape}")
    out = np.stack([function(a[0], *args, **kwargs) for a in arr])
    return torch.from_numpy(out).to(scribbles.device) if is_torch else out


def cpl_targets_batch(scribbles, num_classes, **kwargs):
    return _batched(cpl_targets, scribbles, num_classes, **kwargs)


def gc_region_batch(scribbles, **kwargs):
    return _batched(lambda a: gc_region(a, **kwargs)[None], scribbles)


# ----------------------------------------------------------------------------------------- CPL
def test_cpl_single_voxel_2d_hand_values():
    s = np.full((7, 7), IGN)
    s[3, 3] = 1
    t = cpl_targets(s, num_classes=3)
    assert t.shape == (3, 7, 7) and t.dtype == np.float32
    assert not t[0].any() and not t[2].any()  # classes absent from the patch: no target
    c = t[1]
    assert c[3, 3] == pytest.approx(1.0)
    assert c[3, 4] == pytest.approx(0.9048374, abs=1e-6)  # exp(-0.1)
    assert c[2, 3] == pytest.approx(0.9048374, abs=1e-6)
    assert c[4, 4] == pytest.approx(0.8681234, abs=1e-6)  # exp(-0.1*sqrt 2)
    assert c[3, 6] == pytest.approx(0.7408182, abs=1e-6)  # exp(-0.3)
    assert c[0, 0] == pytest.approx(math.exp(-0.1 * math.sqrt(18)), abs=1e-6)


def test_cpl_two_classes_and_floor_1d_row():
    # 1 x 7 row: background at column 0, class 2 at column 6; decay 0.5 -> exp(-3) = 0.0498 < 0.05
    s = np.full((1, 7), IGN)
    s[0, 0], s[0, 6] = 0, 2
    t = cpl_targets(s, num_classes=3, decay=0.5, floor=0.05)
    row = [1.0, 0.6065307, 0.3678794, 0.2231302, 0.1353353, 0.0820850, 0.0]
    np.testing.assert_allclose(t[0, 0], row, atol=1e-6)
    np.testing.assert_allclose(t[2, 0], row[::-1], atol=1e-6)
    assert not t[1].any()


def test_cpl_floor_count_2d():
    # decay 1: exp(-d) >= 0.05 iff d <= 2.9957; offsets with i^2 + j^2 <= 8 are the 5 x 5 block
    s = np.full((7, 7), IGN)
    s[3, 3] = 0
    t = cpl_targets(s, num_classes=3, decay=1.0, floor=0.05)[0]
    assert (t > 0).sum() == 25
    assert t[1, 1] == pytest.approx(0.0591057, abs=1e-6)  # exp(-sqrt 8), kept
    assert t[0, 3] == 0.0  # exp(-3) = 0.0498, dropped
    assert cpl_cutoff_distance(1.0, 0.05) == pytest.approx(2.9957323, abs=1e-6)


def test_cpl_unlabeled_values_ignored():
    s = np.full((5, 5), -1)
    s[0, :] = IGN
    s[2, 2] = 1
    t = cpl_targets(s, num_classes=3)
    assert not t[0].any() and not t[2].any()
    assert t[1, 2, 2] == pytest.approx(1.0)


def test_cpl_3d_spacing_and_per_slice():
    s = np.full((3, 5, 5), IGN)
    s[1, 2, 2] = 1
    iso = cpl_targets(s, num_classes=3)[1]
    assert iso[0, 2, 2] == pytest.approx(0.9048374, abs=1e-6)  # exp(-0.1)
    aniso = cpl_targets(s, num_classes=3, spacing=(2.0, 1.0, 1.0))[1]
    assert aniso[0, 2, 2] == pytest.approx(0.8187308, abs=1e-6)  # exp(-0.2)
    assert aniso[0, 3, 3] == pytest.approx(math.exp(-0.1 * math.sqrt(6)), abs=1e-6)
    assert aniso[1, 2, 3] == pytest.approx(0.9048374, abs=1e-6)
    per_slice = cpl_targets(s, num_classes=3, axis=0)[1]
    assert not per_slice[0].any() and not per_slice[2].any()
    assert per_slice[1, 2, 4] == pytest.approx(0.8187308, abs=1e-6)  # exp(-0.2) in-plane
    # per-slice along the last axis: only slice x=2 carries the class
    along_x = cpl_targets(s, num_classes=3, axis=-1)[1]
    assert along_x[..., 2].any() and not along_x[..., [0, 1, 3, 4]].any()


def test_cpl_bounding_box_crop_is_exact():
    # the implementation crops to the scribble's box + cutoff; compare to a plain full-image EDT
    rng = np.random.default_rng(0)
    s = np.full((90, 80), IGN)
    s[10, 5:30] = 1
    s[70:75, 60] = 2
    s[rng.integers(0, 90, 5), rng.integers(0, 80, 5)] = 0
    t = cpl_targets(s, num_classes=3)
    for k in range(3):
        ref = np.exp(-0.1 * distance_transform_edt(s != k))
        ref[ref < 0.05] = 0
        np.testing.assert_allclose(t[k], ref, atol=1e-6)


def test_cpl_batch_numpy_and_torch():
    s = np.full((2, 1, 4, 6, 5), IGN)
    s[0, 0, 1, 2, 2] = 2
    out = cpl_targets_batch(s, num_classes=3)
    assert out.shape == (2, 3, 4, 6, 5)
    assert out[0, 2, 1, 2, 2] == pytest.approx(1.0) and not out[1].any()
    out_t = cpl_targets_batch(torch.from_numpy(s), num_classes=3)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy(), out)


# ------------------------------------------------------------------------------------------ GC
def _ring(n=9, lo=1, hi=7):
    s = np.full((n, n), IGN)
    s[lo, lo:hi + 1] = s[hi, lo:hi + 1] = s[lo:hi + 1, lo] = s[lo:hi + 1, hi] = 0
    return s


def test_gc_closed_loop_2d():
    s = _ring()
    s[4, 4] = 1
    g = gc_region(s, ignore_label=IGN)
    expected = np.zeros((9, 9), bool)
    expected[2:7, 2:7] = True  # inside filled; the ring itself and the outside are empty
    np.testing.assert_array_equal(g, expected)


def test_gc_open_loop_is_everything():
    s = _ring()
    s[1, 4] = IGN  # gap in the ring
    s[4, 4] = 1
    assert gc_region(s, ignore_label=IGN).all()
    assert gc_region(np.full((6, 6), IGN), ignore_label=IGN).all()  # no scribble at all


def test_gc_diagonal_loop_is_closed():
    # diamond |i-4| + |j-4| == 3 drawn with diagonal steps: closed under face connectivity
    i, j = np.mgrid[:9, :9]
    s = np.full((9, 9), IGN)
    s[np.abs(i - 4) + np.abs(j - 4) == 3] = 0
    g = gc_region(s, ignore_label=IGN)
    assert g.sum() == 13  # |i-4| + |j-4| <= 2
    assert g[4, 4] and g[2, 4] and not g[1, 4] and not g[0, 0]


def test_gc_foreground_outside_loop():
    s = _ring()
    s[0, 8] = 2  # foreground scribble outside the loop
    g = gc_region(s, ignore_label=IGN)
    assert g[0, 8] and g[4, 4] and not g[0, 7] and g.sum() == 26
    assert gc_region(s, ignore_label=IGN, require_fg_inside=True).all()


def test_gc_3d_shell_and_per_slice():
    vol = np.full((7, 7, 7), IGN)
    vol[1:6, 1:6, 1:6] = 0
    vol[2:5, 2:5, 2:5] = IGN  # hollow box: 27 enclosed voxels
    g = gc_region(vol, ignore_label=IGN)
    assert g.sum() == 27 and g[2:5, 2:5, 2:5].all()

    stack = np.stack([_ring(), _ring(), _ring()])
    stack[2, 1, 4] = IGN  # slice 2 open
    stack[0, 4, 4] = 1
    # full 3D: the rings do not close the volume (flood goes around through z) -> everything
    assert gc_region(stack, ignore_label=IGN).all()
    g = gc_region(stack, ignore_label=IGN, axis=0)
    inner = np.zeros((9, 9), bool)
    inner[2:7, 2:7] = True
    np.testing.assert_array_equal(g[0], inner)
    np.testing.assert_array_equal(g[1], inner)
    assert g[2].all()
    # the same along another axis: transpose the stack
    gt = gc_region(np.moveaxis(stack, 0, 2), ignore_label=IGN, axis=2)
    np.testing.assert_array_equal(gt, np.moveaxis(g, 0, 2))


def test_gc_close_gaps():
    s = _ring()
    s[1, 4] = IGN  # 1-voxel gap: open without closing
    s[4, 4] = 1
    assert gc_region(s, ignore_label=IGN).all()
    inner = np.zeros((9, 9), bool)
    inner[2:7, 2:7] = True
    # closing with a disc of radius 1.5 bridges the gap: (0,4) and (2,4) are within sqrt2 of
    # the ring ends; (2,4) is then eroded again because (3,4) lies 2 > 1.5 from the ring
    np.testing.assert_array_equal(gc_region(s, ignore_label=IGN, close_gaps=1.5), inner)
    assert gc_region(s, ignore_label=IGN, close_gaps=1.0).all()  # radius 1 does not bridge it
    # per slice: slice 1 has no background scribble at all -> everything, no leak across slices
    stack = np.stack([s, np.full((9, 9), IGN)])
    g = gc_region(stack, ignore_label=IGN, axis=0, close_gaps=1.5)
    np.testing.assert_array_equal(g[0], inner)
    assert g[1].all()


def test_gc_batch_torch():
    s = np.stack([_ring()[None], np.full((1, 9, 9), IGN)])
    g = gc_region_batch(torch.from_numpy(s), ignore_label=IGN)
    assert g.shape == (2, 1, 9, 9) and g.dtype == torch.bool
    assert g[0].sum() == 25 and g[1].all()


# ----------------------------------------------------------------------------------------- MCM
def _unlabeled(shape):
    return torch.full(shape, IGN, dtype=torch.int64)


@pytest.mark.parametrize("spatial,ps,ratio,n_masked_voxels", [
    ((64, 64), 16, 0.5, 8 * 256),            # 16 cubes -> 8 masked
    ((32, 32, 32), 16, 0.25, 2 * 4096),      # 8 cubes -> 2 masked
    ((20, 32, 48), (4, 16, 16), 0.5, 15 * 1024),  # 5*2*3 = 30 cubes -> 15 of 4*16*16 voxels
])
def test_mcm_exact_masked_fraction(spatial, ps, ratio, n_masked_voxels):
    s = _unlabeled((3, 1) + spatial)
    s[:, :, 0] = 1
    g = torch.Generator().manual_seed(0)
    keep = mcm_keep_mask(s, num_classes=3, patch_size=ps, ratio=ratio, generator=g)
    assert keep.shape == (3, 1) + spatial
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    for b in range(3):
        assert int((keep[b] == 0).sum()) == n_masked_voxels


def test_mcm_non_divisible_cubes():
    # 40 x 24 with P=16: cubes rows [0,16) [16,32) [32,40), cols [0,16) [16,24): 6 cubes, 3 masked
    s = _unlabeled((4, 1, 40, 24))
    keep = mcm_keep_mask(s, num_classes=3, patch_size=16, ratio=0.5,
                         generator=torch.Generator().manual_seed(1))
    for b in range(4):
        k = keep[b, 0]
        n_zero = 0
        for r0, r1 in ((0, 16), (16, 32), (32, 40)):
            for c0, c1 in ((0, 16), (16, 24)):
                block = k[r0:r1, c0:c1]
                assert block.min() == block.max()  # a cube is masked as a whole
                n_zero += int(block.max() == 0)
        assert n_zero == 3


def test_mcm_prefers_scribble_cubes():
    # 32 x 32, P=8: 16 cubes, one holds a scribble; ratio 1/16 -> one cube masked.
    # P(scribble cube) = 3 / (3 + 15) = 1/6 (uniform would be 1/16).
    n = 4000
    s = _unlabeled((n, 1, 32, 32))
    s[:, 0, 9, 20] = 0  # background scribble counts as scribble; cube (1, 2)
    g = torch.Generator().manual_seed(1234)
    keep = mcm_keep_mask(s, num_classes=3, patch_size=8, ratio=1 / 16, generator=g)
    assert int((keep == 0).sum()) == n * 64
    rate = float((keep[:, 0, 8, 16] == 0).float().mean())
    assert abs(rate - 1 / 6) < 0.02  # binomial std ~0.006
    # weight 1: uniform
    keep1 = mcm_keep_mask(s, num_classes=3, patch_size=8, ratio=1 / 16, scribble_weight=1.0,
                          generator=torch.Generator().manual_seed(1234))
    assert abs(float((keep1[:, 0, 8, 16] == 0).float().mean()) - 1 / 16) < 0.015


def test_mcm_3d_preference_at_half_ratio_and_ignore():
    n = 500
    s = _unlabeled((n, 1, 16, 16, 16))
    s[:, 0, 1, 1, 1] = 2  # cube (0, 0, 0) of 8 (P=8)
    keep = mcm_keep_mask(s, num_classes=3, patch_size=8, ratio=0.5,
                         generator=torch.Generator().manual_seed(7))
    scrib = float((keep[:, 0, 0, 0, 0] == 0).float().mean())
    other = float((keep[:, 0, 8, 8, 8] == 0).float().mean())
    # 4 of 8 cubes drawn successively, weights 3,1,...,1: P(scribble cube never drawn)
    # = 7/10 * 6/9 * 5/8 * 4/7 = 1/6 -> 5/6; each other cube: (4 - 5/6) / 7 = 19/42
    assert abs(scrib - 5 / 6) < 0.05 and abs(other - 19 / 42) < 0.07
    # the ignore label and negative padding do not count as scribble
    s2 = _unlabeled((n, 1, 16, 16, 16))
    s2[:, 0, 1, 1, 1] = -1
    keep2 = mcm_keep_mask(s2, num_classes=3, patch_size=8, ratio=0.5,
                          generator=torch.Generator().manual_seed(7))
    assert abs(float((keep2[:, 0, 0, 0, 0] == 0).float().mean()) - 0.5) < 0.08


def test_mcm_reproducible_and_apply():
    s = _unlabeled((2, 1, 48, 48))
    k1 = mcm_keep_mask(s, 3, generator=torch.Generator().manual_seed(3))
    k2 = mcm_keep_mask(s, 3, generator=torch.Generator().manual_seed(3))
    k3 = mcm_keep_mask(s, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(k1, k2) and not torch.equal(k1, k3)
    x = torch.randn(2, 2, 48, 48) + 10.0  # never 0 before masking
    xm = apply_mcm(x, k1)
    assert torch.equal(xm == 0, (k1 == 0).expand_as(x))
    assert torch.equal(xm[k1.expand_as(x) == 1], x[k1.expand_as(x) == 1])


def test_scribble_cubes_2d():
    lab = torch.zeros(1, 5, 7, dtype=torch.bool)
    lab[0, 4, 6] = True
    c = scribble_cubes(lab, 4)
    assert c.shape == (1, 2, 2)
    assert c.tolist() == [[[False, False], [False, True]]]
