"""Run the demo: write the synthetic dataset, then stock nnU-Net plan/preprocess, train, predict, and
evaluate the test predictions against dense labels. Everything lives under one output folder; the
user's own nnU-Net folders are never touched (the nnU-Net environment variables are set for the
child processes only). Finished steps are skipped when the demo is run again.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_scribble.demo.synthetic import CLASS_NAMES, IGNORE, make_dataset
from nnunet_scribble.errors import UserFacingError

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_ScribbleDemo"
SPACING = (1.25, 1.25)


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, str(path))


def write_dataset(raw_root: Path, n_train: int, n_test: int, seed: int) -> Path:
    """Write the synthetic raw dataset (or check that the one already there is the same)."""
    recipe = {"generator": "nnunet_scribble.demo.synthetic v1", "n_train": n_train, "n_test": n_test, "seed": seed}
    target = raw_root / DATASET_NAME
    marker = target / "demo_recipe.json"
    others = [p for p in raw_root.glob(f"Dataset{DATASET_ID}_*") if p.name != DATASET_NAME]
    if others:
        raise UserFacingError(f"{others[0]} uses the demo's dataset ID {DATASET_ID}. Choose another --output "
                              "folder for the demo, or remove that dataset.")
    if target.exists():
        if marker.is_file() and json.loads(marker.read_text()) == recipe:
            return target
        found = json.loads(marker.read_text()) if marker.is_file() else "no demo_recipe.json (not made by the demo)"
        raise UserFacingError(f"{target} already holds a different dataset ({found}; this run needs {recipe}). "
                              "Choose another --output folder, or delete that folder to regenerate it.")
    raw_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_demo_", dir=raw_root))
    for sub in ("imagesTr", "labelsTr", "labelsTr_dense", "imagesTs", "labelsTs"):
        (tmp / sub).mkdir()
    for i, (image, label, scribble) in enumerate(make_dataset(n_train + n_test, seed)):
        case = f"demo_{i:03d}"
        split = "Tr" if i < n_train else "Ts"
        _write(image, tmp / f"images{split}" / f"{case}_0000.nii.gz")
        if split == "Tr":
            _write(scribble, tmp / "labelsTr" / f"{case}.nii.gz")
            _write(label, tmp / "labelsTr_dense" / f"{case}.nii.gz")
        else:
            _write(label, tmp / "labelsTs" / f"{case}.nii.gz")
    dataset_json = {
        "channel_names": {"0": "synthetic MR"},
        "labels": {**CLASS_NAMES, "ignore": IGNORE},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "name": "ScribbleDemo",
        "description": "Synthetic scribble demo of nnunet-scribble: labelsTr = scribbles, labelsTr_dense and "
                       "labelsTs = dense labels.",
    }
    (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (tmp / "demo_recipe.json").write_text(json.dumps(recipe))
    os.replace(tmp, target)
    return target


def nnunet_env(output: Path) -> dict:
    from nnunet_scribble.ext_trainers import TRAINERS_PATH

    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(output / "nnUNet_raw"),
        "nnUNet_preprocessed": str(output / "nnUNet_preprocessed"),
        "nnUNet_results": str(output / "nnUNet_results"),
        "nnUNet_extTrainer": TRAINERS_PATH,
        "nnUNet_compile": env.get("nnUNet_compile", "f"),
        "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "1"),
        "nnUNet_def_n_proc": env.get("nnUNet_def_n_proc", "1"),
        "PYTHONUNBUFFERED": "1",     # nnU-Net's lines reach the demo as they are printed, not in blocks
    })
    return env


def nnunet_command(name: str) -> str:
    """Path of an nnU-Net console script, preferring the one installed next to this Python."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise UserFacingError(f"nnU-Net's command {name} was not found next to {sys.executable} nor on PATH. "
                              "Install nnunetv2 in this environment (pip install -e '.[test]').")
    return found


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?: ?")


