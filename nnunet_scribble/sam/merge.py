"""Merging per-class SAM masks of one slice into a pseudo-label.

SAM answers one binary question per prompted class, so masks overlap (a box around the LV cavity and a
box around the myocardium both cover the cavity) or leave holes. Rule:

1. every voxel claimed by no foreground mask (probability <= threshold) is background (0);
2. where several masks claim a voxel, the class earlier in the **priority** list wins. The default
   priority ("auto") is fixed once per fold from the round-0 masks: classes with a smaller mean mask
   area come first, so nested structures keep their inner part (a box around a ring-shaped class
   encloses the cavity class, whose mask is smaller). It can be given explicitly (``--merge-priority``);
3. scribbled voxels keep their scribble class (scribbles are ground truth); this includes background
   scribbles.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def merge_class_masks(classes: Sequence[int], probs: np.ndarray, priority: Sequence[int],
                      threshold: float = 0.5) -> np.ndarray:
    """(N, H, W) per-class probabilities of ``classes`` -> (H, W) int16 label map (background 0)."""
    probs = np.asarray(probs)
    label = np.zeros(probs.shape[1:], np.int16)
    rank = {c: i for i, c in enumerate(priority)}
    missing = [c for c in classes if c not in rank]
    if missing:
        raise ValueError(f"classes {missing} are not in the merge priority {list(priority)}")
    # paint the lowest priority first so higher priorities overwrite it
    for i in sorted(range(len(classes)), key=lambda j: rank[classes[j]], reverse=True):
        label[probs[i] > threshold] = classes[i]
    return label


def apply_scribbles(label: np.ndarray, scribble: np.ndarray, num_classes: int) -> np.ndarray:
    """Scribbled voxels (0 <= s < num_classes) take their scribble class."""
    out = label.copy()
    labeled = (scribble >= 0) & (scribble < num_classes)
    out[labeled] = scribble[labeled]
    return out


def priority_by_area(mean_areas: dict[int, float], foreground: Sequence[int]) -> list[int]:
    """Foreground classes ordered by increasing mean mask area (smallest first = wins overlaps); classes
    never prompted go last, in label order."""
    seen = sorted((c for c in foreground if c in mean_areas), key=lambda c: (mean_areas[c], c))
    return seen + [c for c in foreground if c not in mean_areas]
