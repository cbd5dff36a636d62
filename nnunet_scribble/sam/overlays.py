"""Overlay PNGs for a few slices per round: image + scribbles + prompts | pseudo-label | dense labels.

Colours and drawing are those of ``nnunet_scribble.visualization.overlay`` (scribbles opaque and one pixel
thicker, label maps with their foreground tinted), so both kinds of overlay read alike."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from nnunet_scribble.files import atomic_write
from nnunet_scribble.visualization.overlay import colour, draw_scribbles, tint_labels

PSEUDO_LABEL_ALPHA = 0.45


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
    axes[0].imshow(draw_scribbles(image01, scribble, num_classes))
    for p in prompts:
        col = colour(p.cls)
        if p.box is not None:
            x0, y0, x1, y1 = p.box
            axes[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=col, linewidth=1.2))
        for (x, y), lab in zip(p.points, p.labels):
            axes[0].plot(x, y, marker="+" if lab == 1 else "x", color=col if lab == 1 else "white",
                         markeredgecolor=col, markersize=7, markeredgewidth=1.6)
    axes[0].set_title("image, scribbles, prompts\n(+ positive, x negative, box)", fontsize=9)
    axes[1].imshow(tint_labels(image01, pseudo_label, num_classes, PSEUDO_LABEL_ALPHA))
    axes[1].set_title("pseudo-label", fontsize=9)
    if dense is not None:
        axes[2].imshow(tint_labels(image01, dense, num_classes, PSEUDO_LABEL_ALPHA))
        axes[2].set_title("dense labels (labelsTr_dense)", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if class_names:
        handles = [plt.Line2D([], [], color=colour(c), linewidth=6, label=n) for n, c in class_names.items()
                   if c < num_classes]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90))
    finally:
        plt.close(fig)
    return path
