"""DMPLS loss pieces (Luo et al. 2022) as pure torch functions, N-D (2D and 3D).

Shapes: probabilities ``y`` are softmax outputs ``(B, C, *spatial)``; label maps are integer
``(B, 1, *spatial)`` (nnU-Net's target layout) or ``(B, *spatial)``.

- :func:`sample_mixing_weight`: ``a ~ U(0, 1)``, drawn once per iteration.
- :func:`mixed_pseudo_label`: ``PL = argmax_c(a y1 + (1 - a) y2)``, without gradient.
- :func:`soft_dice_loss`: soft Dice of probabilities to a label map (the pseudo-label term
  ``Dice(y, PL)``; SAM-SP reuses it for ``Dice(y, PL_SAM)``, whose maps may hold ``ignore`` voxels).

The trainer's total (docs/methods/dmpls.md):
``L = 0.5 [L_part(y1) + L_part(y2)] + 0.5 * 0.5 [Dice(y1, PL) + Dice(y2, PL)]``.
"""
from __future__ import annotations

import torch

__all__ = ["sample_mixing_weight", "mixed_pseudo_label", "soft_dice_loss"]


def sample_mixing_weight(generator: torch.Generator | None = None) -> float:
    """Draw the mixing weight ``a ~ U[0, 1)`` (torch's default generator unless one is given)."""
    return float(torch.rand((), generator=generator).item())


def _labels_with_channel(labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    if labels.ndim == probs.ndim - 1:
        labels = labels.unsqueeze(1)
    if labels.ndim != probs.ndim or labels.shape[1] != 1 or labels.shape[0] != probs.shape[0] \
            or labels.shape[2:] != probs.shape[2:]:
        raise ValueError(f"label map {tuple(labels.shape)} does not match probabilities {tuple(probs.shape)}; "
                         "expected (B, 1, *spatial) or (B, *spatial)")
    return labels


@torch.no_grad()
def mixed_pseudo_label(y1: torch.Tensor, y2: torch.Tensor, alpha: float) -> torch.Tensor:
    """Dynamically mixed pseudo label ``argmax_c(alpha * y1 + (1 - alpha) * y2)``.

    Args:
        y1, y2: probabilities ``(B, C, *spatial)`` of the two decoders (any float dtype).
        alpha: mixing weight in ``[0, 1]`` (see :func:`sample_mixing_weight`).

    Returns:
        ``(B, 1, *spatial)`` int64 label map, detached (no gradient reaches ``y1`` or ``y2``).
        Ties go to the lowest class index (``torch.argmax``).
    """
    if y1.shape != y2.shape:
        raise ValueError(f"the two predictions differ in shape: {tuple(y1.shape)} vs {tuple(y2.shape)}")
    if y1.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial) probabilities, got shape {tuple(y1.shape)}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"mixing weight must be in [0, 1], got {alpha}")
    mixed = torch.lerp(y2.detach().float(), y1.detach().float(), alpha)   # alpha*y1 + (1-alpha)*y2
    # max(...).indices: same result as argmax (first maximum on ties), several times faster on CPU
    return mixed.max(dim=1, keepdim=True).indices


def soft_dice_loss(probs: torch.Tensor, labels: torch.Tensor, *, ignore_index: int | None = None,
                   include_background: bool = True, batch_dice: bool = True, squared_pred: bool = True,
                   smooth: float = 1e-5, ddp: bool = False) -> torch.Tensor:
    """Soft Dice loss ``1 - mean_c Dice_c`` of probabilities to a hard label map.

    ``Dice_c = (2 sum_v p_c t_c + smooth) / (sum_v p_c^q + sum_v t_c + smooth)`` with ``t`` the one-hot
    labels and ``q = 2`` if ``squared_pred`` (V-Net style, as the official DMPLS ``pDLoss``) else 1.

    Args:
        probs: probabilities ``(B, C, *spatial)``; computed in float32 (safe under autocast).
        labels: integer label map ``(B, 1, *spatial)`` or ``(B, *spatial)`` with values in ``[0, C)``
            (and ``ignore_index``).
        ignore_index: voxels with this label are left out of every sum.
        include_background: include class 0 in the mean (official DMPLS: yes; nnU-Net's Dice: no).
        batch_dice: sums over the whole batch per class (official DMPLS); otherwise per sample, then
            the mean over samples and classes.
        smooth: added to numerator and denominator (a class absent from both gives Dice 1).
        ddp: with ``batch_dice``, gather the per-sample sums across DDP ranks (nnU-Net's
            ``AllGatherGrad``) so every rank computes the Dice of the global batch, as nnU-Net's own
            batch Dice does. Needs an initialised process group.
    """
    if probs.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial) probabilities, got shape {tuple(probs.shape)}")
    labels = _labels_with_channel(labels, probs)
    probs = probs.float()
    n_classes = probs.shape[1]
    with torch.no_grad():
        labels = labels.long()
        valid = None
        if ignore_index is not None:
            valid = labels != ignore_index
            labels = torch.where(valid, labels, torch.zeros_like(labels))
        if bool(((labels < 0) | (labels >= n_classes)).any()):   # scatter_ would fail (or assert on CUDA)
            raise ValueError(f"labels must lie in [0, {n_classes}) (or be ignore_index={ignore_index}); found "
                             f"{int(labels.min())}..{int(labels.max())}")
        onehot = torch.zeros_like(probs).scatter_(1, labels, 1.0)
        if valid is not None:
            onehot = onehot * valid
    if valid is not None:
        probs = probs * valid
    axes = tuple(range(2, probs.ndim))
    intersect = (probs * onehot).sum(axes)                              # (B, C)
    sum_pred = (probs * probs if squared_pred else probs).sum(axes)     # (B, C); ignored voxels are 0
    sum_gt = onehot.sum(axes)                                           # (B, C)
    if not include_background:
        intersect, sum_pred, sum_gt = intersect[:, 1:], sum_pred[:, 1:], sum_gt[:, 1:]
    if batch_dice:
        if ddp:
            from nnunetv2.utilities.ddp_allgather import AllGatherGrad

            intersect = AllGatherGrad.apply(intersect).sum(0)
            sum_pred = AllGatherGrad.apply(sum_pred).sum(0)
            sum_gt = AllGatherGrad.apply(sum_gt).sum(0)
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dice = (2.0 * intersect + smooth) / (sum_pred + sum_gt + smooth).clamp_min(1e-8)
    return 1.0 - dice.mean()
