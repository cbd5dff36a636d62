"""SAM-SP stages A and B on ACDC: encoder speed, fine-tuning cost from the cache vs re-encoding, and
pseudo-label Dice against the dense ground truth per round and class.

Builds (once) an nnU-Net dataset from a subset of ACDC patients under ``--root``: ``--train-patients``
are fold 0's training cases (their scribbles prompt SAM), ``--val-patients`` fold 0's validation cases
(never used by fold 0; fold 1 is the reverse split, used to choose defaults without touching fold 0).
Then runs ``run_pseudolabels`` (the code behind ``nnunet-scribble sam-pseudolabels``) for fold 0 with
LiteMedSAM, and times the pieces. Everything is resumable: a second run reuses the cache and rounds.

    python benchmarks/sam_pseudolabels.py --acdc ../shared/data/ACDC --root /tmp/sam_bench \\
        --train-patients 1-10 --val-patients 11-14 --threads 1 \\
        --json benchmarks/results/sam_pseudolabels.json

The full protocol (patients 001-070, fold "all") is ``--train-patients 1-70 --val-patients 71-85`` (about
1400 slices: ~30 min of encoding on a free 2-core CPU at 1.2 s/slice, minutes on a GPU).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path



def patient_list(spec: str) -> list[int]:
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def prepare(args) -> str:
    """Raw + preprocessed subset dataset under args.root; returns the dataset name."""
    root = Path(args.root).resolve()
    name = f"Dataset{args.dataset_id:03d}_ACDCSamSubset"
    env = dict(os.environ)
    pre = root / "nnUNet_preprocessed" / name
    train, val = patient_list(args.train_patients), patient_list(args.val_patients)
    if not (pre / "nnUNetPlans_2d").is_dir():
        src = root / "src"
        (src / "training").mkdir(parents=True, exist_ok=True)
        (src / "scribbles").mkdir(exist_ok=True)
        acdc = Path(args.acdc).resolve()
        for p in train + val:
            pid = f"patient{p:03d}"
            link = src / "training" / pid
            if not link.exists():
                link.symlink_to(acdc / "training" / pid)
            for f in (acdc / "scribbles").glob(f"{pid}_*"):
                if not (src / "scribbles" / f.name).exists():
                    (src / "scribbles" / f.name).symlink_to(f)
        bindir = Path(sys.executable).parent
        subprocess.run([str(bindir / "nnunet-scribble"), "convert", "acdc", "-i", str(src), "-s", str(src / "scribbles"),
                        "-d", str(args.dataset_id), "-n", "ACDCSamSubset", "-np", "1"], env=env, check=True)
        subprocess.run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", str(args.dataset_id), "-c", "2d", "-np", "1"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
    keys = sorted(f.name[:-5] for f in (pre / "nnUNetPlans_2d").glob("*.b2nd") if not f.name.endswith("_seg.b2nd"))
    a = [k for k in keys if int(k[7:10]) in train]
    b = [k for k in keys if int(k[7:10]) in val]
    splits = [{"train": a, "val": b}, {"train": b, "val": a}]
    if not (pre / "splits_final.json").is_file() or json.load(open(pre / "splits_final.json")) != splits:
        json.dump(splits, open(pre / "splits_final.json", "w"), indent=1)
    return name


def encoder_speed(sam, ds, case: str, n: int) -> dict:
    from nnunet_scribble.sam.cache import scale_slices

    images = scale_slices(ds.load_case(case).image)[:n]
    sam.encode(images[:1])                                   # warm-up
    t = time.perf_counter()
    for i in range(len(images)):
        sam.encode(images[i:i + 1])
    sec = (time.perf_counter() - t) / len(images)
    return {"seconds_per_slice": sec, "slices_per_second": 1 / sec, "slices": len(images),
            "slice_shape": list(images.shape[1:])}


def vit_b_encoder_speed(ds, case: str, n: int = 2) -> dict:
    """Encoder cost of an official SAM ViT-B (random weights: same architecture, same cost) per slice."""
    import torch

    from nnunet_scribble.sam.backends import OFFICIAL_SPECS, SamBackend, build_official_sam
    from nnunet_scribble.sam.cache import scale_slices

    sam = build_official_sam(OFFICIAL_SPECS["vit_b"]).eval()
    b = SamBackend("vit_b", "", "0" * 64, sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, 1024,
                   (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    images = scale_slices(ds.load_case(case).image)[:n + 1]
    b.encode(images[:1])                                     # warm-up
    t = time.perf_counter()
    for i in range(1, len(images)):
        b.encode(images[i:i + 1])
    sec = (time.perf_counter() - t) / (len(images) - 1)
    del sam, b
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"seconds_per_slice": sec, "slices": len(images) - 1}


def epoch_cost(sam, ds, cache, samples, pl_folder, n: int) -> dict:
    """Seconds per slice of one fine-tuning step from cached embeddings vs. with re-encoding the slice."""
    import torch

    from nnunet_scribble.sam.cache import scale_slices
    from nnunet_scribble.sam.decoder import FinetuneConfig, embedding_tensor, sample_loss

    cfg = FinetuneConfig()
    subset = samples[:n]
    decoder = copy.deepcopy(sam.mask_decoder)
    for p in decoder.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pls = {}
    for s in subset:
        if s.case not in pls:
            pls[s.case] = ds.read_label_map(pl_folder, s.case)
    images = {s.case: scale_slices(ds.load_case(s.case).image) for s in subset}

    def step(s, emb):
        opt.zero_grad(set_to_none=True)
        sample_loss(decoder, sam, emb, s, pls[s.case][s.index], ds.num_classes, cfg).backward()
        opt.step()

    t = time.perf_counter()
    for s in subset:
        step(s, embedding_tensor(cache.load, s, sam.device))
    cached = (time.perf_counter() - t) / len(subset)
    t = time.perf_counter()
    for s in subset:
        emb = sam.encode(images[s.case][s.index:s.index + 1]).to(sam.device)
        step(s, emb)
    reencode = (time.perf_counter() - t) / len(subset)
    return {"slices": len(subset), "seconds_per_slice_cached": cached, "seconds_per_slice_reencoding": reencode,
            "speedup": reencode / cached, "fold_slices": len(samples),
            "epoch_seconds_cached": cached * len(samples), "epoch_seconds_reencoding": reencode * len(samples)}


def markdown(res: dict) -> str:
    lines = []
    rounds = res["dice"]
    names = list(next(iter(rounds.values()))["per_class"]) if rounds else []
    lines += ["| round | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1)]
    for r, d in sorted(rounds.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {r} | " + " | ".join(f"{d['per_class'][n]:.3f}" for n in names) + f" | {d['mean']:.3f} |")
    e, c = res["encoder"], res["epoch_cost"]
    lines += ["", f"- encoder: {e['seconds_per_slice']:.2f} s/slice ({e['slices_per_second']:.2f} slices/s), "
                  f"{e['slices']} slices of {e['slice_shape']}",
              f"- fine-tuning step: {c['seconds_per_slice_cached']:.3f} s/slice from the cache vs "
              f"{c['seconds_per_slice_reencoding']:.3f} s/slice re-encoding ({c['speedup']:.1f}x); one epoch over the "
              f"fold's {c['fold_slices']} slices: {c['epoch_seconds_cached']:.0f} s vs {c['epoch_seconds_reencoding']:.0f} s",
              f"- stage times: {json.dumps(res['timings'])}",
              *([f"- official SAM ViT-B encoder (random weights, 1024x1024 input): {res['vit_b_encoder']['seconds_per_slice']:.1f} "
                 f"s/slice -> fine-tuning from the cache would be "
                 f"{(res['vit_b_encoder']['seconds_per_slice'] + c['seconds_per_slice_cached']) / c['seconds_per_slice_cached']:.0f}x "
                 f"faster than re-encoding with ViT-B (same decoder)"] if res.get("vit_b_encoder") else []),
              f"- machine: {res['machine']}"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--acdc", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ACDC"))
    ap.add_argument("--root", required=True, help="nnU-Net folders for the benchmark dataset (outside the repo)")
    ap.add_argument("--dataset-id", type=int, default=901)
    ap.add_argument("--train-patients", default="1-10")
    ap.add_argument("--val-patients", default="11-14")
    ap.add_argument("--fold", default="0")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--speed-slices", type=int, default=8)
    ap.add_argument("--epoch-slices", type=int, default=16)
    ap.add_argument("--no-vit-b", action="store_true", help="skip timing an official ViT-B encoder")
    ap.add_argument("--json", default=None, help="write all numbers here")
    args = ap.parse_args()
    if not Path(args.acdc, "training").is_dir():
        print(f"ACDC not found at {args.acdc}: nothing to benchmark")
        return 0
    root = Path(args.root).resolve()
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = str(root / k)
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from nnunet_scribble.sam.backends import load_backend
    from nnunet_scribble.sam.cache import EmbeddingCache
    from nnunet_scribble.sam.data import PreprocessedDataset
    from nnunet_scribble.sam.decoder import FinetuneConfig, SliceSample
    from nnunet_scribble.sam.prompts import PromptRules, slice_prompts
    from nnunet_scribble.sam.pseudolabels import StageBConfig, run_pseudolabels

    name = prepare(args)
    t0 = time.time()
    result = run_pseudolabels(name, "2d", args.fold, device="cpu",
                              config=StageBConfig(rounds=args.rounds, finetune=FinetuneConfig(epochs=args.epochs)))
    wall = time.time() - t0
    manifest = json.load(open(os.path.join(result.fold_folder, "stage_b.json")))

    ds = PreprocessedDataset(name, "2d")
    sam = load_backend(device="cpu")
    cache = EmbeddingCache(ds, sam)
    rules = PromptRules().for_backend(sam)
    samples = []
    for case in result.train_cases:
        cs = ds.load_case(case)
        for z in range(len(cs.scribbles)):
            pr = slice_prompts(cs.scribbles[z], ds.classes[1:], ds.num_classes, rules)
            if pr:
                samples.append(SliceSample(case, z, cs.scribbles[z], pr))
    res = {
        "dataset": name, "fold": args.fold, "train_cases": len(result.train_cases), "val_cases": len(result.val_cases),
        "slices": len(samples), "rounds": args.rounds, "epochs": args.epochs,
        "dice": {str(k): {"per_class": v["per_class"], "mean": v["mean"]} for k, v in result.dice.items() if v},
        "merge_priority": result.merge_priority,
        "timings": {"this_run_wall_seconds": round(wall), "pseudolabel_seconds_per_round":
                    {r: round(e["seconds_pseudolabels"], 1) for r, e in manifest["rounds"].items()},
                    "finetune_seconds_per_round": {r: round(e["seconds"]) for r, e in manifest["finetune"].items()},
                    "finetune_losses": {r: [round(x, 4) for x in e["epoch_losses"]] for r, e in manifest["finetune"].items()}},
        "encoder": encoder_speed(sam, ds, result.train_cases[0], args.speed_slices),
        "epoch_cost": epoch_cost(sam, ds, cache, samples, result.folder, args.epoch_slices),
        "vit_b_encoder": None if args.no_vit_b else vit_b_encoder_speed(ds, result.train_cases[0]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
                   f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at the end",
        "command": " ".join(sys.argv),
    }
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
