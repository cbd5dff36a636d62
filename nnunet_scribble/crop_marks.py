"""nnU-Net's crop marks in preprocessed segmentations, read as the background scribbles they are.

``nnUNetv2_plan_and_preprocess`` crops every case to the bounding box of its nonzero region and writes -1
into the segmentation where the label is 0 (background) and the image is zero in every channel. In a
scribble map those voxels are background scribbles on zero-intensity voxels (air, a masked-out region).
Stock nnU-Net trains them as background: after augmentation its ``RemoveLabelTransform`` maps -1 to 0.
But nnU-Net also uses -1 for the padding of patches that reach past the image, and the scribble trainers
must turn that padding into ``ignore`` (no annotation exists there). The two are told apart where the
preprocessed map is read: every reader here sees crop marks as 0, so a -1 after loading is padding only.
"""
from __future__ import annotations

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

CROP_MARK = -1


def crop_marks_as_background(seg) -> np.ndarray:
    """A copy of ``seg`` (array or blosc2 array) with nnU-Net's crop marks (-1) set to background (0)."""
    out = np.array(seg[...] if not isinstance(seg, np.ndarray) else seg, copy=True)
    out[out == CROP_MARK] = 0
    return out


class CropMarksAsBackgroundView:
    """Read-only view of a preprocessed segmentation whose slices come back with crop marks as 0.

    Only the slices nnU-Net's loader asks for are read and copied, so a blosc2 volume stays lazy."""

    def __init__(self, seg):
        self._seg = seg
        self.shape = tuple(seg.shape)
        self.ndim = len(self.shape)
        self.dtype = seg.dtype

    def __getitem__(self, key) -> np.ndarray:
        return crop_marks_as_background(self._seg[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)


class _CropMarksAsBackground:
    """Mixin for nnU-Net dataset classes: ``load_case`` returns the segmentation as a
    :class:`CropMarksAsBackgroundView`."""

    def load_case(self, identifier):
        data, seg, seg_prev, properties = super().load_case(identifier)
        return data, CropMarksAsBackgroundView(seg), seg_prev, properties


class nnUNetDatasetBlosc2CropMarksAsBackground(_CropMarksAsBackground, nnUNetDatasetBlosc2):
    pass


class nnUNetDatasetNumpyCropMarksAsBackground(_CropMarksAsBackground, nnUNetDatasetNumpy):
    pass


_KNOWN = {nnUNetDatasetBlosc2: nnUNetDatasetBlosc2CropMarksAsBackground,
          nnUNetDatasetNumpy: nnUNetDatasetNumpyCropMarksAsBackground}


def with_crop_marks_as_background(dataset_class: type) -> type:
    """The dataset class that reads ``dataset_class``'s cases with crop marks as background.

    nnU-Net's two dataset classes get module-level subclasses (picklable for spawned augmentation workers);
    any other class gets one made on the fly."""
    if issubclass(dataset_class, _CropMarksAsBackground):
        return dataset_class
    if dataset_class in _KNOWN:
        return _KNOWN[dataset_class]
    return type(dataset_class.__name__ + "CropMarksAsBackground", (_CropMarksAsBackground, dataset_class), {})
