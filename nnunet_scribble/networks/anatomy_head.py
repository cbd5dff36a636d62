"""MedCL's anatomy-code head: class probability maps -> prototype scores (training only).

Each map ``(B, M, *spatial)`` is average-pooled to a fixed grid (``grid`` per axis, so the head does
not depend on the patch size), flattened and mapped by ``Linear(grid^n, hidden) -> ReLU ->
Linear(hidden, d)``. The last layer's ``d`` weight rows are the prototypes: the outputs are each
map's scores against them. The head is not part of the segmentation network: the checkpoint's
``network_weights`` stay nnU-Net's own, and prediction never runs it.
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
        self.mlp = nn.Sequential(nn.Linear(grid ** spatial_dims, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, prototypes))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """``maps`` ``(B, M, *spatial)`` -> scores ``(B, M, prototypes)``."""
        b, m = maps.shape[:2]
        pool = F.adaptive_avg_pool2d if self.spatial_dims == 2 else F.adaptive_avg_pool3d
        pooled = pool(maps.float(), self.grid)
        return self.mlp(pooled.reshape(b, m, -1))
