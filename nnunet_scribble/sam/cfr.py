"""CFR's SAM stages for one fold: concatenate slices into grids, fine-tune SAM with LoRA, pseudo-label.

    concatenate: each training case's slices (preprocessed geometry, slice axis first) tiled into the
                 backend's input square (``sam.grid``); padding tiles carry ``ignore``
    fine-tune:   ``MultiClassSam`` (LoRA rank 4 on q/v of the image encoder, prompt encoder and a
                 multi-class mask decoder trainable, no prompts) on the grids of the fold's labeled training
                 cases (dense and scribbled): ``0.5 (CE + Dice)`` on labeled pixels (``losses.cfr``)
    pseudo-label: the fine-tuned SAM labels every training case of the fold (argmax over classes); the
                 re-training uses them on unlabeled voxels only. Validation cases are never read.

Outputs, under ``$nnUNet_preprocessed/<dataset>/cfr_pseudolabels/<data identifier>/<backend>-<sha12>/
fold_<f>/<identity12>/`` (``identity12``: hash of the backend, the settings, the fold's training cases and
their preprocessed images and labels; a change writes a new folder beside the old one, nothing is deleted):

- ``adapter.pth``: the trainable weights only (LoRA, prompt encoder, mask decoder), written when
  fine-tuning ends; ``finetune_state.pth``: the resumable state (every ``checkpoint_every`` iterations);
- ``pseudolabels/<case>.b2nd``: the label maps nnU-Net's dataset reads as an extra segmentation channel;
- ``dice.json``: pseudo-label Dice of the non-dense training cases against ``labelsTr_dense`` (if present);
- ``overlays/*.png`` (a few slices: image, scribbles, pseudo-label, dense labels), ``cfr.json``, ``cfr.log``.

Everything resumes: a killed fine-tuning continues from its last state, written pseudo-labels are kept.
A file lock per fold folder serialises parallel jobs.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.files import atomic_write, atomic_write_json, locked, require_writable
from nnunet_scribble.sam.cache import scale_slices
from nnunet_scribble.sam.data import PreprocessedDataset
from nnunet_scribble.sam.grid import Grid, from_grids, grid_for, to_grids
from nnunet_scribble.sam.pseudolabels import _Logger, dice_per_case, setting_from_env, summarise_dice

CFR_FORMAT = 1
ENV_ITERATIONS = "NNUNET_SCRIBBLE_CFR_ITERATIONS"
DEFAULT_ITERATIONS = 6000          # the official fine-tuning length
READ_ONLY_FIX = "Or point nnUNet_preprocessed at a writable copy of the preprocessed dataset."


@dataclass(frozen=True)
class CFRConfig:
    """Fine-tuning settings; the defaults are the official code's (AdamW, poly schedule, batch 2)."""
    iterations: int = DEFAULT_ITERATIONS
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.1
    poly_power: float = 0.9
    lora_rank: int = 4
    seed: int = 0
    concatenate: bool = True       # False: one slice per SAM input (the paper's "upsampling" baseline)
    input_size: Optional[int] = None   # LiteMedSAM only: build its encoder for this input (None: native 256)
    checkpoint_every: int = 50     # not part of the identity
    overlays: int = 4              # not part of the identity

    def identity(self) -> dict:
        d = asdict(self)
        d.pop("checkpoint_every"), d.pop("overlays")
        return d


@dataclass
class CaseGrids:
    """One training case as SAM input grids."""
    case: str
    kind: str                  # dense | scribbled | unlabeled
    grid: Grid
    depth: int
    images01: np.ndarray       # (N, rows*H, cols*W) float32 in [0, 1], zero tiles after the last slice
    labels: np.ndarray         # (N, rows*H, cols*W) int16, ignore on unlabeled pixels and padding tiles
    properties: dict           # nnU-Net's preprocessing properties of the case
    spatial_shape: tuple       # its preprocessed spatial shape


@dataclass
class CFRResult:
    folder: str                # the pseudo-label folder (the trainer's extra_seg_folder)
    run_folder: str
    train_cases: list
    val_cases: list
    dice: Optional[dict]


def case_kind(labels: np.ndarray, ignore: int) -> str:
    labeled = labels != ignore
    return "dense" if labeled.all() else "scribbled" if labeled.any() else "unlabeled"


