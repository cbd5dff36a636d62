"""Scribble shrinking for data-sensitivity studies (MaCo, appendix 'Scribble shrink ratio').

Per 2D slice (image): remove ``ratio`` % of the scribbled voxels (all classes, background included).
Connected scribble components (8-connected, per class) are visited one after another in a seeded
random order; a component that fits into the remaining budget is removed whole, and the component that
would overshoot loses only a contiguous part: its voxels farthest (geodesically) from one of its ends,
so that what remains stays connected. Removed voxels become ``ignore``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnunet_scribble.conversion.strokes import EIGHT, case_rng
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.geometry import per_slice, through_plane_axis


def shrink_scribbles(scribble: np.ndarray, ignore: int, ratio: float, rng: np.random.Generator,
                     axis: int = 0) -> np.ndarray:
    """Copy of ``scribble`` with ``ratio`` percent (0-100) of the annotated voxels of every slice set to ``ignore``."""
    if not 0 <= ratio <= 100:
        raise ValueError(f"shrink ratio must be a percentage between 0 and 100, got {ratio}")
    return per_slice(scribble, axis, lambda s, _i: _shrink_slice(s, ignore, ratio / 100.0, rng))


def _shrink_slice(scribble: np.ndarray, ignore: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    out = scribble.copy()
    annotated = scribble != ignore
    budget = int(round(fraction * annotated.sum()))
    if budget == 0:
        return out
    components = []
    for value in np.unique(scribble[annotated]):
        labelled, n = ndimage.label(scribble == value, EIGHT)
        components += [labelled == i for i in range(1, n + 1)]
    for index in rng.permutation(len(components)):
        component = components[index]
        size = int(component.sum())
        if size <= budget:
            out[component] = ignore
            budget -= size
        else:
            out[_far_part(component, budget)] = ignore
            budget = 0
        if budget == 0:
            break
    return out


def _far_part(component: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` voxels of ``component`` farthest from one of its ends along geodesic paths.

    The voxels left over are those closest to that end; every one of them has its shortest-path
    predecessor among them, so they stay connected.
    """
    from skimage.graph import MCP_Geometric

    costs = np.where(component, 1.0, np.inf)
    voxels = np.argwhere(component)

    def distances(start) -> np.ndarray:
        cumulative, _ = MCP_Geometric(costs, fully_connected=True).find_costs([tuple(start)])
        return cumulative[component]

    end = voxels[np.argmax(distances(voxels[0]))]  # an extremity of the stroke
    order = np.argsort(distances(end), kind="stable")
    far = np.zeros_like(component)
    chosen = voxels[order[len(order) - count:]]
    far[chosen[:, 0], chosen[:, 1]] = True
    return far


@dataclass(frozen=True)
class ShrinkHook:
    """``Settings.make_scribble`` that shrinks the existing scribbles by ``ratio`` percent."""
    ignore: int
    ratio: float
    seed: int = 0
    axis: int | None = None

    def __post_init__(self):
        if not 0 <= self.ratio < 100:
            raise UserFacingError(f"--ratio must be a percentage in [0, 100), got {self.ratio}")

    def __call__(self, case_id: str, scribble, dense, spacing_zyx):
        if scribble is None:
            return None
        axis = through_plane_axis(spacing_zyx, scribble.ndim) if self.axis is None else self.axis
        return shrink_scribbles(scribble, self.ignore, self.ratio, case_rng(self.seed, case_id), axis)
