"""New scribble datasets from existing ones: simulated scribbles from dense labels, shrunk scribbles.

Dataset mode reads an nnU-Net raw dataset and writes a new one through :func:`dataset.write_dataset`
(same checks, same layout). Simulation takes its dense labels from ``labelsTr_dense`` when present,
else from ``labelsTr`` (which must then be dense: no ``ignore`` label); shrinking needs a scribble
dataset. The source's ``splits_final.json`` (from nnUNet_preprocessed, else from the raw folder) is
reused so that results stay comparable fold by fold.

Folder mode transforms a folder of label files into another folder, file by file, keeping names and
geometry.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_scribble.conversion import volume as vol
from nnunet_scribble.conversion.dataset import (Case, Outcome, Settings, Target, background_summary,
                                                check_background, emit_warnings, format_problems, run_parallel,
                                                write_dataset)
from nnunet_scribble.conversion.labels import LabelSpec
from nnunet_scribble.conversion.output import staged
from nnunet_scribble.conversion.splits import patient_of
from nnunet_scribble.errors import UserFacingError


def find_dataset(source: str, nnunet_raw: str | None = None) -> Path:
    """Raw folder of a dataset given as ID ('27') or name ('Dataset027_ACDCScribble')."""
    raw = Path(nnunet_raw or os.environ.get("nnUNet_raw") or "")
    if not str(raw) or not raw.is_dir():
        raise UserFacingError("no nnU-Net raw folder: set nnUNet_raw or pass --nnunet-raw DIR")
    pattern = f"Dataset{int(source):03d}_*" if str(source).isdigit() else str(source)
    matches = sorted(p for p in raw.glob(pattern) if (p / "dataset.json").is_file())
    if len(matches) != 1:
        raise UserFacingError(f"source dataset {source!r}: found {len(matches)} matching folders with a "
                              f"dataset.json in {raw}")
    return matches[0]


def _classes(dataset_json: dict, folder: Path) -> tuple[tuple[str, ...], int | None]:
    labels = dict(dataset_json["labels"])
    ignore = labels.pop("ignore", None)
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise UserFacingError(f"{folder / 'dataset.json'}: region-based labels are not supported")
    ordered = sorted(labels.items(), key=lambda kv: kv[1])
    if [v for _, v in ordered] != list(range(len(ordered))):
        raise UserFacingError(f"{folder / 'dataset.json'}: labels must be 0..K-1, got {dict(ordered)}")
    return tuple(k for k, _ in ordered), ignore


def _cases(folder: Path, split: str, ending: str, channels: int, label_dirs: dict[str, tuple[str, bool]],
           patient_pattern: str | None, problems: list[str]) -> list[Case]:
    """Cases of imagesTr/imagesTs; ``label_dirs``: kind -> (subfolder, required). An optional subfolder
    may be absent, but when it exists every case needs its file."""
    images_dir = folder / f"images{split}"
    if not images_dir.is_dir():
        return []
    first = f"_0000{ending}"
    cases = []
    for path in sorted(images_dir.glob(f"*{first}")):
        case_id = path.name[: -len(first)]
        images = [images_dir / f"{case_id}_{c:04d}{ending}" for c in range(channels)]
        problems += [f"{p}: missing channel file" for p in images if not p.is_file()]
        labels = {}
        for kind, (sub, required) in label_dirs.items():
            label = folder / sub / f"{case_id}{ending}"
            if label.is_file():
                labels[kind] = label
            elif required or label.parent.is_dir():
                problems.append(f"{path}: no {kind} label {label}")
        cases.append(Case(case_id, patient_of(case_id, patient_pattern), images, labels.get("scribble"),
                          labels.get("dense"), split == "Ts"))
    return cases


def _source_splits(folder: Path) -> list[dict] | None:
    pre = os.environ.get("nnUNet_preprocessed")
    for candidate in ([Path(pre) / folder.name / "splits_final.json"] if pre else []) + [folder / "splits_final.json"]:
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def derive_dataset(source: Path, target: Target, mode: str, hook, *, patient_pattern: str | None = None,
                   num_processes: int | None = None, split_seed: int = 12345) -> Path:
    """Write ``target`` from the raw dataset ``source``; ``mode`` is 'simulate' or 'shrink'."""
    dataset_json = json.loads((source / "dataset.json").read_text())
    classes, ignore = _classes(dataset_json, source)
    ending = dataset_json["file_ending"]
    if mode == "simulate":
        dense_dir = "labelsTr_dense" if (source / "labelsTr_dense").is_dir() else "labelsTr"
        if dense_dir == "labelsTr" and ignore is not None:
            raise UserFacingError(f"{source}: labelsTr holds scribbles (dataset.json has an ignore label) and there "
                                  f"is no labelsTr_dense; simulation needs dense labels")
        train_labels = {"dense": (dense_dir, True)}
    else:
        if ignore is None:
            raise UserFacingError(f"{source}: no ignore label in dataset.json, so labelsTr is not a scribble map")
        train_labels = {"scribble": ("labelsTr", True), "dense": ("labelsTr_dense", False)}
    spec = LabelSpec(classes, tuple(range(len(classes))), len(classes),
                     description=f"{mode} from {source.name}")
    problems: list[str] = []
    channels = len(dataset_json["channel_names"])
    cases = (_cases(source, "Tr", ending, channels, train_labels, patient_pattern, problems)
             + _cases(source, "Ts", ending, channels, {"dense": ("labelsTs", False)}, patient_pattern, problems))
    splits = _source_splits(source)
    train_ids = {c.case_id for c in cases if not c.test}
    if splits and any(set(f["train"]) | set(f["val"]) != train_ids for f in splits):
        splits = None
    return write_dataset(cases, target, Settings(spec, file_ending=ending, make_scribble=hook),
                         channel_names=dataset_json["channel_names"], splits=splits, split_seed=split_seed,
                         problems=problems, num_processes=num_processes, inputs=[source],
                         description=f"{'simulated' if mode == 'simulate' else 'shrunk'} scribbles derived from "
                                     f"{source.name}: {hook!r}")


@dataclass
class _FileJob:
    path: Path
    out_dir: Path
    spec: LabelSpec
    mode: str
    hook: object


def _transform_file(job: _FileJob) -> Outcome:
    vol.quiet_itk()
    out = Outcome()
    try:
        label = vol.read(job.path)
    except Exception as e:
        out.problems.append(f"{job.path}: cannot read ({e})")
        return out
    mapper = job.spec.map_dense if job.mode == "simulate" else job.spec.map_scribble
    mapped, problem = mapper(label.array)
    if problem:
        out.problems.append(f"{job.path}: {problem}")
        return out
    case_id = vol.strip_ending(job.path.name)
    spacing = None if label.spacing is None else tuple(label.spacing[::-1])
    args = (None, mapped) if job.mode == "simulate" else (mapped, None)
    result = job.hook(case_id, *args, spacing)
    if not np.any(result != job.spec.ignore):
        out.problems.append(f"{job.path}: empty scribble map (no annotated voxel)")
        return out
    check_background(result, str(job.path), out)
    vol.write(vol.Volume(result).with_geometry_of(label), job.out_dir / job.path.name)
    return out


def transform_folder(in_dir: Path, out_dir: Path, num_classes: int, mode: str, hook, *, overwrite: bool = False,
                     num_processes: int = 1) -> Path:
    """Simulate (from dense files, values 0..K-1) or shrink (scribble files, ignore = K) every label file."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise UserFacingError(f"input folder {in_dir} does not exist")
    files = sorted(p for p in in_dir.iterdir() if vol.file_ending(p) in (".nii.gz", ".nii", ".nrrd", ".mha", ".png"))
    if not files:
        raise UserFacingError(f"no label files in {in_dir}")
    names = ("background",) + tuple(f"class{i}" for i in range(1, num_classes))
    spec = LabelSpec(names, tuple(range(num_classes)), num_classes)
    with staged(out_dir, overwrite=overwrite, inputs=[in_dir, *files],
                another="choose another -o") as tmp:
        outcomes = run_parallel(_transform_file, [_FileJob(p, tmp, spec, mode, hook) for p in files],
                                num_processes, out_dir.name)
        problems = [p for o in outcomes for p in o.problems]
        if problems:
            raise UserFacingError(format_problems(problems, str(in_dir)))
    emit_warnings([w for o in outcomes for w in o.warnings])
    emit_warnings(background_summary([p.name for p, o in zip(files, outcomes) if o.no_background], len(files),
                                     "files"))
    return out_dir