class EpochProgress:
    """Condenses nnU-Net's training output into one line per epoch.

    ``feed(line)`` takes the lines ``nnUNetv2_train`` prints (timestamp first) and returns the summary
    once an epoch's "Epoch time" line arrives, e.g. ``epoch 3: loss -0.612 (partial -0.612), val loss
    -0.550, pseudo Dice 0.81 0.73 0.90, 12.3 s``; SAM-SP's stage messages (which run before epoch 0)
    are returned as they come. Everything else gives None.
    """

    def __init__(self):
        self.epoch: str | None = None
        self.fields: dict[str, str] = {}

    def feed(self, line: str) -> str | None:
        text = _TIMESTAMP.sub("", line.strip())
        if match := re.fullmatch(r"Epoch (\d+)", text):
            self.epoch, self.fields = match[1], {}
        elif text.startswith(("[sam]", "SAM-SP")):
            return text
        elif self.epoch is None:
            return None
        elif text.startswith("loss terms "):
            self.fields["terms"] = text[len("loss terms "):]
        elif match := re.fullmatch(r"(train_loss|val_loss) (\S+)", text):
            self.fields[match[1]] = match[2]
        elif text.startswith("Pseudo dice"):
            values = re.findall(r"nan|-?\d+\.\d*(?:e-?\d+)?", re.sub(r"np\.float\d+", "", text))
            self.fields["dice"] = " ".join(v if v == "nan" else f"{float(v):.2f}" for v in values)
        elif match := re.fullmatch(r"Epoch time: (\S+) s", text):
            f = self.fields
            parts = [f"loss {f.get('train_loss', '?')}" + (f" ({f['terms']})" if "terms" in f else "")]
            if "val_loss" in f:
                parts.append(f"val loss {f['val_loss']}")
            if "dice" in f:
                parts.append(f"pseudo Dice {f['dice']}")
            parts.append(f"{float(match[1]):.1f} s")
            return f"epoch {self.epoch}: " + ", ".join(parts)
        return None


def run_step(name: str, cmd: list[str], env: dict, log_dir: Path, verbose: bool, echo=print) -> float:
    """Run one nnU-Net command, its output in ``log_dir/<name>.log``; returns the seconds it took.

    Unless ``verbose`` (all output shown), ``echo`` gets one line per training epoch as it ends."""
    cmd = [nnunet_command(cmd[0])] + cmd[1:]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    echo(f"[demo] {name}: {Path(cmd[0]).name} {' '.join(cmd[1:])}  (full output: {log})", flush=True)
    progress = EpochProgress()
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if verbose:
                sys.stdout.write(line)
            elif (summary := progress.feed(line)) is not None:
                echo(f"[demo]   {summary}", flush=True)
        proc.wait()
    seconds = time.time() - start
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise UserFacingError(f"step '{name}' failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    echo(f"[demo] {name} done in {seconds:.0f} s (log: {log})", flush=True)
    return seconds


def run_demo(output: Path, trainer: str, fold: str, n_train: int, n_test: int, seed: int,
             device: str, verbose: bool = False) -> dict:
    from nnunet_scribble.evaluation.evaluate_folder import evaluate_folders, markdown_table

    output = output.resolve()
    start = time.time()
    raw = write_dataset(output / "nnUNet_raw", n_train, n_test, seed)
    env = nnunet_env(output)
    logs = output / "logs"
    timings = {}
    preprocessed = output / "nnUNet_preprocessed" / DATASET_NAME
    if not (preprocessed / "nnUNetPlans_2d").is_dir():
        timings["plan_and_preprocess"] = run_step(
            "plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d",
                                    "-np", "1", "--verify_dataset_integrity"], env, logs, verbose)
    fold_dir = output / "nnUNet_results" / DATASET_NAME / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"
    if not (fold_dir / "checkpoint_final.pth").is_file():
        cmd = ["nnUNetv2_train", str(DATASET_ID), "2d", fold, "-tr", trainer, "-device", device]
        if (fold_dir / "checkpoint_latest.pth").is_file():
            cmd.append("--c")
        timings["train"] = run_step(f"train_{trainer}_fold{fold}", cmd, env, logs, verbose)
    predictions = output / "predictions" / f"{trainer}_fold{fold}"
    timings["predict"] = run_step(
        f"predict_{trainer}_fold{fold}",
        ["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(predictions), "-d", str(DATASET_ID),
         "-c", "2d", "-f", fold, "-tr", trainer, "-device", device, "-npp", "1", "-nps", "1"], env, logs, verbose)
    summary = evaluate_folders(predictions, raw / "labelsTs", output_json=predictions / "summary_dense.json")
    timings["total"] = time.time() - start
    print()
    print(f"Trainer {trainer}, fold {fold}: test cases against dense labels ({raw / 'labelsTs'})")
    print(markdown_table(summary))
    validation_dense = fold_dir / "validation" / "summary_dense.json"
    if validation_dense.is_file():
        v = json.loads(validation_dense.read_text())["mean"]
        print(f"\nfold {fold} validation against labelsTr_dense: mean Dice {v['Dice']:.3f}, HD95 {v['HD95']:.2f} mm "
              f"({validation_dense})")
    print("\ntimings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return {"summary": summary, "timings": timings, "predictions": str(predictions)}
