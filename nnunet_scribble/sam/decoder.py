"""Prompting SAM's mask decoder on cached image embeddings, and fine-tuning it (encoders frozen).

One decoder call handles one slice: its embedding (1, C, h, w) and the prompts of all its scribbled
foreground classes (N prompt sets, padded to the same number of points with SAM's "not a point" label
-1). ``multimask_output=False``: one mask per prompt set. Masks are brought back to the slice resolution
by sampling the low-res mask at the slice's pixel centres (the geometry of SAM's postprocessing).

Fine-tuning (SAM-SP stage B): AdamW (lr 5e-6, weight decay 1e-4) on the mask decoder only; one slice
(all its classes) per step, slices shuffled per epoch with a seeded generator; loss per slice =
mean over classes of the soft Dice between the mask probability and the pseudo-label's class region
+ binary cross-entropy on scribbled pixels only (1 on the class's scribble, 0 on other classes' scribbles).
Progress is saved after every epoch (atomically) so a killed run resumes with the next epoch.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from nnunet_scribble.files import atomic_write
from nnunet_scribble.sam.prompts import ClassPrompt


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 30
    lr: float = 5e-6
    weight_decay: float = 1e-4
    seed: int = 0
    dice_weight: float = 1.0
    ce_weight: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SliceSample:
    """One training slice: where its embedding is, its scribbles and its prompts (all scribbled classes)."""
    case: str
    index: int
    scribble: np.ndarray                 # (H, W) int16
    prompts: list                        # list[ClassPrompt]
    _encoded: tuple = field(default=None, repr=False)

    @property
    def classes(self) -> list[int]:
        return [p.cls for p in self.prompts]


def prompt_inputs(backend, prompts: Sequence[ClassPrompt], shape: tuple[int, int]):
    """SAM prompt-encoder inputs for N prompt sets on an (H, W) slice, in encoder-input coordinates."""
    import torch

    h, w = shape
    hr, wr = backend.resized_shape(shape)
    sx, sy = wr / w, hr / h
    points = None
    if any(len(p.points) for p in prompts):
        n = max(len(p.points) for p in prompts)
        coords = np.zeros((len(prompts), n, 2), np.float32)
        labels = -np.ones((len(prompts), n), np.int64)
        for i, p in enumerate(prompts):
            coords[i, :len(p.points)] = p.points * np.array([sx, sy], np.float32)
            labels[i, :len(p.points)] = p.labels
        points = (torch.from_numpy(coords).to(backend.device), torch.from_numpy(labels).to(backend.device))
    boxes = None
    if all(p.box is not None for p in prompts):
        b = np.stack([p.box for p in prompts]).astype(np.float32) * np.array([sx, sy, sx, sy], np.float32)
        boxes = torch.from_numpy(b).to(backend.device)
    if points is None and boxes is None:
        raise ValueError("prompt sets without points and boxes")
    return points, boxes


def encode_prompts(backend, sample: SliceSample):
    """(sparse, dense) prompt embeddings of a slice's prompt sets (frozen prompt encoder, cached)."""
    import torch

    if sample._encoded is None:
        points, boxes = prompt_inputs(backend, sample.prompts, sample.scribble.shape)
        with torch.no_grad():
            sample._encoded = backend.prompt_encoder(points=points, boxes=boxes, masks=None)
    return sample._encoded


def _slice_grid(backend, shape: tuple[int, int], device):
    """Sampling grid (1, H, W, 2) that maps slice pixel centres into the decoder's low-res mask, which
    covers the padded encoder input (S x S) of which the resized slice occupies the top-left corner."""
    import torch

    key = (tuple(shape), str(device))
    cache = backend.__dict__.setdefault("_grid_cache", {})
    if key not in cache:
        h, w = shape
        hr, wr = backend.resized_shape(shape)
        s = float(backend.input_size)
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) * (hr / h) * 2 / s - 1
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) * (wr / w) * 2 / s - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        cache[key] = torch.stack([gx, gy], -1)[None].to(device)
    return cache[key]


def dense_pe(backend):
    """The prompt encoder's positional encoding of the embedding grid (constant: computed once)."""
    if "_dense_pe" not in backend.__dict__:
        import torch

        with torch.no_grad():
            backend.__dict__["_dense_pe"] = backend.prompt_encoder.get_dense_pe()
    return backend.__dict__["_dense_pe"]


