"""Simulated scribbles from dense labels (the protocol of Gotkowski et al., ScribbleBench).

For every 2D slice along ``axis`` and every class present in it (background included): pick one
connected component with probability proportional to its area and draw

- an interior scribble: a smooth curve inside the component eroded by ``width // 2 + 1`` voxels (its largest
  connected piece) between two geodesically distant points, so that it spans most of the component,
- a border scribble: a piece of 7-15 % of the contour of the component eroded by 2-5 voxels (less for thin
  structures: the eroded core must keep a quarter of the component's area, see :data:`BORDER_KEEP`).

Both are drawn ``width`` voxels wide (odd) and clipped to the component, so every scribbled voxel keeps
its dense label. All other voxels get ``ignore`` (= ``num_classes``). The image edge is not treated as a
boundary (background border scribbles follow organs, not the field of view). Seeded: the same
seed and case id give the same scribbles, independent of process order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnunet_scribble.conversion.shrink import shrink_scribbles
from nnunet_scribble.conversion.strokes import EIGHT, case_rng
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.geometry import per_slice, through_plane_axis

# the eroded core that carries the border scribble keeps at least this share of the component's area;
# thinner structures (myocardium, RV crescent) are eroded less than the drawn 2-5 voxels
BORDER_KEEP = 0.25

def simulate_scribbles(dense: np.ndarray, num_classes: int, rng: np.random.Generator, axis: int = 0,
                       width: int = 3, border_erosion: tuple[int, int] = (2, 5),
                       border_fraction: tuple[float, float] = (0.07, 0.15)) -> np.ndarray:
    """Scribble map (0..num_classes-1, ignore = num_classes) for a 2D or 3D dense label map."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"scribble width must be a positive odd number, got {width}")
    dtype = np.uint8 if num_classes < 255 else np.uint16

    def one_slice(labels: np.ndarray, _index: int) -> np.ndarray:
        out = np.full(labels.shape, num_classes, dtype=dtype)
        for c in range(num_classes):
            component = pick_component(labels == c, rng)
            if component is not None:
                lines = interior_line(component, width, rng) | border_line(component, border_erosion, border_fraction, rng)
                out[thicken(lines, width) & component] = c
        return out

    return per_slice(dense, axis, one_slice)


