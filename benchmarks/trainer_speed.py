"""Cost of a training iteration, any trainers against the first (give stock ``nnUNetTrainer`` first).

    python benchmarks/trainer_speed.py --work WORK nnUNetTrainer nnUNetTrainerPCE nnUNetTrainerMedCL

``WORK`` is a work folder of ``benchmarks/quick_protocol.py`` (default dataset Dataset027_ACDCScribble,
configuration ``2d_quick``: quarter-width 2D U-Net, batch 8, patch 256 x 224; ``--configuration 2d`` for
nnU-Net's full width). The stock trainer is given the scribble dataset like the others (it treats
``ignore`` as nnU-Net does), so every trainer sees the same plans and data. Measured, on the CPU:

- **Time**: one process builds every trainer (nnU-Net's ``on_train_start``: a method's own preparation,
  e.g. MaCo's GC maps or SAM-SP's pseudo-labels, runs there and is not timed) and runs them in turns,
  one iteration each, so load from elsewhere on the machine hits them alike. Per iteration: **data** =
  ``next(dataloader)`` (loading + nnU-Net's augmentation + a method's extra transforms, here in the main
  process, ``nnUNet_n_proc_DA=0``; in real training it runs in parallel workers) and **step** =
  ``train_step`` (forward, losses, backward, optimizer). Reported: median and minimum after ``--warmup``
  iterations (the minimum is the steadier estimate on a loaded machine: noise only adds time), and the
  ratio to the first trainer. ``--threads`` torch threads (default 1: on a loaded 2-core machine two
  threads make timings swing; ratios at one thread are stable).
- **Activation memory**: bytes of the tensors autograd saves for backward in one ``train_step``
  (parameters excluded): deterministic, and what dominates GPU memory.
- **Peak memory**: one child process per trainer builds it, draws 2 batches, resets its peak resident
  memory (Linux ``/proc/self/clear_refs``), runs 2 ``train_step`` and reads the peak: the growth during
  the steps. ``--no-memory`` skips it.

Each run appends a section to ``--out`` (default ``benchmarks/results/trainer_speed.md``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def set_env(work: Path) -> None:
    """nnU-Net's folders: WORK's raw and preprocessed data (read only); trainer output in a temporary folder."""
    results = os.environ.get("TRAINER_SPEED_RESULTS") or tempfile.mkdtemp(prefix="trainer_speed_")
    os.environ.update({"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                       "nnUNet_results": results, "TRAINER_SPEED_RESULTS": results, "nnUNet_compile": "f",
                       "nnUNet_n_proc_DA": "0"})
    from nnunet_scribble.ext_trainers import TRAINERS_PATH

    os.environ["nnUNet_extTrainer"] = TRAINERS_PATH


def build(name: str, work: Path, dataset: str, configuration: str, batch_size: int | None = None):
    """Trainer ``name`` on WORK's dataset, fold ``all``, CPU, after ``on_train_start`` (loaders running)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    pre = work / "nnUNet_preprocessed" / dataset
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False
    if batch_size:
        plans["configurations"][configuration]["batch_size"] = batch_size
    cls = recursive_find_trainer_class_by_name(name)
    if cls is None:
        sys.exit(f"trainer {name} not found (stock nnU-Net or `nnunet-scribble trainers`)")
    trainer = cls(plans, configuration, "all", load_json(str(pre / "dataset.json")), device=torch.device("cpu"))
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    return trainer


