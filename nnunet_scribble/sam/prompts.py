"""SAM prompts from the scribbles of one 2D slice (numpy/scipy/scikit-image only).

Rules, per foreground class k with scribble pixels S_k on the slice (background gets no prompt: it is
whatever no foreground mask claims):

- **positive points** (modes ``points``/``box+points``): up to ``n_pos`` (10, as in the paper) points on
  the skeleton of S_k (``skimage.morphology.skeletonize``; S_k itself if the skeleton is empty), chosen by
  farthest-point sampling that starts at the skeleton pixel closest to the skeleton's centroid, so they
  spread along the whole stroke (all its components) deterministically;
- **negative points**: up to ``n_neg`` (5) points on the skeletons of the *neighbouring* classes' scribbles
  (background scribble included): every other class whose scribble enters the neighbourhood of S_k
  (the box below); if none does, the single nearest other class, restricted to its ``4 * n_neg`` skeleton
  pixels closest to S_k. Farthest-point sampling again;
- **box** (modes ``box``/``box+points``, for box-trained backends such as LiteMedSAM): the extent of S_k
  grown on each side by ``max(box_min_margin, box_margin * extent)`` pixels (per axis; defaults 12 px and
  0.3, chosen on ACDC patients 011-014), clipped to the slice. Scribbles are drawn inside structures, so
  their extent underestimates the structure.

Coordinates are (x, y) = (column, row) pixel indices, boxes (x0, y0, x1, y1) inclusive, as SAM expects
before its resize to the encoder input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

PROMPT_MODES = ("points", "box", "box+points")


@dataclass(frozen=True)
class PromptRules:
    mode: Optional[str] = None        # None: chosen per backend ("box" if box-trained, else "points")
    n_pos: int = 10
    n_neg: int = 5
    box_margin: float = 0.3
    box_min_margin: int = 12

    def __post_init__(self):
        if self.mode is not None and self.mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {PROMPT_MODES}, got {self.mode!r}")

    def for_backend(self, backend) -> "PromptRules":
        """These rules with the mode resolved for ``backend``."""
        from dataclasses import replace

        return self if self.mode else replace(self, mode="box" if backend.box_trained else "points")

    @property
    def uses_points(self) -> bool:
        return "points" in (self.mode or "")

    @property
    def uses_box(self) -> bool:
        return "box" in (self.mode or "")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClassPrompt:
    cls: int
    points: np.ndarray           # (P, 2) float32 (x, y); P may be 0
    labels: np.ndarray           # (P,) int64: 1 positive, 0 negative
    box: Optional[np.ndarray]    # (4,) float32 (x0, y0, x1, y1) or None


def skeleton_pixels(mask: np.ndarray) -> np.ndarray:
    """(M, 2) (row, col) pixels of the mask's skeleton (the mask itself where skeletonisation leaves nothing)."""
    from skimage.morphology import skeletonize

    skel = skeletonize(mask) if mask.any() else mask
    rc = np.argwhere(skel)
    return rc if len(rc) else np.argwhere(mask)


def farthest_point_sampling(coords: np.ndarray, n: int) -> np.ndarray:
    """Indices of up to ``n`` spread-out rows of ``coords`` (M, 2): start nearest the centroid, then repeatedly
    the point farthest from those chosen (ties: lowest index)."""
    m = len(coords)
    if m == 0 or n <= 0:
        return np.zeros(0, np.int64)
    c = coords.astype(np.float64)
    first = int(np.argmin(((c - c.mean(0)) ** 2).sum(1)))
    chosen = [first]
    dist = ((c - c[first]) ** 2).sum(1)
    while len(chosen) < min(n, m):
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0:
            break
        chosen.append(nxt)
        dist = np.minimum(dist, ((c - c[nxt]) ** 2).sum(1))
    return np.asarray(chosen, np.int64)


def scribble_box(mask: np.ndarray, rules: PromptRules) -> np.ndarray:
    """(x0, y0, x1, y1) extent of ``mask`` plus margin, clipped to the slice."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    out = []
    for lo, hi, size in ((cols.min(), cols.max(), w), (rows.min(), rows.max(), h)):
        margin = max(rules.box_min_margin, rules.box_margin * (hi - lo + 1))
        out.append((max(0.0, lo - margin), min(size - 1.0, hi + margin)))
    (x0, x1), (y0, y1) = out
    return np.array([x0, y0, x1, y1], np.float32)


def _inside(rc: np.ndarray, box: np.ndarray) -> np.ndarray:
    return (rc[:, 1] >= box[0]) & (rc[:, 1] <= box[2]) & (rc[:, 0] >= box[1]) & (rc[:, 0] <= box[3])


def negative_candidates(scribble: np.ndarray, cls: int, labeled_classes: list[int], box: np.ndarray,
                        n_neg: int) -> np.ndarray:
    """(M, 2) (row, col) candidate negatives for class ``cls`` (see the module docstring)."""
    from scipy import ndimage

    others = [c for c in labeled_classes if c != cls and (scribble == c).any()]
    if not others:
        return np.zeros((0, 2), np.int64)
    skeletons = {c: skeleton_pixels(scribble == c) for c in others}
    inside = [rc[_inside(rc, box)] for rc in skeletons.values()]
    inside = [rc for rc in inside if len(rc)]
    if inside:
        return np.concatenate(inside)
    dist = ndimage.distance_transform_edt(scribble != cls)
    nearest = min(others, key=lambda c: dist[scribble == c].min())
    rc = skeletons[nearest]
    order = np.argsort(dist[rc[:, 0], rc[:, 1]], kind="stable")
    return rc[order[:4 * n_neg]]


def slice_prompts(scribble: np.ndarray, foreground: list[int], num_classes: int, rules: PromptRules) -> list[ClassPrompt]:
    """Prompts for every foreground class scribbled on this slice (``scribble``: (H, W), classes 0..K-1,
    anything else unlabeled)."""
    labeled = list(range(num_classes))
    prompts = []
    for cls in foreground:
        mask = scribble == cls
        if not mask.any():
            continue
        box = scribble_box(mask, rules)
        points = np.zeros((0, 2), np.float32)
        labels = np.zeros(0, np.int64)
        if rules.uses_points:
            pos = skeleton_pixels(mask)
            pos = pos[farthest_point_sampling(pos, rules.n_pos)]
            neg = negative_candidates(scribble, cls, labeled, box, rules.n_neg)
            neg = neg[farthest_point_sampling(neg, rules.n_neg)]
            rc = np.concatenate([pos, neg]) if len(neg) else pos
            points = rc[:, ::-1].astype(np.float32)          # (row, col) -> (x, y)
            labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
        prompts.append(ClassPrompt(cls, points, labels, box if rules.uses_box else None))
    return prompts
