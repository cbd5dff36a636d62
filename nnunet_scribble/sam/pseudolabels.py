"""Stage B of SAM-SP: pseudo-labels for one fold, rounds 0..R, decoder fine-tuning between rounds.

    round 0: pretrained decoder -> PL_0
    round r (1..R): fine-tune the decoder (from round r-1's weights) on PL_{r-1} + scribbles -> PL_r

Only the fold's *training* cases are touched (prompts, embeddings, fine-tuning, pseudo-labels); its
validation cases never are. Outputs, under
``$nnUNet_preprocessed/<dataset>/sam_pseudolabels/<data identifier>/<backend>-<sha12>/fold_<f>/``:

- ``round_<r>/<case>.b2nd``: pseudo-label maps in the preprocessed geometry (nnU-Net's
  ``folder_with_segs_from_previous_stage`` format); the trainer uses ``round_<R>``. Slices without any
  scribble get the ignore label (nothing is known there);
- ``decoder_round_<r>.pth``: the fine-tuned mask decoder (state dict) used for round r;
- ``dice.json``: per round and class the pseudo-label Dice against ``labelsTr_dense`` (when present);
- ``overlays/round_<r>/*.png``: image, scribbles, prompts, pseudo-label (and dense labels) of a few slices;
- ``stage_b.json`` (manifest) and ``stage_b.log``.

Everything is resumed: finished rounds are kept, a round's cases are written one by one (atomically),
fine-tuning checkpoints every epoch. Any change of backend, checkpoint, prompt/merge/fine-tuning
parameters, training cases, scribbles or preprocessed images starts the fold over. Raising ``rounds``
later continues from the last finished round. A file lock per fold folder serialises parallel jobs.

Stages, in the order ``_run_locked`` calls them on a :class:`FoldRun` (each usable on its own):
``encode_stage`` (stage A), ``prompt_stage`` (slices, scribbles, prompts), ``stage_identity`` +
``open_manifest`` (invalidation), ``dense_reference`` (dense labels), ``merge_priority_stage``, then per round
``finetune_round`` (r > 0), ``round_complete`` / ``pseudo_label_round``, ``round_dice`` and
``write_round_overlays``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.evaluation import metrics
from nnunet_scribble.files import atomic_write, atomic_write_json, locked, require_writable
from nnunet_scribble.sam.cache import DEFAULT_PERCENTILES, EmbeddingCache, cache_folder_of, scale_slices
from nnunet_scribble.sam.cost import finetune_note, fold_estimate
from nnunet_scribble.sam.data import PreprocessedDataset
from nnunet_scribble.sam.decoder import FinetuneConfig, SliceSample, finetune_decoder, predict_probs
from nnunet_scribble.sam.merge import apply_scribbles, merge_class_masks, priority_by_area
from nnunet_scribble.sam.prompts import PromptRules, slice_prompts

STAGE_B_FORMAT = 1
# defaults of the command and of nnUNetTrainerSAMSP, overridable from the environment
ENV_ROUNDS = "NNUNET_SCRIBBLE_SAM_ROUNDS"
ENV_EPOCHS = "NNUNET_SCRIBBLE_SAM_EPOCHS"
DEFAULT_ROUNDS, DEFAULT_EPOCHS = 2, 30


def setting_from_env(value: int | None, variable: str, default: int) -> int:
    """``value`` if set, else the integer in ``$variable``, else ``default``."""
    if value is not None:
        return value
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise UserFacingError(f"{variable}={text!r} is not a non-negative integer; unset it or give e.g. "
                              f"{variable}={default}.")
    return number


@dataclass(frozen=True)
class StageBConfig:
    rounds: int = DEFAULT_ROUNDS
    prompts: PromptRules = field(default_factory=PromptRules)   # mode None: "box" if box-trained, else "points"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    merge_priority: Optional[tuple] = None         # None: by increasing mean round-0 mask area
    threshold: float = 0.5
    channel: int = 0
    percentiles: tuple = DEFAULT_PERCENTILES
    overlay_slices: int = 4


@dataclass
class StageBResult:
    folder: str                       # final pseudo-labels (round R)
    fold_folder: str
    train_cases: list
    val_cases: list
    dice: dict                        # round -> {"per_class": {...}, "mean": ...} (empty without dense labels)
    timings: dict
    merge_priority: list


def dice_per_case(pl: np.ndarray, gt: np.ndarray, classes) -> dict[int, float]:
    """Dice (``metrics.dice``) per class of one label map against its reference; a class absent from both
    gets no entry, so class means run over the cases that have the class."""
    out = {}
    for c in classes:
        p, g = pl == c, gt == c
        if p.any() or g.any():
            out[c] = metrics.dice(p, g)
    return out


def summarise_dice(per_case: dict[str, dict[int, float]], class_names: dict[int, str]) -> dict:
    per_class = {}
    for c, name in class_names.items():
        vals = [d[c] for d in per_case.values() if c in d]
        per_class[name] = float(np.mean(vals)) if vals else None
    valid = [v for v in per_class.values() if v is not None]
    return {"per_class": per_class, "mean": float(np.mean(valid)) if valid else None, "cases": len(per_case),
            "per_case": {k: {class_names[c]: v for c, v in d.items()} for k, d in per_case.items()}}


class _Logger:
    def __init__(self, path: Optional[str], echo=print):
        self.path, self.echo = path, echo

    def __call__(self, msg: str) -> None:
        if self.echo:
            self.echo(msg)
        if self.path:
            with open(self.path, "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")


_READ_ONLY_FIX = "Or point nnUNet_preprocessed at a writable copy of the preprocessed dataset."


def fold_folder_of(dataset: PreprocessedDataset, backend, fold) -> str:
    return os.path.join(dataset.base, "sam_pseudolabels", dataset.data_identifier, backend.key, f"fold_{fold}")


def run_pseudolabels(dataset: str | int, configuration: str, fold, backend: Optional[str] = None,
                     checkpoint: Optional[str] = None, plans: str = "nnUNetPlans",
                     config: StageBConfig = StageBConfig(), device=None, progress: bool = True,
                     echo=print, random_split: bool = False) -> StageBResult:
    """Run (or resume) stages A and B for one fold; returns where the final pseudo-labels are.

    A fold outside ``splits_final.json`` is refused unless ``random_split`` (nnU-Net's seeded 80:20 split).
    The folders written (embedding cache, pseudo-labels) are checked for writability before any work."""
    from nnunet_scribble.sam.backends import load_backend

    ds = PreprocessedDataset(dataset, configuration, plans)
    if config.rounds < 0:
        raise UserFacingError(f"--rounds must be >= 0 (got {config.rounds}).")
    outputs = {"sam_embeddings": "the SAM embedding cache", "sam_pseudolabels": "the SAM pseudo-labels"}
    for sub, what in outputs.items():
        require_writable(os.path.join(ds.base, sub, ds.data_identifier), what, _READ_ONLY_FIX)
    train, val = ds.fold_split(fold, random_split=random_split, log=echo)
    sam = load_backend(backend, checkpoint, device=device)
    folder = fold_folder_of(ds, sam, fold)
    require_writable(cache_folder_of(ds, sam), outputs["sam_embeddings"], _READ_ONLY_FIX)
    require_writable(folder, outputs["sam_pseudolabels"], _READ_ONLY_FIX)
    os.makedirs(folder, exist_ok=True)
    log = _Logger(os.path.join(folder, "stage_b.log"), echo)
    with locked(os.path.join(folder, ".lock"), f"the SAM pseudo-labels of fold {fold} ({folder})",
                log=lambda m: log(f"[sam] {m}")):
        return _run_locked(ds, sam, fold, train, val, config, folder, log, progress)


@dataclass
class FoldRun:
    """What every stage of one fold's run works with: the dataset, the SAM backend, the fold's training cases,
    the parameters, the fold folder (``fold_folder_of``) and the log."""
    ds: PreprocessedDataset
    sam: object
    fold: object
    train: list
    config: StageBConfig
    folder: str
    log: Callable[[str], None]
    progress: bool = True

    @property
    def manifest_file(self) -> str:
        return os.path.join(self.folder, "stage_b.json")

    def round_dir(self, r: int) -> str:
        return os.path.join(self.folder, f"round_{r}")

    @property
    def foreground(self) -> list[int]:
        return self.ds.classes[1:]

    @property
    def class_names(self) -> dict[int, str]:
        """Foreground class -> name (dataset.json)."""
        return {c: n for n, c in self.ds.dataset_json["labels"].items()
                if isinstance(c, int) and c in self.foreground}


@dataclass
class FoldPrompts:
    """The fold's training cases as slices, the prompted slices, and the slices shown in overlays."""
    cases: dict                       # case -> CaseSlices (images kept only for the overlay slices)
    samples: list                     # SliceSample of every slice with foreground scribbles
    overlay_samples: list

    def by_case(self) -> dict[str, list]:
        out: dict[str, list] = {}
        for s in self.samples:
            out.setdefault(s.case, []).append(s)
        return out


def _run_locked(ds: PreprocessedDataset, sam, fold, train, val, config: StageBConfig, folder: str, log,
                progress: bool) -> StageBResult:
    """The stages in order (the fold lock held): encode, prompts, manifest, dense labels, merge priority, rounds."""
    t_start = time.time()
    run = FoldRun(ds, sam, fold, train, config, folder, log, progress)
    rules = config.prompts.for_backend(sam)
    log(f"[sam] {ds.name} {ds.configuration} fold {fold}: {len(train)} training case(s) (validation cases "
        f"{len(val)} are not used), backend {sam.name} ({sam.checkpoint}, sha256 {sam.checkpoint_sha256[:12]}), "
        f"prompts {rules.mode}, rounds 0..{config.rounds}")
    cache, stats_a = encode_stage(run)
    prompts = prompt_stage(run, rules)
    manifest = open_manifest(run, stage_identity(run, cache, rules))
    dense = dense_reference(run, prompts.cases)
    embeddings = cache.load
    pretrained = copy.deepcopy(sam.mask_decoder)
    decoder = copy.deepcopy(pretrained)
    timings = {"stage_a": stats_a, "rounds": {}}
    priority = merge_priority_stage(run, manifest, pretrained, embeddings, prompts.samples)
    for r in range(config.rounds + 1):
        t_round = time.time()
        if r > 0:
            decoder = finetune_round(run, r, decoder, embeddings, prompts.samples, manifest)
        if round_complete(run, manifest, r):
            log(f"[sam] round {r}: pseudo-labels already complete ({run.round_dir(r)})")
            continue
        entry = pseudo_label_round(run, r, decoder, embeddings, prompts, priority)
        if dense:
            entry["dice"] = round_dice(run, r, dense)
        write_round_overlays(run, r, prompts, dense)
        manifest["rounds"][str(r)] = entry
        atomic_write_json(run.manifest_file, manifest)
        _write_dice_json(folder, manifest)
        timings["rounds"][r] = time.time() - t_round
    final = run.round_dir(config.rounds)
    timings["total_seconds"] = time.time() - t_start
    log(f"[sam] done in {timings['total_seconds']:.0f} s: final pseudo-labels in {final}")
    return StageBResult(folder=final, fold_folder=folder, train_cases=train, val_cases=val,
                        dice={int(k): v.get("dice") for k, v in manifest["rounds"].items()}, timings=timings,
                        merge_priority=priority)


def encode_stage(run: FoldRun) -> tuple[EmbeddingCache, dict]:
    """Stage A: the image embeddings of the training cases (cached, resumed); returns (cache, its statistics)."""
    config, sam = run.config, run.sam
    cache = EmbeddingCache(run.ds, sam, config.channel, config.percentiles)
    if not str(sam.device).startswith("cuda") and (estimate := fold_estimate(
            run.ds, sam, cache, run.train, config.rounds, config.finetune.epochs, run.folder)):
        run.log(estimate)
    return cache, cache.ensure(run.train, progress=run.progress, log=run.log)


def prompt_stage(run: FoldRun, rules: PromptRules) -> FoldPrompts:
    """Slices, scribbles and prompts of the training cases; refuses a fold without foreground scribbles."""
    ds = run.ds
    cases, samples = {}, []
    for case in run.train:
        cs = ds.load_case(case, run.config.channel)
        cases[case] = cs
        for z in range(len(cs.scribbles)):
            prompts = slice_prompts(cs.scribbles[z], run.foreground, ds.num_classes, rules)
            if prompts:
                samples.append(SliceSample(case, z, cs.scribbles[z], prompts))
    overlay_samples = _overlay_samples(samples, run.train, run.config.overlay_slices)
    for case, cs in cases.items():          # keep images in memory only for the overlay slices
        if case not in {s.case for s in overlay_samples}:
            cs.image = None
    n_labeled = sum(int(((cs.scribbles >= 0) & (cs.scribbles < ds.num_classes)).sum()) for cs in cases.values())
    if not samples or n_labeled == 0:
        raise UserFacingError(
            f"The training cases of fold {run.fold} in {ds.folder} have no foreground scribbles (labels 1..{ds.num_classes - 1} "
            f"in <case>_seg.b2nd), so SAM has nothing to prompt. Check that labelsTr of the raw dataset holds the "
            f"scribbles (everything unannotated = ignore label {ds.ignore_label}) and rerun preprocessing.")
    run.log(f"[sam] {len(samples)} slice(s) with foreground scribbles, "
            f"{sum(len(s.prompts) for s in samples)} prompt set(s)")
    return FoldPrompts(cases, samples, overlay_samples)


def stage_identity(run: FoldRun, cache: EmbeddingCache, rules: PromptRules) -> dict:
    """Everything the fold's outputs depend on; any change starts the fold over (``open_manifest``)."""
    config, ds = run.config, run.ds
    return {
        "format": STAGE_B_FORMAT, "backend": run.sam.identity(), "cache_params": cache.params,
        "prompts": rules.to_dict(), "finetune": config.finetune.to_dict(),
        "merge_priority": list(config.merge_priority) if config.merge_priority else "auto",
        "threshold": config.threshold, "train_cases": run.train,
        "inputs": hashlib.sha256("".join(cache.fingerprint(c) + ds.scribble_fingerprint(c) for c in run.train)
                                 .encode()).hexdigest(),
    }


def open_manifest(run: FoldRun, identity: dict) -> dict:
    """The fold's manifest (``stage_b.json``) if it was made with ``identity``; else the fold's outputs are
    deleted and a fresh manifest is written."""
    manifest_file = run.manifest_file
    manifest = json.load(open(manifest_file)) if os.path.isfile(manifest_file) else None
    if manifest is None or manifest.get("identity") != identity:
        if manifest is not None:
            run.log("[sam] stage B inputs or parameters changed since the last run: starting this fold over")
        for name in os.listdir(run.folder):
            if name.startswith(("round_", "decoder_", "finetune_", "overlays", "dice")):
                p = os.path.join(run.folder, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        manifest = {"identity": identity, "merge_priority_used": None, "rounds": {}, "finetune": {}}
        atomic_write_json(manifest_file, manifest)
    return manifest


def dense_reference(run: FoldRun, cases: dict) -> dict:
    """case -> (n, H, W) dense labels (``labelsTr_dense``) in the preprocessed geometry, for the cases that
    have them; empty without any."""
    ds, dense = run.ds, {}
    if any(ds.dense_label_file(c) for c in run.train):
        for case, cs in cases.items():
            d = ds.dense_labels(case, cs.properties, cs.spatial_shape)
            if d is not None:
                dense[case] = d
        run.log(f"[sam] dense labels found for {len(dense)}/{len(run.train)} training case(s): pseudo-label Dice "
                "is logged")
    else:
        run.log("[sam] no labelsTr_dense in the raw dataset: pseudo-label Dice is not computed")
    return dense


def merge_priority_stage(run: FoldRun, manifest: dict, pretrained, embeddings, samples: list) -> list[int]:
    """The class order for overlapping masks, fixed for all rounds: ``config.merge_priority``, else the one
    recorded in the manifest, else by increasing mean round-0 mask area. Recorded in the manifest."""
    from tqdm import tqdm

    config, ds, foreground = run.config, run.ds, run.foreground
    if config.merge_priority:
        unknown = sorted(set(config.merge_priority) ^ set(foreground))
        if unknown:
            raise UserFacingError(f"--merge-priority must list each foreground class of {ds.name} once "
                                  f"({foreground}); got {list(config.merge_priority)}.")
        priority = [int(c) for c in config.merge_priority]
    elif manifest["merge_priority_used"]:
        priority = manifest["merge_priority_used"]
    else:
        areas: dict[int, list] = {}
        for s in tqdm(samples, desc="SAM round 0 mask areas", unit="slice", disable=not run.progress, leave=False):
            probs = predict_probs(pretrained, run.sam, embeddings, s)
            for c, p in zip(s.classes, probs):
                areas.setdefault(c, []).append(float((p > config.threshold).sum()))
        mean_areas = {c: float(np.mean(v)) for c, v in areas.items()}
        priority = priority_by_area(mean_areas, foreground)
        class_names = run.class_names
        run.log("[sam] merge priority (smaller mean round-0 mask area wins overlaps): "
                + " > ".join(f"{class_names.get(c, c)} ({mean_areas.get(c, 0):.0f} px)" for c in priority))
    manifest["merge_priority_used"] = priority
    atomic_write_json(run.manifest_file, manifest)
    return priority


def round_complete(run: FoldRun, manifest: dict, r: int) -> bool:
    """Round r is recorded complete and every training case's pseudo-label file exists."""
    round_dir = run.round_dir(r)
    return (manifest["rounds"].get(str(r), {}).get("complete", False)
            and all(os.path.isfile(run.ds.label_file(round_dir, c)) for c in run.train))


def pseudo_label_round(run: FoldRun, r: int, decoder, embeddings, prompts: FoldPrompts, priority: list) -> dict:
    """Writes the round's missing pseudo-label files (one atomic file per case); returns its manifest entry."""
    from tqdm import tqdm

    ds, round_dir = run.ds, run.round_dir(r)
    os.makedirs(round_dir, exist_ok=True)
    t_pl_start = time.time()
    by_case = prompts.by_case()
    todo = [c for c in run.train if not os.path.isfile(ds.label_file(round_dir, c))]
    for case in tqdm(todo, desc=f"SAM pseudo-labels round {r}", unit="case", disable=not run.progress):
        pl = pseudo_label_case(prompts.cases[case], by_case.get(case, []), decoder, run.sam, embeddings, priority,
                               ds.num_classes, ds.ignore_label, run.config.threshold)
        ds.write_label_map(round_dir, case, pl)
    return {"complete": True, "folder": round_dir, "seconds_pseudolabels": time.time() - t_pl_start}


def round_dice(run: FoldRun, r: int, dense: dict) -> dict:
    """Dice of round r's pseudo-labels against the dense labels (``summarise_dice``), logged."""
    round_dir = run.round_dir(r)
    per_case = {c: dice_per_case(run.ds.read_label_map(round_dir, c), dense[c], run.foreground) for c in dense}
    summary = summarise_dice(per_case, run.class_names)
    run.log(f"[sam] round {r}: pseudo-label Dice vs dense labels: mean {summary['mean']:.3f} ("
            + ", ".join(f"{k} {v:.3f}" for k, v in summary["per_class"].items() if v is not None) + ")")
    return summary


def finetune_round(run: FoldRun, r: int, decoder, embeddings, samples: list, manifest: dict):
    """The decoder of round r: loaded if fine-tuned before, else fine-tuned now (from round r-1's decoder) on
    PL_{r-1}, checkpointed every epoch, saved atomically and recorded in the manifest."""
    import torch

    ds, sam, config, folder, log = run.ds, run.sam, run.config, run.folder, run.log
    decoder_file = os.path.join(folder, f"decoder_round_{r}.pth")
    if os.path.isfile(decoder_file):
        decoder.load_state_dict(torch.load(decoder_file, map_location="cpu", weights_only=True))
        return decoder
    prev_dir = run.round_dir(r - 1)
    targets = {}
    volumes = {}
    for s in samples:
        if s.case not in volumes:
            volumes[s.case] = ds.read_label_map(prev_dir, s.case)
        targets[(s.case, s.index)] = volumes[s.case][s.index]
    log(f"[sam] fine-tuning the mask decoder on round {r - 1} pseudo-labels: {len(samples)} slices x "
        f"{config.finetune.epochs} epochs (AdamW lr {config.finetune.lr:g}, wd {config.finetune.weight_decay:g})"
        + ("" if str(sam.device).startswith("cuda") else f"; {finetune_note(len(samples), config.finetune.epochs)}"))
    state_file = os.path.join(folder, f"finetune_round_{r}.state.pth")
    stats = finetune_decoder(decoder, sam, embeddings, samples, targets, ds.num_classes, config.finetune,
                             state_file=state_file, progress=run.progress, log=log)
    atomic_write(decoder_file, lambda tmp: torch.save(decoder.state_dict(), tmp))
    if os.path.isfile(state_file):
        os.remove(state_file)
    manifest["finetune"][str(r)] = {"epoch_losses": stats["epoch_losses"], "seconds": stats["seconds"],
                                    "seconds_per_epoch": stats["seconds"] / max(1, config.finetune.epochs -
                                                                                stats["resumed_from_epoch"])}
    atomic_write_json(run.manifest_file, manifest)
    return decoder


def pseudo_label_case(cs, samples, decoder, sam, embeddings, priority, num_classes: int, ignore_label: int,
                      threshold: float = 0.5) -> np.ndarray:
    """(n, H, W) pseudo-label of one case: merged SAM masks on prompted slices, scribbles on top,
    background on slices with background scribbles only, ignore on slices without scribbles."""
    labeled = (cs.scribbles >= 0) & (cs.scribbles < num_classes)
    pl = np.zeros(cs.scribbles.shape, np.int16)
    pl[~labeled.reshape(len(pl), -1).any(1)] = ignore_label
    for s in samples:
        probs = predict_probs(decoder, sam, embeddings, s)
        pl[s.index] = merge_class_masks(s.classes, probs, priority, threshold)
    for z in range(len(pl)):
        if labeled[z].any():
            pl[z] = apply_scribbles(pl[z], cs.scribbles[z], num_classes)
    return pl


def _overlay_samples(samples, train, n):
    if n <= 0:
        return []
    picked, cases = [], []
    for case in train:
        cs = [s for s in samples if s.case == case]
        if cs:
            cases.append(cs)
    step = max(1, len(cases) // n)
    for cs in cases[::step][:n]:
        best = max(cs, key=lambda s: (len(s.prompts), -abs(s.index - cs[len(cs) // 2].index)))
        picked.append(best)
    return picked


def write_round_overlays(run: FoldRun, r: int, prompts: FoldPrompts, dense: dict) -> None:
    """``overlays/round_<r>/<case>_slice<z>.png`` for the overlay slices (with per-slice Dice when dense)."""
    from nnunet_scribble.sam.overlays import write_overlay

    ds, round_dir, class_names = run.ds, run.round_dir(r), run.class_names
    volumes = {}
    for s in prompts.overlay_samples:
        if s.case not in volumes:
            volumes[s.case] = ds.read_label_map(round_dir, s.case)
        cs = prompts.cases[s.case]
        image = scale_slices(cs.image[s.index:s.index + 1])[0]
        pl = volumes[s.case][s.index]
        d = dense[s.case][s.index] if s.case in dense else None
        title = f"{s.case} slice {s.index}, round {r}"
        if d is not None:
            dice = dice_per_case(pl, d, s.classes)
            title += "  Dice " + ", ".join(f"{class_names.get(c, c)} {v:.2f}" for c, v in dice.items())
        write_overlay(os.path.join(run.folder, "overlays", f"round_{r}", f"{s.case}_slice{s.index:03d}.png"),
                      image, s.scribble, s.prompts, pl, ds.num_classes, title, d,
                      {"background": 0, **{n: c for c, n in class_names.items()}})


def _write_dice_json(folder, manifest):
    out = {"rounds": {}}
    for r, e in sorted(manifest["rounds"].items(), key=lambda kv: int(kv[0])):
        if e.get("dice"):
            out["rounds"][r] = {"mean": e["dice"]["mean"], "per_class": e["dice"]["per_class"],
                                "cases": e["dice"]["cases"], "per_case": e["dice"]["per_case"]}
    out["merge_priority"] = manifest.get("merge_priority_used")
    out["finetune"] = manifest.get("finetune")
    atomic_write_json(os.path.join(folder, "dice.json"), out)
