"""Evaluate a folder of predicted label maps against a folder of dense reference label maps.

Files are paired by name (``CASE<file_ending>``). Geometry (shape, spacing) comes from the files via
SimpleITK. Every problem found (missing cases, shape or spacing mismatch, unexpected label values) is
collected first and reported at once, naming the files.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.evaluation.metrics import label_metrics

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd", ".png", ".tif", ".tiff", ".bmp")
CONVENTIONS = (
    "Dice and HD95 per case and class against dense reference labels. HD95: 95th percentile of the "
    "pooled symmetric surface distances in mm (voxel spacing from the files). Both empty: Dice 1, "
    "HD95 0. Exactly one empty: Dice 0, HD95 = image diagonal in mm. Means and stds over cases."
)


def read_label_map(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Label array (z, y, x) or (y, x) and its spacing in the same axis order."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in reversed(image.GetSpacing()))


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


def pair_problems(pred_path: Path, pred: np.ndarray, pred_spacing, gt_path: Path, gt: np.ndarray, gt_spacing,
                  labels: Sequence[int], ignore_value: int | None = None, spacing_rtol: float = 1e-3) -> list[str]:
    """What makes a prediction/reference pair unfit to compare (geometry, label values), naming the files."""
    problems = []
    if pred.shape != gt.shape:
        problems.append(f"{pred_path}: shape {pred.shape} differs from reference {gt_path} {gt.shape}")
    elif not np.allclose(pred_spacing, gt_spacing, rtol=spacing_rtol):
        problems.append(f"{pred_path}: spacing {pred_spacing} differs from reference {gt_path} {gt_spacing}")
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
    case, pred_path, gt_path, labels, ignore_value, spacing_rtol = args
    pred, pred_spacing = read_label_map(pred_path)
    gt, gt_spacing = read_label_map(gt_path)
    problems = pair_problems(pred_path, pred, pred_spacing, gt_path, gt, gt_spacing, labels, ignore_value,
                             spacing_rtol)
    if problems:
        return case, None, problems
    return case, label_metrics(pred, gt, gt_spacing, labels), []


def evaluate_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                     classes: Mapping[int, str] | Sequence[int] | None = None,
                     output_json: str | os.PathLike | None = None, allow_missing_predictions: bool = False,
                     num_processes: int = 1, spacing_rtol: float = 1e-3) -> dict:
    """Evaluate every prediction in ``pred_dir`` against the same-named file in ``gt_dir``.

    ``classes``: {value: name} or a list of values; default from a dataset.json next to the folders
    (see ``find_dataset_json``), else every non-zero value found in the references.
    ``allow_missing_predictions``: evaluate only the predicted cases when the reference folder holds
    more (as for one cross-validation fold); otherwise missing predictions are an error.
    Returns the summary dict (also written to ``output_json`` if given).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "reference")):
        if not folder.is_dir():
            raise UserFacingError(f"{what} folder {folder} does not exist.")
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
    if problems:
        raise UserFacingError("cannot evaluate:\n  " + "\n  ".join(problems))
    cases = [c for c in preds if c in gts]

    if classes is None:
        values = set()
        for c in cases:
            values |= set(np.unique(read_label_map(gts[c])[0]).tolist())
        classes = sorted(v for v in values if v != 0)
    if not isinstance(classes, Mapping):
        classes = {int(v): str(v) for v in classes}
    labels = sorted(int(v) for v in classes)

    jobs = [(c, preds[c], gts[c], labels, ignore_value, spacing_rtol) for c in cases]
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(num_processes) as pool:
            results = list(pool.map(_evaluate_case, jobs))
    else:
        results = [_evaluate_case(j) for j in jobs]
    problems = [p for _, _, ps in results for p in ps]
    if problems:
        raise UserFacingError("cannot evaluate:\n  " + "\n  ".join(problems))

    summary = summarize({c: m for c, m, _ in results}, classes)
    summary["prediction_folder"], summary["reference_folder"] = str(pred_dir), str(gt_dir)
    summary["files"] = {c: {"prediction": str(preds[c]), "reference": str(gts[c])} for c in cases}
    if output_json is not None:
        write_json_atomic(summary, Path(output_json))
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


def write_json_atomic(obj, path: Path) -> None:
    """Write JSON to a temporary file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
