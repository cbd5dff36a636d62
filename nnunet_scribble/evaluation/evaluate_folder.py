"""Evaluate a folder of predicted label maps against a folder of dense reference label maps.

Files are paired by name (``CASE<file_ending>``) and read through :mod:`nnunet_scribble.image_io`
(truncated or corrupt files and NaN voxels are errors). Geometry (shape, spacing, origin, direction)
comes from the files via SimpleITK. Every problem found (missing cases, unreadable files, geometry
mismatch, unexpected label values) is collected first and reported at once, naming the files.
"""
from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_scribble import volume as vol
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.evaluation.metrics import label_metrics
from nnunet_scribble.files import atomic_write_json
from nnunet_scribble.image_io import read_image

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd", ".png", ".tif", ".tiff", ".bmp")
CONVENTIONS = (
    "Dice and HD95 per case and class against dense reference labels. HD95: 95th percentile of the "
    "pooled symmetric surface distances in mm (voxel spacing from the files). Both empty: Dice 1, "
    "HD95 0. Exactly one empty: Dice 0, HD95 = image diagonal in mm. Means and stds over cases."
)


class Geometry(NamedTuple):
    spacing: tuple  # mm, in the array's axis order ((z,) y, x)
    origin: tuple  # SimpleITK order (x, y[, z]), mm
    direction: tuple  # SimpleITK's flattened direction matrix


def read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    """Label array (z, y, x) or (y, x) and its geometry; unreadable files raise :class:`UserFacingError`."""
    image = read_image(path)
    return sitk.GetArrayFromImage(image), Geometry(tuple(float(s) for s in reversed(image.GetSpacing())),
                                                   image.GetOrigin(), image.GetDirection())


def detect_file_ending(folder: Path) -> str:
    """The supported file ending used by most files in ``folder``."""
    counts = {e: 0 for e in SUPPORTED_ENDINGS}
    for f in folder.iterdir():
        for e in SUPPORTED_ENDINGS:
            if f.name.endswith(e):
                counts[e] += 1
                break
    ending, n = max(counts.items(), key=lambda kv: kv[1])
    if n == 0:
        raise UserFacingError(f"{folder} holds no label maps (looked for {', '.join(SUPPORTED_ENDINGS)}).")
    return ending


def list_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    return {f.name[: -len(file_ending)]: f for f in sorted(folder.iterdir())
            if f.is_file() and f.name.endswith(file_ending)}


def labels_from_dataset_json(path: Path) -> tuple[dict[int, str], int | None]:
    """Foreground classes {value: name} and the ignore value (or None) from an nnU-Net dataset.json."""
    return classes_from_labels(json.loads(path.read_text())["labels"], source=path)


def classes_from_labels(labels: Mapping[str, int], source: object = "dataset.json") -> tuple[dict[int, str], int | None]:
    """Foreground classes {value: name} and the ignore value (or None) from dataset.json's ``labels``."""
    ignore = labels.get("ignore")
    classes = {}
    for name, value in labels.items():
        if name in ("background", "ignore"):
            continue
        if not isinstance(value, int):
            raise UserFacingError(f"{source}: region-based labels ({name}: {value}) are not supported by "
                                  "this evaluation; pass the classes with --labels.")
        classes[value] = name
    return dict(sorted(classes.items())), ignore


