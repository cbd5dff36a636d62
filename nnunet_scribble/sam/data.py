"""The preprocessed nnU-Net dataset as SAM sees it: 2D slices, scribbles, fold splits, dense labels.

All SAM stages work in the *preprocessed* geometry of one configuration (what the trainer trains on):
``$nnUNet_preprocessed/<dataset>/<data identifier>/<case>.b2nd`` (image, (c, *spatial)) and
``<case>_seg.b2nd`` (scribbles: classes 0..K-1, ``ignore`` = K; nnU-Net's -1 crop marks, background
scribbles on zero-intensity voxels, are read as background: ``nnunet_scribble.crop_marks``). Slices are
taken along the lowest-resolution axis: axis 0 for ``2d`` (nnU-Net's 2D slicing axis), the axis of the
largest spacing for 3D configurations. Pseudo-labels are written back as one ``<case>.b2nd`` (or ``.npz``
for numpy-preprocessed data) label map of the case's spatial shape, which nnU-Net's dataset class reads
from ``folder_with_segs_from_previous_stage`` (the trainer's ``extra_seg_folder``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from nnunet_scribble.crop_marks import crop_marks_as_background
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.files import atomic_write, atomic_write_json, locked
from nnunet_scribble.geometry import through_plane_axis
from nnunet_scribble.image_io import check_file


@dataclass
class CaseSlices:
    """One case as a stack of 2D slices (slice axis first)."""
    case: str
    image: np.ndarray        # (n, H, W) float32, one channel of the preprocessed data
    scribbles: np.ndarray    # (n, H, W) int16: 0..K-1 classes, K = ignore (crop marks read as 0)
    spatial_shape: tuple     # the case's preprocessed spatial shape (before moving the slice axis)
    properties: dict


class PreprocessedDataset:
    """One dataset + plans + configuration in ``$nnUNet_preprocessed``."""

    def __init__(self, dataset: str | int, configuration: str, plans: str = "nnUNetPlans"):
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.paths import nnUNet_preprocessed
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        if not nnUNet_preprocessed:
            raise UserFacingError("nnUNet_preprocessed is not set. Export nnUNet_raw, nnUNet_preprocessed and "
                                  "nnUNet_results as for any nnU-Net command.")
        try:
            self.name = maybe_convert_to_dataset_name(dataset)
        except (RuntimeError, ValueError, AssertionError) as e:
            raise UserFacingError(f"Dataset {dataset} was not found in nnUNet_raw / nnUNet_preprocessed ({e}).") from e
        self.base = os.path.join(os.fspath(nnUNet_preprocessed), self.name)
        plans_file = os.path.join(self.base, plans + ".json")
        if not os.path.isfile(plans_file):
            raise UserFacingError(f"{plans_file} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} "
                                  f"-c {configuration} first.")
        self.plans_manager = PlansManager(plans_file)
        try:
            self.configuration_manager = self.plans_manager.get_configuration(configuration)
        except RuntimeError as e:
            raise UserFacingError(f"{plans_file}: {e}") from e
        self.configuration = configuration
        self.plans = plans
        self.dataset_json = load_json(os.path.join(self.base, "dataset.json"))
        self.label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        if self.label_manager.has_regions:
            raise UserFacingError(f"{os.path.join(self.base, 'dataset.json')} defines regions; the SAM pseudo-label "
                                  "stages support plain label maps only.")
        if not self.label_manager.has_ignore_label:
            raise UserFacingError(
                f"{os.path.join(self.base, 'dataset.json')} has no 'ignore' label, so its labelsTr are dense labels, "
                "not scribbles. SAM pseudo-labels are made from scribbles: convert the dataset with "
                "`nnunet-scribble convert` (or add \"ignore\": <largest label + 1> to the raw dataset.json and mark "
                "unannotated voxels with it), then rerun nnUNetv2_plan_and_preprocess.")
        self.ignore_label = int(self.label_manager.ignore_label)
        self.classes = [int(c) for c in self.label_manager.all_labels if c != self.ignore_label]
        if self.classes != list(range(len(self.classes))):
            raise UserFacingError(f"{os.path.join(self.base, 'dataset.json')}: labels must be consecutive 0..K-1 "
                                  f"(got {self.classes}).")
        self.num_classes = len(self.classes)
        self.data_identifier = self.configuration_manager.data_identifier
        self.folder = os.path.join(self.base, self.data_identifier)
        if not os.path.isdir(self.folder) or not os.listdir(self.folder):
            raise UserFacingError(f"{self.folder} does not exist or is empty: run nnUNetv2_plan_and_preprocess -d "
                                  f"{dataset} -c {configuration} (preprocessing of this configuration is missing).")
        self.dataset_class = infer_dataset_class(self.folder)
        spacing = list(self.configuration_manager.spacing)
        # nnU-Net's 2D configurations slice axis 0; 3D ones: the axis of the largest spacing (first on ties)
        self.slice_axis = through_plane_axis(spacing)

    @property
    def identifiers(self) -> list[str]:
        return sorted(self.dataset_class.get_identifiers(self.folder))

    @property
    def is_blosc2(self) -> bool:
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

        return issubclass(self.dataset_class, nnUNetDatasetBlosc2)

    def raw_folder(self) -> Optional[str]:
        from nnunetv2.paths import nnUNet_raw

        if not nnUNet_raw:
            return None
        return os.path.join(os.fspath(nnUNet_raw), self.name)

    # ---- cases ------------------------------------------------------------------------------
    def load_case(self, case: str, channel: int = 0) -> CaseSlices:
        ds = self.dataset_class(self.folder, [case])
        try:
            data, seg, _, properties = ds.load_case(case)
        except FileNotFoundError as e:
            raise UserFacingError(f"Preprocessed case {case} is missing in {self.folder} ({e}); rerun "
                                  "nnUNetv2_plan_and_preprocess.") from e
        if channel >= data.shape[0]:
            raise UserFacingError(f"{self.folder}/{case}: channel {channel} requested but the data has "
                                  f"{data.shape[0]} channel(s).")
        image = np.asarray(data[channel], dtype=np.float32)
        scribbles = crop_marks_as_background(seg[0]).astype(np.int16)
        return CaseSlices(case, np.moveaxis(image, self.slice_axis, 0), np.moveaxis(scribbles, self.slice_axis, 0),
                          tuple(image.shape), properties)

    def image_fingerprint(self, case: str, channel: int = 0) -> str:
        """Content hash of one case's preprocessed image channel (changes when preprocessing changes)."""
        import hashlib

        ds = self.dataset_class(self.folder, [case])
        data = np.ascontiguousarray(np.asarray(ds.load_case(case)[0][channel], dtype=np.float32))
        h = hashlib.sha256()
        h.update(repr((data.shape, self.slice_axis, channel)).encode())
        h.update(data.tobytes())
        return h.hexdigest()

    def scribble_fingerprint(self, case: str) -> str:
        import hashlib

        ds = self.dataset_class(self.folder, [case])
        seg = np.ascontiguousarray(crop_marks_as_background(ds.load_case(case)[1]).astype(np.int16))
        return hashlib.sha256(repr(seg.shape).encode() + seg.tobytes()).hexdigest()

    def to_volume(self, slices: np.ndarray) -> np.ndarray:
        """(n, H, W) slice stack -> array in the case's preprocessed spatial layout."""
        return np.moveaxis(slices, 0, self.slice_axis)

    # ---- folds ------------------------------------------------------------------------------
    def fold_split(self, fold: str | int, random_split: bool = False, log=print) -> tuple[list[str], list[str]]:
        """(training cases, validation cases) of a fold, exactly as nnU-Net's trainer splits them.

        A fold outside ``splits_final.json`` is refused unless ``random_split``: then, as nnU-Net's trainer
        does, it gets a seeded random 80:20 split."""
        from nnunetv2.utilities.crossval_split import generate_crossval_split

        keys = self.identifiers
        if str(fold) == "all":
            return keys, []
        try:
            fold = int(fold)
        except ValueError:
            raise UserFacingError(f"Fold must be a number or 'all', got {fold!r}.") from None
        splits_file = os.path.join(self.base, "splits_final.json")
        with locked(os.path.join(self.base, ".splits_final.json.lock"), splits_file, log=log):
            if os.path.isfile(splits_file):
                with open(splits_file) as f:
                    splits = json.load(f)
            else:   # what nnU-Net's trainer does (and writes) when the file is missing
                splits = generate_crossval_split(keys, seed=12345, n_splits=5)
                atomic_write_json(splits_file, splits)
        if not random_split and not 0 <= fold < len(splits):
            raise UserFacingError(
                f"fold {fold} is not in {splits_file}, which defines folds {', '.join(map(str, range(len(splits))))}. "
                f"Choose one of those (or 'all'), add the fold to the split file, or pass --random-split to use "
                f"nnU-Net's seeded random 80:20 split for fold {fold} (what nnUNetv2_train does for such a fold).")
        if fold < len(splits):
            tr, val = list(splits[fold]["train"]), list(splits[fold]["val"])
        else:   # nnU-Net's seeded random 80:20 split for folds beyond the split file
            rnd = np.random.RandomState(seed=12345 + fold)
            idx_tr = rnd.choice(len(keys), int(len(keys) * 0.8), replace=False)
            tr = [keys[i] for i in idx_tr]
            val = [keys[i] for i in range(len(keys)) if i not in idx_tr]
        missing = sorted(set(tr) - set(keys))
        if missing:
            raise UserFacingError(f"{splits_file} lists training cases that are not in {self.folder}: "
                                  f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. Fix or delete the "
                                  "split file.")
        return sorted(str(k) for k in tr), sorted(str(k) for k in val)

    # ---- dense reference labels ---------------------------------------------------------------
    def dense_label_file(self, case: str) -> Optional[str]:
        raw = self.raw_folder()
        if raw is None:
            return None
        path = os.path.join(raw, "labelsTr_dense", case + self.dataset_json["file_ending"])
        return path if os.path.isfile(path) else None

    def raw_images(self, case: str) -> list[str]:
        """The raw image files (one per channel) of a training case, as nnU-Net's preprocessing finds them."""
        import copy

        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        if getattr(self, "_raw_files", None) is None:   # nnU-Net's listing edits the dict it is given
            self._raw_files = get_filenames_of_train_images_and_targets(self.raw_folder(),
                                                                        copy.deepcopy(self.dataset_json))
        if case not in self._raw_files:
            raise UserFacingError(f"{self.raw_folder()}: no raw images for preprocessed case {case}; rerun "
                                  "nnUNetv2_plan_and_preprocess after changing the raw dataset.")
        return list(self._raw_files[case]["images"])

    def dense_labels(self, case: str, properties: Optional[dict] = None,
                     spatial_shape: Optional[tuple] = None) -> Optional[np.ndarray]:
        """Dense labels of a training case brought into the preprocessed geometry by nnU-Net's own preprocessor
        (``run_case_npy`` with the raw images: transpose, crop to nonzero, resample), as (n, H, W) slices; None
        if there are none. The preprocessor's -1 (background outside the nonzero crop mask) reads as background.
        ``properties`` / ``spatial_shape`` of the preprocessed case, when given, must match (else the raw data
        changed since preprocessing)."""
        path = self.dense_label_file(case)
        if path is None:
            return None
        check_file(path)  # SimpleITK zero-fills truncated NIfTI files without an error
        images = self.raw_images(case)
        for f in images:
            check_file(f, finite=False)  # NaN: nnU-Net's preprocessing read them as 0 as well
        pm, cm = self.plans_manager, self.configuration_manager
        rw = pm.image_reader_writer_class()
        data, raw_properties = rw.read_images(images)
        seg, _ = rw.read_seg(path)
        preprocessor = cm.preprocessor_class(verbose=False)
        _, seg, raw_properties = preprocessor.run_case_npy(data, seg, raw_properties, pm, cm, self.dataset_json)
        seg = crop_marks_as_background(np.asarray(seg[0])).astype(np.int16)
        same_shape = spatial_shape is None or tuple(seg.shape) == tuple(spatial_shape)
        same_crop = properties is None or "bbox_used_for_cropping" not in properties or (
            [list(b) for b in properties["bbox_used_for_cropping"]]
            == [list(b) for b in raw_properties["bbox_used_for_cropping"]])
        if not (same_shape and same_crop):
            raise UserFacingError(
                f"{path} and {images[0]}, preprocessed now, do not match the preprocessed case {case} in "
                f"{self.folder} ({'crop' if same_shape else f'shape {seg.shape} vs {tuple(spatial_shape)}'}): the "
                "raw dataset changed since preprocessing. Rerun nnUNetv2_plan_and_preprocess.")
        return np.moveaxis(seg, self.slice_axis, 0)

    # ---- writing label maps ---------------------------------------------------------------------
    def label_file(self, folder: str, case: str) -> str:
        return os.path.join(folder, case + (".b2nd" if self.is_blosc2 else ".npz"))

    def write_label_map(self, folder: str, case: str, slices: np.ndarray) -> str:
        """Write (n, H, W) slices as ``<case>.b2nd`` (or ``.npz``) in the case's spatial layout, atomically."""
        seg = np.ascontiguousarray(self.to_volume(slices).astype(np.int16))
        final = self.label_file(folder, case)
        if self.is_blosc2:
            import blosc2
            from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

            blocks, chunks = comp_blosc2_params((1, *seg.shape) if seg.ndim == 3 else (1, 1, *seg.shape),
                                                tuple(self.configuration_manager.patch_size), seg.itemsize)
            blocks, chunks = blocks[-seg.ndim:], chunks[-seg.ndim:]
            atomic_write(final, lambda tmp: blosc2.asarray(seg, urlpath=tmp, chunks=chunks, blocks=blocks, cparams={
                "codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1}))
        else:
            atomic_write(final, lambda tmp: np.savez_compressed(tmp, seg=seg))
        return final

    def read_label_map(self, folder: str, case: str) -> np.ndarray:
        """(n, H, W) slices of a label map written by ``write_label_map``."""
        path = self.label_file(folder, case)
        if self.is_blosc2:
            import blosc2

            arr = blosc2.open(urlpath=path, mode="r")[:]
        else:
            arr = np.load(path)["seg"]
        return np.moveaxis(np.asarray(arr), self.slice_axis, 0)
