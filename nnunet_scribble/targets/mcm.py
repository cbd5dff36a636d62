"""Masked context modeling (MCM) masks (MaCo; docs/methods/maco.md). Torch, batched, N-D.

The spatial patch is split into non-overlapping cubes of side ``patch_size`` per axis, anchored
at index 0; when a size is not divisible the last cube along that axis is partial (the paper
zero-pads before splitting, which gives the same cubes). A cube containing any scribble voxel
gets weight ``scribble_weight``, every other cube weight 1; the weights are normalised to
probabilities, cubes are drawn without replacement by those probabilities (``torch.multinomial``,
i.e. successive weighted draws, independently per sample) and set to 0 in the input.

Choices where the paper is silent:

- The number of masked cubes is ``floor(ratio * n_cubes + 0.5)`` per sample, so the masked
  *cube* fraction is exact; the masked *voxel* fraction is exact only for divisible sizes.
- "Scribble voxel" = any labeled voxel, background scribble included (values ``0..C-1``; the
  ``ignore`` value and negative padding are unlabeled).
- Masked voxels are set to 0 in all input channels (0 = the mean after nnU-Net's z-scoring).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = ["mcm_keep_mask", "apply_mcm", "scribble_cubes"]


def _sizes(patch_size: Union[int, Sequence[int]], nd: int) -> Tuple[int, ...]:
    ps = (patch_size,) * nd if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
    if len(ps) != nd or min(ps) < 1:
        raise ValueError(f"patch_size {patch_size} does not fit {nd} spatial axes")
    return ps


def scribble_cubes(labeled: torch.Tensor, patch_size: Union[int, Sequence[int]] = 16) -> torch.Tensor:
    """Which cubes contain a labeled voxel.

    Args:
        labeled: bool ``(B, *spatial)``.
    Returns:
        bool ``(B, *grid)`` with ``grid[i] = ceil(spatial[i] / patch_size[i])``.
    """
    b, spatial = labeled.shape[0], tuple(labeled.shape[1:])
    ps = _sizes(patch_size, len(spatial))
    grid = tuple(math.ceil(s / p) for s, p in zip(spatial, ps))
    pad = []
    for s, p, g in zip(reversed(spatial), reversed(ps), reversed(grid)):
        pad += [0, g * p - s]
    x = torch.nn.functional.pad(labeled.to(torch.uint8), pad)
    shape = [b]
    for g, p in zip(grid, ps):
        shape += [g, p]
    x = x.reshape(shape)
    return x.amax(dim=tuple(range(2, 2 + 2 * len(grid), 2))).bool()


def mcm_keep_mask(scribble: torch.Tensor, num_classes: int, patch_size: Union[int, Sequence[int]] = 16,
                  ratio: float = 0.5, scribble_weight: float = 3.0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw the MCM mask.

    Args:
        scribble: integer ``(B, 1, *spatial)`` scribble maps (classes ``0..num_classes-1``,
            anything else unlabeled).
        num_classes: number of classes C including background.
        patch_size: cube side, int or one per spatial axis (paper: 16).
        ratio: fraction of cubes to mask (paper: 0.5).
        scribble_weight: weight of cubes with scribble (others have 1; paper: 3).
        generator: torch.Generator for reproducibility; sampling runs on its device.

    Returns:
        float ``(B, 1, *spatial)`` on ``scribble``'s device: 1 = keep, 0 = masked.
    """
    if scribble.ndim < 3 or scribble.shape[1] != 1:
        raise ValueError(f"expected (B, 1, *spatial) scribble maps, got shape {tuple(scribble.shape)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if scribble_weight <= 0:
        raise ValueError(f"scribble_weight must be > 0, got {scribble_weight}")
    spatial = tuple(scribble.shape[2:])
    ps = _sizes(patch_size, len(spatial))
    labeled = (scribble[:, 0] >= 0) & (scribble[:, 0] < num_classes)
    has = scribble_cubes(labeled, ps)  # (B, *grid)
    b, grid = has.shape[0], tuple(has.shape[1:])
    n_cubes = math.prod(grid)
    n_mask = int(math.floor(ratio * n_cubes + 0.5))
    dev = generator.device if generator is not None else scribble.device
    w = torch.where(has.reshape(b, n_cubes).to(dev),
                    torch.tensor(float(scribble_weight), device=dev),
                    torch.tensor(1.0, device=dev))
    keep = torch.ones(b, n_cubes, device=dev)
    if n_mask > 0:
        idx = torch.multinomial(w / w.sum(dim=1, keepdim=True), n_mask, replacement=False,
                                generator=generator)
        keep.scatter_(1, idx, 0.0)
    keep = keep.reshape((b,) + grid).to(scribble.device)
    for ax, p in enumerate(ps):
        keep = keep.repeat_interleave(p, dim=ax + 1)
    keep = keep[(slice(None),) + tuple(slice(0, s) for s in spatial)]
    return keep.unsqueeze(1)


def apply_mcm(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Masked input ``x * keep``; ``x`` is ``(B, C_in, *spatial)``, ``keep`` ``(B, 1, *spatial)``."""
    return x * keep.to(x.dtype)
