"""Dense labels in the preprocessed geometry: nnU-Net's own ``run_case_npy`` (what ``PreprocessedDataset.dense_labels``
calls) gives what the former hand-written transpose + crop + resample gave, in 2d and in anisotropic 3d_fullres."""
from __future__ import annotations

import os

import numpy as np
import pytest

import conftest
from nnunet_scribble.errors import UserFacingError


def hand_path(ds, case, properties, spatial_shape):
    """The former implementation: transpose, crop with the stored bbox, resample to the preprocessed shape."""
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

    pm, cm = ds.plans_manager, ds.configuration_manager
    seg, _ = pm.image_reader_writer_class().read_seg(ds.dense_label_file(case))
    seg = seg.transpose([0, *[i + 1 for i in pm.transpose_forward]])
    seg = seg[(slice(None), *bounding_box_to_slice(properties["bbox_used_for_cropping"]))]
    original_spacing = [properties["spacing"][i] for i in pm.transpose_forward]
    target_spacing = list(cm.spacing)
    if len(target_spacing) < len(seg.shape[1:]):
        target_spacing = [original_spacing[0]] + target_spacing
    if tuple(seg.shape[1:]) != tuple(spatial_shape):
        seg = cm.resampling_fn_seg(seg, spatial_shape, original_spacing, target_spacing)
    return np.moveaxis(np.asarray(seg[0]).astype(np.int16), ds.slice_axis, 0)


def _point_at(monkeypatch, root):
    for k, v in conftest.nnunet_env(root).items():
        if k.startswith("nnUNet"):
            monkeypatch.setenv(k, v)


@pytest.mark.parametrize("which", ["2d", "3d_fullres"])
def test_dense_labels_via_nnunet_preprocessor_equal_the_hand_path(which, request, monkeypatch):
    from nnunet_scribble.sam.data import PreprocessedDataset

    root, name = request.getfixturevalue("tiny_dataset" if which == "2d" else "tiny_3d_dataset")
    _point_at(monkeypatch, root)
    ds = PreprocessedDataset(name, which)
    compared = 0
    for case in ds.identifiers:
        if ds.dense_label_file(case) is None:
            continue
        cs = ds.load_case(case)
        new = ds.dense_labels(case, cs.properties, cs.spatial_shape)
        old = hand_path(ds, case, cs.properties, cs.spatial_shape)
        assert new.dtype == old.dtype == np.int16 and new.shape == old.shape == cs.scribbles.shape
        assert np.array_equal(new, old), case
        assert np.array_equal(ds.dense_labels(case), new)       # the preprocessed case's properties only check
        compared += 1
    assert compared >= 2


def test_dense_labels_refuse_a_raw_image_changed_since_preprocessing(tiny_copy):
    import SimpleITK as sitk

    from nnunet_scribble.sam.data import PreprocessedDataset

    root, name = tiny_copy
    ds = PreprocessedDataset(name, "2d")
    case = next(c for c in ds.identifiers if ds.dense_label_file(c))
    cs = ds.load_case(case)
    dense = ds.dense_label_file(case)
    for f, value in ((ds.raw_images(case)[0], None), (dense, 0)):   # 4 more columns: another geometry
        image = sitk.ReadImage(f)
        array = sitk.GetArrayFromImage(image)
        pad = [(0, 0)] * (array.ndim - 1) + [(0, 4)]
        grown = sitk.GetImageFromArray(np.pad(array, pad, constant_values=array.max() + 1 if value is None else value))
        grown.SetSpacing(image.GetSpacing())
        grown.SetOrigin(image.GetOrigin())
        grown.SetDirection(image.GetDirection())
        sitk.WriteImage(grown, f)
    with pytest.raises(UserFacingError, match="changed since preprocessing") as e:
        ds.dense_labels(case, cs.properties, cs.spatial_shape)
    assert os.path.basename(dense) in str(e.value)
