"""Attentive similarity loss (AttenScribble, eq. 6), N-D (2D and 3D token grids), pure torch.

    A      = rowsoftmax(Q K^T / sqrt(d))         (B, heads, N, N)  the self-attention's own weights
    S_pq   = sigmoid(conv1x1(A_pq + A_qp))        conv1x1 acts on the head (x layer) axis: heads -> 1
    M_pq   = exp(-|p - q|^2 / (2 sigma^2))        spatial prior, only for 0 < |p - q|_inf <= r
    y~     = y averaged down to the token grid
    L_atn  = mean over samples b of  1/n_b sum_p sum_{q: 0<|p-q|_inf<=r} M_pq S_pq (1 - y~_p . y~_q)

``n_b`` = number of tokens (``unlabeled=None``, the official code) or ``|U|`` of the sample (the
paper's eq. 6, which also restricts ``p, q`` to ``U``). The loss only sees the ``O(N x window)`` values
``A_pq + A_qp`` of the window pairs (:func:`nnunet_scribble.geometry.window_pairs`), which the attention
block gathers while it computes ``A`` (the ``O(N^2)`` matrix belongs to the network). Gradients reach ``A`` (hence Q and K),
the conv1x1 and ``y``.

Samples whose patch holds scribbles of fewer than two classes are left out (``valid``): the official
code drops "single-class" slices using the dense ground truth; the trainer decides from the scribble
classes present in the patch instead (:func:`samples_with_several_scribble_classes`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_scribble.geometry import window_pairs

__all__ = ["downsample_probabilities",
           "attentive_similarity_loss", "samples_with_several_scribble_classes", "unlabeled_tokens"]


@torch.compiler.disable
def downsample_probabilities(y: torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
    """``y~``: probabilities ``(B, C, *spatial)`` averaged over each token's voxels (area interpolation)."""
    if tuple(y.shape[2:]) == tuple(grid_shape):
        return y
    if len(grid_shape) not in (2, 3):
        raise ValueError(f"only 2D and 3D grids are supported, got {tuple(grid_shape)}")
    return F.interpolate(y, size=tuple(grid_shape), mode="area")


def attentive_similarity_loss(window_attention: torch.Tensor, y: torch.Tensor, grid_shape: Sequence[int],
                              similarity: Callable[[torch.Tensor], torch.Tensor], radius: int = 5,
                              sigma: float = 6.0, spacing: Sequence[float] | None = None,
                              valid: torch.Tensor | None = None,
                              unlabeled: torch.Tensor | None = None) -> torch.Tensor:
    """``L_atn`` (see the module docstring).

    Args:
        window_attention: ``A_ij + A_ji`` for the pairs of ``window_pairs(grid_shape, radius, spacing)``,
            ``(B, heads, P)`` (what :class:`~nnunet_scribble.networks.attention.SpatialSelfAttention`
            keeps in training; from a dense ``A``: the flat entries ``i * N + j`` plus ``j * N + i``).
        y: softmax probabilities ``(B, C, *spatial)`` at any resolution (averaged down to the grid).
        grid_shape: the token grid (spatial shape of the attended feature map).
        similarity: the conv1x1 ``(B, heads, P) -> (B, 1, P)`` (e.g. ``nn.Conv1d(heads, 1, 1)``), whose
            output goes through a sigmoid.
        radius, sigma: window radius and sigma of the spatial prior, in tokens (units of the finest
            token spacing if ``spacing`` is given).
        valid: ``(B,)`` bool, samples that take part (default: all).
        unlabeled: optional ``(B, 1, *grid_shape)`` token mask; if given, pairs are restricted to it and
            each sample is normalised by its count (paper eq. 6) instead of the number of tokens.

    Returns:
        scalar float32; 0 (still connected to the attention, the conv1x1 and ``y``) if no sample is valid.
    """
    if window_attention.ndim == 2:
        window_attention = window_attention.unsqueeze(1)
    b = window_attention.shape[0]
    grid_shape = tuple(int(g) for g in grid_shape)
    n = int(np.prod(grid_shape))
    if y.shape[0] != b:
        raise ValueError(f"batch sizes differ: attention {b}, prediction {y.shape[0]}")
    idx_i, idx_j, d2 = window_pairs(grid_shape, radius, spacing, device=window_attention.device)
    if window_attention.shape[-1] != idx_i.numel():
        raise ValueError(f"{window_attention.shape[-1]} attention pairs given, but the window (radius {radius}, "
                         f"spacing {spacing}) of the grid {grid_shape} has {idx_i.numel()}")
    prior = torch.exp(-d2 / (2.0 * sigma ** 2))                                      # (P,)
    kernel = torch.sigmoid(similarity(window_attention.float()).float()).squeeze(1)  # (B, P)
    y_tok = downsample_probabilities(y.float(), grid_shape).flatten(2)               # (B, C, N)
    disagreement = 1.0 - (y_tok[:, :, idx_i] * y_tok[:, :, idx_j]).sum(dim=1)        # (B, P)
    pair_terms = prior * kernel * disagreement
    if unlabeled is None:
        norm = torch.full((b,), float(n), device=window_attention.device)
    else:
        u = unlabeled.reshape(b, -1).to(pair_terms.dtype)
        pair_terms = pair_terms * u[:, idx_i] * u[:, idx_j]
        norm = u.sum(dim=1).clamp_min(1.0)
    per_sample = 2.0 * pair_terms.sum(dim=1) / norm                                  # ordered pairs
    if valid is None:
        valid = torch.ones(b, dtype=torch.bool, device=window_attention.device)
    valid = valid.to(window_attention.device)
    if not bool(valid.any()):
        return 0.0 * (kernel.sum() + y_tok.sum())
    return per_sample[valid].mean()


def samples_with_several_scribble_classes(scribbles: torch.Tensor, ignore_label: int) -> torch.Tensor:
    """``(B,)`` bool: the sample's scribbles (any voxel not ``ignore_label``, padding -1 excluded) hold at
    least two different classes. Replaces the official code's dense-ground-truth test."""
    s = scribbles.reshape(scribbles.shape[0], -1)
    out = []
    for row in s:
        classes = torch.unique(row)
        classes = classes[(classes != ignore_label) & (classes >= 0)]
        out.append(classes.numel() >= 2)
    return torch.tensor(out, dtype=torch.bool, device=scribbles.device)


def unlabeled_tokens(scribbles: torch.Tensor, ignore_label: int, grid_shape: Sequence[int]) -> torch.Tensor:
    """``(B, 1, *grid)`` float: 1 where no voxel of the token is scribbled (max pooling of the labelled mask)."""
    labelled = (scribbles != ignore_label).float()
    if labelled.ndim == len(grid_shape) + 1:
        labelled = labelled.unsqueeze(1)
    pool = F.adaptive_max_pool2d if len(grid_shape) == 2 else F.adaptive_max_pool3d
    return 1.0 - pool(labelled[:, :1], tuple(grid_shape))
