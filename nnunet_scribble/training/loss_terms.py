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


def plot_loss_terms(meta_logger, output_folder: str) -> str | None:
    """Write ``progress_loss_terms.png``: total training loss and every term per epoch."""
    terms = logged_terms(meta_logger)
    if not terms:
        return None
    total = meta_logger.get_value("train_losses", step=None)
    fig, ax = plt.subplots(figsize=(10, 6))
    epochs = np.arange(len(total))
    ax.plot(epochs, total, color="k", lw=2, label="total (train)")
    for name, values in terms.items():
        ax.plot(np.arange(len(values)), values, lw=1.5, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted loss term")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(output_folder, "progress_loss_terms.png")
    fig.savefig(path)
    plt.close(fig)
    return path
