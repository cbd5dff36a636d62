"""nnUNetTrainerCFR: Mean Teacher re-training guided by the pseudo-labels of a LoRA-fine-tuned SAM (CFR).

Paper: "Concatenate, Fine-tuning, Re-training: A SAM-enabled Framework for Semi-supervised 3D Medical
Image Segmentation"; formulation and every choice: docs/methods/cfr.md.

At the start of training the CFR stages run for this fold when their outputs are missing
(:mod:`nnunet_scribble.sam.cfr`: slices tiled into grids, SAM fine-tuned with LoRA on the fold's labeled
training cases, pseudo-labels for every training case); ``nnunet-scribble cfr-pseudolabels`` runs them
alone with the same defaults. The pseudo-labels ride as an extra segmentation channel through nnU-Net's
augmentation. With ``f`` the student::

    L = L_MeanTeacher + w_pl * 0.5 [CE(f(x), PL) + Dice(f(x), PL)]   on unlabeled voxels only   (w_pl = 1)

``L_MeanTeacher`` is :class:`nnUNetTrainerMeanTeacher`'s (nnU-Net's loss on labeled voxels, EMA teacher,
softmax-MSE consistency). "Unlabeled voxels" are those whose label is ``ignore``: all voxels of an
unlabeled case and the unscribbled voxels of a scribbled case, so the same trainer covers the paper's
semi-supervised setting and scribbles. Logged terms: ``supervised``, ``consistency``, ``pseudo_label``.
Prediction: the student, stock ``nnUNetv2_predict``.

Settings (class attributes; None = from the environment, else the default): ``sam_backend`` /
``sam_checkpoint`` (``NNUNET_SCRIBBLE_SAM_BACKEND`` / ``NNUNET_SCRIBBLE_SAM_CHECKPOINT``; the bundled
LiteMedSAM), ``cfr_iterations`` (``NNUNET_SCRIBBLE_CFR_ITERATIONS``; 6000, the official fine-tuning length);
``cfr_pl_weight`` 1.

Deviations and guesses: see docs/methods/cfr.md (LiteMedSAM instead of SAM ViT-B, nnU-Net's optimizer and
schedule for the re-training, the pseudo-label term on the unscribbled voxels of scribbled cases too).
"""
from __future__ import annotations

import os
import time

import torch

from nnunet_scribble.files import atomic_write_json
from nnunet_scribble.losses.cfr import ce_dice_loss
from nnunet_scribble.networks.outputs import full_resolution
from nnunet_scribble.sam.cfr import DEFAULT_ITERATIONS, ENV_ITERATIONS, CFRConfig, run_cfr_pseudolabels
from nnunet_scribble.sam.pseudolabels import setting_from_env
from nnunet_scribble.training.budget_variants import add_budget_variants
from nnunet_scribble.training.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_scribble.training.stage_outputs import wait_for_ready_file

READY_FILE = "cfr_pseudolabels.json"


class nnUNetTrainerCFR(nnUNetTrainerMeanTeacher):
    """CFR re-training: Mean Teacher + ``w_pl * 0.5 (CE + Dice)`` to the SAM pseudo-labels on unlabeled voxels."""

    sam_backend: str | None = None
    sam_checkpoint: str | None = None
    cfr_iterations: int | None = None          # None: $NNUNET_SCRIBBLE_CFR_ITERATIONS or 6000
    cfr_pl_weight: float = 1.0
    sam_wait_seconds: float = 24 * 3600

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._created = time.time()

    def cfr_config(self) -> CFRConfig:
        return CFRConfig(iterations=setting_from_env(self.cfr_iterations, ENV_ITERATIONS, DEFAULT_ITERATIONS))

    def ensure_cfr_pseudolabels(self) -> str:
        """Run (or resume) the CFR stages for this fold; returns the pseudo-label folder."""
        ready = os.path.join(self.output_folder, READY_FILE)
        if self.local_rank != 0:
            return wait_for_ready_file(ready, self._created, self.sam_wait_seconds, self.local_rank)["folder"]
        self.print_to_log_file("CFR: preparing the SAM pseudo-labels (concatenate, fine-tune, pseudo-label; "
                               "finished work is reused)")
        config = self.cfr_config()
        result = run_cfr_pseudolabels(self.plans_manager.dataset_name, self.configuration_name, self.fold,
                                      backend=self.sam_backend, checkpoint=self.sam_checkpoint,
                                      plans=self.plans_manager.plans_name, config=config, device=self.device,
                                      echo=lambda msg: self.print_to_log_file(msg), random_split=True)
        os.makedirs(self.output_folder, exist_ok=True)
        dice = result.dice or {}
        atomic_write_json(ready, {"folder": result.folder, "details": result.run_folder,
                                  "finetune_iterations": config.iterations, "pseudo_label_dice": dice.get("mean"),
                                  "per_class": dice.get("per_class")})
        return result.folder

    def on_train_start(self):
        self.extra_seg_folder = self.ensure_cfr_pseudolabels()   # before nnU-Net builds the dataloaders
        self.print_to_log_file(f"CFR: pseudo-labels from {self.extra_seg_folder}; L = L_MeanTeacher + "
                               f"{self.cfr_pl_weight} * 0.5 (CE + Dice)(student, PL) on unlabeled voxels")
        super().on_train_start()

    def compute_loss_terms(self, data: torch.Tensor, scribbles, extras) -> dict[str, torch.Tensor]:
        terms, output = self.mean_teacher_terms(data, scribbles)
        pl = full_resolution(extras)
        if pl.shape[1] != 1:
            raise RuntimeError(f"{type(self).__name__} expects the SAM pseudo-label as the only extra channel, got "
                               f"{pl.shape[1]}: is extra_seg_folder set?")
        ignore = self.label_manager.ignore_label
        target = torch.where(full_resolution(scribbles) == ignore, pl, torch.full_like(pl, ignore))
        terms["pseudo_label"] = self.cfr_pl_weight * ce_dice_loss(full_resolution(output), target, ignore_index=ignore)
        return terms


__all__ = ["nnUNetTrainerCFR"] + add_budget_variants(nnUNetTrainerCFR, globals())