def decode(decoder, backend, embedding, sample: SliceSample):
    """Mask logits (N, H, W) at slice resolution for the sample's prompt sets. ``embedding``: (1, C, h, w).

    The low-res masks are sampled bilinearly at the slice's pixel centres (one step instead of SAM's
    upsample-to-input, crop, resize; same geometry, cost independent of the encoder input size)."""
    import torch.nn.functional as F

    sparse, dense = encode_prompts(backend, sample)
    low, _ = decoder(image_embeddings=embedding, image_pe=dense_pe(backend),
                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    grid = _slice_grid(backend, sample.scribble.shape, low.device).expand(len(low), -1, -1, -1)
    return F.grid_sample(low, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]


def embedding_tensor(embeddings: Callable[[str], np.ndarray], sample: SliceSample, device):
    import torch

    return torch.from_numpy(np.asarray(embeddings(sample.case)[sample.index], dtype=np.float32))[None].to(device)


def predict_probs(decoder, backend, embeddings: Callable[[str], np.ndarray], sample: SliceSample) -> np.ndarray:
    """(N, H, W) float32 mask probabilities of a slice's prompt sets."""
    import torch

    with torch.no_grad():
        logits = decode(decoder, backend, embedding_tensor(embeddings, sample, backend.device), sample)
    return torch.sigmoid(logits).float().cpu().numpy()


def sample_loss(decoder, backend, embedding, sample: SliceSample, pseudo_label: np.ndarray, num_classes: int,
                config: FinetuneConfig):
    """Dice to the pseudo-label + partial BCE to the scribbles for one slice (a scalar tensor)."""
    import torch
    import torch.nn.functional as F

    logits = decode(decoder, backend, embedding, sample)                       # (N, H, W)
    classes = torch.tensor(sample.classes, device=logits.device).view(-1, 1, 1)
    pl = torch.from_numpy(np.asarray(pseudo_label, np.int64)).to(logits.device)
    target = (pl[None] == classes).float()
    probs = torch.sigmoid(logits)
    inter = (probs * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (probs.sum((1, 2)) + target.sum((1, 2)) + 1)
    loss = config.dice_weight * dice.mean()
    scrib = torch.from_numpy(np.asarray(sample.scribble, np.int64)).to(logits.device)
    labeled = (scrib >= 0) & (scrib < num_classes)
    if labeled.any():
        st = (scrib[labeled][None] == classes.view(-1, 1)).float()               # (N, M)
        loss = loss + config.ce_weight * F.binary_cross_entropy_with_logits(logits[:, labeled], st)
    return loss


def finetune_decoder(decoder, backend, embeddings: Callable[[str], np.ndarray], samples: Sequence[SliceSample],
                     pseudo_labels: dict, num_classes: int, config: FinetuneConfig,
                     state_file: Optional[str] = None, progress: bool = True, log=print) -> dict:
    """Fine-tune ``decoder`` in place on the samples; ``pseudo_labels[(case, index)]`` = (H, W) targets.

    Returns {"epoch_losses": [...], "seconds": ..., "resumed_from_epoch": ...}. With ``state_file``, the
    decoder/optimizer state is saved after each epoch and a later call with the same settings (the number
    of epochs may be larger) continues from it.
    """
    import torch
    from tqdm import tqdm

    log = log or (lambda msg: None)
    device = backend.device
    decoder.to(device)
    for p in decoder.parameters():
        p.requires_grad_(True)
    decoder.train()
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses: list[float] = []
    start_epoch = 0
    if state_file and os.path.isfile(state_file):
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        same = {k: v for k, v in config.to_dict().items() if k != "epochs"}
        if {k: v for k, v in state.get("config", {}).items() if k != "epochs"} == same:
            decoder.load_state_dict(state["decoder"])
            optimizer.load_state_dict(state["optimizer"])
            losses = list(state["epoch_losses"])
            start_epoch = len(losses)
            log(f"[sam] resuming decoder fine-tuning at epoch {start_epoch + 1}/{config.epochs}")
    t0 = time.time()
    for epoch in range(start_epoch, config.epochs):
        order = np.random.default_rng(config.seed + epoch).permutation(len(samples))
        total = 0.0
        bar = tqdm(order, desc=f"decoder epoch {epoch + 1}/{config.epochs}", unit="slice", disable=not progress,
                   leave=False)
        for i in bar:
            s = samples[i]
            optimizer.zero_grad(set_to_none=True)
            loss = sample_loss(decoder, backend, embedding_tensor(embeddings, s, device), s,
                               pseudo_labels[(s.case, s.index)], num_classes, config)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(samples)))
        log(f"[sam] decoder epoch {epoch + 1}/{config.epochs}: loss {losses[-1]:.4f}")
        if state_file:
            state = {"decoder": decoder.state_dict(), "optimizer": optimizer.state_dict(), "epoch_losses": losses,
                     "config": config.to_dict()}
            atomic_write(state_file, lambda tmp: torch.save(state, tmp))
    decoder.eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    return {"epoch_losses": losses, "seconds": time.time() - t0, "resumed_from_epoch": start_epoch}


def mean_loss(decoder, backend, embeddings, samples, pseudo_labels, num_classes, config) -> float:
    """Mean fine-tuning loss over the samples without updating (for tests and logging)."""
    import torch

    with torch.no_grad():
        vals = [float(sample_loss(decoder, backend, embedding_tensor(embeddings, s, backend.device), s,
                                  pseudo_labels[(s.case, s.index)], num_classes, config)) for s in samples]
    return float(np.mean(vals)) if vals else float("nan")