def load_case_grids(ds: PreprocessedDataset, case: str, input_size: int, concatenate: bool = True) -> CaseGrids:
    cs = ds.load_case(case)
    grid = grid_for(cs.image.shape[1:], input_size) if concatenate else Grid(1, 1, tuple(cs.image.shape[1:]))
    ignore = ds.ignore_label
    return CaseGrids(case, case_kind(cs.scribbles, ignore), grid, len(cs.image),
                     to_grids(scale_slices(cs.image), grid, fill=0).astype(np.float32),
                     to_grids(cs.scribbles, grid, fill=ignore).astype(np.int16), cs.properties, cs.spatial_shape)


def run_folder_of(ds: PreprocessedDataset, backend, fold, identity: dict) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(ds.base, "cfr_pseudolabels", ds.data_identifier, backend.key, f"fold_{fold}", digest)


def _content_hash(cases: list[CaseGrids]) -> str:
    h = hashlib.sha256()
    for c in cases:
        h.update(c.case.encode())
        h.update(np.ascontiguousarray(c.images01).tobytes())
        h.update(np.ascontiguousarray(c.labels).tobytes())
    return h.hexdigest()


def run_cfr_pseudolabels(dataset: str | int, configuration: str, fold, backend: Optional[str] = None,
                         checkpoint: Optional[str] = None, plans: str = "nnUNetPlans",
                         config: Optional[CFRConfig] = None, device=None, progress: bool = True, echo=print,
                         random_split: bool = False) -> CFRResult:
    """Run (or resume) the CFR stages for one fold; returns where its pseudo-labels are.

    ``config`` None: the defaults, with ``$NNUNET_SCRIBBLE_CFR_ITERATIONS`` for the iterations if set."""
    config = config or CFRConfig(iterations=setting_from_env(None, ENV_ITERATIONS, DEFAULT_ITERATIONS))
    if config.iterations < 0 or config.batch_size < 1:
        raise UserFacingError(f"CFR fine-tuning needs iterations >= 0 and batch size >= 1 (got {config.iterations}, "
                              f"{config.batch_size}).")
    ds = PreprocessedDataset(dataset, configuration, plans)
    require_writable(os.path.join(ds.base, "cfr_pseudolabels", ds.data_identifier), "the CFR pseudo-labels",
                     READ_ONLY_FIX)
    train, val = ds.fold_split(fold, random_split=random_split, log=echo)
    sam = _backend(backend, checkpoint, device, config.input_size)
    echo(f"[cfr] {ds.name} {configuration} fold {fold}: reading {len(train)} training case(s) (validation cases: "
         f"{len(val)}, never read)")
    cases = [load_case_grids(ds, c, sam.input_size, config.concatenate) for c in train]
    labeled = [c for c in cases if c.kind != "unlabeled"]
    if not labeled:
        raise UserFacingError(f"fold {fold} of {ds.name}: none of its {len(train)} training cases has a label (all "
                              "are 'ignore' everywhere), so there is nothing to fine-tune SAM on. Give some cases "
                              "dense labels or scribbles (nnunet-scribble derive-mixed), or choose another fold.")
    identity = {"format": CFR_FORMAT, "sam": sam.identity(), "config": config.identity(),
                "configuration": configuration, "train": train, "content": _content_hash(cases)}
    folder = run_folder_of(ds, sam, fold, identity)
    os.makedirs(folder, exist_ok=True)
    log = _Logger(os.path.join(folder, "cfr.log"), echo)
    with locked(os.path.join(folder, ".lock"), f"the CFR pseudo-labels of fold {fold} ({folder})",
                log=lambda m: log(f"[cfr] {m}")):
        atomic_write_json(os.path.join(folder, "cfr.json"), {**identity, "kinds": {c.case: c.kind for c in cases}})
        counts = {k: sum(c.kind == k for c in cases) for k in ("dense", "scribbled", "unlabeled")}
        log(f"[cfr] backend {sam.name} (sha256 {sam.checkpoint_sha256[:12]}), input {sam.input_size}: training cases "
            f"{counts}; grids per case {sorted({(c.grid.rows, c.grid.cols) for c in cases})}; folder {folder}")
        model = finetune_stage(sam, ds.num_classes, ds.ignore_label, labeled, config, folder, log, progress)
        pl_folder = os.path.join(folder, "pseudolabels")
        pseudo_label_stage(ds, sam, model, cases, pl_folder, log, progress)
        dice = dice_stage(ds, cases, pl_folder, folder, config, log)
    return CFRResult(pl_folder, folder, train, val, dice)


