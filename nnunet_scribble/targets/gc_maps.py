"""Per-case GC-region maps in nnU-Net's preprocessed geometry, cached next to the preprocessed data.

The GC region (``targets.gc_region``) is computed once per training case **on the raw scribbles**,
per 2D slice along the axis of largest spacing when the volume is anisotropic (scribbles are drawn
slice by slice), in full N-D otherwise. Thin background loops rarely survive resampling and
augmentation (measured in ``benchmarks/results/maco_targets_cost.md``: 51 % of ACDC slices enclose a
region at native resolution, 28 % after resampling, 7-23 % after augmentation), while the filled
region, a blob, survives both. The map is then taken through **nnU-Net's own preprocessor** exactly
as a segmentation (transpose, crop, resample), so it lies on the preprocessed voxel grid, and it
rides through augmentation as an extra segmentation channel (``nnUNetTrainerScribble.extra_seg_folder``).

Encoding: 1 = inside the GC region, 2 = outside; nnU-Net's patch padding (-1) becomes the ignore
value in the trainer, so "inside" is exactly ``value == 1``.

Cache: ``$nnUNet_preprocessed/<dataset>/<data identifier>_maco_gc_<params hash>/<case>.b2nd`` (or
``.npz`` for numpy-preprocessed data), one file per case, each written to a temporary name and
renamed, so a killed run resumes where it stopped; a file lock serialises parallel fold jobs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.files import atomic_write, locked
from nnunet_scribble.geometry import anisotropic_slice_axis
from nnunet_scribble.image_io import check_file
from nnunet_scribble.targets.gc_region import gc_region

INSIDE, OUTSIDE = 1, 2


def raw_gc_map(scribble: np.ndarray, spacing, ignore_label: int, close_gaps: float,
               require_fg_inside: bool) -> np.ndarray:
    """GC map (INSIDE/OUTSIDE, int16) of one raw scribble volume (spatial axes only)."""
    if scribble.ndim == 3 and scribble.shape[0] == 1:  # a 2D image stored as one slice
        axis = 0
    else:
        axis = anisotropic_slice_axis(spacing)
    region = gc_region(scribble, ignore_label=ignore_label, axis=axis, require_fg_inside=require_fg_inside,
                       close_gaps=close_gaps)
    return np.where(region, INSIDE, OUTSIDE).astype(np.int16)


def gc_cache_folder(preprocessed_folder: str, params: dict) -> Path:
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return Path(preprocessed_folder + f"_maco_gc_{digest}")


def build_gc_maps(trainer, case_ids: list[str], close_gaps: float, require_fg_inside: bool) -> str:
    """Write the GC maps of ``case_ids`` for ``trainer``'s dataset and configuration; return the folder.

    Cases whose map already exists are skipped. Raises UserFacingError when the raw scribbles (which
    the maps are computed from) cannot be found.
    """
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    params = {"close_gaps": close_gaps, "require_fg_inside": require_fg_inside, "encoding": [INSIDE, OUTSIDE],
              "version": 1}
    folder = gc_cache_folder(trainer.preprocessed_dataset_folder, params)
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    ending = ".b2nd" if issubclass(trainer.dataset_class, nnUNetDatasetBlosc2) else ".npz"
    with locked(str(folder / ".lock"), f"the MaCo GC-region cache {folder}", log=trainer.print_to_log_file):
        todo = [c for c in case_ids if not (folder / f"{c}{ending}").is_file()]
        if not todo:
            return str(folder)
        raw_folder = Path(os.fspath(nnUNet_raw)) / trainer.plans_manager.dataset_name if nnUNet_raw.is_set() else None
        if raw_folder is None or not (raw_folder / "dataset.json").is_file():
            raise UserFacingError(
                f"MaCo computes its GC regions from the raw scribbles, but the raw dataset "
                f"{raw_folder or '$nnUNet_raw/' + trainer.plans_manager.dataset_name} was not found. Set nnUNet_raw "
                "to the folder holding it, or train a MaCo variant without L_ep (nnUNetTrainerMaCo_noEP).")
        files = get_filenames_of_train_images_and_targets(str(raw_folder), trainer.dataset_json)
        missing = [c for c in todo if c not in files]
        if missing:
            raise UserFacingError(f"{raw_folder}: no raw images/labels for preprocessed case(s) {missing[:5]}; "
                                  "rerun nnUNetv2_plan_and_preprocess after changing the raw dataset.")
        preprocessor = trainer.configuration_manager.preprocessor_class(verbose=False)
        rw = trainer.plans_manager.image_reader_writer_class()
        ignore = trainer.label_manager.ignore_label
        (folder / "params.json").write_text(json.dumps(params, indent=2))
        for case in tqdm(todo, desc="MaCo GC regions", disable=len(todo) < 5):
            images, scribble_file = files[case]["images"], files[case]["label"]
            for f in (*images, scribble_file):  # SimpleITK zero-fills truncated NIfTI files without an error
                check_file(f, finite=False)  # NaN: nnU-Net's preprocessing read them as 0 as well
            data, properties = rw.read_images(images)
            scribble, _ = rw.read_seg(scribble_file)
            gc = raw_gc_map(scribble[0], properties["spacing"], ignore, close_gaps, require_fg_inside)
            _, gc_pre, _ = preprocessor.run_case_npy(data, gc[None], properties, trainer.plans_manager,
                                                     trainer.configuration_manager, trainer.dataset_json)
            # nnU-Net's save_seg appends the ending to the name it is given
            atomic_write(folder / f"{case}{ending}", lambda tmp: trainer.dataset_class.save_seg(
                gc_pre[0].astype(np.int16), tmp[: -len(ending)]))
    return str(folder)
