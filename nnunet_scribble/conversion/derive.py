"""New datasets from existing ones: simulated scribbles from dense labels, shrunk scribbles, mixed labels.

Dataset mode reads an nnU-Net raw dataset and writes a new one through :func:`dataset.write_dataset`
(same checks, same layout). Simulation takes its dense labels from ``labelsTr_dense`` when present,
else from ``labelsTr`` (which must then be dense: no ``ignore`` label); shrinking needs a scribble
dataset. A mixed-label dataset (:func:`derive_mixed`) keeps the dense labels of some cases and the
scribbles of others and makes the rest unlabeled. The source's ``splits_final.json`` (from nnUNet_preprocessed, else from the raw folder) is
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

from nnunet_scribble.conversion import mixed as mix
from nnunet_scribble import volume as vol
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


def _read_source(source: Path, train_labels: dict, patient_pattern: str | None, problems: list[str]):
    """(dataset.json, classes, cases, splits or None) of the raw dataset ``source``; the source's splits are kept
    when they partition its training cases."""
    dataset_json = json.loads((source / "dataset.json").read_text())
    classes, _ = _classes(dataset_json, source)
    ending, channels = dataset_json["file_ending"], len(dataset_json["channel_names"])
    cases = (_cases(source, "Tr", ending, channels, train_labels, patient_pattern, problems)
             + _cases(source, "Ts", ending, channels, {"dense": ("labelsTs", False)}, patient_pattern, problems))
    splits = _source_splits(source)
    train_ids = {c.case_id for c in cases if not c.test}
    if splits and any(set(f["train"]) | set(f["val"]) != train_ids for f in splits):
        splits = None
    return dataset_json, classes, cases, splits


def derive_dataset(source: Path, target: Target, mode: str, hook, *, patient_pattern: str | None = None,
                   num_processes: int | None = None, split_seed: int = 12345) -> Path:
    """Write ``target`` from the raw dataset ``source``; ``mode`` is 'simulate' or 'shrink'."""
    dataset_json = json.loads((source / "dataset.json").read_text())
    classes, ignore = _classes(dataset_json, source)
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
    _, _, cases, splits = _read_source(source, train_labels, patient_pattern, problems)
    ending = dataset_json["file_ending"]
    return write_dataset(cases, target, Settings(spec, file_ending=ending, make_scribble=hook),
                         channel_names=dataset_json["channel_names"], splits=splits, split_seed=split_seed,
                         problems=problems, num_processes=num_processes, inputs=[source],
                         description=f"{'simulated' if mode == 'simulate' else 'shrunk'} scribbles derived from "
                                     f"{source.name}: {hook!r}")


def derive_mixed(source: Path, target: Target, dense: str | None, scribbled: str | None, *, seed: int = 0,
                 patient_pattern: str | None = None, allow_unlabeled_folds: bool = False,
                 num_processes: int | None = None, split_seed: int = 12345) -> Path:
    """Write ``target`` from ``source`` with the cases chosen by the ``dense`` / ``scribbled`` selections
    (:mod:`.mixed` syntax) keeping those labels and every other training case unlabeled.

    The scribbles come from a scribble source's labelsTr, the dense labels from its labelsTr_dense or from a
    dense source's labelsTr (no ignore label). ``patient_pattern`` None: ACDC-style ids group by patient,
    anything else is one case per patient.
    """
    dataset_json = json.loads((source / "dataset.json").read_text())
    _, ignore = _classes(dataset_json, source)
    has_dense = ignore is None or (source / "labelsTr_dense").is_dir()
    train_labels = ({"dense": ("labelsTr", True)} if ignore is None else
                    {"scribble": ("labelsTr", True), "dense": ("labelsTr_dense", False)})
    problems: list[str] = []
    dataset_json, classes, cases, splits = _read_source(source, train_labels, patient_pattern, problems)
    train = [c for c in cases if not c.test]
    pattern = patient_pattern or mix.default_patient_pattern(c.case_id for c in train)
    for case in cases:
        case.patient = patient_of(case.case_id, pattern)
    kinds = mix.choose_kinds({c.case_id: c.patient for c in train},
                             {"dense": ("--dense", dense), "scribbled": ("--scribbled", scribbled)}, "unlabeled",
                             seed, test_ids=[c.case_id for c in cases if c.test])
    chosen = {k: sorted(c for c, kind in kinds.items() if kind == k) for k in mix.KINDS}
    if chosen["scribbled"] and ignore is None:
        raise UserFacingError(f"{source}: labelsTr holds dense labels (dataset.json has no ignore label), so there "
                              f"are no scribbles to keep for the {len(chosen['scribbled'])} case(s) chosen with "
                              f"--scribbled ({mix.shown(chosen['scribbled'])}). Run simulate-scribbles first "
                              f"(nnunet-scribble simulate-scribbles -s {source.name} -d NEW_ID) and derive the mixed "
                              f"dataset from its output, or choose only --dense cases")
    if chosen["dense"] and not has_dense:
        raise UserFacingError(f"{source}: no labelsTr_dense folder, so there are no dense labels for the "
                              f"{len(chosen['dense'])} case(s) chosen with --dense ({mix.shown(chosen['dense'])}); "
                              f"choose them with --scribbled, or derive from a dataset with dense labels")
    for case in train:
        case.kind = kinds[case.case_id]
        if case.kind != "scribbled":
            case.scribble = None  # not read: labelsTr is the dense label or ignore everywhere
    spec = LabelSpec(classes, tuple(range(len(classes))), len(classes), description=f"mixed from {source.name}")
    counts = ", ".join(f"{len(chosen[k])} {k}" for k in mix.KINDS)
    return write_dataset(cases, target, Settings(spec, file_ending=dataset_json["file_ending"]),
                         channel_names=dataset_json["channel_names"], splits=splits, split_seed=split_seed,
                         problems=problems, num_processes=num_processes, inputs=[source], mixed=True,
                         allow_unlabeled_folds=allow_unlabeled_folds,
                         description=f"mixed labels derived from {source.name}: {counts} training cases "
                                     f"(labelsTr: dense labels, scribbles, or ignore everywhere; see "
                                     f"{mix.SUMMARY_FILE})")


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
