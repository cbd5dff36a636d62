"""Masked gated CRF loss (AttenScribble, eq. 4), N-D (2D and 3D), pure torch.

    L_mcrf = 1/|U| sum_{i in U} sum_{j in U, 0 < |i-j|_inf <= r} k_ij (1 - sum_c y_ic y_jc)
    k_ij   = exp(-|d_ij|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_I^2))

With ``unlabeled_neighbours_only=False`` the neighbours ``j`` range over all voxels (only the centres
``i`` are restricted to ``U``): the authors' code (Gated CRF with ``mask_dst`` = unlabeled, no
``mask_src``). Scribbled voxels then pull their unlabeled neighbours towards their prediction (and are
pulled back), so the CRF propagates the scribbles; the eq. 4 form only smooths among unlabeled voxels.

``U`` = unlabeled voxels (not scribbled; with the scribble trainers, patch padding outside the image
is ``ignore`` and therefore in ``U``, as in the paper, which includes the rotation margins). ``y`` =
softmax probabilities, ``I`` = the network input (all channels; ``|dI|^2`` sums over channels).
``1 - sum_c y_ic y_jc`` is the paper's ``sum_{a != b} y_ia y_jb`` (Potts model).

Distances and the window (``spacing``): ``d_ij`` is measured in units of the finest voxel spacing, so
for the usual in-plane-isotropic data the in-plane kernel is exactly the paper's pixel kernel. The
window is an L_inf box of ``r`` such units: along an axis with spacing ``s_a`` its radius is
``floor(r * s_min / s_a)`` voxels (e.g. ACDC 3d_fullres, 10 mm slices vs 1.5 mm pixels: the window
stays in-plane; isotropic data: the full ``(2r+1)^D`` box). Without ``spacing`` voxels are unit cubes.
The window geometry (radii, offsets, the skip of offsets wider than the patch) is in
``nnunet_scribble.geometry``, shared with the attentive similarity loss.

Cost: shifted windows, never an N x N matrix. One pass over the ``((2r+1)^D - 1) / 2`` offsets of a
half window (each unordered pair once) accumulates ``G_i = sum_j w_ij y_j`` with
``w_ij = k_ij [i in U][j in U]``; then ``L = (sum_ij w_ij - sum_i y_i . G_i) / |U|`` and, because
``w`` is symmetric, ``dL/dy_i = -2 G_i / |U|``. (All neighbours: ``w_ij = k_ij [i in U]`` is not
symmetric; the pass accumulates ``K y``, ``K (m y)`` and ``K 1`` and ``dL/dy_i = -(m_i (K y)_i +
(K (m y))_i) / |U|``.) The gradient is written out (a custom autograd
Function), so memory is O(N C) whatever the window (autograd through the loop would keep
O(N x window) intermediates), and time is O(N C x window). The kernel depends on the image only; no
gradient reaches ``image`` or the mask.

``|U|`` is pooled over the batch (one scalar per call, as the Gated CRF code normalises); with DDP each
rank normalises its own batch and DDP averages the gradients.
"""
from __future__ import annotations

from typing import Sequence

import torch

from nnunet_scribble.geometry import offset_distance_sq, pair_slices, window_offsets

__all__ = ["masked_gated_crf_loss"]


def _accumulate(y: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, offsets, log_spatial,
                inv_two_sigma_i_sq: float, unlabeled_neighbours_only: bool = True):
    """``(sum_ij w_ij (1 - y_i . y_j), G)`` over ordered pairs with ``dE/dy = -2 G`` (float32, no autograd).

    ``w_ij = k_ij m_i m_j`` (``G_i = sum_j w_ij y_j``) or, with ``unlabeled_neighbours_only=False``,
    ``w_ij = k_ij m_i`` (``G = (m K y + K (m y)) / 2``). The mask rides as extra channels of ``z``
    (``m [y, 1]`` or ``[y, m y, 1]``) so that one accumulation ``sum_j k_ij z_j`` gives everything;
    the kernel of each offset is computed in place in one preallocated buffer (allocating per offset
    costs more than the maths on CPU).
    """
    shape = y.shape[2:]
    n_cls = y.shape[1]
    if unlabeled_neighbours_only:
        z = torch.cat([y * mask, mask], dim=1)
    else:
        z = torch.cat([y, y * mask, torch.ones_like(mask)], dim=1)
    acc = torch.zeros_like(z)
    kbuf = torch.empty((image.shape[0], 1) + tuple(shape), dtype=image.dtype, device=image.device)
    batch_channel = (slice(None), slice(None))
    for offset, log_s in zip(offsets, log_spatial):
        si, sj = pair_slices(offset, shape)
        si, sj = batch_channel + si, batch_channel + sj
        k = kbuf[(slice(None), slice(None)) + tuple(slice(0, s.stop - s.start) for s in si[2:])]
        if image.shape[1] == 1:
            torch.sub(image[si], image[sj], out=k)
            k.square_()
        else:
            torch.sum((image[si] - image[sj]).square_(), dim=1, keepdim=True, out=k)
        k.mul_(-inv_two_sigma_i_sq).add_(log_s).exp_()
        acc[si].addcmul_(z[sj], k)
        acc[sj].addcmul_(z[si], k)
    if unlabeled_neighbours_only:
        pair_weight = (z[:, n_cls:] * acc[:, n_cls:]).sum()
        agreement = (z[:, :n_cls] * acc[:, :n_cls]).sum()
        return pair_weight - agreement, acc[:, :n_cls] * mask
    k_y, k_my, k_1 = acc[:, :n_cls], acc[:, n_cls:2 * n_cls], acc[:, 2 * n_cls:]
    energy = (mask * k_1).sum() - (z[:, n_cls:2 * n_cls] * k_y).sum()
    return energy, (mask * k_y + k_my) * 0.5


