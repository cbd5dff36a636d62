"""Write a validated nnU-Net raw dataset with scribbles, atomically.

Layout written into ``$nnUNet_raw/DatasetNNN_Name/``::

    imagesTr/CASE_0000.nii.gz   labelsTr/CASE.nii.gz (scribbles, ignore = K)   labelsTr_dense/CASE.nii.gz
    imagesTs/CASE_0000.nii.gz   labelsTs/CASE.nii.gz (dense)                    dataset.json  splits_final.json

A mixed-label dataset (training cases of :attr:`Case.kind` other than 'scribbled') has dense labels or
``ignore`` everywhere in the labelsTr files of those cases, and a ``mixed_labels.json`` summary (:mod:`.mixed`).

Every case is read and checked (pairing, geometry, label values, empty scribbles, data types) in
parallel; all problems are reported together in one :class:`UserFacingError` and nothing is left
behind. The dataset is assembled in a hidden sibling folder and swapped into place at the end
(:mod:`.output`: no overlap with the inputs, only folders written by this tool are replaced).
``splits_final.json`` (patient-grouped folds) also goes to ``$nnUNet_preprocessed/DatasetNNN_Name/``,
where nnU-Net reads it.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnunet_scribble import volume as vol
from nnunet_scribble.conversion import mixed as mix
from nnunet_scribble.conversion.labels import LabelSpec
from nnunet_scribble.conversion.output import check_replaceable, clean_leftovers, staged
from nnunet_scribble.conversion.splits import patient_folds
from nnunet_scribble.errors import UserFacingError


ANOTHER_DATASET = "choose another dataset ID (-d)"


class ConversionWarning(UserWarning):
    """Something was repaired or assumed during conversion; the message names the file."""


@dataclass
class Case:
    """One case. Sources are file paths or objects with ``load() -> Volume`` (e.g. an h5 dataset)."""
    case_id: str
    patient: str
    images: Sequence  # one source per channel file
    scribble: object = None
    dense: object = None
    test: bool = False
    # training cases: what labelsTr holds: 'scribbled' (the scribbles), 'dense' (the dense labels) or
    # 'unlabeled' (ignore everywhere); labelsTr_dense keeps the dense labels whatever the kind
    kind: str = "scribbled"


@dataclass
class Target:
    raw: Path
    preprocessed: Path | None
    dataset_id: int
    name: str
    overwrite: bool = False

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    @property
    def folder(self) -> Path:
        return self.raw / self.folder_name

    @property
    def preprocessed_splits(self) -> Path | None:
        return None if self.preprocessed is None else self.preprocessed / self.folder_name / "splits_final.json"


@dataclass
class Settings:
    """What every worker needs besides the case."""
    spec: LabelSpec
    file_ending: str = vol.NIFTI_ENDING
    repair_geometry: bool = False
    # make_scribble(case_id, scribble or None, dense or None, spacing_zyx or None) -> scribble array (0..K-1, K);
    # used to simulate scribbles from dense labels or to shrink existing ones
    make_scribble: Callable | None = None


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    no_background: bool = False  # the scribble map annotates no background voxel


def check_background(scribble: np.ndarray, name: str, out: Outcome) -> None:
    """Warn about a scribble map without background scribble (class 0): the trainers learn background only there."""
    if not np.any(scribble == 0):
        out.no_background = True
        out.warnings.append(f"{name}: no background scribble (no voxel of class 0 is annotated); the background "
                            f"must be scribbled too, or training gets no background signal from this case")


def background_summary(names: list[str], total: int, what: str) -> list[str]:
    """One warning counting and naming (the first five of) the ``names`` without background scribble."""
    if not names:
        return []
    names = sorted(names)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [f"{len(names)} of {total} {what} have no background scribble ({shown}): scribble some background in "
            f"each (e.g. a loop around the structures), or training learns background only from the others"]


def default_num_processes() -> int:
    return max(1, min(os.cpu_count() or 1, int(os.environ.get("nnUNet_def_n_proc", 8))))


def resolve_target(dataset_id: int, name: str, nnunet_raw: str | None = None,
                   nnunet_preprocessed: str | None = None, overwrite: bool = False) -> Target:
    """Where the dataset goes; refuses a taken ID or an existing folder (unless ``overwrite``)."""
    raw = nnunet_raw or os.environ.get("nnUNet_raw")
    if not raw:
        raise UserFacingError("no nnU-Net raw folder: set the environment variable nnUNet_raw or pass --nnunet-raw DIR")
    pre = nnunet_preprocessed or os.environ.get("nnUNet_preprocessed") or None
    if not 1 <= int(dataset_id) <= 999:
        raise UserFacingError(f"dataset ID must be between 1 and 999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name or ""):
        raise UserFacingError(f"dataset name {name!r} must be letters, digits, '_' or '-'")
    target = Target(Path(raw), Path(pre) if pre else None, int(dataset_id), name, overwrite)
    taken = sorted(p.name for p in target.raw.glob(f"Dataset{target.dataset_id:03d}_*") if p.is_dir())
    others = [t for t in taken if t != target.folder_name]
    if others:
        raise UserFacingError(f"dataset ID {target.dataset_id} is already used by {target.raw / others[0]}; "
                              f"choose another ID (-d) or remove that folder")
    clean_leftovers(target.folder)  # a killed run's; puts the old dataset back if the kill fell inside a swap
    check_replaceable(target.folder, overwrite, ANOTHER_DATASET)
    if not overwrite and target.preprocessed_splits is not None and target.preprocessed_splits.exists():
        raise UserFacingError(f"{target.preprocessed_splits} already exists; pass --overwrite to replace it")
    return target


def load(source) -> vol.Volume:
    return source.load() if hasattr(source, "load") else vol.read(source)


def describe(source) -> str:
    return str(source)


def _check_image(image: vol.Volume, name: str, out: Outcome) -> bool:
    a = image.array
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        out.problems.append(f"{name}: wrong data type {a.dtype} for an image (needs real numbers)")
        return False
    if a.ndim not in (2, 3) or (image.rgb and a.shape[-1] not in (3, 4)):
        out.problems.append(f"{name}: {a.ndim}-D array of shape {a.shape}; expected one 2D or 3D image per file")
        return False
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        out.problems.append(f"{name}: image holds NaN or infinite values")
        return False
    return True


def _aligned(label: vol.Volume, image: vol.Volume, settings: Settings, out: Outcome) -> vol.Volume | None:
    """``label`` on the image grid, repaired if allowed; None (and a problem) if it does not fit."""
    diff = vol.geometry_difference(image, label)
    if not diff:
        return label
    if "shape" in diff or "spacing" in diff:
        detail = (f"shape {label.spatial_shape} vs {image.spatial_shape}" if "shape" in diff
                  else f"spacing {tuple(np.round(label.spacing, 4))} vs {tuple(np.round(image.spacing, 4))}")
        out.problems.append(f"{label.source}: geometry mismatch with {image.source} ({detail})")
        return None
    what = " and ".join(diff)
    if settings.repair_geometry:
        out.warnings.append(f"{label.source}: header {what} differ from {image.source} on the same voxel grid "
                            f"(a known header fault); repaired by copying the image header")
        return label.with_geometry_of(image)
    out.problems.append(f"{label.source}: header {what} differ from {image.source} on the same voxel grid; "
                        f"if the voxels correspond, pass --repair-geometry to copy the image header onto the label")
    return None


def _label(source, image: vol.Volume, mapper, settings: Settings, out: Outcome) -> np.ndarray | None:
    try:
        label = load(source)
    except Exception as e:  # unreadable file: report, keep checking the rest
        out.problems.append(f"{describe(source)}: cannot read ({e})")
        return None
    if label.rgb:
        out.problems.append(f"{label.source}: colour image used as a label map (needs one integer value per pixel)")
        return None
    label = _aligned(label, image, settings, out)
    if label is None:
        return None
    mapped, problem = mapper(label.array)
    if problem:
        out.problems.append(f"{label.source}: {problem}")
    return mapped


def convert_case(case: Case, settings: Settings, out_dir: Path | None) -> Outcome:
    """Read, check and (if everything is fine and ``out_dir`` is given) write one case below ``out_dir``."""
    vol.quiet_itk()
    out = Outcome()
    images = []
    for source in case.images:
        try:
            images.append(load(source))
        except Exception as e:
            out.problems.append(f"{describe(source)}: cannot read ({e})")
    if len(images) != len(case.images) or not all(_check_image(im, im.source, out) for im in images):
        return out
    ref = images[0]
    for other in images[1:]:
        _aligned(other, ref, Settings(settings.spec), out)
    spec = settings.spec
    scribble = None if case.scribble is None else _label(case.scribble, ref, spec.map_scribble, settings, out)
    dense = None if case.dense is None else _label(case.dense, ref, spec.map_dense, settings, out)
    if out.problems:
        return out
    if not case.test:
        scribble = _training_label(case, settings, ref, scribble, dense, out)
        if scribble is None:
            return out
    if out.problems or out_dir is None:
        return out

    ending = settings.file_ending
    split = "Ts" if case.test else "Tr"
    for channel, image in enumerate(images):
        array = image.array if ending in vol.PNG_ENDINGS else image.array.astype(np.float32, copy=False)
        vol.write(vol.Volume(array).with_geometry_of(ref), out_dir / f"images{split}" / f"{case.case_id}_{channel:04d}{ending}")
    labels = {"labelsTs": dense} if case.test else {"labelsTr": scribble, "labelsTr_dense": dense}
    for folder, array in labels.items():
        if array is not None:
            vol.write(vol.Volume(array).with_geometry_of(ref), out_dir / folder / f"{case.case_id}{ending}")
    return out


def _training_label(case: Case, settings: Settings, ref: vol.Volume, scribble, dense, out: Outcome):
    """labelsTr of a training case by its kind: the scribbles (read or made by ``make_scribble``), the dense
    labels, or ignore everywhere (the only case where an all-ignore map is not an error)."""
    spec = settings.spec
    if case.kind == "unlabeled":
        return np.full(ref.spatial_shape, spec.ignore, dtype=np.uint8 if spec.ignore < 256 else np.uint16)
    if case.kind == "dense":
        if dense is None:
            out.problems.append(f"{describe(case.images[0])}: no dense label for training case {case.case_id}, "
                                f"which was chosen to keep dense labels")
        return dense
    if settings.make_scribble is not None:
        spacing = None if ref.spacing is None else tuple(ref.spacing[::-1])
        scribble = settings.make_scribble(case.case_id, scribble, dense, spacing)
        if scribble is None:
            out.problems.append(f"{describe(case.images[0])}: no label to make scribbles from for training case "
                                f"{case.case_id}")
    if scribble is None:  # a missing scribble file is reported by write_dataset (or the collector)
        return None
    if not np.any(scribble != spec.ignore):
        out.problems.append(f"{describe(case.scribble or case.dense)}: empty scribble map (no annotated voxel)")
    else:
        check_background(scribble, describe(case.scribble or case.dense), out)
    return scribble


def _run(args):
    return convert_case(*args)


def run_parallel(function, jobs: list, num_processes: int, desc: str) -> list:
    """``function(job)`` for every job, in a spawn pool when ``num_processes > 1``, with a progress bar."""
    from tqdm import tqdm

    if num_processes <= 1 or len(jobs) <= 1:
        return [function(j) for j in tqdm(jobs, desc=desc, unit="case")]
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
        return list(tqdm(pool.imap(function, jobs), total=len(jobs), desc=desc, unit="case"))


def format_problems(problems: list[str], what: str) -> str:
    lines = sorted(set(problems))
    return f"{len(lines)} problem(s) in {what}; nothing was written:\n" + "\n".join(f"  - {p}" for p in lines)


def emit_warnings(messages: list[str]) -> None:
    for message in sorted(set(messages)):
        warnings.warn(message, ConversionWarning, stacklevel=3)


def source_files(cases: list[Case]) -> list[Path]:
    """The files the cases are read from."""
    files = set()
    for case in cases:
        for source in (*case.images, case.scribble, case.dense):
            path = source if isinstance(source, (str, os.PathLike)) else getattr(source, "path", None)
            if path is not None:
                files.add(Path(path))
    return sorted(files)


def write_dataset(cases: list[Case], target: Target, settings: Settings, *, channel_names: dict | None = None,
                  splits: list[dict] | None = None, split_seed: int = 12345, problems: Sequence[str] = (),
                  num_processes: int | None = None, inputs: Sequence[Path] = (), description: str = "",
                  license: str = "see the terms of the source dataset", mixed: bool = False,
                  allow_unlabeled_folds: bool = False, **dataset_json_extra) -> Path:
    """Check and write all ``cases`` into ``target``; returns the dataset folder.

    ``problems`` are issues the caller found while collecting files (e.g. an image without scribble);
    they are reported together with the per-case problems. ``inputs``: the folders the user gave; the
    dataset may not overlap them nor any file of a case (see :mod:`.output`). ``mixed`` (implied by a case
    of kind other than 'scribbled'): write the label summary ``mixed_labels.json``; a fold whose training part
    has no dense or scribbled case is then a problem, or a warning with ``allow_unlabeled_folds``.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    problems = list(problems)
    ids = [c.case_id for c in cases]
    problems += [f"case {i}: appears more than once" for i in sorted({i for i in ids if ids.count(i) > 1})]
    train = [c for c in cases if not c.test]
    if not train:
        problems.append("no training case found")
    if settings.make_scribble is None:  # pairing: every scribbled training case needs a scribble file
        reported = {p.split(": ", 1)[0] for p in problems}
        problems += [f"{describe(c.images[0])}: no scribble for training case {c.case_id}" for c in train
                     if c.kind == "scribbled" and c.scribble is None and describe(c.images[0]) not in reported]
    num_processes = default_num_processes() if num_processes is None else num_processes
    if splits is None:
        splits = patient_folds({c.case_id: c.patient for c in train}, seed=split_seed)
    _check_splits(splits, {c.case_id for c in train})
    labels_summary, fold_warnings = None, []
    if train and (mixed or any(c.kind != "scribbled" for c in train)):
        labels_summary = mix.summary({c.case_id: c.kind for c in train}, splits, len(cases) - len(train))
        fold_errors, fold_warnings = mix.fold_problems(labels_summary, allow_unlabeled_folds)
        problems += fold_errors

    with staged(target.folder, overwrite=target.overwrite, inputs=[*inputs, *source_files(cases)],
                another=ANOTHER_DATASET) as tmp:
        for sub in ("imagesTr", "labelsTr", "labelsTr_dense", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir(parents=True)
        out_dir = None if problems else tmp  # known problems: only check the rest, to list everything at once
        outcomes = run_parallel(_run, [(c, settings, out_dir) for c in cases], num_processes, target.folder_name)
        problems += [p for o in outcomes for p in o.problems]
        if problems:
            raise UserFacingError(format_problems(problems, target.folder_name))
        for sub in ("labelsTr_dense", "imagesTs", "labelsTs"):
            if not any((tmp / sub).iterdir()):
                (tmp / sub).rmdir()

        if channel_names is None:
            channel_names = _default_channel_names(train[0])
        generate_dataset_json(str(tmp), channel_names, settings.spec.dataset_labels(), len(train),
                              settings.file_ending, dataset_name=target.folder_name, description=description,
                              license=license, converted_by="nnunet-scribble", numTest=len(cases) - len(train),
                              **dataset_json_extra)
        if splits:
            (tmp / "splits_final.json").write_text(json.dumps(splits, indent=1))
        if labels_summary is not None:
            (tmp / mix.SUMMARY_FILE).write_text(json.dumps(labels_summary, indent=1))

    messages = [w for o in outcomes for w in o.warnings] + fold_warnings
    if len(splits) < 5:
        messages.append(f"{target.folder_name}: only {len(splits)} fold(s) (fewer than 5 patients); "
                        + ("train with fold 'all'" if not splits else "nnU-Net folds beyond these do not exist"))
    if splits and target.preprocessed_splits is not None:
        target.preprocessed_splits.parent.mkdir(parents=True, exist_ok=True)
        target.preprocessed_splits.write_text(json.dumps(splits, indent=1))
    elif splits:
        messages.append(f"nnUNet_preprocessed is not set: copy {target.folder / 'splits_final.json'} to "
                        f"$nnUNet_preprocessed/{target.folder_name}/ before training to keep patients in one fold")
    if target.overwrite and target.preprocessed is not None:
        stale = [p.name for p in (target.preprocessed / target.folder_name).glob("*") if p.name != "splits_final.json"]
        if stale:
            messages.append(f"{target.preprocessed / target.folder_name} holds plans/data of the replaced dataset "
                            f"({', '.join(sorted(stale)[:3])}...): run nnUNetv2_plan_and_preprocess again")
    emit_warnings(messages)
    emit_warnings(background_summary([c.case_id for c, o in zip(cases, outcomes) if o.no_background], len(train),
                                     "training cases"))
    return target.folder


def _default_channel_names(case: Case) -> dict:
    """R, G, B(, A) for colour PNGs, else 'image' (nnU-Net z-scores any channel not named CT)."""
    first = load(case.images[0])
    if first.rgb:
        return dict(enumerate("RGBA"[: first.array.shape[-1]]))
    return {i: "image" if len(case.images) == 1 else f"channel{i}" for i in range(len(case.images))}


def _check_splits(splits: list[dict], train_ids: set[str]) -> None:
    for i, fold in enumerate(splits):
        if set(fold["train"]) | set(fold["val"]) != train_ids or set(fold["train"]) & set(fold["val"]):
            raise UserFacingError(f"split {i} does not partition the training cases into train and val")
