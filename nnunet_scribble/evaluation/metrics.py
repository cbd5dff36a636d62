"""Per-structure overlap and surface-distance metrics on binary masks (N-D, spacing-aware).

Conventions (also in docs/evaluation.md):
- Surface of a mask: its voxels that have at least one face-neighbour outside the mask (the image
  border counts as outside).
- HD95: the 95th percentile (numpy's linear interpolation) of the pooled symmetric surface
  distances, i.e. distances from every prediction-surface voxel to the nearest reference-surface voxel
  together with those from every reference-surface voxel to the nearest prediction-surface voxel,
  in mm (voxel spacing applied per axis). This is the convention of medpy's ``hd95``, which most
  scribble-supervision papers report.
- Both masks empty: Dice 1, HD95 0 (absence correctly predicted).
- Exactly one mask empty: Dice 0, HD95 = the diagonal of the image extent in mm, the largest distance
  possible inside the image, so that a missed or hallucinated structure is penalised and means stay
  finite.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1.0 when both are empty."""
    prediction = prediction.astype(bool, copy=False)
    reference = reference.astype(bool, copy=False)
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (image border counts as outside)."""
    mask = mask.astype(bool, copy=False)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def symmetric_surface_distances(prediction: np.ndarray, reference: np.ndarray,
                                spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of one mask to the other mask's surface, both ways.

    Both masks must be non-empty.
    """
    pred_surface = surface(prediction)
    ref_surface = surface(reference)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return np.concatenate([to_ref[pred_surface], to_pred[ref_surface]])


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image extent's diagonal in mm (the largest distance inside the image)."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the pooled symmetric surface distances in mm (see module docstring)."""
    prediction = prediction.astype(bool, copy=False)
    reference = reference.astype(bool, copy=False)
    if len(spacing) != prediction.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {prediction.ndim}-D mask")
    pred_empty, ref_empty = not prediction.any(), not reference.any()
    if pred_empty and ref_empty:
        return 0.0
    if pred_empty or ref_empty:
        return image_diagonal_mm(prediction.shape, spacing)
    return float(np.percentile(symmetric_surface_distances(prediction, reference, spacing), 95))


def label_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                  labels: Sequence[int]) -> dict[int, dict[str, float]]:
    """Dice, HD95 and voxel counts per label of two label maps of equal shape."""
    result = {}
    for label in labels:
        p, r = prediction == label, reference == label
        result[int(label)] = {
            "Dice": dice(p, r),
            "HD95": hd95(p, r, spacing),
            "n_pred": int(p.sum()),
            "n_ref": int(r.sum()),
        }
    return result
