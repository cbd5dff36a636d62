"""AttenScribble cost per training iteration on CPU vs stock nnUNetTrainer and nnUNetTrainerPCE.

    python benchmarks/attenscribble_speed.py --work WORK            # timing + peak memory, appends to --out
    python benchmarks/attenscribble_speed.py --intensity-stats      # ACDC intensity statistics (sigma_I)

``WORK`` is the work folder of ``benchmarks/quick_protocol.py`` (preprocessed Dataset027_ACDCScribble with
its ``2d_quick`` configuration: quarter-width 2D U-Net, batch 8, patch 256 x 224). What is timed:

- One process builds the trainers on the same plans/configuration/fold (``initialize()``; CPU; no
  torch.compile) and draws ``--batches`` batches once from nnU-Net's own training data loader
  (augmentation in-process). AttenScribble adds no data transform, so data loading is identical for all
  trainers and left out.
- Every trainer runs ``train_step`` (forward, loss terms, backward, optimizer step) on the same batches,
  taking turns batch by batch (the dev machine is shared: interleaving spreads its load evenly).
  Reported: median and minimum seconds per ``train_step`` after ``--warmup`` steps, and ratios to stock
  and PCE (the minimum is the steadier estimate on a loaded machine: noise only adds time).
  AttenScribble's parts are also timed alone on one batch (forward + backward): the two loss terms on
  a fixed prediction and the attention block on a random input of its shape (training path vs the
  ``F.scaled_dot_product_attention`` path used at inference), to show where the extra time goes.
- Peak memory: one child process per trainer builds it, resets its peak RSS (Linux ``clear_refs``),
  runs 3 ``train_step`` on the cached batches and reads the peak; the growth during the steps minus
  stock's is the method's extra memory. Trainer classes are imported directly (not through
  ``nnUNet_extTrainer``), so no other method's modules are loaded.
- ``--threads`` torch threads (default 1: with 2 threads on a loaded 2-core machine OpenMP contention
  makes timings swing by 10x; ratios at 1 thread are stable).

``--intensity-stats`` reproduces the numbers behind ``crf_sigma_intensity`` (docs/methods/attenscribble.md):
for each ACDC volume, ``(max - min) / std`` and ``(p99.5 - p0.5) / std`` (nnU-Net z-scores each MRI
volume by its mean/std; the paper min-max scales it to [0, 1] and uses sigma_I = 0.1 of that range).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TRAINERS = {"nnUNetTrainer": "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
            "nnUNetTrainerPCE": "nnunet_scribble.training.pce",
            "nnUNetTrainerAttenScribble": "nnunet_scribble.training.attenscribble",
            "nnUNetTrainerAttenScribbleStage3": "nnunet_scribble.training.attenscribble"}
DATASET = "Dataset027_ACDCScribble"
CONFIG = "2d_quick"


def set_env(work: Path) -> None:
    """nnU-Net paths: WORK's raw/preprocessed data (read only); trainer logs go to a temporary folder."""
    results = os.environ.get("ATTENSCRIBBLE_SPEED_RESULTS") or tempfile.mkdtemp(prefix="attenscribble_speed_")
    os.environ.update({"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                       "nnUNet_results": results, "ATTENSCRIBBLE_SPEED_RESULTS": results, "nnUNet_compile": "f",
                       "nnUNet_n_proc_DA": "0"})
    from nnunet_scribble.ext_trainers import TRAINERS_PATH

    os.environ["nnUNet_extTrainer"] = TRAINERS_PATH


def build(name: str, work: Path, dataset: str, configuration: str, batch_size: int | None = None):
    import importlib

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    pre = work / "nnUNet_preprocessed" / dataset
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False
    if batch_size:
        plans["configurations"][configuration]["batch_size"] = batch_size
    cls = getattr(importlib.import_module(TRAINERS[name]), name)   # direct import: no other method's modules
    trainer = cls(plans, configuration, "all",
                                                         load_json(str(pre / "dataset.json")),
                                                         device=torch.device("cpu"))
    trainer.initialize()
    trainer.on_train_epoch_start()
    return trainer


def _rss_mb(field: str) -> float | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


def peak_memory_child(name: str, work: str, dataset: str, configuration: str, batches: str, threads: int,
                      batch_size: int | None) -> None:
    """Peak resident memory while running 3 train steps (Linux: the peak is reset just before them)."""
    import torch

    torch.set_num_threads(threads)
    set_env(Path(work))
    trainer = build(name, Path(work), dataset, configuration, batch_size)
    with open(batches, "rb") as f:
        cached = pickle.load(f)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")        # reset VmHWM (peak RSS) to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _rss_mb("VmRSS")
    for batch in cached[:3]:
        trainer.train_step(batch)
    peak = _rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "before_steps_mb": before, "peak_reset": reset}))