def pick_component(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """One 8-connected component of ``mask``, chosen with probability proportional to its area."""
    if not mask.any():
        return None
    components, n = ndimage.label(mask, EIGHT)
    areas = np.bincount(components.ravel())[1:].astype(float)
    return components == 1 + rng.choice(n, p=areas / areas.sum())


def largest_piece(mask: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected component of ``mask`` (None if ``mask`` is empty)."""
    pieces, n = ndimage.label(mask, EIGHT)
    if n == 0:
        return None
    return pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))


def eroded(component: np.ndarray, depth: int, keep: float = 0.0) -> np.ndarray:
    """The largest connected piece of the voxels more than ``depth`` voxels (Euclidean) inside ``component``;
    the image edge does not count as outside. Thin structures (the piece is empty, or smaller than ``keep``
    times the component's area) fall back to shallower erosions, and finally to the component itself."""
    if component.all():
        return component
    distance = ndimage.distance_transform_edt(component)
    area = int(component.sum())
    for d in range(depth, 0, -1):
        piece = largest_piece(distance > d)
        if piece is not None and piece.sum() >= keep * area:
            return piece
    return component


def thicken(lines: np.ndarray, width: int) -> np.ndarray:
    return ndimage.binary_dilation(lines, np.ones((width, width), bool)) if width > 1 else lines


def draw_polyline(points: np.ndarray, shape: tuple) -> np.ndarray:
    """Rasterise consecutive (row, col) points into a connected 1-voxel line."""
    from skimage.draw import line

    out = np.zeros(shape, dtype=bool)
    points = np.clip(np.round(points).astype(int), 0, np.array(shape) - 1)
    out[points[0, 0], points[0, 1]] = True
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
        rr, cc = line(r0, c0, r1, c1)
        out[rr, cc] = True
    return out


def interior_line(component: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth curve inside the eroded component between two geodesically distant points.

    From a random point, one end is drawn among the points at least 80 % of the largest geodesic distance
    away (near an extremity), the other among the points at least 60 % of the largest distance from that
    end: the stroke spans most of the component, as an annotator's stroke across a structure does.
    """
    from skimage.graph import MCP_Geometric

    inner = eroded(component, width // 2 + 1)
    costs_map = np.where(inner, 1.0, np.inf)

    def far_point(start, share):
        mcp = MCP_Geometric(costs_map, fully_connected=True)
        costs, _ = mcp.find_costs([tuple(start)])
        reachable = np.isfinite(costs) & inner
        candidates = np.argwhere(reachable & (costs >= share * costs[reachable].max()))
        return mcp, tuple(candidates[rng.integers(len(candidates))])

    coords = np.argwhere(inner)
    _, first_end = far_point(coords[rng.integers(len(coords))], 0.8)
    mcp, second_end = far_point(first_end, 0.6)
    path = np.array(mcp.traceback(second_end), dtype=float)
    if len(path) > 4:  # smooth the geodesic, keeping only smoothed points that stay inside
        smooth = ndimage.gaussian_filter1d(path, sigma=2.0, axis=0, mode="nearest")
        rounded = np.round(smooth).astype(int)
        inside = inner[rounded[:, 0], rounded[:, 1]]
        path[inside] = smooth[inside]
    return draw_polyline(path, component.shape) & inner


def border_line(component: np.ndarray, erosion: tuple[int, int], fraction: tuple[float, float],
                rng: np.random.Generator) -> np.ndarray:
    """A 7-15 % piece of the contour of the component eroded by 2-5 voxels (empty if it has no contour)."""
    from skimage.measure import find_contours

    inner = eroded(component, int(rng.integers(erosion[0], erosion[1] + 1)), keep=BORDER_KEEP)
    if min(inner.shape) < 2:  # a one-voxel-thin slice has no contour to follow
        return np.zeros(component.shape, dtype=bool)
    contours = [c for c in find_contours(inner.astype(np.float32), 0.5) if len(c) >= 2]
    if not contours:
        return np.zeros(component.shape, dtype=bool)
    lengths = np.array([len(c) for c in contours], dtype=float)
    contour = contours[rng.choice(len(contours), p=lengths / lengths.sum())]
    n = len(contour)
    piece = max(2, int(round(rng.uniform(*fraction) * n)))
    closed = np.allclose(contour[0], contour[-1])
    if closed:
        contour = np.roll(contour[:-1], -int(rng.integers(n - 1)), axis=0)
        segment = contour[:piece]
    else:
        first = int(rng.integers(max(1, n - piece + 1)))
        segment = contour[first:first + piece]
    return draw_polyline(segment, component.shape)


@dataclass(frozen=True)
class SimulateHook:
    """``Settings.make_scribble`` that simulates scribbles from the dense labels (optionally shrunk).

    ``axis`` None: the axis of largest spacing per case; ``shrink``: percent removed afterwards.
    """
    num_classes: int
    seed: int = 0
    axis: int | None = None
    width: int = 3
    shrink: float = 0.0

    def __post_init__(self):
        if self.width < 1 or self.width % 2 == 0:
            raise UserFacingError(f"--width must be a positive odd number of voxels, got {self.width}")
        if not 0 <= self.shrink < 100:
            raise UserFacingError(f"--shrink must be a percentage in [0, 100), got {self.shrink}")

    def __call__(self, case_id: str, scribble, dense, spacing_zyx):
        if dense is None:
            return None
        rng = case_rng(self.seed, case_id)
        axis = through_plane_axis(spacing_zyx, dense.ndim) if self.axis is None else self.axis
        out = simulate_scribbles(dense, self.num_classes, rng, axis, self.width)
        if self.shrink:
            out = shrink_scribbles(out, self.num_classes, self.shrink, rng, axis)
        return out
