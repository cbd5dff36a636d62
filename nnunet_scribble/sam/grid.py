"""Tiling a case's 2D slices into SAM input squares (CFR's "concatenate") and back.

A grid holds ``rows x cols`` unresized slices of shape ``tile = (H, W)``, with ``rows = S // H`` and
``cols = S // W`` for the encoder input size S (at least 1 each: a slice larger than S gets one tile per image
and the backend's ``prepare`` resizes it). Slice ``d`` goes to image ``d // per_image`` at tile
``(r, c) = divmod(d % per_image, cols)`` (row-major); tiles after the last slice are padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """``rows x cols`` tiles of shape ``tile`` (the slice's (H, W)) per image."""
    rows: int
    cols: int
    tile: tuple[int, int]

    def __post_init__(self):
        if self.rows < 1 or self.cols < 1 or len(self.tile) != 2 or min(self.tile) < 1:
            raise ValueError(f"Grid needs rows, cols >= 1 and a tile (H, W) of positive sizes, got rows={self.rows}, "
                             f"cols={self.cols}, tile={self.tile}; build it with grid_for(slice_shape, input_size).")

    @property
    def per_image(self) -> int:
        return self.rows * self.cols

    @property
    def image_shape(self) -> tuple[int, int]:
        """(rows * H, cols * W): the shape of one grid image."""
        return self.rows * self.tile[0], self.cols * self.tile[1]

    def images_for(self, depth: int) -> int:
        """Number of grid images that hold ``depth`` slices."""
        if depth < 1:
            raise ValueError(f"A volume needs at least one slice, got depth {depth}.")
        return -(-int(depth) // self.per_image)


def grid_for(slice_shape: tuple[int, int], input_size: int) -> Grid:
    """The grid of (H, W) slices for an encoder input of ``input_size`` pixels square."""
    if len(slice_shape) != 2:
        raise ValueError(f"slice_shape must be (H, W), got {tuple(slice_shape)}; pass volume.shape[-2:].")
    h, w = (int(v) for v in slice_shape)
    if h < 1 or w < 1 or input_size < 1:
        raise ValueError(f"Slice shape {(h, w)} and input size {input_size} must be positive.")
    return Grid(rows=max(1, input_size // h), cols=max(1, input_size // w), tile=(h, w))


def _split(array: np.ndarray, what: str) -> tuple[np.ndarray, bool]:
    """(C, N, ...) view of a 3-D or 4-D array and whether a channel axis was added."""
    if array.ndim == 3:
        return array[None], True
    if array.ndim == 4:
        return array, False
    raise ValueError(f"{what} must be 3-D or 4-D (with a leading channel axis), got shape {array.shape}.")


def to_grids(volume: np.ndarray, grid: Grid, fill=0) -> np.ndarray:
    """(D, H, W) or (C, D, H, W) -> (N, rows*H, cols*W) or (C, N, rows*H, cols*W); padding tiles = ``fill``."""
    volume = np.asarray(volume)
    v, added = _split(volume, "volume")
    c, d, h, w = v.shape
    if (h, w) != tuple(grid.tile):
        raise ValueError(f"Volume slices are {(h, w)} but the grid's tiles are {tuple(grid.tile)}; "
                         f"build the grid with grid_for(volume.shape[-2:], input_size).")
    n = grid.images_for(d)
    padded = np.full((c, n * grid.per_image, h, w), fill, dtype=volume.dtype)
    padded[:, :d] = v
    # (C, N, rows, cols, H, W) -> (C, N, rows, H, cols, W) -> (C, N, rows*H, cols*W)
    out = padded.reshape(c, n, grid.rows, grid.cols, h, w).transpose(0, 1, 2, 4, 3, 5)
    out = out.reshape(c, n, grid.rows * h, grid.cols * w)
    return out[0] if added else out


def from_grids(images: np.ndarray, grid: Grid, depth: int) -> np.ndarray:
    """Exact inverse of ``to_grids``: (N, rows*H, cols*W) or (C, N, rows*H, cols*W) -> (D, H, W) or (C, D, H, W)."""
    images = np.asarray(images)
    g, added = _split(images, "images")
    c, n, gh, gw = g.shape
    h, w = grid.tile
    if (gh, gw) != grid.image_shape:
        raise ValueError(f"Grid images are {(gh, gw)} but the grid {grid.rows}x{grid.cols} of {tuple(grid.tile)} "
                         f"tiles makes {grid.image_shape} images.")
    if n != grid.images_for(depth):
        raise ValueError(f"{n} grid image(s) given, but {depth} slices fill {grid.images_for(depth)} "
                         f"({grid.per_image} per image); pass the depth of the volume they were made from.")
    out = g.reshape(c, n, grid.rows, h, grid.cols, w).transpose(0, 1, 2, 4, 3, 5)
    out = out.reshape(c, n * grid.per_image, h, w)[:, :depth]
    return np.ascontiguousarray(out[0] if added else out)


def valid_mask(grid: Grid, depth: int) -> np.ndarray:
    """Bool (N, rows*H, cols*W): True on the tiles of real slices, False on padding tiles."""
    ones = np.ones((int(depth),) + tuple(grid.tile), dtype=bool)
    return to_grids(ones, grid, fill=False)
