"""Seconds per training iteration of several trainers, in one process, on the same plans and data.

    python benchmarks/iteration_speed.py --work WORK nnUNetTrainer nnUNetTrainerPCE nnUNetTrainerMaCo

Every trainer is built in this process on ``WORK``'s preprocessed ACDC scribble dataset (made by
``benchmarks/quick_protocol.py``) with the same configuration (default ``2d_quick``: quarter-width 2D
U-Net, batch 8, patch 256x224) and fold ``all``. The trainers take turns, one iteration each, so
they share the machine's load equally (the dev machine is shared). Per iteration two times are taken:

- **data**: ``next(dataloader)``, i.e. loading + nnU-Net's augmentation (+ a method's extra
  transforms, e.g. MaCo's CPL maps), run here in the main process (``nnUNet_n_proc_DA=0``); in
  real training this runs in parallel augmentation workers;
- **step**: ``train_step`` (forward, losses, backward, optimizer), the part that runs serially.

Reported: medians over the timed iterations (after warm-up) and each trainer's ratio to the first
trainer (give stock ``nnUNetTrainer`` first). Each run appends a section to --out (Markdown), so the
numbers stay in the repository.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def build(trainer_name: str, work: Path, dataset: str, configuration: str):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    pre = work / "nnUNet_preprocessed" / dataset
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False
    cls = recursive_find_trainer_class_by_name(trainer_name)
    trainer = cls(plans, configuration, "all", load_json(str(pre / "dataset.json")), device=torch.device("cpu"))
    trainer.on_train_start()
    return trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trainers", nargs="+", help="trainer class names; the first is the reference (ratio 1)")
    p.add_argument("--work", type=Path, required=True, help="work folder of benchmarks/quick_protocol.py")
    p.add_argument("--dataset", default="Dataset027_ACDCScribble")
    p.add_argument("--configuration", default="2d_quick")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE / "results" / "iteration_speed.md")
    args = p.parse_args()

    work = args.work.resolve()
    os.environ.update({"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                       "nnUNet_results": str(work / "nnUNet_results_speed"), "nnUNet_compile": "f",
                       "nnUNet_n_proc_DA": "0"})
    from nnunet_scribble.ext_trainers import TRAINERS_PATH

    os.environ["nnUNet_extTrainer"] = TRAINERS_PATH
    import torch

    trainers = [build(name, work, args.dataset, args.configuration) for name in args.trainers]
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
        print(f"iteration {it + 1}/{args.warmup + args.iterations}", flush=True)
    load_end = os.getloadavg()[0]

    ref = args.trainers[0]
    med = {n: {k: float(np.median(v)) for k, v in t.items()} for n, t in times.items()}
    rows = ["| trainer | data s/it (median) | step s/it (median) | step vs first | data+step s/it | data+step vs first |",
            "|---|---|---|---|---|---|"]
    for name in args.trainers:
        m, r = med[name], med[ref]
        rows.append(f"| `{name}` | {m['data']:.3f} | {m['step']:.3f} | {m['step'] / r['step']:.2f}x | "
                    f"{m['data'] + m['step']:.3f} | {(m['data'] + m['step']) / (r['data'] + r['step']):.2f}x |")
    tr = trainers[0]
    header = (f"## {', '.join(args.trainers)} ({date.today().isoformat()})\n\n"
              f"- Data: {args.dataset}, configuration `{args.configuration}` (batch {tr.configuration_manager.batch_size}, "
              f"patch {tr.configuration_manager.patch_size}), fold all; {args.iterations} timed iterations per trainer "
              f"after {args.warmup} warm-up, trainers interleaved.\n"
              f"- Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads); load average {load_start:.1f} at start, {load_end:.1f} at end.\n"
              f"- Command: `python benchmarks/iteration_speed.py --work WORK {' '.join(args.trainers)}`\n")
    section = header + "\n" + "\n".join(rows) + "\n"
    print(section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = args.out.read_text() if args.out.is_file() else (
        "# Seconds per training iteration (CPU)\n\nWritten by `benchmarks/iteration_speed.py` (one section per run, "
        "newest last); see its docstring for what is timed.\n")
    args.out.write_text(text.rstrip("\n") + "\n\n" + section)


if __name__ == "__main__":
    main()