def _backend(backend: Optional[str], checkpoint: Optional[str], device, input_size: Optional[int]):
    """The SAM backend; LiteMedSAM built for ``input_size`` when given (its 256-input weights fit any size)."""
    from nnunet_scribble.sam.backends import load_backend, resolve_backend
    from nnunet_scribble.sam.multiclass import build_litemedsam_backend

    name, path = resolve_backend(backend, checkpoint)
    if input_size is not None and name == "litemedsam":
        try:
            return build_litemedsam_backend(input_size, path, device=device)
        except ValueError as e:
            raise UserFacingError(f"--input-size {input_size}: {e}") from e
    sam = load_backend(backend, checkpoint, device=device)
    if input_size is not None and input_size != sam.input_size:
        raise UserFacingError(f"--input-size {input_size}: only LiteMedSAM can be built for another input size; the "
                              f"{sam.name} backend takes {sam.input_size}. Leave --input-size out.")
    return sam


# ---- fine-tuning ----------------------------------------------------------------------------------------

def _batch(sam, cases: list[CaseGrids], picks: list[tuple[int, int]]):
    import torch

    images = np.stack([cases[c].images01[i] for c, i in picks])
    labels = torch.from_numpy(np.stack([cases[c].labels[i] for c, i in picks]).astype(np.int64))
    return sam.prepare(images).to(sam.device), labels.to(sam.device)


def grid_logits(model, sam, x, grid_shape: tuple[int, int]):
    """Class logits of encoder inputs ``x`` at the grids' own resolution: the resized image area of SAM's
    input (longest side = input size, zero padding bottom/right) cropped and resized back."""
    import torch.nn.functional as F

    logits = model(x)
    hr, wr = sam.resized_shape(grid_shape)
    return F.interpolate(logits[..., :hr, :wr], size=grid_shape, mode="bilinear", align_corners=False)


def finetune_stage(sam, num_classes: int, ignore: int, labeled: list[CaseGrids], config: CFRConfig, folder: str,
                   log, progress: bool):
    """The fine-tuned ``MultiClassSam`` (``adapter.pth`` reused, ``finetune_state.pth`` resumed)."""
    import torch
    from tqdm import tqdm

    from nnunet_scribble.losses.cfr import ce_dice_loss
    from nnunet_scribble.sam.multiclass import MultiClassSam

    torch.manual_seed(config.seed)
    model = MultiClassSam(sam, num_classes, lora_rank=config.lora_rank).to(sam.device)
    adapter, state_file = os.path.join(folder, "adapter.pth"), os.path.join(folder, "finetune_state.pth")
    if os.path.isfile(adapter):
        model.load_trainable_state_dict(torch.load(adapter, map_location=sam.device, weights_only=True))
        log(f"[cfr] fine-tuned SAM reused ({adapter})")
        return model.eval()
    # every grid image with at least one labeled pixel, grouped by grid shape (a batch has one shape)
    pool: dict[tuple, list[tuple[int, int]]] = {}
    for c, cg in enumerate(labeled):
        for i in range(len(cg.images01)):
            if (cg.labels[i] != ignore).any():
                pool.setdefault(cg.images01.shape[1:], []).append((c, i))
    shapes = sorted(pool)
    sizes = np.array([len(pool[s]) for s in shapes], float)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng, start, losses = np.random.default_rng(config.seed), 0, []
    if os.path.isfile(state_file):
        state = torch.load(state_file, map_location=sam.device, weights_only=False)
        model.load_trainable_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state, start, losses = state["rng"], state["iteration"], state["losses"]
        log(f"[cfr] fine-tuning resumed at iteration {start} of {config.iterations}")
    log(f"[cfr] fine-tuning SAM: {int(sizes.sum())} grid images of {len(labeled)} labeled case(s), {config.iterations} "
        f"iterations of batch {config.batch_size}, AdamW lr {config.lr} wd {config.weight_decay}, poly "
        f"{config.poly_power}, LoRA rank {config.lora_rank}")
    model.train()
    t0 = time.time()
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, desc="CFR fine-tuning",
               disable=not progress, unit="it")
    for it in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * (1.0 - it / config.iterations) ** config.poly_power
        shape = shapes[rng.choice(len(shapes), p=sizes / sizes.sum())]
        picks = [pool[shape][j] for j in rng.choice(len(pool[shape]), config.batch_size)]
        x, y = _batch(sam, labeled, picks)
        loss = ce_dice_loss(grid_logits(model, sam, x, shape), y, ignore_index=ignore)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if (it + 1) % config.checkpoint_every == 0 or it + 1 == config.iterations:
            state = {"model": model.trainable_state_dict(), "optimizer": optimizer.state_dict(),
                     "rng": rng.bit_generator.state, "iteration": it + 1, "losses": losses}
            atomic_write(state_file, lambda tmp: torch.save(state, tmp))
    if config.iterations > start:
        log(f"[cfr] fine-tuned in {time.time() - t0:.0f} s; loss first 20 {np.mean(losses[:20]):.3f}, last 20 "
            f"{np.mean(losses[-20:]):.3f}")
    atomic_write(adapter, lambda tmp: torch.save(model.trainable_state_dict(), tmp))
    return model.eval()