def component_times(trainer, batch) -> dict[str, float]:
    """Seconds (forward + backward) of AttenScribble's parts alone on one batch: the two loss terms on a
    fixed prediction, and the attention block on a random input of its shape, training path (explicit
    attention + window values) and the plain ``F.scaled_dot_product_attention`` path."""
    import torch
    from nnunet_scribble.losses.attentive_similarity import (attentive_similarity_loss,
                                                              samples_with_several_scribble_classes)
    from nnunet_scribble.losses.crf import masked_gated_crf_loss
    from nnunet_scribble.networks.attention import find_attention_block

    data, scribble = batch["data"], batch["target"][0][:, :1]
    ignore = trainer.label_manager.ignore_label
    trainer.network.train()
    logits = trainer.network(data)[0].detach().requires_grad_()
    block = find_attention_block(trainer.network)
    window, grid = block.pop_attention()
    window = window.detach().requires_grad_()

    def best_of(fn, repeats=3) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    out = {"L_mcrf": best_of(lambda: masked_gated_crf_loss(
        torch.softmax(logits, 1), data, scribble == ignore, trainer.crf_radius, trainer.crf_sigma_xy,
        trainer.crf_sigma_intensity, trainer._voxel_spacing()).backward())}
    valid = samples_with_several_scribble_classes(scribble, ignore)
    out["L_atn"] = best_of(lambda: attentive_similarity_loss(
        window, torch.softmax(logits, 1), grid, block.similarity, block.window_radius, trainer.attention_sigma,
        block.window_spacing, valid).backward())
    x = torch.randn(data.shape[0], block.channels, *grid, requires_grad=True)
    for label, expose in (("attention block, training path", True), ("attention block, SDPA path", False)):
        block.expose_attention = expose
        out[label] = best_of(lambda: block(x).sum().backward())
        block.window_attention = None
    block.expose_attention = True
    return out


