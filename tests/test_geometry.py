"""``nnunet_scribble.geometry``: the slice-axis rules against the copies they replaced, and the window offsets."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnunet_scribble import geometry as g


# ---- the rules as each caller wrote them before ---------------------------------------------------
def old_simulate_slice_axis(spacing_zyx, ndim):            # conversion/simulate.py, conversion/shrink.py
    if ndim == 2 or not spacing_zyx:
        return 0
    return int(np.argmax(np.asarray(spacing_zyx[-ndim:], dtype=float)))


def old_sam_slice_axis(spacing):                            # sam/data.py
    return 0 if len(spacing) == 2 else int(np.argmax(spacing))


def old_rotation_plane(spacing):                            # training/medcl.py
    if len(spacing) == 2:
        return 0, 1
    low = int(np.argmax(spacing)) if len(set(float(s) for s in spacing)) > 1 else 0
    return tuple(a for a in range(3) if a != low)


def random_spacings(seed=0, n=300):
    rng = np.random.default_rng(seed)
    choices = [0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0]    # few values: ties are frequent
    for _ in range(n):
        yield tuple(float(v) for v in rng.choice(choices, size=int(rng.integers(2, 4))))


def test_through_plane_axis_is_the_rule_of_conversion_sam_and_medcl():
    for spacing in random_spacings():
        assert g.through_plane_axis(spacing) == old_sam_slice_axis(spacing)
        assert g.rotation_plane(spacing) == old_rotation_plane(spacing)
        for ndim in (2, 3):
            if len(spacing) >= ndim:
                assert g.through_plane_axis(spacing, ndim) == old_simulate_slice_axis(spacing, ndim)
    assert g.through_plane_axis(None, 3) == 0 and g.through_plane_axis((), 3) == 0
    assert g.through_plane_axis((2.0, 5.0, 1.0, 1.0), 3) == 0          # the last ndim entries
    assert g.through_plane_axis(np.array([1.0, 1.0, 3.0])) == 2        # arrays are fine too


def test_anisotropic_slice_axis_needs_the_ratio():
    assert g.anisotropic_slice_axis((10.0, 1.5, 1.5)) == 0
    assert g.anisotropic_slice_axis((1.0, 1.0, 1.9)) is None
    assert g.anisotropic_slice_axis((1.0, 1.0, 1.9), anisotropy=1.5) == 2
    assert g.anisotropic_slice_axis((1.0, 1.0, 2.0)) == 2


def test_display_slice_axis_skips_flat_axes():
    assert g.display_slice_axis((5.0, 1.0, 1.0), (1, 30, 30)) == 1     # the coarse axis is one voxel thick
    assert g.display_slice_axis((5.0, 1.0, 1.0), (1, 1, 1)) == 0
    assert g.display_slice_axis((1.0, 2.0, 2.0), (4, 5, 6)) == 1       # ties: the first


def test_per_slice_keeps_the_axis():
    a = np.arange(24).reshape(2, 3, 4)
    out = g.per_slice(a, 1, lambda s, i: s * 0 + i)
    assert out.shape == a.shape and (out[:, 2] == 2).all()
    assert g.per_slice(a[0], 1, lambda s, i: s + 1).tolist() == (a[0] + 1).tolist()


# ---- window offsets -------------------------------------------------------------------------------
def old_window_pairs_np(grid_shape, radius, spacing):       # losses/attentive_similarity.py
    grid = np.arange(int(np.prod(grid_shape))).reshape(grid_shape)
    idx_i, idx_j, d2 = [], [], []
    for offset in g.half_window_offsets(g.window_radii(radius, len(grid_shape), spacing)):
        if any(abs(o) >= n for o, n in zip(offset, grid_shape)):
            continue
        src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, grid_shape))
        dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, grid_shape))
        i = grid[src].ravel()
        idx_i.append(i)
        idx_j.append(grid[dst].ravel())
        d2.append(np.full(i.size, g.offset_distance_sq(offset, spacing)))
    if not idx_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    return np.concatenate(idx_i), np.concatenate(idx_j), np.concatenate(d2)


@pytest.mark.parametrize("grid, radius, spacing", [((2, 4, 4), 5, None), ((1, 3, 2), 5, None), ((1, 1), 3, None),
                                                    ((2, 6, 6), 5, (4.0, 2.0, 2.0)), ((3, 2), 4, None),
                                                    ((5, 7), 2, (1.0, 1.5)), ((4, 5, 6), 1, (1.0, 1.0, 1.0))])
def test_window_pair_indices_match_the_old_attention_pairs(grid, radius, spacing):
    for new, old in zip(g.window_pair_indices(grid, radius, spacing), old_window_pairs_np(grid, radius, spacing)):
        np.testing.assert_array_equal(new, old)


def test_window_offsets_drop_only_offsets_wider_than_the_grid():
    for shape in [(1, 5), (3, 3), (2, 1, 7), (6, 6, 6)]:
        full = g.half_window_offsets(g.window_radii(3, len(shape)))
        kept = g.window_offsets(3, shape)
        assert kept == [o for o in full if all(abs(v) < n for v, n in zip(o, shape))]
        for o in kept:                       # a kept offset pairs n_a - |o_a| voxels along each axis
            src, dst = g.pair_slices(o, shape)
            assert np.zeros(shape)[src].shape == np.zeros(shape)[dst].shape == tuple(
                n - abs(v) for v, n in zip(o, shape))
    assert g.window_offsets(2, (1, 1)) == []


def test_pair_slices_pair_every_voxel_with_its_neighbour():
    shape = (4, 5)
    coords = np.indices(shape).transpose(1, 2, 0)
    for o in itertools.product(range(-2, 3), repeat=2):
        src, dst = g.pair_slices(o, shape)
        np.testing.assert_array_equal(coords[dst] - coords[src], np.broadcast_to(o, coords[src].shape))


def test_stage_grids_and_spacings_by_hand():
    from nnunet_scribble.geometry import cumulative_strides, stage_spacing, stage_token_grids

    strides = [1, [2, 2], [2, 2], [1, 2]]
    assert cumulative_strides(strides, 2) == [(1, 1), (2, 2), (4, 4), (4, 8)]
    assert stage_token_grids((256, 224), strides) == [(256, 224), (128, 112), (64, 56), (64, 28)]
    assert stage_spacing((1.5, 1.25), strides, 3) == (6.0, 10.0)
    # 3D, anisotropic: no pooling along z at first
    assert stage_spacing((10.0, 1.5, 1.5), [[1, 1, 1], [1, 2, 2], [2, 2, 2]], 2) == (20.0, 6.0, 6.0)
    assert stage_token_grids((10, 256, 224), [[1, 1, 1], [1, 2, 2], [2, 2, 2]])[2] == (5, 64, 56)
