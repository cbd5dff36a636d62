"""Any folder of images + a folder of scribbles (+ optional dense labels) -> nnU-Net raw dataset.

Files pair by case id: the file name without its ending and without the folder's suffix
(``--scribble-suffix _scribble`` pairs ``case1_scribble.nii.gz`` with ``case1.nii.gz``). 3D (NIfTI,
NRRD, MHA) and 2D (PNG, grey or RGB) files are supported; all-PNG input is written as PNG, anything
else as ``.nii.gz``. Label values are translated by a :class:`LabelSpec` (see ``labels.PRESETS``).
"""
from __future__ import annotations

from pathlib import Path

from nnunet_scribble import volume as vol
from nnunet_scribble.conversion.dataset import Case, Settings, Target, write_dataset
from nnunet_scribble.conversion.labels import LabelSpec
from nnunet_scribble.conversion.splits import patient_of
from nnunet_scribble.errors import UserFacingError

ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png")


def index_folder(folder: Path, suffix: str, problems: list[str]) -> dict[str, Path]:
    """{case id: file} for supported files in ``folder`` whose name (without ending) ends with ``suffix``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserFacingError(f"folder {folder} does not exist")
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or vol.file_ending(path) not in ENDINGS:
            continue
        stem = vol.strip_ending(path.name)
        if not stem.endswith(suffix):
            continue
        case_id = stem[: len(stem) - len(suffix)] if suffix else stem
        if case_id in out:
            problems.append(f"{path}: second file for case {case_id} (also {out[case_id].name})")
        out[case_id] = path
    return out


def collect_cases(images_dir: Path, scribbles_dir: Path, dense_dir: Path | None = None,
                  test_images_dir: Path | None = None, test_labels_dir: Path | None = None, *,
                  image_suffix: str = "", scribble_suffix: str = "", dense_suffix: str = "",
                  patient_pattern: str | None = None) -> tuple[list[Case], list[str]]:
    problems: list[str] = []
    groups = [(False, images_dir, (("scribble", scribbles_dir, scribble_suffix), ("dense", dense_dir, dense_suffix)))]
    if test_images_dir is not None:
        groups.append((True, test_images_dir, (("dense", test_labels_dir, dense_suffix),)))
    elif test_labels_dir is not None:
        raise UserFacingError("--test-labels needs --test-images")
    cases = []
    for test, image_dir, label_dirs in groups:
        images = index_folder(image_dir, image_suffix, problems)
        if not images:
            raise UserFacingError(f"no image files ({', '.join(ENDINGS)}) ending in {image_suffix!r} in {image_dir}")
        found = {}
        for kind, folder, suffix in label_dirs:
            if folder is None:
                continue
            labels = index_folder(folder, suffix, problems)
            problems += [f"{images[c]}: no {kind} file {c}{suffix}.* in {folder}" for c in sorted(set(images) - set(labels))]
            problems += [f"{labels[c]}: {kind} file without image {c}{image_suffix}.* in {image_dir}"
                         for c in sorted(set(labels) - set(images))]
            found[kind] = labels
        for case_id, image in images.items():
            cases.append(Case(case_id, patient_of(case_id, patient_pattern), [image],
                              found.get("scribble", {}).get(case_id), found.get("dense", {}).get(case_id), test))
    return cases, problems


def output_ending(cases: list[Case]) -> str:
    endings = {vol.file_ending(c.images[0]) in vol.PNG_ENDINGS for c in cases}
    if endings == {True, False}:
        raise UserFacingError("images mix PNG and 3D formats; convert them to one format first")
    return ".png" if endings == {True} else vol.NIFTI_ENDING


def convert(images_dir: Path, scribbles_dir: Path, target: Target, spec: LabelSpec, *, dense_dir: Path | None = None,
            test_images_dir: Path | None = None, test_labels_dir: Path | None = None, image_suffix: str = "",
            scribble_suffix: str = "", dense_suffix: str = "", patient_pattern: str | None = None,
            channel_names: dict | None = None, repair_geometry: bool = False, num_processes: int | None = None,
            split_seed: int = 12345) -> Path:
    cases, problems = collect_cases(images_dir, scribbles_dir, dense_dir, test_images_dir, test_labels_dir,
                                    image_suffix=image_suffix, scribble_suffix=scribble_suffix,
                                    dense_suffix=dense_suffix, patient_pattern=patient_pattern)
    settings = Settings(spec, file_ending=output_ending(cases), repair_geometry=repair_geometry)
    inputs = [p for p in (images_dir, scribbles_dir, dense_dir, test_images_dir, test_labels_dir) if p is not None]
    return write_dataset(cases, target, settings, channel_names=channel_names, problems=problems,
                         num_processes=num_processes, split_seed=split_seed, inputs=inputs,
                         description=f"converted from {images_dir} + {scribbles_dir}. {spec.description}".strip())
