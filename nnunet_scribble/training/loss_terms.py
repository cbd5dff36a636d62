"""Per-epoch logging and plotting of the individual loss terms of a scribble trainer.

nnU-Net's local logger only accepts keys it knows; terms are registered on first use (earlier epochs
padded with NaN) so a method can add terms without touching the logger, and they are saved in and
restored from the checkpoint together with nnU-Net's own curves.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnunet_scribble.files import atomic_write  # noqa: E402

TERM_PREFIX = "train_term_"


def log_term(meta_logger, name: str, value: float, epoch: int) -> None:
    """Log ``value`` of term ``name`` for ``epoch`` (registering the key if new)."""
    key = TERM_PREFIX + name
    store = meta_logger.local_logger.my_fantastic_logging
    if key not in store:
        store[key] = [float("nan")] * epoch
    meta_logger.log(key, float(value), epoch)


def logged_terms(meta_logger) -> dict[str, list[float]]:
    """{term name: values per epoch} of every logged term."""
    store = meta_logger.local_logger.my_fantastic_logging
    return {k[len(TERM_PREFIX):]: v for k, v in store.items() if k.startswith(TERM_PREFIX)}


def loss_terms_figure(meta_logger):
    """Total training loss and every term per epoch. The total is drawn wide and translucent beneath
    the terms, so a term that equals it stays visible; a trainer with a single term (PCE: the total
    itself) gets one curve labelled as both."""
    terms = logged_terms(meta_logger)
    total = np.asarray(meta_logger.get_value("train_losses", step=None), dtype=float)
    fig, ax = plt.subplots(figsize=(10, 6))
    only = next(iter(terms.items())) if len(terms) == 1 else None
    if only and len(only[1]) == len(total) and np.allclose(only[1], total, equal_nan=True):
        ax.plot(np.arange(len(total)), total, color="k", lw=2, label=f"total (train) = {only[0]} (only term)")
    else:
        ax.plot(np.arange(len(total)), total, color="k", lw=5, alpha=0.3, zorder=1, label="total (train)")
        for name, values in terms.items():
            ax.plot(np.arange(len(values)), values, lw=1.5, zorder=2, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted loss term")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_loss_terms(meta_logger, output_folder: str) -> str | None:
    """Write ``progress_loss_terms.png`` (:func:`loss_terms_figure`); None if no term is logged."""
    if not logged_terms(meta_logger):
        return None
    fig = loss_terms_figure(meta_logger)
    path = os.path.join(output_folder, "progress_loss_terms.png")
    try:
        atomic_write(path, fig.savefig)
    finally:
        plt.close(fig)
    return path