def saved_activation_bytes(trainer, batch) -> int:
    """Bytes of the distinct storages autograd saves for backward during one ``train_step``."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in trainer.network.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.train_step(batch)
    return sum(seen.values())


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_child(args) -> None:
    """Child mode: print the resident memory before and the peak during 2 train steps (MB, JSON)."""
    import torch

    torch.set_num_threads(args.threads)
    set_env(args.work)
    trainer = build(args.memory_child, args.work, args.dataset, args.configuration, args.batch_size)
    batches = [next(trainer.dataloader_train) for _ in range(2)]
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")        # reset VmHWM (the peak) to the current resident size
    except OSError:
        print(json.dumps({"error": "cannot reset the peak (/proc/self/clear_refs): Linux only"}))
        return
    before = _status_mb("VmRSS")
    for batch in batches:
        trainer.train_step(batch)
    print(json.dumps({"before_mb": before, "peak_mb": _status_mb("VmHWM")}))


def peak_memory(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--work", str(args.work), "--dataset", args.dataset, "--configuration",
           args.configuration, "--threads", str(args.threads), "--memory-child", name]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout)[-300:]}
    return json.loads(lines[-1])


def run(args) -> str:
    import torch

    torch.set_num_threads(args.threads)
    set_env(args.work)
    trainers = [build(name, args.work, args.dataset, args.configuration, args.batch_size) for name in args.trainers]
    times = {name: {"data": [], "step": []} for name in args.trainers}
    load_start = os.getloadavg()[0]
    for it in range(args.warmup + args.iterations):
        for name, trainer in zip(args.trainers, trainers):
            t0 = time.perf_counter()
            batch = next(trainer.dataloader_train)
            t1 = time.perf_counter()
            trainer.train_step(batch)
            t2 = time.perf_counter()
            if it >= args.warmup:
                times[name]["data"].append(t1 - t0)
                times[name]["step"].append(t2 - t1)
        print(f"[speed] iteration {it + 1}/{args.warmup + args.iterations}", flush=True)
    load_end = os.getloadavg()[0]
    activations = {name: saved_activation_bytes(t, next(t.dataloader_train)) / 2 ** 20
                   for name, t in zip(args.trainers, trainers)}
    cm = trainers[0].configuration_manager
    for t in trainers:
        t.on_train_end()
    memory = {} if args.no_memory else {name: peak_memory(name, args) for name in args.trainers}

    ref = args.trainers[0]
    stat = {n: {k: (float(np.median(v)), float(np.min(v))) for k, v in t.items()} for n, t in times.items()}
    rows = ["| trainer | data s/it median (min) | step s/it median (min) | step vs first, median (min) | "
            "data+step vs first | activations MB (vs first) | peak growth MB |", "|---|---|---|---|---|---|---|"]
    for name in args.trainers:
        s, r = stat[name], stat[ref]
        total = (s["data"][0] + s["step"][0]) / (r["data"][0] + r["step"][0])
        mem = memory.get(name, {})
        growth = f"{mem['peak_mb'] - mem['before_mb']:.0f}" if "peak_mb" in mem else ("n/a" if not mem else "failed")
        rows.append(f"| `{name}` | {s['data'][0]:.3f} ({s['data'][1]:.3f}) | {s['step'][0]:.3f} ({s['step'][1]:.3f}) | "
                    f"{s['step'][0] / r['step'][0]:.2f}x ({s['step'][1] / r['step'][1]:.2f}x) | {total:.2f}x | "
                    f"{activations[name]:.0f} ({activations[name] / activations[ref]:.2f}x) | {growth} |")
    command = " ".join(["python benchmarks/trainer_speed.py --work WORK"]
                       + ([f"--configuration {args.configuration}"] if args.configuration != "2d_quick" else [])
                       + ([f"--batch-size {args.batch_size}"] if args.batch_size else [])
                       + [f"--iterations {args.iterations} --warmup {args.warmup} --threads {args.threads}"]
                       + args.trainers)
    return (f"## {', '.join(args.trainers)} ({date.today().isoformat()})\n\n"
            f"- Data: {args.dataset}, configuration `{args.configuration}` (batch {args.batch_size or cm.batch_size}, "
            f"patch {list(cm.patch_size)}), fold all; {args.iterations} timed iterations per trainer after "
            f"{args.warmup} warm-up, trainers interleaved.\n"
            f"- Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, torch {torch.__version__} "
            f"({args.threads} thread(s)); load average {load_start:.1f} at start, {load_end:.1f} at end.\n"
            f"- Command: `{command}`\n\n" + "\n".join(rows) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trainers", nargs="*", help="trainer class names; the first is the reference (ratio 1)")
    p.add_argument("--work", type=Path, required=True, help="work folder of benchmarks/quick_protocol.py")
    p.add_argument("--dataset", default="Dataset027_ACDCScribble")
    p.add_argument("--configuration", default="2d_quick")
    p.add_argument("--batch-size", type=int, help="override the configuration's batch size (plans edited in memory)")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    p.add_argument("--out", type=Path, default=HERE / "results" / "trainer_speed.md")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.work = args.work.resolve()
    if args.memory_child:
        return peak_memory_child(args)
    if not args.trainers:
        p.error("give at least one trainer (stock nnUNetTrainer first, as the reference)")
    section = run(args)
    print(section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = args.out.read_text() if args.out.is_file() else (
        "# Cost of a training iteration (CPU)\n\nWritten by `benchmarks/trainer_speed.py` (one section per run, "
        "newest last); see its docstring for what is measured.\n")
    args.out.write_text(text.rstrip("\n") + "\n\n" + section)


if __name__ == "__main__":
    main()
