"""Shared voxel-grid geometry: which axis is "through-plane", and the AttenScribble window offsets.

Slice-axis rules (three distinct rules, each used where its behaviour is wanted):

- :func:`through_plane_axis`: the axis of largest spacing, axis 0 on ties, 2D, or unknown spacing.
  Scribble simulation/shrinking (``conversion``) slice along it, the SAM stages (``sam.data``) cut
  their 2D slices along it, and MedCL's intra-mix rotates in the other two axes (:func:`rotation_plane`).
- :func:`anisotropic_slice_axis`: the axis of largest spacing only if the volume is anisotropic
  (``None`` otherwise): MaCo's GC regions (``targets.gc_maps``) are computed per slice for
  slice-drawn anisotropic volumes and in full N-D for near-isotropic ones.
- :func:`display_slice_axis`: the axis of largest spacing among the axes longer than one voxel
  (``visualization.overlay``: a figure never shows a one-voxel-thick cut).

Window geometry (masked CRF ``losses.crf`` and attentive similarity ``losses.attentive_similarity``):
an L_inf box of ``radius`` units of the finest spacing (:func:`window_radii`), each unordered voxel
pair once (:func:`window_offsets`), offsets as wide as the grid dropped there (they have no pair).
Pure numpy at import (``window_pairs``, the tensor form the attention block and its loss share, imports
torch when called).
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

__all__ = ["through_plane_axis", "anisotropic_slice_axis", "display_slice_axis", "rotation_plane", "per_slice",
           "window_radii", "half_window_offsets", "window_offsets", "offset_distance_sq", "pair_slices",
           "window_pair_indices", "window_pairs", "cumulative_strides", "stage_token_grids", "stage_spacing"]


# ---- slice axes -----------------------------------------------------------------------------------

def through_plane_axis(spacing: Sequence[float] | None, ndim: int | None = None) -> int:
    """Axis of the largest of the last ``ndim`` spacings (first on ties); 0 for 2D or without spacing."""
    if spacing is None or len(spacing) == 0:
        return 0
    ndim = len(spacing) if ndim is None else ndim
    if ndim == 2:
        return 0
    return int(np.argmax(np.asarray(spacing[-ndim:], dtype=float)))


def anisotropic_slice_axis(spacing: Sequence[float], anisotropy: float = 2.0) -> int | None:
    """Axis of largest spacing if it is at least ``anisotropy`` times the smallest, else None."""
    spacing = np.asarray(spacing, dtype=float)
    return int(np.argmax(spacing)) if spacing.max() >= anisotropy * spacing.min() else None


def display_slice_axis(spacing: Sequence[float], shape: Sequence[int]) -> int:
    """The axis with the coarsest spacing (ties: the first), skipping axes of size 1 unless all are."""
    candidates = [a for a in range(len(shape)) if shape[a] > 1] or [0]
    return max(candidates, key=lambda a: (spacing[a], -a))


def rotation_plane(spacing: Sequence[float]) -> tuple[int, int]:
    """The two spatial axes of an in-plane rotation: 2D both; 3D all but :func:`through_plane_axis`."""
    if len(spacing) == 2:
        return 0, 1
    low = through_plane_axis(spacing)
    return tuple(a for a in range(3) if a != low)


def per_slice(array: np.ndarray, axis: int, function: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Apply ``function(slice_2d, slice_index)`` to every 2D slice along ``axis`` (2D arrays: once)."""
    if array.ndim == 2:
        return function(array, 0)
    moved = np.moveaxis(array, axis, 0)
    return np.moveaxis(np.stack([function(s, i) for i, s in enumerate(moved)]), 0, axis)


# ---- window offsets -------------------------------------------------------------------------------

def window_radii(radius: int, ndim: int, spacing: Sequence[float] | None = None) -> tuple[int, ...]:
    """Window radius per axis in voxels: ``floor(radius * min(spacing) / spacing_a)`` (``radius`` if no spacing)."""
    if spacing is None:
        return (int(radius),) * ndim
    if len(spacing) != ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not have {ndim} entries")
    s_min = min(float(s) for s in spacing)
    return tuple(int(math.floor(radius * s_min / float(s) + 1e-6)) for s in spacing)


def half_window_offsets(radii: Sequence[int]) -> list[tuple[int, ...]]:
    """Offsets ``o != 0`` of the box ``|o_a| <= radii[a]`` whose first non-zero entry is positive.

    Every unordered pair of voxels in the window appears once as ``(i, i + o)``.
    """
    out = []
    for o in itertools.product(*[range(-r, r + 1) for r in radii]):
        first = next((v for v in o if v != 0), 0)
        if first > 0:
            out.append(tuple(o))
    return out


