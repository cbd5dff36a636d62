"""MaCo loss terms (docs/methods/maco.md) as pure torch functions, N-D (2D and 3D).

Shapes: predictions ``y`` are softmax probabilities ``(B, C, *spatial)``; CPL targets are
float ``(B, C, *spatial)`` (0 = no target); GC regions are ``(B, 1, *spatial)`` bool/float.
The partial loss ``L_part`` is nnU-Net's own and not here. Total (trainer's job):
``L = L_part(y) + 0.5 L_part(y_m) + 0.1 L_cc + 0.1 L_ep + 0.1 L_cpl``.

All terms are computed in float32 (safe under autocast) and are plain means over the local
batch, so DDP's gradient averaging gives the global mean for equal per-rank batch sizes.
"""

from __future__ import annotations

import torch

__all__ = ["cpl_loss", "cosine_consistency_loss", "enhanced_prediction",
           "context_consistency_loss", "enhanced_prediction_loss"]


def cpl_loss(y: torch.Tensor, cpl: torch.Tensor) -> torch.Tensor:
    """``L_cpl``: per sample, mean over classes that have a target of the mean over voxels with
    ``c_k > 0`` of ``(y_k - c_k)^2``; then the mean over the samples that have any target.

    A class "has a target" when its CPL map has a non-zero voxel (``cpl_targets`` leaves absent
    classes all-zero). Per-sample averaging (rather than pooling voxels over the batch) is our
    reading of the paper's ``1/K sum_k 1/N_k sum_p``. With no target at all in the batch the
    result is 0 (still connected to ``y``'s graph).

    Args:
        y: softmax probabilities ``(B, C, *spatial)``.
        cpl: CPL targets ``(B, C, *spatial)``, same shape.
    """
    if y.shape != cpl.shape:
        raise ValueError(f"prediction {tuple(y.shape)} and CPL target {tuple(cpl.shape)} differ")
    y = y.float()
    c = cpl.to(device=y.device, dtype=torch.float32)
    m = (c > 0).float()
    dims = tuple(range(2, y.ndim))
    n = m.sum(dim=dims)  # (B, C)
    se = (((y - c) ** 2) * m).sum(dim=dims)  # (B, C)
    has = n > 0
    per_class = torch.where(has, se / n.clamp_min(1), torch.zeros_like(se))
    n_cls = has.sum(dim=1)  # (B,)
    per_sample = per_class.sum(dim=1) / n_cls.clamp_min(1)
    valid = n_cls > 0
    if not bool(valid.any()):
        return y.sum() * 0.0
    return per_sample[valid].mean()


def cosine_consistency_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - cos(a, sg(b))``; cos over all classes and voxels of one sample, mean over the batch.

    ``a`` and ``b`` are ``(B, ...)`` of equal shape; ``b`` is detached (no gradient reaches it).
    ``eps`` guards zero norms (``torch.nn.functional.cosine_similarity`` semantics).
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    cos = torch.nn.functional.cosine_similarity(a.float().flatten(1), b.detach().float().flatten(1),
                                                dim=1, eps=eps)
    return (1.0 - cos).mean()


def enhanced_prediction(y: torch.Tensor, gc: torch.Tensor, background_channel: int = 0) -> torch.Tensor:
    """``y_e``: ``y`` with every foreground channel multiplied by the GC region; detached.

    The background channel is left as is (the project's reading), so ``y_e`` no longer sums to 1
    outside GC; the cosine in ``L_ep`` is scale-free per sample, which is what matters.

    Args:
        y: ``(B, C, *spatial)`` probabilities.
        gc: ``(B, 1, *spatial)`` GC region (bool or {0,1} float).
    """
    y = y.detach()
    if gc.shape[0] != y.shape[0] or gc.shape[1] != 1 or gc.shape[2:] != y.shape[2:]:
        raise ValueError(f"GC region {tuple(gc.shape)} does not fit prediction {tuple(y.shape)}")
    scale = gc.to(device=y.device, dtype=y.dtype).expand_as(y).clone()
    scale[:, background_channel] = 1.0
    return y * scale


def context_consistency_loss(y_masked: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``L_cc = 1 - cos(y_m, sg(y))``: the masked-input prediction follows the clean one."""
    return cosine_consistency_loss(y_masked, y)


def enhanced_prediction_loss(y: torch.Tensor, gc: torch.Tensor, background_channel: int = 0) -> torch.Tensor:
    """``L_ep = 1 - cos(y, sg(y_e))`` with ``y_e = enhanced_prediction(y, gc)``."""
    return cosine_consistency_loss(y, enhanced_prediction(y, gc, background_channel))
