"""Continuous pseudo labels (CPL) from a scribble map (MaCo; docs/methods/maco.md).

For every class k (background included) with at least one scribble voxel in the patch:
``d_k`` = Euclidean distance to the nearest scribble voxel of class k,
``c_k = exp(-decay * d_k)``, set to 0 where ``c_k < floor``. Classes without scribble voxels
get an all-zero map, i.e. no target (``cpl_loss`` only looks at voxels with ``c_k > 0``).

Pure numpy/scipy, N-D, no torch needed: cheap enough for nnU-Net's augmentation workers
(see ``benchmarks/results/maco_targets_cost.md``).

Choices where the paper is silent (its equations were lost in extraction):

- Distances are in voxels of the (augmented) patch by default, as in the paper's 2D setting.
  ``spacing`` is passed to ``scipy.ndimage.distance_transform_edt(sampling=...)``; for anisotropic
  3D patches we recommend ``spacing / min(spacing)``, so that ``decay`` keeps its per-in-plane-
  pixel meaning and a step through the slices counts as its physical length.
- ``axis`` computes distances per 2D slice (for 2D-drawn scribbles in 3D volumes): a class
  then only has a target in slices where it is scribbled.
- Every value outside ``0..num_classes-1`` (the ``ignore`` label, nnU-Net's -1 padding) is
  unlabeled.
- The floor is exclusive of equality: ``c_k == floor`` is kept.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

__all__ = ["cpl_targets", "cpl_cutoff_distance"]


def cpl_cutoff_distance(decay: float = 0.1, floor: float = 0.05) -> float:
    """Distance beyond which ``exp(-decay*d) < floor`` (the CPL map is 0 there); inf if floor<=0."""
    if floor <= 0:
        return math.inf
    return math.log(1.0 / floor) / decay


def _class_map(mask: np.ndarray, decay: float, floor: float,
               spacing: Optional[Sequence[float]], out: np.ndarray) -> None:
    """Write the CPL map of one binary scribble mask (must contain a voxel) into ``out``.

    The EDT is computed only inside the scribble's bounding box grown by the cutoff distance:
    every scribble voxel lies inside it, so distances there are exact, and every voxel outside
    is farther than the cutoff along one axis, hence 0 after the floor.
    """
    sp = np.ones(mask.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    r = cpl_cutoff_distance(decay, floor)
    nz = np.nonzero(mask)
    sl = []
    for ax in range(mask.ndim):
        lo, hi = int(nz[ax].min()), int(nz[ax].max())
        if math.isfinite(r):
            m = int(math.ceil(r / sp[ax]))
            lo, hi = max(lo - m, 0), min(hi + m, mask.shape[ax] - 1)
        else:
            lo, hi = 0, mask.shape[ax] - 1
        sl.append(slice(lo, hi + 1))
    sl = tuple(sl)
    d = distance_transform_edt(~mask[sl], sampling=spacing)
    c = np.exp(-decay * d)
    if floor > 0:
        c[c < floor] = 0.0
    out[sl] = c


def cpl_targets(scribble: np.ndarray, num_classes: int, decay: float = 0.1, floor: float = 0.05,
                spacing: Optional[Sequence[float]] = None, axis: Optional[int] = None) -> np.ndarray:
    """CPL maps of one sample.

    Args:
        scribble: integer scribble map, spatial shape only (``(X, Y)`` or ``(Z, Y, X)``, any N-D);
            values ``0..num_classes-1`` are scribbles, anything else is unlabeled.
        num_classes: number of classes C including background (the ``ignore`` value is not one).
        decay, floor: ``c = exp(-decay*d)``, zeroed where ``c < floor``. Paper defaults 0.1, 0.05.
        spacing: per-axis voxel size for the distance (None: 1 per axis). With ``axis`` set, the
            entry for ``axis`` is dropped.
        axis: compute per 2D (N-1-D) slice along this axis instead of in full N-D.

    Returns:
        float32 array ``(C, *scribble.shape)``; all zeros for a class without scribble voxels
        (in the patch, or in the slice when ``axis`` is set).
    """
    s = np.asarray(scribble)
    if s.ndim < 1:
        raise ValueError("scribble must have at least one spatial axis")
    if spacing is not None and len(spacing) != s.ndim:
        raise ValueError(f"spacing has {len(spacing)} entries for a {s.ndim}-D scribble map")
    out = np.zeros((num_classes,) + s.shape, dtype=np.float32)
    if axis is not None:
        axis = axis % s.ndim
        sp = None if spacing is None else [v for i, v in enumerate(spacing) if i != axis]
        s_m = np.moveaxis(s, axis, 0)
        o_m = np.moveaxis(out, axis + 1, 1)  # view: writes land in ``out``
        for i in range(s_m.shape[0]):
            o_m[:, i] = cpl_targets(s_m[i], num_classes, decay, floor, sp, None)
        return out
    for k in range(num_classes):
        mask = s == k
        if mask.any():
            _class_map(mask, decay, floor, spacing, out[k])
    return out
