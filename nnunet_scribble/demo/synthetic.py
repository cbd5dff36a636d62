"""A small synthetic 2D scribble dataset shaped like a cardiac short-axis slice.

Per case: a blob (class 3, "LV") inside a ring (class 2, "Myo"), a separate elongated blob beside
them (class 1, "RV"), varying position, size, contrast and noise. Scribbles: one stroke inside each
structure and a background loop around all of them (as in the ACDC scribbles); everything else is
``ignore``. Dense labels are kept for evaluation.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

CLASS_NAMES = {"background": 0, "RV": 1, "Myo": 2, "LV": 3}
IGNORE = 4


def _stroke(shape, points: np.ndarray, width: int) -> np.ndarray:
    """Rasterise a polyline (N, 2) as a stroke ``width`` voxels wide."""
    mask = np.zeros(shape, bool)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        n = int(max(abs(y1 - y0), abs(x1 - x0))) * 2 + 2
        ys = np.clip(np.round(np.linspace(y0, y1, n)).astype(int), 0, shape[0] - 1)
        xs = np.clip(np.round(np.linspace(x0, x1, n)).astype(int), 0, shape[1] - 1)
        mask[ys, xs] = True
    if width > 1:
        mask = ndimage.binary_dilation(mask, iterations=width // 2)
    return mask


def make_case(rng: np.random.Generator, size: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case: (image float32, dense labels uint8, scribbles uint8 with ``IGNORE`` = unlabeled)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = size / 2 + rng.uniform(-6, 6, 2)
    r_lv = rng.uniform(6, 9)
    r_ring = r_lv + rng.uniform(3, 5)
    d = np.hypot(yy - cy, xx - cx)
    # RV: ellipse left of the ring, touching-free gap of 1-3 voxels
    angle = rng.uniform(-0.5, 0.5)
    ry, rx = rng.uniform(8, 12), rng.uniform(4, 6)
    gap = rng.uniform(1, 3)
    rvy, rvx = cy + np.sin(angle) * (r_ring + rx + gap), cx - np.cos(angle) * (r_ring + rx + gap)
    rv = ((yy - rvy) / ry) ** 2 + ((xx - rvx) / rx) ** 2 <= 1

    label = np.zeros((size, size), np.uint8)
    label[rv] = 1
    label[(d <= r_ring) & (d > r_lv)] = 2
    label[d <= r_lv] = 3

    intensity = {0: rng.uniform(0.1, 0.2), 1: rng.uniform(0.7, 0.9), 2: rng.uniform(0.4, 0.55), 3: rng.uniform(0.75, 0.95)}
    image = np.zeros((size, size), np.float32)
    for k, v in intensity.items():
        image[label == k] = v
    image += 0.1 * np.sin(xx / rng.uniform(5, 9)) * (label == 0)  # background texture
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0, 0.06, image.shape)
    image = (image * rng.uniform(200, 400)).astype(np.float32)

    scribble = np.full((size, size), IGNORE, np.uint8)
    # background loop around everything, a few voxels outside the union of the structures
    fg = label > 0
    dist_out = ndimage.distance_transform_edt(~fg)
    margin = rng.uniform(3, 6)
    loop = (np.abs(dist_out - margin) < 0.75) & ~fg
    scribble[loop] = 0
    # LV: short straight stroke through the centre
    a = rng.uniform(0, np.pi)
    half = 0.6 * r_lv
    scribble[_stroke(label.shape, np.array([[cy - half * np.sin(a), cx - half * np.cos(a)],
                                            [cy + half * np.sin(a), cx + half * np.cos(a)]]), 1) & (label == 3)] = 3
    # Myo: arc along the middle of the ring
    t0 = rng.uniform(0, 2 * np.pi)
    ts = np.linspace(t0, t0 + rng.uniform(2, 4), 24)
    rm = (r_lv + r_ring) / 2
    scribble[_stroke(label.shape, np.stack([cy + rm * np.sin(ts), cx + rm * np.cos(ts)], 1), 1) & (label == 2)] = 2
    # RV: stroke along the ellipse's long axis
    scribble[_stroke(label.shape, np.array([[rvy - 0.6 * ry, rvx], [rvy + 0.6 * ry, rvx]]), 1) & (label == 1)] = 1
    return image, label, scribble


def make_dataset(n_cases: int, seed: int, size: int = 80):
    """``n_cases`` cases from one seeded generator (reproducible)."""
    rng = np.random.default_rng(seed)
    return [make_case(rng, size) for _ in range(n_cases)]