def find_dataset_json(pred_dir: Path, gt_dir: Path) -> Path | None:
    """nnUNetv2_predict copies dataset.json into its output folder; raw datasets keep it one level up."""
    for candidate in (pred_dir / "dataset.json", gt_dir.parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    return None


def _rounded(values) -> tuple:
    return tuple(round(float(v), 4) for v in values)


def pair_problems(pred_path: Path, pred: np.ndarray, pred_geometry: Geometry, gt_path: Path, gt: np.ndarray,
                  gt_geometry: Geometry, labels: Sequence[int], ignore_value: int | None = None,
                  geometry_tol: float = 1e-3) -> list[str]:
    """What makes a prediction/reference pair unfit to compare (geometry, label values), naming the files.

    Geometry is compared like the converters compare image and label (``volume.geometry_difference``).
    """
    problems = []
    as_volume = lambda a, g: vol.Volume(a, g.spacing[::-1], g.origin, g.direction)  # noqa: E731
    for field in vol.geometry_difference(as_volume(pred, pred_geometry), as_volume(gt, gt_geometry), geometry_tol):
        mine, theirs = ((pred.shape, gt.shape) if field == "shape"
                        else (_rounded(getattr(pred_geometry, field)), _rounded(getattr(gt_geometry, field))))
        problems.append(f"{pred_path}: {field} {mine} differs from reference {gt_path} {theirs}")
        if field in ("origin", "direction"):
            problems[-1] += (" (the voxels are not in the same place: was the prediction made from this "
                             "reference's image?)")
    allowed = set(labels) | {0}
    for path, arr, what in ((pred_path, pred, "prediction"), (gt_path, gt, "reference")):
        unexpected = sorted(set(np.unique(arr).tolist()) - allowed)
        if unexpected:
            problems.append(f"{path}: {what} holds label values {unexpected}, expected only {sorted(allowed)}")
            if what == "reference" and ignore_value in unexpected:
                problems[-1] += (f" ({ignore_value} is the ignore label: this is a scribble map; evaluate "
                                 "against dense labels such as labelsTr_dense or labelsTs)")
    return problems


def _evaluate_case(args):
    """(case, metrics or None, problems); with ``check_only`` the pair is checked but not scored."""
    case, pred_path, gt_path, labels, ignore_value, geometry_tol, check_only = args
    maps, problems = [], []
    for path in (pred_path, gt_path):
        try:
            maps.append(read_label_map(path))
        except UserFacingError as e:
            problems.append(str(e))
    if problems:
        return case, None, problems
    (pred, pred_geometry), (gt, gt_geometry) = maps
    problems = pair_problems(pred_path, pred, pred_geometry, gt_path, gt, gt_geometry, labels, ignore_value,
                             geometry_tol)
    if problems or check_only:
        return case, None, problems
    return case, label_metrics(pred, gt, gt_geometry.spacing, labels), []


def evaluate_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                     classes: Mapping[int, str] | Sequence[int] | None = None,
                     output_json: str | os.PathLike | None = None, allow_missing_predictions: bool = False,
                     num_processes: int = 1, geometry_tol: float = 1e-3) -> dict:
    """Evaluate every prediction in ``pred_dir`` against the same-named file in ``gt_dir``.

    ``classes``: {value: name} or a list of values; default from a dataset.json next to the folders
    (see ``find_dataset_json``), else every non-zero value found in the references.
    ``allow_missing_predictions``: evaluate only the predicted cases when the reference folder holds
    more (as for one cross-validation fold); otherwise missing predictions are an error.
    Returns the summary dict (also written to ``output_json`` if given; whether it can be written is
    checked first, and a failing write raises an error that holds the results table).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "reference")):
        if not folder.is_dir():
            raise UserFacingError(f"{what} folder {folder} does not exist.")
    if output_json is not None:
        check_writable(Path(output_json))
    ignore_value = None
    if classes is None:
        dataset_json = find_dataset_json(pred_dir, gt_dir)
        if dataset_json is not None:
            classes, ignore_value = labels_from_dataset_json(dataset_json)
    ending = detect_file_ending(gt_dir)
    preds, gts = list_cases(pred_dir, ending), list_cases(gt_dir, ending)
    if not preds:
        raise UserFacingError(f"{pred_dir} holds no predictions ending in {ending} (the references in "
                              f"{gt_dir} use {ending}).")
    problems = [f"{p}: no reference {gt_dir / (c + ending)}" for c, p in preds.items() if c not in gts]
    missing = [c for c in gts if c not in preds]
    if missing and not allow_missing_predictions:
        problems.append(f"{len(missing)} reference case(s) have no prediction in {pred_dir}: "
                        f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. Predict them, or "
                        "pass --allow-missing-predictions to evaluate only the predicted cases.")
    cases = [c for c in preds if c in gts]

    if classes is None:
        values = set()
        for c in cases:
            try:
                values |= set(np.unique(read_label_map(gts[c])[0]).tolist())
            except UserFacingError as e:  # reported again by the pair check below
                problems.append(str(e))
        classes = sorted(v for v in values if v != 0)
    if not isinstance(classes, Mapping):
        classes = {int(v): str(v) for v in classes}
    labels = sorted(int(v) for v in classes)

    # with pairing problems already found, the pairs are still checked (so that every problem is reported
    # at once) but not scored
    jobs = [(c, preds[c], gts[c], labels, ignore_value, geometry_tol, bool(problems)) for c in cases]
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(num_processes) as pool:
            results = list(pool.map(_evaluate_case, jobs))
    else:
        results = [_evaluate_case(j) for j in jobs]
    problems += [p for _, _, ps in results for p in ps]
    if problems:
        raise UserFacingError("cannot evaluate:\n  " + "\n  ".join(dict.fromkeys(problems)))

    summary = summarize({c: m for c, m, _ in results}, classes)
    summary["prediction_folder"], summary["reference_folder"] = str(pred_dir), str(gt_dir)
    summary["files"] = {c: {"prediction": str(preds[c]), "reference": str(gts[c])} for c in cases}
    if output_json is not None:
        save_summary(summary, Path(output_json))
    return summary


def summarize(per_case: Mapping[str, Mapping[int, Mapping[str, float]]], classes: Mapping[int, str]) -> dict:
    """Mean and std over cases per class, and the mean over classes of those means."""
    per_class = {}
    for value, name in sorted(classes.items()):
        entry = {"name": name}
        for metric in ("Dice", "HD95"):
            values = np.array([m[value][metric] for m in per_case.values()], dtype=float)
            entry[f"{metric}_mean"] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std())
        per_class[str(value)] = entry
    mean = {metric: float(np.mean([e[f"{metric}_mean"] for e in per_class.values()]))
            for metric in ("Dice", "HD95")}
    return {
        "conventions": CONVENTIONS,
        "n_cases": len(per_case),
        "per_class": per_class,
        "mean": mean,
        "per_case": {c: {str(k): v for k, v in m.items()} for c, m in per_case.items()},
    }


def markdown_table(summary: dict) -> str:
    """Per-class Dice and HD95 (mean ± std over cases) and their mean over classes."""
    lines = [f"Dense-label evaluation, {summary['n_cases']} case(s)", "",
             "| class | Dice | HD95 (mm) |", "|---|---|---|"]
    for value, e in summary["per_class"].items():
        lines.append(f"| {value} {e['name']} | {e['Dice_mean']:.3f} ± {e['Dice_std']:.3f} "
                     f"| {e['HD95_mean']:.2f} ± {e['HD95_std']:.2f} |")
    lines.append(f"| **mean** | **{summary['mean']['Dice']:.3f}** | **{summary['mean']['HD95']:.2f}** |")
    return "\n".join(lines)


def check_writable(path: Path) -> None:
    """Raise :class:`UserFacingError` unless a file can be written at ``path`` (missing folders are fine).
    Creates nothing that stays: a temporary file in the nearest existing folder is made and removed."""
    if path.is_dir():
        raise UserFacingError(f"Cannot write the evaluation summary to {path}: it is a folder; give a file name "
                              f"such as {path / 'summary.json'}.")
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file, not a folder")
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserFacingError(f"Cannot write the evaluation summary to {path} ({e}); make the folder writable "
                              "or choose another output file. Nothing was evaluated.") from None


def save_summary(summary: dict, path: Path, table_printed: bool = False) -> None:
    """:func:`write_json_atomic`; a failure raises :class:`UserFacingError` that keeps the results table."""
    try:
        write_json_atomic(summary, path)
    except OSError as e:
        keep = " (the table above shows their means)" if table_printed else ":\n" + markdown_table(summary)
        raise UserFacingError(f"Cannot write the evaluation summary to {path} ({e}); the per-case results "
                              f"were not saved{keep}") from None


def write_json_atomic(obj, path: Path) -> None:
    """Write JSON atomically (``files.atomic_write_json``), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, indent=2)
