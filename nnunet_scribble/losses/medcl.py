"""MedCL loss terms as pure torch functions, N-D (2D and 3D).

Shapes: ``y`` softmax probabilities ``(B, C, *spatial)``; anatomy codes ``(B, M, d)`` (one d-vector per
sample and map, maps = the C class maps followed by the derived class-subset maps). The partial loss
``L_part`` is nnU-Net's own and not here. Total (trainer's job):
``L = L_part + L_mix + L_cluster + L_ac + L_sk + L_category``.

``sim`` in the paper is the negative cosine in eqs. 1 and 5 (minimised, written here as ``1 - cos``, the
same gradient) and the cosine itself in eq. 4. All terms are computed in float32.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["class_subset_maps", "mix_consistency_loss", "sinkhorn", "sinkhorn_plan", "assignment_loss",
           "cluster_loss", "anatomy_consistency_loss", "category_loss", "sample_class_subsets"]


def sample_class_subsets(foreground: Sequence[int], rng: np.random.Generator) -> list[list[int]]:
    """One random subset ``Omega_k`` of ``k`` foreground classes for each ``k = 2 .. m`` (``m = len(foreground)``)."""
    fg = list(foreground)
    return [sorted(int(c) for c in rng.choice(fg, size=k, replace=False)) for k in range(2, len(fg) + 1)]


def class_subset_maps(y: torch.Tensor, subsets: Sequence[Sequence[int]]) -> torch.Tensor:
    """``u_k = sum_{i in Omega_k} y_i`` for each subset: ``(B, len(subsets), *spatial)`` (empty if none)."""
    if not subsets:
        return y.new_zeros((y.shape[0], 0, *y.shape[2:]))
    return torch.stack([y[:, list(s)].sum(1) for s in subsets], 1)


def _cosine_per_sample(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return F.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1, eps=eps)


def mix_consistency_loss(y_mixed: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor,
                         beta: torch.Tensor) -> torch.Tensor:
    """``L_mix = 1 - cos(y(x12), b y1 + (1 - b) y2)`` (eq. 1), cosine over all voxels and classes of a
    sample, mean over the batch. ``beta``: ``(B,)`` mixing weights. Gradients reach both sides (as the
    official code)."""
    b = beta.to(y1).view(-1, *([1] * (y1.ndim - 1)))
    return (1.0 - _cosine_per_sample(y_mixed, b * y1 + (1 - b) * y2)).mean()


@torch.no_grad()
def sinkhorn_plan(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Transport plan ``(n, d)`` of ``n`` samples to ``d`` prototypes (Sinkhorn-Knopp, the paper's pseudo-code).

    ``P = exp(scores / eps)`` normalised to sum 1, then ``iterations`` times: scale the prototype sums to
    ``1/d``, then the sample sums to ``1/n``. After the last step every sample's row sums to ``1/n`` exactly
    and every prototype's column to ``1/d`` approximately. ``scores``: ``(n, d)``, no gradient.
    Computed in float64 with the maximum subtracted first (the plan is invariant to it).
    """
    s = scores.detach().double()
    p = torch.exp((s - s.max()) / eps)
    p = p / p.sum()
    n, d = p.shape
    for _ in range(iterations):
        p = p * ((1.0 / d) / p.sum(0, keepdim=True).clamp_min(1e-300))
        p = p * ((1.0 / n) / p.sum(1, keepdim=True).clamp_min(1e-300))
    return p.to(scores.dtype)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft assignments ``q`` ``(n, d)``: the Sinkhorn plan with each sample's row normalised to 1."""
    p = sinkhorn_plan(scores, eps, iterations)
    return p / p.sum(1, keepdim=True).clamp_min(1e-30)


def assignment_loss(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3, temperature: float = 0.1,
                    per_sample_sum: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_sk``: cross-entropy of ``p = softmax(scores / w)`` to ``q = sinkhorn(scores)`` (no gradient).

    ``per_sample_sum``: ``-mean_n sum_d q log p`` (SwAV's normalisation, the default); False gives the
    paper's pseudo-code literally, ``-mean(q log p)`` over all ``n x d`` entries (``d`` times smaller).
    ``scores``: ``(n, d)``. Returns ``(loss, p)``.
    """
    scores = scores.float()
    q = sinkhorn(scores, eps, iterations)
    log_p = torch.log_softmax(scores / temperature, dim=1)
    loss = -(q * log_p).sum(1).mean() if per_sample_sum else -(q * log_p).mean()
    return loss, log_p.exp()


def cluster_loss(codes: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``L_cluster`` (eq. 4) on the codes of the individual classes ``(B, C, d)``.

    Centres ``a_i* = mean_b a_i^b``; compactness ``sum_{b,i} exp(cos(a_i^b, a_i*) / tau)``,
    discriminability ``sum_{i != j} exp(cos(a_i*, a_j*) / tau)`` (ordered pairs, as the paper's sum);
    ``L = -log(compact / (compact + discriminability))``.
    """
    codes = codes.float()
    centres = codes.mean(0)                                             # (C, d)
    compact = torch.exp(F.cosine_similarity(codes, centres[None], dim=2, eps=1e-8) / tau).sum()
    pair = F.cosine_similarity(centres[:, None], centres[None], dim=2, eps=1e-8)   # (C, C)
    off = ~torch.eye(centres.shape[0], dtype=torch.bool, device=codes.device)
    discriminate = torch.exp(pair[off] / tau).sum()
    return -torch.log(compact / (compact + discriminate))


def anatomy_consistency_loss(class_codes: torch.Tensor, subset_codes: torch.Tensor,
                             subsets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Code half of ``L_ac`` (eq. 5): ``sum_k [1 - cos(a*_{u_k}, sum_{i in Omega_k} a_i*)]``.

    ``class_codes`` ``(B, C, d)``, ``subset_codes`` ``(B, K, d)`` for the ``K`` subsets (class indices into
    ``C``). The segmentation half ``1 - cos(y_{Omega_k}, u_k)`` is zero by construction here (the subset
    maps are derived from the class maps, as in the official code) and is not computed.
    """
    if not subsets:
        return class_codes.sum() * 0.0
    centres, subset_centres = class_codes.float().mean(0), subset_codes.float().mean(0)
    summed = torch.stack([centres[list(s)].sum(0) for s in subsets])     # (K, d)
    return (1.0 - F.cosine_similarity(subset_centres, summed, dim=1, eps=1e-8)).sum()


def category_loss(y: torch.Tensor, present: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``L_category = -mean_voxels log sum_{i in Psi} y_i`` over the samples with a known class set.

    ``present``: ``(B, C)`` bool, the classes ``Psi`` of each sample's case; samples whose row is all
    False (nothing scribbled) are left out. With no such sample the loss is 0 (on ``y``'s graph).
    """
    keep = present.any(1)
    if not bool(keep.any()):
        return y.sum() * 0.0
    mask = present[keep].to(y).view(*present[keep].shape, *([1] * (y.ndim - 2)))
    return -torch.log((y[keep].float() * mask).sum(1) + eps).mean()
