"""ACDC quick protocol (DESIGN.md section 6): train trainers under one CPU budget, predict, evaluate.

    python benchmarks/acdc_quick.py --work /path/to/workdir nnUNetTrainerPCE nnUNetTrainerMaCo --dense

- Data: ../shared/data/ACDC (or --acdc); patients 001-070 with Valvano scribbles for training,
  071-085 with dense ground truth for testing. Converted with ``nnunet-scribble convert acdc`` into
  Dataset027_ACDCScribble; ``--dense`` also derives Dataset127_ACDCDense (same images, labelsTr = the
  dense ground truth, no ignore label) for the upper-bound run of stock nnU-Net.
- Plans: stock ``2d`` planning plus a configuration ``2d_quick`` that inherits from ``2d`` with
  quarter-width features (8, 16, 32, 64, 128, 128) and batch size 8 (added to nnUNetPlans.json; the
  stock configurations are untouched, the preprocessed data are shared).
- Budget: each trainer's ``_3000it`` variant (120 epochs x 25 iterations), fold ``all``, CPU;
  ``--budget 1000it`` is a reduced first look (40 epochs x 25), reported as such.
- Test: ``nnUNetv2_predict`` on imagesTs, ``nnunet-scribble evaluate`` against labelsTs.
- Speed: median epoch time / 25 from nnU-Net's training log (an epoch also runs 5 validation
  iterations), its ratio to stock nnUNetTrainer's in the same work folder, and the peak resident
  memory of the training process tree's largest process.

Everything lives under --work; finished steps are skipped when run again (resumable). Results: one
JSON per trainer in WORK/results/, and the Markdown table + plot written to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCRIBBLE_ID, SCRIBBLE_NAME = 27, "Dataset027_ACDCScribble"
DENSE_ID, DENSE_NAME = 127, "Dataset127_ACDCDense"
CONFIG = "2d_quick"
QUICK_FEATURES = [8, 16, 32, 64, 128, 128]
QUICK_BATCH = 8
STOCK = "nnUNetTrainer"


def nnunet_env(work: Path) -> dict:
    from nnunet_scribble.ext_trainers import TRAINERS_PATH

    env = dict(os.environ)
    env.update({"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                "nnUNet_results": str(work / "nnUNet_results"), "nnUNet_extTrainer": TRAINERS_PATH,
                "nnUNet_compile": "f", "nnUNet_def_n_proc": env.get("nnUNet_def_n_proc", "2"),
                "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "1")})
    return env


def run(cmd: list[str], env: dict, log: Path) -> None:
    exe = Path(sys.executable).parent / cmd[0]
    cmd = [str(exe) if exe.is_file() else cmd[0]] + cmd[1:]
    print(f"[acdc-quick] {' '.join(cmd)}  (log: {log})", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"failed (exit {proc.returncode}): {' '.join(cmd)}; see {log}")


def prepare_datasets(work: Path, acdc: Path, dense: bool, env: dict) -> None:
    raw = work / "nnUNet_raw"
    if not (raw / SCRIBBLE_NAME).is_dir():
        run(["nnunet-scribble", "convert", "acdc", "-i", str(acdc), "-s",
             str(acdc / "scribbles"), "-d", str(SCRIBBLE_ID), "--test-patients", "71-85"], env, work / "logs" / "convert.log")
    if dense and not (raw / DENSE_NAME).is_dir():
        derive_dense_dataset(raw / SCRIBBLE_NAME, raw / DENSE_NAME)
    for dataset_id, name in [(SCRIBBLE_ID, SCRIBBLE_NAME)] + ([(DENSE_ID, DENSE_NAME)] if dense else []):
        pre = work / "nnUNet_preprocessed" / name
        if not (pre / "nnUNetPlans_2d").is_dir():
            run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", "-np", "2"], env,
                work / "logs" / f"plan_{dataset_id}.log")
        add_quick_configuration(pre / "nnUNetPlans.json")
        splits = raw / name / "splits_final.json"
        if splits.is_file() and not (pre / "splits_final.json").is_file():
            shutil.copy(splits, pre / "splits_final.json")


def derive_dense_dataset(source: Path, target: Path) -> None:
    """Same images (symlinked) and test set; labelsTr = labelsTr_dense; no ignore label."""
    tmp = target.with_name("." + target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub, src in (("imagesTr", "imagesTr"), ("labelsTr", "labelsTr_dense"), ("imagesTs", "imagesTs"),
                     ("labelsTs", "labelsTs")):
        (tmp / sub).mkdir(parents=True)
        for f in sorted((source / src).iterdir()):
            (tmp / sub / f.name).symlink_to(f.resolve())
    dataset_json = json.loads((source / "dataset.json").read_text())
    dataset_json["labels"].pop("ignore")
    dataset_json["name"] = target.name
    dataset_json["description"] = "ACDC dense ground truth (upper-bound reference of the scribble benchmark)"
    (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    shutil.copy(source / "splits_final.json", tmp / "splits_final.json")
    os.replace(tmp, target)


def add_quick_configuration(plans_file: Path) -> None:
    plans = json.loads(plans_file.read_text())
    if CONFIG in plans["configurations"]:
        return
    arch = json.loads(json.dumps(plans["configurations"]["2d"]["architecture"]))
    n_stages = arch["arch_kwargs"]["n_stages"]
    arch["arch_kwargs"]["features_per_stage"] = QUICK_FEATURES[:n_stages]
    plans["configurations"][CONFIG] = {"inherits_from": "2d", "batch_size": QUICK_BATCH, "architecture": arch}
    tmp = plans_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(plans, indent=2))
    os.replace(tmp, plans_file)


def epoch_seconds(fold_dir: Path) -> list[float]:
    times = []
    for log in sorted(fold_dir.glob("training_log_*.txt")):
        times += [float(m) for m in re.findall(r"Epoch time: ([0-9.]+) s", log.read_text())]
    return times


def sam_settings(env: dict) -> str:
    """The SAM-SP settings taken from the environment (``NNUNET_SCRIBBLE_SAM_*``), as a command prefix."""
    return "".join(f"{k}={v} " for k, v in sorted(env.items()) if k.startswith("NNUNET_SCRIBBLE_SAM_"))


def run_trainer(work: Path, trainer: str, dense: bool, budget: str, env: dict) -> dict:
    from nnunet_scribble.evaluation.evaluate_folder import evaluate_folders
    from nnunet_scribble.training.budget_variants import ITERATION_BUDGETS

    dataset_id, name = (DENSE_ID, DENSE_NAME) if dense else (SCRIBBLE_ID, SCRIBBLE_NAME)
    variant = f"{trainer}_{budget}"
    out_json = work / "results" / f"{variant}{'_dense' if dense else ''}.json"
    iterations_per_epoch = ITERATION_BUDGETS[budget][1]
    fold_dir = work / "nnUNet_results" / name / f"{variant}__nnUNetPlans__{CONFIG}" / "fold_all"
    logs = work / "logs"
    peak_mb = None
    if not (fold_dir / "checkpoint_final.pth").is_file():
        cmd = ["nnUNetv2_train", str(dataset_id), CONFIG, "all", "-tr", variant, "-device", "cpu"]
        if (fold_dir / "checkpoint_latest.pth").is_file():
            cmd.append("--c")
        start = time.time()
        run(cmd, env, logs / f"train_{variant}.log")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"[acdc-quick] trained {variant} in {(time.time() - start) / 60:.1f} min", flush=True)
    pred = work / "predictions" / variant
    if not (pred / "summary_dense.json").is_file():
        run(["nnUNetv2_predict", "-i", str(work / "nnUNet_raw" / name / "imagesTs"), "-o", str(pred), "-d",
             str(dataset_id), "-c", CONFIG, "-f", "all", "-tr", variant, "-device", "cpu", "-npp", "1", "-nps", "1"],
            env, logs / f"predict_{variant}.log")
        evaluate_folders(pred, work / "nnUNet_raw" / name / "labelsTs", output_json=pred / "summary_dense.json",
                         num_processes=2)
    summary = json.loads((pred / "summary_dense.json").read_text())
    times = epoch_seconds(fold_dir)
    previous = json.loads(out_json.read_text()) if out_json.is_file() else {}
    result = {
        "trainer": trainer, "variant": variant, "labels": "dense" if dense else "scribbles",
        "dataset": name, "configuration": CONFIG, "fold": "all",
        "per_class": summary["per_class"], "mean": summary["mean"], "n_test_cases": summary["n_cases"],
        "epochs_logged": len(times),
        "budget": budget, "seconds_per_iteration": float(np.median(times)) / iterations_per_epoch if times else None,
        "peak_rss_mb": peak_mb if peak_mb is not None else previous.get("peak_rss_mb"),
        "date": previous.get("date", date.today().isoformat()),
        "machine": previous.get("machine", f"{platform.machine()}, {os.cpu_count()} cores, CPU only"),
        "command": sam_settings(env) + f"python benchmarks/acdc_quick.py --work WORK --budget {budget} "
                   + (STOCK + " --dense (stock trainer on Dataset127)" if dense else trainer),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2))
    return result


def write_table(results: list[dict], out: Path) -> None:
    """One table per budget; each trainer's Dice ratio and speed are taken against the dense run of
    the same budget."""
    marker = "<!-- generated by benchmarks/acdc_quick.py below this line -->"
    md = out / "acdc_quick.md"
    text = md.read_text() if md.is_file() else "# ACDC quick protocol (CPU)\n\n"
    sections = [marker, ""]
    for budget in sorted({r["budget"] for r in results}, reverse=True):
        runs = [r for r in results if r["budget"] == budget]
        sections += [f"### Budget {budget}", ""] + budget_table(runs) + [""]
        plot(runs, next((r for r in runs if r["labels"] == "dense"), None), out / f"acdc_quick_{budget}.png")
        sections += [f"![ACDC quick {budget}](acdc_quick_{budget}.png)", ""]
    sections += ["| run | date | machine | command |", "|---|---|---|---|"]
    sections += [f"| `{r['variant']}` ({r['labels']}) | {r['date']} | {r['machine']} | `{r['command']}` |" for r in results]
    md.write_text(text.split(marker)[0] + "\n".join(sections) + "\n")


def budget_table(results: list[dict]) -> list[str]:
    bound = next((r for r in results if r["labels"] == "dense"), None)
    stock_speed = bound["seconds_per_iteration"] if bound else None
    classes = list(results[0]["per_class"].values())
    head = ["trainer", "labels"] + [f"Dice {c['name']}" for c in classes] + ["mean Dice", "ratio to dense",
                                                                              "mean HD95 (mm)", "s/it", "s/it vs stock",
                                                                              "peak RSS (MB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        ratio = f"{r['mean']['Dice'] / bound['mean']['Dice']:.2f}" if bound else "n/a"
        spi = r["seconds_per_iteration"]
        rel = f"{spi / stock_speed:.2f}x" if stock_speed and spi else "n/a"
        lines.append("| " + " | ".join(
            [f"`{r['variant']}`", r["labels"]] + [f"{c['Dice_mean']:.3f}" for c in r["per_class"].values()]
            + [f"**{r['mean']['Dice']:.3f}**", ratio, f"{r['mean']['HD95']:.1f}", f"{spi:.2f}" if spi else "n/a", rel,
               f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "n/a"]) + " |")
    return lines


def plot(results: list[dict], bound: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    classes = [c["name"] for c in results[0]["per_class"].values()]
    fig, (ax_d, ax_h) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(results)
    x = np.arange(len(classes))
    for i, r in enumerate(results):
        dice = [c["Dice_mean"] for c in r["per_class"].values()]
        hd = [c["HD95_mean"] for c in r["per_class"].values()]
        ax_d.bar(x + i * width, dice, width, label=r["variant"])
        ax_h.bar(x + i * width, hd, width, label=r["variant"])
    if bound:
        ax_d.axhline(bound["mean"]["Dice"], color="k", ls="--", lw=1, label="dense upper bound (mean)")
        ax_h.axhline(bound["mean"]["HD95"], color="k", ls="--", lw=1, label="dense upper bound (mean)")
    for ax, title in ((ax_d, "Dice (test, dense GT)"), (ax_h, "HD95 mm (test, dense GT)")):
        ax.set_xticks(x + 0.4 - width / 2, classes)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    ax_d.set_ylim(0, 1)
    ax_d.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trainers", nargs="*", help="scribble trainers (base names, e.g. nnUNetTrainerPCE)")
    p.add_argument("--work", type=Path, required=True, help="work folder (nnU-Net folders, predictions, logs)")
    p.add_argument("--acdc", type=Path, default=HERE.parents[1] / "shared" / "data" / "ACDC")
    p.add_argument("--dense", action="store_true", help="also run stock nnUNetTrainer on the dense labels")
    p.add_argument("--budget", default="3000it", help="iteration budget variant (3000it = the protocol; 1000it)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the table and plot go")
    args = p.parse_args()
    work = args.work.resolve()
    env = nnunet_env(work)
    prepare_datasets(work, args.acdc, args.dense, env)
    jobs = [(t, False) for t in args.trainers] + ([(STOCK, True)] if args.dense else [])
    for trainer, dense in jobs:
        run_trainer(work, trainer, dense, args.budget, env)
    results = [json.loads(f.read_text()) for f in sorted((work / "results").glob("*.json"))]
    results.sort(key=lambda r: (r["labels"] != "dense", r["trainer"] != "nnUNetTrainerPCE", r["trainer"]))
    args.out.mkdir(parents=True, exist_ok=True)
    write_table(results, args.out)
    print((args.out / "acdc_quick.md").read_text())


if __name__ == "__main__":
    main()
