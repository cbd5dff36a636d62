"""Overlay PNGs for a few slices per round: image + scribbles + prompts | pseudo-label | dense labels."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

# background, then one colour per foreground class (cycled)
_COLOURS = np.array([[0.55, 0.55, 0.55], [0.90, 0.20, 0.20], [0.20, 0.75, 0.25], [0.20, 0.45, 0.95],
                     [0.95, 0.75, 0.10], [0.75, 0.30, 0.85], [0.10, 0.80, 0.80], [0.95, 0.50, 0.10]])


def class_colour(c: int) -> np.ndarray:
    return _COLOURS[0] if c == 0 else _COLOURS[1 + (c - 1) % (len(_COLOURS) - 1)]


def _tint(gray: np.ndarray, label: np.ndarray, num_classes: int, alpha: float, skip_background: bool) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for c in range(num_classes):
        if skip_background and c == 0:
            continue
        m = label == c
        rgb[m] = (1 - alpha) * rgb[m] + alpha * class_colour(c)
    return rgb


def _thicken(scribble: np.ndarray, num_classes: int) -> np.ndarray:
    """Scribbles grown by one pixel for display (thin strokes vanish at PNG resolution)."""
    from scipy import ndimage

    out = scribble.copy()
    free = (scribble < 0) | (scribble >= num_classes)
    for c in range(num_classes):
        grown = ndimage.binary_dilation(scribble == c) & free
        out[grown] = c
        free &= ~grown
    return out


def write_overlay(path: str, image01: np.ndarray, scribble: np.ndarray, prompts: Sequence, pseudo_label: np.ndarray,
                  num_classes: int, title: str, dense: Optional[np.ndarray] = None,
                  class_names: Optional[dict] = None) -> str:
    """One PNG: panels (image, scribbles, prompts), (pseudo-label), and (dense labels) when given.

    Scribbles are drawn one pixel thicker than they are, for visibility."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if dense is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.6))
    axes[0].imshow(_tint(image01, _thicken(scribble, num_classes), num_classes, 1.0, False))
    for p in prompts:
        col = class_colour(p.cls)
        if p.box is not None:
            x0, y0, x1, y1 = p.box
            axes[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=col, linewidth=1.2))
        for (x, y), lab in zip(p.points, p.labels):
            axes[0].plot(x, y, marker="+" if lab == 1 else "x", color=col if lab == 1 else "white",
                         markeredgecolor=col, markersize=7, markeredgewidth=1.6)
    axes[0].set_title("image, scribbles, prompts\n(+ positive, x negative, box)", fontsize=9)
    axes[1].imshow(_tint(image01, pseudo_label, num_classes, 0.45, True))
    axes[1].set_title("pseudo-label", fontsize=9)
    if dense is not None:
        axes[2].imshow(_tint(image01, dense, num_classes, 0.45, True))
        axes[2].set_title("dense labels (labelsTr_dense)", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if class_names:
        handles = [plt.Line2D([], [], color=class_colour(c), linewidth=6, label=n) for n, c in class_names.items()
                   if c < num_classes]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path