def run_speed(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = args.work.resolve()
    set_env(work)
    trainers = {name: build(name, work, args.dataset, args.configuration, args.batch_size) for name in TRAINERS}
    ref = trainers["nnUNetTrainer"]
    loader, _ = ref.get_dataloaders()
    t0 = time.perf_counter()
    batches = [next(loader) for _ in range(args.warmup + args.batches)]
    data_time = (time.perf_counter() - t0) / len(batches)
    times = {name: [] for name in TRAINERS}
    load_start = os.getloadavg()[0]
    for i, batch in enumerate(batches):
        for name, trainer in trainers.items():
            t = time.perf_counter()
            trainer.train_step(batch)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)
        print(f"batch {i + 1}/{len(batches)}", flush=True)
    load_end = os.getloadavg()[0]
    terms = component_times(trainers["nnUNetTrainerAttenScribble"], batches[-1])
    atten = trainers["nnUNetTrainerAttenScribble"]
    stage = atten.attention_stage_used
    stage3 = trainers["nnUNetTrainerAttenScribbleStage3"].attention_stage_used

    memory = {name: None for name in TRAINERS}
    with tempfile.TemporaryDirectory() as tmp:
        if args.no_memory:
            trainers_for_memory = []
        else:
            trainers_for_memory = list(TRAINERS)
        path = os.path.join(tmp, "batches.pkl")
        with open(path, "wb") as f:   # compact copies (a view would pickle its whole storage)
            pickle.dump([{"data": b["data"].clone(), "target": [t.clone() for t in b["target"]], "keys": b["keys"]}
                         for b in batches[:3]], f)
        for name in trainers_for_memory:
            proc = subprocess.run([sys.executable, __file__, "--memory-child", name, "--work", str(work),
                                   "--dataset", args.dataset, "--configuration", args.configuration,
                                   "--batches-file", path, "--threads", str(args.threads)]
                                  + (["--batch-size", str(args.batch_size)] if args.batch_size else []),
                                  capture_output=True, text=True, env=dict(os.environ))
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            memory[name] = json.loads(lines[-1]) if lines else None
            if not lines:
                print(proc.stdout[-2000:], proc.stderr[-2000:])

    med = {n: float(np.median(v)) for n, v in times.items()}
    low = {n: float(np.min(v)) for n, v in times.items()}
    stock, pce = "nnUNetTrainer", "nnUNetTrainerPCE"
    rows = ["| trainer | train_step s, median (min) | median vs stock | min vs stock | min vs PCE | "
            "peak RSS during the steps MB | peak - RSS before them MB | extra vs stock MB |",
            "|---|---|---|---|---|---|---|---|"]
    for name in TRAINERS:
        mem, stock_mem = memory[name], memory[stock]
        row = (f"| `{name}` | {med[name]:.2f} ({low[name]:.2f}) | {med[name] / med[stock]:.2f}x | "
               f"{low[name] / low[stock]:.2f}x | {low[name] / low[pce]:.2f}x | ")
        if mem and stock_mem:
            growth = mem["peak_rss_mb"] - mem["before_steps_mb"]
            stock_growth = stock_mem["peak_rss_mb"] - stock_mem["before_steps_mb"]
            row += f"{mem['peak_rss_mb']:.0f} | {growth:.0f} | {growth - stock_growth:+.0f} |"
        else:
            row += "n/a | n/a | n/a |"
        rows.append(row)
    cm = ref.configuration_manager
    from nnunet_scribble.networks.attention import stage_token_grids

    grid = "x".join(map(str, stage_token_grids(cm.patch_size, cm.network_arch_init_kwargs["strides"])[stage]))
    section = (
        f"## {date.today().isoformat()}: {', '.join(TRAINERS)}\n\n"
        f"- Data: {args.dataset}, configuration `{args.configuration}` (batch {cm.batch_size}, patch {cm.patch_size}, "
        f"features {cm.network_arch_init_kwargs['features_per_stage']}), fold all; {args.batches} timed batches after "
        f"{args.warmup} warm-up, the same batches for every trainer, trainers interleaved.\n"
        f"- AttenScribble: attention after encoder stage {stage} ({grid} tokens), CRF radius {atten.crf_radius}, "
        f"attention-loss radius {atten.attention_radius}. AttenScribbleStage3 (speed variant): stage {stage3} "
        f"({'x'.join(map(str, stage_token_grids(cm.patch_size, cm.network_arch_init_kwargs['strides'])[stage3]))} "
        f"tokens).\n"
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores (shared), CPU only, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); load average {load_start:.1f} at start, {load_end:.1f} at end. "
        f"Data loading + augmentation (not in the table, same for all): {data_time:.2f} s per batch.\n"
        f"- AttenScribble's parts alone (one batch, forward + backward, best of 3): "
        + ", ".join(f"{k} {v:.3f} s" for k, v in terms.items()) + ".\n"
        + ("- Memory: not measured (--no-memory).\n" if args.no_memory else
           "- Memory: a child process per trainer builds it, resets its peak RSS (Linux `clear_refs`), runs 3 "
           "train steps and reads the peak (VmHWM); 'extra vs stock' compares the growth during the steps.\n")
        + f"- Command: `python benchmarks/attenscribble_speed.py --work WORK --configuration {args.configuration} "
        f"--batches {args.batches} --warmup {args.warmup} --threads {args.threads}"
        + (f" --batch-size {args.batch_size}" if args.batch_size else "")
        + (" --no-memory" if args.no_memory else "") + "`\n\n" + "\n".join(rows) + "\n")
    print(section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = args.out.read_text() if args.out.is_file() else (
        "# AttenScribble: seconds per training iteration and peak memory (CPU)\n\n"
        "Written by `benchmarks/attenscribble_speed.py` (one section per run, newest last); see its docstring "
        "for exactly what is timed.\n")
    args.out.write_text(text.rstrip("\n") + "\n\n" + section)


def intensity_stats(acdc: Path) -> None:
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    files = sorted(glob.glob(str(acdc / "training" / "patient*" / "patient*_frame??.nii.gz")))
    if not files:
        sys.exit(f"no ACDC volumes under {acdc}/training")
    full, robust = [], []
    for f in files:
        a = sitk.GetArrayFromImage(sitk.ReadImage(f)).astype(np.float64)
        full.append((a.max() - a.min()) / a.std())
        robust.append((np.percentile(a, 99.5) - np.percentile(a, 0.5)) / a.std())
    for label, v in (("(max - min) / std", np.array(full)), ("(p99.5 - p0.5) / std", np.array(robust))):
        print(f"{label}: median {np.median(v):.2f}, p10 {np.percentile(v, 10):.2f}, p90 {np.percentile(v, 90):.2f} "
              f"(n={len(v)}) -> 0.1 of that range = {0.1 * np.median(v):.2f} z-scores")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, help="work folder of benchmarks/quick_protocol.py")
    p.add_argument("--dataset", default=DATASET)
    p.add_argument("--configuration", default=CONFIG)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    p.add_argument("--batch-size", type=int, help="override the configuration's batch size (plans edited in memory)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "attenscribble_speed.md")
    p.add_argument("--intensity-stats", action="store_true")
    p.add_argument("--acdc", type=Path, default=HERE.parents[1] / "shared" / "data" / "ACDC")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--batches-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.intensity_stats:
        intensity_stats(args.acdc)
    elif args.memory_child:
        peak_memory_child(args.memory_child, str(args.work), args.dataset, args.configuration, args.batches_file,
                          args.threads, args.batch_size)
    elif args.work is None:
        p.error("--work is required (prepare it with benchmarks/quick_protocol.py)")
    else:
        run_speed(args)


if __name__ == "__main__":
    main()
