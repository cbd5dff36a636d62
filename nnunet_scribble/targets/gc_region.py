"""Global-category (GC) region from a scribble map (MaCo; docs/methods/maco.md).

The background scribble is assumed to be drawn around all targets. The GC region is

    (voxels not reachable from the patch border without crossing a background-scribble voxel,
     minus the background scribble itself)  union  (foreground scribble voxels),

and the whole patch when nothing is enclosed (open loop, loop cut off by the patch crop, no
background scribble). MaCo multiplies the foreground channels of the prediction by it
(``losses.maco.enhanced_prediction``).

Choices where the paper is silent:

- The paper thresholds a "GC-based mask" at 0.5; with a binary region that step is a no-op.
- Reachability uses face connectivity (4 in 2D, 6 in 3D), so a loop drawn as an 8-connected
  (diagonal-step) line is closed.
- The background scribble voxels are outside the region (they are labeled background).
- ``axis`` evaluates each 2D slice along that axis separately (2D-drawn scribbles in a 3D
  volume): the border is then the slice's border, and "nothing enclosed" is decided per slice.
- Values that are neither background nor a foreground class (``ignore``, nnU-Net's -1 padding)
  are unlabeled and can be crossed.
- Real hand-drawn loops are often not closed (ACDC: about half of the slices at native
  resolution, fewer after resampling/augmentation; see benchmarks/results/maco_targets_cost.md).
  ``close_gaps=r`` (off by default) first applies a morphological closing with a Euclidean ball
  of radius r voxels to the background scribble, which bridges gaps up to about 2r voxels;
  the closed scribble then takes the place of the drawn one above.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.ndimage import binary_fill_holes, generate_binary_structure
from skimage.morphology import isotropic_dilation, isotropic_erosion

__all__ = ["gc_region"]


def _enclosed(bg: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """Voxels of ``~bg`` not face-connected to the array border (per 2D slice if ``axis``): the holes of ``bg``.

    ``binary_fill_holes`` with a structure that has no neighbours across ``axis`` treats each slice
    on its own; the slices' own faces along ``axis`` are then no border.
    """
    structure = generate_binary_structure(bg.ndim, 1)
    if axis is not None:
        across = [slice(None)] * bg.ndim
        for side in (0, 2):
            across[axis] = side
            structure[tuple(across)] = False
    return binary_fill_holes(bg, structure) & ~bg


def _closing(bg: np.ndarray, radius: float, axis: Optional[int]) -> np.ndarray:
    """Binary closing of ``bg`` with a Euclidean ball of ``radius`` voxels (a disc per slice when ``axis`` is set).

    scikit-image's ``isotropic_closing`` (EDT-thresholded dilation then erosion; outside the array
    counts as set, so the border never erodes), computed inside the bounding box of ``bg`` grown by
    ``2*radius + 1``: the dilation cannot reach farther and every non-dilated voxel within
    ``radius`` of a dilated one lies inside it, so this equals the closing of the whole array.
    Identical to ``isotropic_closing`` only while the dilation leaves some voxel of the box unset
    (it can cover the box only when the box is the whole array): scipy's EDT of an all-set array is
    finite, so ``isotropic_closing`` would erode its far corners. A covered box stays set, as a
    closing must; hence the two halves are called here with that condition between them.
    """
    if radius <= 0 or not bg.any():
        return bg
    if axis is not None:
        out = np.empty_like(bg)
        for i in range(bg.shape[axis]):
            idx = (slice(None),) * axis + (i,)
            out[idx] = _closing(bg[idx], radius, None)
        return out
    m = int(np.ceil(2 * radius)) + 1
    nz = np.nonzero(bg)
    box = tuple(slice(max(int(i.min()) - m, 0), min(int(i.max()) + m + 1, n))
                for i, n in zip(nz, bg.shape))
    dilated = isotropic_dilation(bg[box], radius)
    out = bg.copy()
    out[box] = dilated if dilated.all() else isotropic_erosion(dilated, radius)   # = isotropic_closing(bg[box])
    return out


def gc_region(scribble: np.ndarray, ignore_label: Optional[int] = None, background: int = 0,
              axis: Optional[int] = None, require_fg_inside: bool = False,
              close_gaps: float = 0.0) -> np.ndarray:
    """GC region of one sample.

    Args:
        scribble: integer scribble map, spatial shape only (any N-D).
        ignore_label: the unlabeled value; negative values are always unlabeled too.
        background: the background class value.
        axis: evaluate per 2D slice along this axis (for 2D-drawn scribbles in 3D volumes).
        require_fg_inside: if True, a patch (slice) where a foreground scribble voxel lies outside
            the enclosed region violates the "background encloses all targets" assumption and
            gets the whole patch (slice) instead. Off by default (the project's reading adds
            such voxels to the region).
        close_gaps: radius in voxels of a closing applied to the background scribble before
            the reachability test (0 = off; bridges gaps of about ``2 * close_gaps`` voxels).

    Returns:
        bool array of ``scribble.shape``.
    """
    s = np.asarray(scribble)
    bg = s == background
    fg = (s >= 0) & (s != background)
    if ignore_label is not None:
        fg &= s != ignore_label
    if axis is not None:
        axis = axis % s.ndim
    bg_closed = _closing(bg, close_gaps, axis)
    inside = _enclosed(bg_closed, axis)
    region = inside | fg
    red = tuple(i for i in range(s.ndim) if i != axis) if axis is not None else None
    empty = ~inside.any(axis=red, keepdims=True)
    if require_fg_inside:
        # fg voxels swallowed by the closing are next to the loop, not evidence against it
        empty = empty | (fg & ~inside & ~bg_closed).any(axis=red, keepdims=True)
    return region | empty