class _MaskedGatedCRF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, image, mask, offsets, log_spatial, inv_two_sigma_i_sq, unlabeled_neighbours_only):
        with torch.no_grad():
            y32 = y.detach().float()
            m = mask.detach().to(torch.float32)
            energy, g = _accumulate(y32, image.detach().float(), m, offsets, log_spatial, inv_two_sigma_i_sq,
                                    unlabeled_neighbours_only)
            n_u = m.sum().clamp_min(1.0)
            loss = energy / n_u
        ctx.save_for_backward(g, n_u)
        ctx.y_dtype = y.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        g, n_u = ctx.saved_tensors
        grad_y = (g * (-2.0 * grad_out / n_u)).to(ctx.y_dtype)
        return grad_y, None, None, None, None, None, None


def masked_gated_crf_loss(y: torch.Tensor, image: torch.Tensor, unlabeled: torch.Tensor, radius: int = 5,
                          sigma_xy: float = 6.0, sigma_intensity: float = 0.7,
                          spacing: Sequence[float] | None = None,
                          unlabeled_neighbours_only: bool = True) -> torch.Tensor:
    """``L_mcrf`` (see the module docstring) for 2D or 3D batches.

    Args:
        y: softmax probabilities ``(B, C, *spatial)``; the only input that receives a gradient.
        image: the network input ``(B, C_in, *spatial)`` (z-scored by nnU-Net).
        unlabeled: ``(B, 1, *spatial)`` (or ``(B, *spatial)``) bool/float, 1 on the set ``U``.
        radius: window radius ``r`` (``0 < |i-j|_inf <= r``; in units of the finest spacing).
        sigma_xy: spatial sigma (units of the finest spacing).
        sigma_intensity: intensity sigma (units of the image, i.e. z-scores for nnU-Net inputs).
        spacing: voxel spacing per spatial axis (any unit); ``None`` = unit voxels.
        unlabeled_neighbours_only: ``j`` in ``U`` too (eq. 4); ``False``: any ``j`` (the authors' code).

    Returns:
        scalar float32 loss; 0 (connected to ``y``) when ``U`` is empty.
    """
    if y.ndim < 3:
        raise ValueError(f"y must be (B, C, *spatial), got {tuple(y.shape)}")
    spatial = tuple(y.shape[2:])
    if unlabeled.ndim == y.ndim - 1:
        unlabeled = unlabeled.unsqueeze(1)
    if tuple(image.shape[2:]) != spatial or image.shape[0] != y.shape[0]:
        raise ValueError(f"image {tuple(image.shape)} does not match prediction {tuple(y.shape)}")
    if tuple(unlabeled.shape) != (y.shape[0], 1) + spatial:
        raise ValueError(f"unlabeled mask {tuple(unlabeled.shape)} does not match prediction {tuple(y.shape)}")
    if sigma_xy <= 0 or sigma_intensity <= 0:
        raise ValueError("sigmas must be positive")
    offsets = window_offsets(radius, spatial, spacing)
    log_spatial = [-offset_distance_sq(o, spacing) / (2.0 * sigma_xy ** 2) for o in offsets]
    return _MaskedGatedCRF.apply(y, image, unlabeled, offsets, log_spatial, 1.0 / (2.0 * sigma_intensity ** 2),
                                 unlabeled_neighbours_only)
