"""MedCL's intra- and inter-image mixing of an augmented batch, N-D (2D and 3D), in torch.

Intra-mix (per sample): ``x' = I_b x + (1 - I_b) [b' x + (1 - b') R(x, theta)]`` with a random box
``I_b``, ``b' ~ Beta`` and ``R`` an in-plane rotation. Scribbles of ``x'``: inside the box those of ``x``;
outside, a voxel keeps its label only where the scribbles of ``x`` and ``R(x)`` agree, else ``ignore``.
Inter-mix: ``x12 = b x'_1 + (1 - b) x'_2`` with the partner ``x'_2`` = the batch reversed.

Rotations act in the plane of two spatial axes (2D: the image plane; 3D: the two axes other than the
one of lowest resolution, chosen by the trainer) about the patch centre, in voxel units, bilinear for
images and nearest for labels; voxels rotated in from outside the patch are 0 in the image and
``ignore`` in the scribbles.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["rotation_theta", "rotate", "random_boxes", "intra_mix", "intra_mix_scribbles", "inter_mix",
           "downsample_like"]


def rotation_theta(spatial_shape: Sequence[int], angles: torch.Tensor, plane: tuple[int, int]) -> torch.Tensor:
    """``affine_grid`` matrices ``(B, n, n + 1)`` rotating by ``angles`` (radians) in ``plane``.

    ``plane`` holds two spatial axes in tensor order (0 = first spatial axis). The rotation is in voxel
    units (a circle stays a circle on a non-square patch); ``affine_grid`` works in normalised
    coordinates whose axis order is the reverse of the tensor's, hence the scaling and index flip.
    """
    n = len(spatial_shape)
    i, j = plane
    gi, gj = n - 1 - i, n - 1 - j
    si, sj = float(spatial_shape[i]), float(spatial_shape[j])
    c, s = torch.cos(angles.double()), torch.sin(angles.double())
    theta = torch.zeros(len(angles), n, n + 1, dtype=torch.float64)
    theta[:, range(n), range(n)] = 1.0
    theta[:, gi, gi] = c
    theta[:, gi, gj] = -s * sj / si
    theta[:, gj, gi] = s * si / sj
    theta[:, gj, gj] = c
    return theta.float()


def rotate(x: torch.Tensor, angles: torch.Tensor, plane: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Rotate each sample of ``x`` ``(B, C, *spatial)`` by its angle (radians) in ``plane``; zeros outside."""
    theta = rotation_theta(x.shape[2:], angles, plane).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode=mode, padding_mode="zeros", align_corners=False).to(x.dtype)


def random_boxes(shape: Sequence[int], fraction: tuple[float, float], rng: np.random.Generator,
                 device=None) -> torch.Tensor:
    """``(B, 1, *spatial)`` bool: per sample one axis-aligned box whose side on every axis is a uniform
    fraction in ``fraction`` of the patch side (at least one voxel), at a uniform position."""
    b, spatial = shape[0], list(shape[2:])
    box = torch.zeros(b, 1, *spatial, dtype=torch.bool, device=device)
    for k in range(b):
        index = [k, 0]
        for size in spatial:
            side = min(size, max(1, round(rng.uniform(*fraction) * size)))
            start = int(rng.integers(0, size - side + 1))
            index.append(slice(start, start + side))
        box[tuple(index)] = True
    return box


def intra_mix_scribbles(scribble: torch.Tensor, rotated: torch.Tensor, box: torch.Tensor,
                        ignore_label: int) -> torch.Tensor:
    """Scribbles of ``x'``: ``scribble`` inside ``box``; outside, ``scribble`` where it equals ``rotated``
    (the scribbles of ``R(x)``), else ``ignore_label``. All ``(B, 1, *spatial)``."""
    keep = box | (scribble == rotated)
    return torch.where(keep, scribble, torch.full_like(scribble, ignore_label))


def intra_mix(x: torch.Tensor, scribble: torch.Tensor, ignore_label: int, plane: tuple[int, int],
              max_degrees: float, box_fraction: tuple[float, float], beta: tuple[float, float],
              rng: np.random.Generator):
    """Intra-mix a batch: returns ``(x', s', details)`` with ``details`` = box, angles, mixing weights.

    ``x`` ``(B, C, *spatial)`` images, ``scribble`` ``(B, 1, *spatial)`` labels with ``ignore_label``.
    Angles ``~ U(-max_degrees, max_degrees)``, ``b' ~ Beta(*beta)`` per sample.
    """
    b = x.shape[0]
    angles = torch.from_numpy(rng.uniform(-1, 1, b) * math.radians(max_degrees))
    weight = torch.from_numpy(rng.beta(*beta, size=b))
    box = random_boxes(x.shape, box_fraction, rng, device=x.device)
    x_rot = rotate(x, angles, plane, "bilinear")
    # labels + 1 so that the zero padding of grid_sample marks voxels from outside the patch
    s_rot = rotate(scribble.float() + 1, angles, plane, "nearest").round() - 1
    s_rot = torch.where(s_rot < 0, torch.full_like(s_rot, ignore_label), s_rot).to(scribble.dtype)
    w = weight.to(x).view(-1, *([1] * (x.ndim - 1)))
    x_mixed = torch.where(box, x, w * x + (1 - w) * x_rot)
    s_mixed = intra_mix_scribbles(scribble, s_rot, box, ignore_label)
    return x_mixed, s_mixed, {"box": box, "angles": angles, "weights": weight}


def inter_mix(x: torch.Tensor, beta: tuple[float, float], rng: np.random.Generator):
    """``x12 = b x + (1 - b) flip(x)`` (partner = the batch reversed), ``b ~ Beta(*beta)`` per sample;
    returns ``(x12, b)``."""
    weight = torch.from_numpy(rng.beta(*beta, size=x.shape[0]))
    w = weight.to(x).view(-1, *([1] * (x.ndim - 1)))
    return w * x + (1 - w) * torch.flip(x, (0,)), weight


def downsample_like(labels: torch.Tensor, targets) -> list[torch.Tensor]:
    """``labels`` at the shape of every deep-supervision target (nearest-exact, as nnU-Net's transform)."""
    out = []
    for t in targets:
        if t.shape[2:] == labels.shape[2:]:
            out.append(labels)
        else:
            out.append(F.interpolate(labels.float(), list(t.shape[2:]), mode="nearest-exact").to(labels.dtype))
    return out
