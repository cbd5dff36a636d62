"""Library calls that replaced hand-written code give the old results on seeded random cases.

The old implementations are kept here as references: GC hole filling (now ``binary_fill_holes``),
GC gap closing (now scikit-image's isotropic dilation/erosion) and DMPLS feature dropout (now
torch's ``dropout``/``dropout2d``/``dropout3d``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt, generate_binary_structure, label
from skimage.morphology import isotropic_closing, isotropic_dilation

from nnunet_scribble.networks.dual_decoder import feature_dropout
from nnunet_scribble.targets import gc_region as gc

SHAPES = [(1, 1), (5, 7), (32, 29), (4, 20, 18), (9, 9, 9), (3, 1, 8), (2, 12, 3)]


# ---- the old implementations ---------------------------------------------------------------------
def old_enclosed(bg: np.ndarray, axis: Optional[int]) -> np.ndarray:
    nd = bg.ndim
    structure = generate_binary_structure(nd, 1)
    border_axes = list(range(nd))
    if axis is not None:
        keep = [slice(None)] * nd
        keep[axis] = slice(1, 2)
        s2 = np.zeros_like(structure)
        s2[tuple(keep)] = structure[tuple(keep)]
        structure = s2
        border_axes.remove(axis)
    lab, n = label(~bg, structure=structure)
    if n == 0:
        return np.zeros(bg.shape, dtype=bool)
    touches = np.zeros(n + 1, dtype=bool)
    for ax in border_axes:
        for idx in (0, -1):
            touches[np.take(lab, idx, axis=ax)] = True
    touches[0] = True
    return ~touches[lab]


def old_closing(bg: np.ndarray, radius: float, axis: Optional[int]) -> np.ndarray:
    if radius <= 0 or not bg.any():
        return bg
    if axis is not None:
        out = np.empty_like(bg)
        for i in range(bg.shape[axis]):
            idx = (slice(None),) * axis + (i,)
            out[idx] = old_closing(bg[idx], radius, None)
        return out
    m = int(np.ceil(2 * radius)) + 1
    nz = np.nonzero(bg)
    box = tuple(slice(max(int(i.min()) - m, 0), min(int(i.max()) + m + 1, n)) for i, n in zip(nz, bg.shape))
    dil = distance_transform_edt(~bg[box]) <= radius
    out = bg.copy()
    out[box] = dil if dil.all() else distance_transform_edt(dil) > radius
    return out


def old_feature_dropout(x: torch.Tensor, p: float, channelwise: bool = True) -> torch.Tensor:
    if p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    shape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2) if channelwise else x.shape
    keep = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1.0 - p)
    return x * keep.div_(1.0 - p)


# ---- random cases ---------------------------------------------------------------------------------
def random_masks(seed: int):
    """Sparse and dense random masks, rings with gaps, and the empty / full extremes, per shape."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        for density in (0.03, 0.2, 0.6):
            yield rng.random(shape) < density
        ring = np.zeros(shape, bool)
        centre = [n // 2 for n in shape]
        grid = np.indices(shape)
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        ring[np.abs(dist - max(1, min(shape) // 3)) < 0.8] = True
        ring &= rng.random(shape) > 0.1                      # gaps
        yield ring
        yield np.zeros(shape, bool)
        yield np.ones(shape, bool)


def axes_of(mask):
    return [None] + list(range(mask.ndim))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hole_filling_matches_the_old_component_labelling(seed):
    for bg in random_masks(seed):
        for axis in axes_of(bg):
            np.testing.assert_array_equal(gc._enclosed(bg, axis), old_enclosed(bg, axis), err_msg=f"{bg.shape} {axis}")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gap_closing_matches_the_old_edt_thresholds(seed):
    for bg in random_masks(seed):
        for axis in axes_of(bg):
            for radius in (0.0, 0.7, 1.0, 1.5, 2.3, 4.0):
                np.testing.assert_array_equal(gc._closing(bg, radius, axis), old_closing(bg, radius, axis),
                                              err_msg=f"{bg.shape} {axis} {radius}")


@pytest.mark.parametrize("seed", [0, 1])
def test_gap_closing_is_isotropic_closing_unless_the_dilation_covers_everything(seed):
    """The condition in ``gc_region._closing``'s docstring: outside it, plain ``isotropic_closing``."""
    covered = 0
    for bg in random_masks(seed):
        for radius in (0.7, 1.5, 4.0):
            if not bg.any():
                continue
            if isotropic_dilation(bg, radius).all():
                covered += 1
                assert gc._closing(bg, radius, None).all()
            else:
                np.testing.assert_array_equal(gc._closing(bg, radius, None), isotropic_closing(bg, radius))
    assert covered      # the exception is exercised


@pytest.mark.parametrize("seed", [0, 1])
def test_gc_region_matches_the_old_helpers(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    cases = []
    for shape in SHAPES:
        s = rng.choice([0, 1, 2, 3, -1], size=shape, p=[0.15, 0.05, 0.05, 0.7, 0.05])
        for axis in axes_of(s):
            for kwargs in ({}, {"close_gaps": 1.5}, {"close_gaps": 2.0, "require_fg_inside": True}):
                cases.append((s, axis, kwargs))
    new = [gc.gc_region(s, ignore_label=3, axis=axis, **kw) for s, axis, kw in cases]
    monkeypatch.setattr(gc, "_enclosed", old_enclosed)
    monkeypatch.setattr(gc, "_closing", old_closing)
    for (s, axis, kw), n in zip(cases, new):
        np.testing.assert_array_equal(n, gc.gc_region(s, ignore_label=3, axis=axis, **kw))


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 4, 3, 5, 6), (3, 2, 7), (2, 3, 2, 2, 2, 2), (1, 1, 1, 1)])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("channelwise", [True, False])
def test_feature_dropout_draws_what_the_old_one_drew(shape, p, channelwise):
    """Same generator state, same mask and scaling: torch's dropout draws one Bernoulli per (sample,
    channel) or per element like the old code, so the outputs are equal, not only alike."""
    x = torch.randn(shape, dtype=torch.float64)
    state = torch.random.get_rng_state()
    old = old_feature_dropout(x, p, channelwise)
    after_old = torch.random.get_rng_state()
    torch.random.set_rng_state(state)
    new = feature_dropout(x, p, channelwise)
    assert torch.equal(new, old)
    assert torch.equal(torch.random.get_rng_state(), after_old)       # and the generator advanced alike


def test_feature_dropout_statistics():
    """Channel-wise: whole channels kept with probability 1 - p, scaled by 1 / (1 - p); mean preserved."""
    torch.manual_seed(0)
    x = torch.ones(400, 50, 3, 4, 5)
    y = feature_dropout(x, 0.3)
    per_channel = y.flatten(2)
    scale = torch.tensor(1 / 0.7)
    assert ((per_channel == 0).all(-1) | torch.isclose(per_channel, scale).all(-1)).all()
    kept = (per_channel[..., 0] > 0).float().mean().item()
    assert kept == pytest.approx(0.7, abs=0.01) and y.mean().item() == pytest.approx(1.0, abs=0.02)
    x.requires_grad_(True)
    feature_dropout(x, 0.3).sum().backward()                       # gradient = mask / (1 - p)
    assert ((x.grad == 0) | torch.isclose(x.grad, scale)).all()