def window_offsets(radius: int, shape: Sequence[int], spacing: Sequence[float] | None = None) -> list[tuple[int, ...]]:
    """The half-window offsets of ``radius`` on a grid of ``shape`` that pair at least two voxels.

    An offset with ``|o_a| >= shape[a]`` on some axis (window wider than the grid) pairs nothing and
    is left out (its :func:`pair_slices` would wrap around). Both window losses take their offsets here.
    """
    return [o for o in half_window_offsets(window_radii(radius, len(shape), spacing))
            if all(abs(v) < n for v, n in zip(o, shape))]


def offset_distance_sq(offset: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """``|d|^2`` of an offset in units of the finest spacing (voxel units without spacing)."""
    if spacing is None:
        return float(sum(v * v for v in offset))
    s_min = min(float(s) for s in spacing)
    return float(sum((v * float(s) / s_min) ** 2 for v, s in zip(offset, spacing)))


def pair_slices(offset: Sequence[int], shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Spatial slices of ``i`` and ``j = i + offset`` over the voxels where both are inside ``shape``
    (for offsets of :func:`window_offsets`, i.e. ``|offset_a| < shape_a``)."""
    src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, shape))
    dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, shape))
    return src, dst


@lru_cache(maxsize=32)
def window_pair_indices(grid_shape: tuple[int, ...], radius: int,
                        spacing: tuple[float, ...] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices ``(i, j)`` of the unordered pairs ``0 < |i - j|_inf <= r`` of a grid and their ``|d|^2``.

    Cached per grid (arguments must be hashable); the arrays are shared, do not modify them.
    """
    grid = np.arange(int(np.prod(grid_shape))).reshape(grid_shape)
    idx_i, idx_j, d2 = [], [], []
    for offset in window_offsets(radius, grid_shape, spacing):
        src, dst = pair_slices(offset, grid_shape)
        i = grid[src].ravel()
        idx_i.append(i)
        idx_j.append(grid[dst].ravel())
        d2.append(np.full(i.size, offset_distance_sq(offset, spacing)))
    if not idx_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    return np.concatenate(idx_i), np.concatenate(idx_j), np.concatenate(d2)


def window_pairs(grid_shape: Sequence[int], radius: int, spacing: Sequence[float] | None = None, device="cpu"):
    """:func:`window_pair_indices` as tensors on ``device``: ``(idx_i, idx_j)`` int64 and ``|d|^2`` float32.

    Used by the AttenScribble attention block (which gathers its window attention at these pairs) and by its
    loss (which reads them back), so both always agree. Cached per grid; constant under ``torch.compile``."""
    import torch

    spacing = None if spacing is None else tuple(float(s) for s in spacing)
    i, j, d2 = window_pair_indices(tuple(int(n) for n in grid_shape), int(radius), spacing)
    return (torch.from_numpy(i).to(device), torch.from_numpy(j).to(device),
            torch.from_numpy(d2).to(device=device, dtype=torch.float32))


def cumulative_strides(strides: Sequence, ndim: int) -> list[tuple[int, ...]]:
    """Per encoder stage, the product of nnU-Net's ``strides`` up to and including it (an int per stage means
    the same stride on every axis)."""
    out, cum = [], [1] * ndim
    for s in strides:
        s = [int(v) for v in (s if isinstance(s, (list, tuple)) else [s] * ndim)]
        cum = [c * v for c, v in zip(cum, s)]
        out.append(tuple(cum))
    return out


def stage_token_grids(patch_size: Sequence[int], strides: Sequence) -> list[tuple[int, ...]]:
    """Spatial shape of every encoder stage's output for a patch (integer division stage by stage)."""
    grids, size = [], [int(p) for p in patch_size]
    for s in strides:
        s = [int(v) for v in (s if isinstance(s, (list, tuple)) else [s] * len(size))]
        size = [i // j for i, j in zip(size, s)]
        grids.append(tuple(size))
    return grids


def stage_spacing(spacing: Sequence[float], strides: Sequence, stage: int) -> tuple[float, ...]:
    """Voxel spacing of encoder stage ``stage``'s output grid: the spacing times the cumulative stride."""
    cum = cumulative_strides(strides, len(spacing))[stage]
    return tuple(float(v) * float(c) for v, c in zip(spacing, cum))