# ---- pseudo-labels -------------------------------------------------------------------------------------

def predict_case(model, sam, cg: CaseGrids, batch: int = 4) -> np.ndarray:
    """(n, H, W) label map of one case from the fine-tuned SAM (argmax over classes)."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(cg.images01), batch):
            x = sam.prepare(cg.images01[i:i + batch]).to(sam.device)
            out.append(grid_logits(model, sam, x, cg.images01.shape[1:]).argmax(1).cpu().numpy().astype(np.int16))
    return from_grids(np.concatenate(out), cg.grid, cg.depth)


def pseudo_label_stage(ds: PreprocessedDataset, sam, model, cases: list[CaseGrids], folder: str, log,
                       progress: bool) -> None:
    from tqdm import tqdm

    os.makedirs(folder, exist_ok=True)
    todo = [c for c in cases if not os.path.isfile(ds.label_file(folder, c.case))]
    if len(todo) < len(cases):
        log(f"[cfr] pseudo-labels: {len(cases) - len(todo)} of {len(cases)} case(s) already written")
    for cg in tqdm(todo, desc="CFR pseudo-labels", disable=not progress, unit="case"):
        ds.write_label_map(folder, cg.case, predict_case(model, sam, cg))
    log(f"[cfr] pseudo-labels of {len(cases)} training case(s) in {folder}")


def dice_stage(ds: PreprocessedDataset, cases: list[CaseGrids], pl_folder: str, folder: str, config: CFRConfig,
               log) -> Optional[dict]:
    """Pseudo-label Dice of the non-dense cases against labelsTr_dense (``dice.json``) and a few overlays."""
    dice_file = os.path.join(folder, "dice.json")
    if os.path.isfile(dice_file):
        with open(dice_file) as f:
            return json.load(f)
    names = {c: n for n, c in ds.dataset_json["labels"].items() if isinstance(c, int) and 0 < c < ds.num_classes}
    per_case, shown = {}, 0
    for cg in cases:
        if cg.kind == "dense":
            continue
        dense = ds.dense_labels(cg.case, cg.properties, cg.spatial_shape)
        if dense is None:
            continue
        pl = ds.read_label_map(pl_folder, cg.case)
        per_case[cg.case] = dice_per_case(pl, dense, list(names))
        if shown < config.overlays:   # the image is read again only for the few overlay cases
            _overlay(ds, ds.load_case(cg.case), pl, dense, names, os.path.join(folder, "overlays", f"{cg.case}.png"))
            shown += 1
    if not per_case:
        log("[cfr] no labelsTr_dense for the unlabeled / scribbled training cases: pseudo-label Dice not measured")
        return None
    summary = summarise_dice(per_case, names)
    atomic_write_json(dice_file, summary)
    log(f"[cfr] pseudo-label Dice vs labelsTr_dense ({summary['cases']} cases): mean {summary['mean']:.3f}, "
        + ", ".join(f"{n} {v:.3f}" for n, v in summary["per_class"].items() if v is not None))
    return summary


def _overlay(ds, cs, pl, dense, names, path) -> None:
    from nnunet_scribble.sam.overlays import write_overlay

    z = int(np.argmax((dense > 0).reshape(len(dense), -1).sum(1)))    # the slice with the most foreground
    image = scale_slices(cs.image[z:z + 1])[0]
    dice = dice_per_case(pl[z], dense[z], list(names))
    title = f"{cs.case} slice {z}: CFR pseudo-label  Dice " + ", ".join(f"{names[c]} {v:.2f}" for c, v in dice.items())
    write_overlay(path, image, cs.scribbles[z], [], pl[z], ds.num_classes, title, dense[z],
                  {"background": 0, **{n: c for c, n in names.items()}})
