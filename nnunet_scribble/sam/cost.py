"""What SAM-SP's stages cost on a CPU, said before they start.

Per-slice costs measured on a 2-core CPU (``benchmarks/results/sam_pseudolabels.md``): stage A, the
LiteMedSAM encoder, 1.5-6 s per slice (1.7-2.5 s idle, ~3 s shared with trainings, more under heavy
load; an official ViT-B encoder: 21 s); stage B, SAM's mask-decoder fine-tuning, 0.3-0.9 s per slice
and epoch (idle two threads vs loaded one thread; the same decoder for every backend); writing the
pseudo-labels of a round, ~0.3 s per slice. GPU times were not measured.
"""
from __future__ import annotations

import os

ENCODE_SECONDS = {"litemedsam": (1.5, 6.0), "vit_b": (21.0, 21.0)}   # per slice, CPU
FINETUNE_SECONDS = (0.3, 0.9)                                       # per slice and epoch, CPU
PSEUDOLABEL_SECONDS = 0.3                                           # per slice and round, CPU
SHORTER = ("NNUNET_SCRIBBLE_SAM_ROUNDS=1 NNUNET_SCRIBBLE_SAM_EPOCHS=1 (nnUNetTrainerSAMSP and "
           "sam-pseudolabels; the command also takes --rounds/--epochs): on ACDC one round of one epoch "
           "already lifts the pseudo-label Dice from 0.820 to 0.886; or run `nnunet-scribble sam-pseudolabels` "
           "once where a GPU is (finished work is reused)")


def _span(seconds: tuple[float, float]) -> str:
    lo, hi = seconds
    unit, div, digits = ("h", 3600, 1) if hi >= 2 * 3600 else ("min", 60, 0) if hi >= 120 else ("s", 1, 0)
    text = f"{lo / div:.{digits}f}-{hi / div:.{digits}f}" if hi > lo * 1.05 else f"{hi / div:.{digits}f}"
    return f"{text} {unit}"


def cpu_estimate(backend: str, slices_to_encode: int, slices: int, finetune_epochs: int, rounds_to_write: int
                 ) -> str | None:
    """The message for a CPU run: what remains of stages A and B and about how long it takes, and how
    to shorten it; None when nothing remains. ``slices``: the fold's training slices (fine-tuning uses
    those with foreground scribbles, so its time is an upper bound); ``finetune_epochs``: the decoder
    epochs still to run over all rounds; ``rounds_to_write``: the pseudo-label rounds still to write."""
    parts, total = [], [0.0, 0.0]
    if slices_to_encode:
        per = ENCODE_SECONDS.get(backend)
        if per is None:
            parts.append(f"stage A encodes {slices_to_encode} slices with {backend} (CPU time not measured; "
                         f"LiteMedSAM takes 1.5-6 s per slice, ViT-B 21 s)")
        else:
            cost = (slices_to_encode * per[0], slices_to_encode * per[1])
            parts.append(f"stage A encodes {slices_to_encode} slices ({backend}: ~{per[0]:g}-{per[1]:g} s per "
                         f"slice, {_span(cost)})" if per[1] > per[0] else
                         f"stage A encodes {slices_to_encode} slices ({backend}: ~{per[0]:g} s per slice, "
                         f"{_span(cost)})")
            total = [total[0] + cost[0], total[1] + cost[1]]
    if finetune_epochs:
        cost = (finetune_epochs * slices * FINETUNE_SECONDS[0], finetune_epochs * slices * FINETUNE_SECONDS[1])
        parts.append(f"stage B fine-tunes the mask decoder for {finetune_epochs} epoch(s) over up to {slices} "
                     f"slices (~{FINETUNE_SECONDS[0]:g}-{FINETUNE_SECONDS[1]:g} s per slice and epoch, "
                     f"{_span(cost)})")
        total = [total[0] + cost[0], total[1] + cost[1]]
    if rounds_to_write:
        cost = rounds_to_write * slices * PSEUDOLABEL_SECONDS
        parts.append(f"writes {rounds_to_write} round(s) of pseudo-labels (~{PSEUDOLABEL_SECONDS:g} s per slice, "
                     f"{_span((cost, cost))})")
        total = [total[0] + cost, total[1] + cost]
    if not parts:
        return None
    unmeasured = slices_to_encode and backend not in ENCODE_SECONDS
    how_long = (f"about {_span(tuple(total))}" + (" plus the unmeasured encoding" if unmeasured else "")
                if total[1] else "an unmeasured time")
    return (f"[sam] on the CPU the SAM stages take {how_long} (in nnUNetTrainerSAMSP: before its first epoch): "
            + "; ".join(parts) + f" (GPU times not measured). Shorter: {SHORTER}.")


def fold_estimate(ds, sam, cache, train: list[str], rounds: int, epochs: int, folder: str) -> str | None:
    """:func:`cpu_estimate` for one fold's remaining work: uncached slices, rounds without their
    fine-tuned decoder file, rounds without all their pseudo-label files (what a resumed run skips)."""
    manifest = cache.read_manifest()
    slices = {c: int(ds.dataset_class(ds.folder, [c]).load_case(c)[0].shape[1 + ds.slice_axis]) for c in train}
    to_encode = sum(n for c, n in slices.items() if not cache.is_cached(c, manifest))
    finetune = sum(epochs for r in range(1, rounds + 1)
                   if not os.path.isfile(os.path.join(folder, f"decoder_round_{r}.pth")))
    to_write = sum(1 for r in range(rounds + 1)
                   if not all(os.path.isfile(ds.label_file(os.path.join(folder, f"round_{r}"), c)) for c in train))
    return cpu_estimate(sam.name, to_encode, sum(slices.values()), finetune, to_write)


def finetune_note(slices: int, epochs: int) -> str:
    """How long fine-tuning the decoder on ``slices`` for ``epochs`` takes on a CPU."""
    lo, hi = (slices * epochs * f for f in FINETUNE_SECONDS)
    return f"CPU: ~{FINETUNE_SECONDS[0]:g}-{FINETUNE_SECONDS[1]:g} s per slice and epoch, about {_span((lo, hi))}"
