"""Scribble-only proxies of segmentation quality, for choosing a model when no dense reference exists.

All functions are pure (numpy/scipy on label maps; ``prediction`` and ``scribble`` have the same shape).

- :func:`enclosed_region`: the region enclosed by the background scribble (the background loop drawn around
  all targets), plus the foreground scribbles; the whole image when nothing is enclosed. The same region as
  MaCo's GC region (``targets/gc_region.py``, built here on the whole image, without gap closing).
- :func:`outside_fraction`: the share of the predicted foreground outside that region. Scribble-supervised
  models mostly err by specks of foreground in unscribbled voxels far from the structures; those lie outside
  the background loop.
- :func:`scribble_dice`: Dice per class on the scribbled voxels only (what nnU-Net's CV ``summary.json``
  reports for a scribble dataset).
- :func:`component_stats`: connected components per class and the share of voxels outside each class's
  largest component.
- :func:`case_proxy` / :func:`proxy_score`: the criterion ``nnunet-scribble find-best-configuration`` uses
  without dense labels: per case ``score = mean foreground scribble Dice x (1 - outside fraction)``, averaged
  over cases (higher is better). How well it ranks models on real data is not measured yet.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

CRITERION = "scribble proxy: mean over cases of (foreground Dice on scribbled voxels) x (1 - share of the " \
            "predicted foreground outside the region enclosed by the background scribble)"


def slice_axis(spacing: Sequence[float], anisotropy: float = 2.0) -> Optional[int]:
    """The axis to treat slice by slice (2D-drawn scribbles in a 3D volume): the lowest-resolution axis of a
    3D image whose spacing along it is at least ``anisotropy`` times the finest; else None (whole volume)."""
    if len(spacing) != 3:
        return None
    spacing = np.asarray(spacing, dtype=float)
    axis = int(np.argmax(spacing))
    return axis if spacing[axis] >= anisotropy * spacing.min() else None


def _holes(mask: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """Voxels outside ``mask`` that cannot reach the image border without crossing it (per 2D slice along
    ``axis`` if given); face connectivity, so an 8-connected drawn loop is closed."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    if axis is not None:
        for side in (0, 2):
            index = [slice(None)] * mask.ndim
            index[axis] = side
            structure[tuple(index)] = False
    return ndimage.binary_fill_holes(mask, structure) & ~mask


def enclosed_region(scribble: np.ndarray, background: int = 0, ignore_label: Optional[int] = None,
                    axis: Optional[int] = None) -> np.ndarray:
    """Where foreground may be: the voxels enclosed by the background scribble, plus the foreground scribbles.

    Values that are neither background nor a class (``ignore_label``, negative values) are unlabeled.
    An image (a slice, with ``axis``) whose background scribble encloses nothing gets the whole image (slice):
    no evidence against any foreground there. Returns a bool array of ``scribble.shape``.
    """
    s = np.asarray(scribble)
    bg = s == background
    fg = (s >= 0) & ~bg
    if ignore_label is not None:
        fg &= s != ignore_label
    if axis is not None:
        axis %= s.ndim
    inside = _holes(bg, axis)
    others = tuple(i for i in range(s.ndim) if i != axis) if axis is not None else None
    nothing_enclosed = ~inside.any(axis=others, keepdims=True)
    return inside | fg | nothing_enclosed


def outside_fraction(prediction: np.ndarray, region: np.ndarray, background: int = 0) -> float:
    """Share of the predicted foreground voxels outside ``region`` (0.0 when no foreground is predicted)."""
    fg = np.asarray(prediction) != background
    n = int(fg.sum())
    return float((fg & ~region).sum()) / n if n else 0.0


def scribble_dice(prediction: np.ndarray, scribble: np.ndarray, classes: Iterable[int],
                  ignore_label: Optional[int] = None) -> dict[int, float]:
    """Dice per class on the scribbled voxels (those that are neither ``ignore_label`` nor negative).

    NaN for a class that is neither scribbled nor predicted on a scribbled voxel (nnU-Net's convention)."""
    s = np.asarray(scribble)
    labeled = s >= 0
    if ignore_label is not None:
        labeled &= s != ignore_label
    p, s = np.asarray(prediction)[labeled], s[labeled]
    result = {}
    for c in classes:
        pc, sc = p == c, s == c
        denominator = int(pc.sum()) + int(sc.sum())
        result[int(c)] = 2.0 * int((pc & sc).sum()) / denominator if denominator else float("nan")
    return result


def component_stats(prediction: np.ndarray, classes: Iterable[int]) -> dict[int, dict[str, float]]:
    """Per class: ``components`` (face-connected components of the predicted class) and ``outside_largest``
    (share of the class's predicted voxels outside its largest component; 0 when the class is absent)."""
    prediction = np.asarray(prediction)
    structure = ndimage.generate_binary_structure(prediction.ndim, 1)
    result = {}
    for c in classes:
        components, n = ndimage.label(prediction == c, structure)
        if n == 0:
            result[int(c)] = {"components": 0, "outside_largest": 0.0}
            continue
        sizes = np.bincount(components.ravel())[1:]
        result[int(c)] = {"components": int(n), "outside_largest": float(1.0 - sizes.max() / sizes.sum())}
    return result


def case_proxy(prediction: np.ndarray, scribble: np.ndarray, classes: Sequence[int],
               ignore_label: Optional[int] = None, axis: Optional[int] = None, background: int = 0) -> dict:
    """All proxy values of one case; ``score`` = mean foreground scribble Dice x (1 - outside fraction).

    The mean Dice leaves out NaN classes (neither scribbled nor predicted on scribbles); a case without any
    foreground scribble counts its Dice as 1 (no evidence against the prediction there)."""
    prediction, scribble = np.asarray(prediction), np.asarray(scribble)
    if prediction.shape != scribble.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from scribble shape {scribble.shape}")
    dice = scribble_dice(prediction, scribble, classes, ignore_label)
    finite = [v for v in dice.values() if not np.isnan(v)]
    mean_dice = float(np.mean(finite)) if finite else 1.0
    outside = outside_fraction(prediction, enclosed_region(scribble, background, ignore_label, axis), background)
    return {"scribble_dice": dice, "scribble_dice_mean": mean_dice, "outside_fraction": outside,
            "components": component_stats(prediction, classes), "score": mean_dice * (1.0 - outside)}


def proxy_score(cases: Mapping[str, Mapping]) -> dict:
    """Means over cases of :func:`case_proxy` results: ``score``, ``scribble_dice_mean``, ``outside_fraction``
    and the mean number of components per class."""
    if not cases:
        raise ValueError("no cases to score")
    values = list(cases.values())
    classes = list(values[0]["components"])
    return {"criterion": CRITERION, "n_cases": len(values),
            "score": float(np.mean([v["score"] for v in values])),
            "scribble_dice_mean": float(np.mean([v["scribble_dice_mean"] for v in values])),
            "outside_fraction": float(np.mean([v["outside_fraction"] for v in values])),
            "components_mean": {str(c): float(np.mean([v["components"][c]["components"] for v in values]))
                                for c in classes}}
