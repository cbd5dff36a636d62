"""MedCL's anatomy-code head: class probability maps -> prototype scores (training only).

Each map ``(B, M, *spatial)`` is average-pooled to a fixed grid (``grid`` per axis, so the head does
not depend on the patch size), flattened and embedded by ``Linear(grid^n, hidden) -> ReLU``. The
prototype layer holds ``d`` prototype vectors; a map's scores are the cosines between its embedding and
each prototype (both L2-normalised, as in SwAV, the clustering recipe MedCL follows), so they lie in
[-1, 1] whatever the weights do. Unnormalised scores grow without bound under the assignment loss:
the softmax and the Sinkhorn step then saturate on one prototype for every map (all codes equal, every
clustering term constant, no gradient). The head is not part of the segmentation network: the
checkpoint's ``network_weights`` stay nnU-Net's own, and prediction never runs it.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class AnatomyHead(nn.Module):
    def __init__(self, spatial_dims: int, grid: int = 32, hidden: int = 1024, prototypes: int = 128):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims, self.grid = spatial_dims, grid
        self.embed = nn.Sequential(nn.Linear(grid ** spatial_dims, hidden), nn.ReLU(inplace=True))
        self.prototypes = nn.Linear(hidden, prototypes, bias=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """``maps`` ``(B, M, *spatial)`` -> scores ``(B, M, prototypes)``, cosines in [-1, 1]."""
        b, m = maps.shape[:2]
        pool = F.adaptive_avg_pool2d if self.spatial_dims == 2 else F.adaptive_avg_pool3d
        z = F.normalize(self.embed(pool(maps.float(), self.grid).reshape(b, m, -1)), dim=-1, eps=1e-8)
        return z @ F.normalize(self.prototypes.weight, dim=1, eps=1e-8).t()
