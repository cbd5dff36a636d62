"""Batches that always hold labeled patches, for datasets mixing labeled and unlabeled cases.

nnU-Net draws the cases of a batch uniformly; on a dataset with few labeled cases most batches then
carry no annotation at all. :class:`LabeledShareDataLoader` is nnU-Net's data loader with one change:
``round(share * batch_size)`` cases of each batch are drawn from the labeled (dense or scribbled) cases,
the rest from all cases. The labeled draws take the last batch positions, which are the ones nnU-Net's
foreground oversampling forces onto a foreground voxel (its ``oversample_foreground_percent`` share of
the batch), so oversampling applies to the labeled part. Under DDP every rank's loader does the same with
its own share of the batch.

nnU-Net builds its loaders inline in ``nnUNetTrainer.get_dataloaders``; :func:`loader_class_substituted`
substitutes this class for the duration of that call (the loader objects are then ordinary instances of
a module-level class, so they pickle into the augmentation workers).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterable

import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunet_scribble.errors import UserFacingError


def labeled_count(batch_size: int, share: float) -> int:
    """Cases of a batch drawn from the labeled ones; ``share`` must lie in (0, 1]."""
    if not 0 < share <= 1:
        raise UserFacingError(f"The labeled share of a batch must be in (0, 1], got {share}: set the trainer's "
                              "labeled_batch_share to e.g. 0.5 (half of each batch from labeled cases).")
    return max(1, round(share * batch_size))


class LabeledShareDataLoader(nnUNetDataLoader):
    """nnU-Net's data loader; ``labeled_keys`` / ``labeled_share`` fix the labeled part of each batch."""

    def __init__(self, *args, labeled_keys: Iterable[str] = (), labeled_share: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        wanted = set(labeled_keys)
        self.labeled_keys = [k for k in self.indices if k in wanted]
        self.n_labeled = labeled_count(self.batch_size, labeled_share) if self.labeled_keys else 0

    def get_indices(self):
        rest = list(np.random.choice(self.indices, self.batch_size - self.n_labeled, replace=True))
        labeled = list(np.random.choice(self.labeled_keys, self.n_labeled, replace=True)) if self.n_labeled else []
        return rest + labeled


@contextmanager
def loader_class_substituted(labeled_keys: Iterable[str], labeled_share: float):
    """While active, nnU-Net's trainer module builds :class:`LabeledShareDataLoader` instead of its own."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    original = trainer_module.nnUNetDataLoader
    trainer_module.nnUNetDataLoader = functools.partial(LabeledShareDataLoader, labeled_keys=list(labeled_keys),
                                                        labeled_share=labeled_share)
    try:
        yield
    finally:
        trainer_module.nnUNetDataLoader = original
