"""What each preprocessed training case is labeled with, read once from its segmentation.

A case of a mixed dataset is dense (no ``ignore`` voxel), scribbled (some classes, ``ignore`` elsewhere)
or unlabeled (``ignore`` everywhere). nnU-Net's crop to the nonzero region marks background voxels
outside that region with -1; they count as background here.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def scribbled_classes(dataset, keys: Iterable[str], num_classes: int) -> dict[str, np.ndarray]:
    """``{case: (num_classes,) bool}``: the classes present in each case's preprocessed segmentation.

    ``dataset``: an nnU-Net dataset object (``load_case(key)`` returns data, seg, seg_prev, properties).
    """
    classes = {}
    for key in keys:
        values = np.unique(np.asarray(dataset.load_case(key)[1][:]))
        present = np.zeros(num_classes, dtype=bool)
        present[[int(v) for v in values if 0 <= v < num_classes]] = True
        present[0] |= bool((values == -1).any())
        classes[key] = present
    return classes


def labeled_cases(dataset, keys: Iterable[str], annotated_key: tuple) -> list[str]:
    """The cases with at least one annotated voxel, from nnU-Net's stored class locations (cheap: no
    segmentation is read). ``annotated_key``: nnU-Net's key of the annotated-voxel locations of an
    ignore-label dataset, ``(-1, *all_labels)``."""
    return [k for k in keys if len(dataset.load_case(k)[3]["class_locations"].get(annotated_key, ())) > 0]
