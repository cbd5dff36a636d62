"""nnUNetTrainerSAMSP: DMPLS segmentor supervised by scribbles and by SAM pseudo-labels (stage C of SAM-SP).

Paper: "SAM-SP: SAM-guided Semantic Alignment and Pseudo-label Fine-tuning for Scribble-Supervised Medical
Image Segmentation" (appendix); formulation and every choice: docs/methods/samsp.md.

At the start of training the SAM stages run for this fold if their outputs are missing (stage A: the
frozen-encoder embedding cache; stage B: prompts from the fold's training scribbles, pseudo-labels,
mask-decoder fine-tuning, rounds 0..R; see :mod:`nnunet_scribble.sam.pseudolabels`). Finished work is
reused, so running ``nnunet-scribble sam-pseudolabels`` first with the same settings (the defaults
match) makes training start at once. The final round's pseudo-label maps ride as an extra segmentation
channel through nnU-Net's augmentation (:class:`nnUNetTrainerScribble`). With ``y1``/``y2`` the
full-resolution softmax of the main/auxiliary decoder::

    L = L_DMPLS + w_sam * 0.5 [Dice(y1, PL_SAM) + Dice(y2, PL_SAM)]         (w_sam = 1)

``Dice`` is the DMPLS pseudo-label Dice (same settings); voxels where the SAM pseudo-label is
``ignore`` (slices without any scribble) are left out. Logged terms: the four DMPLS terms plus
``sam_dice_main`` and ``sam_dice_aux``. Prediction: the main decoder, stock ``nnUNetv2_predict``.

Settings (class attributes; subclass to change). Those left ``None`` come from the environment, as for
``nnunet-scribble sam-pseudolabels``, else from the default: ``sam_backend``/``sam_checkpoint``
(``NNUNET_SCRIBBLE_SAM_BACKEND``/``NNUNET_SCRIBBLE_SAM_CHECKPOINT``; the bundled LiteMedSAM),
``sam_rounds`` (``NNUNET_SCRIBBLE_SAM_ROUNDS``; R = 2), ``sam_finetune_epochs``
(``NNUNET_SCRIBBLE_SAM_EPOCHS``; 30). ``sam_pl_weight``: 1. The environment lets a CPU user pick a
cheaper SAM stage (e.g. ``NNUNET_SCRIBBLE_SAM_ROUNDS=0``) without writing a trainer class.

Deviations from the paper and guesses
-------------------------------------
- The paper does not state how the SAM pseudo-label term is weighted against the DMPLS loss nor whether
  it acts on both branches; the project reads it as ``L_DMPLS + Dice(y, PL_SAM)``. Guess: weight 1, averaged over
  both decoders like DMPLS's own pseudo-label term, full resolution only.
- The paper's CSF attention modules at the skip connections and its learned output convolution that
  fuses the two decoders are not built (optional in the project's reading): the segmentor is exactly
  :class:`nnUNetTrainerDMPLS`, so checkpoints predict with stock nnU-Net and the comparison with DMPLS
  isolates the SAM pseudo-labels.
- SAM: LiteMedSAM by default (the paper: ViT-H, which cannot be downloaded here; pass ``vit_h`` and a
  checkpoint to use it). Box prompts for LiteMedSAM (box-trained), points otherwise.
- nnU-Net's optimizer, schedule and augmentation instead of the paper's SGD setup (as for DMPLS).
- Under DDP, rank 0 runs the SAM stages; the other ranks wait for its ``sam_pseudolabels.json`` in the
  output folder (a file, not a collective, because the stages may outlast a collective's timeout).
"""
from __future__ import annotations

import os
import time

import torch

from nnunet_scribble.networks.outputs import full_resolution
from nnunet_scribble.files import atomic_write_json
from nnunet_scribble.sam.decoder import FinetuneConfig
from nnunet_scribble.sam.pseudolabels import (DEFAULT_EPOCHS, DEFAULT_ROUNDS, ENV_EPOCHS, ENV_ROUNDS, StageBConfig,
                                              run_pseudolabels, setting_from_env)
from nnunet_scribble.training.budget_variants import add_budget_variants
from nnunet_scribble.training.dmpls import nnUNetTrainerDMPLS
from nnunet_scribble.training.stage_outputs import wait_for_ready_file

READY_FILE = "sam_pseudolabels.json"


class nnUNetTrainerSAMSP(nnUNetTrainerDMPLS):
    """SAM-SP stage C: ``L = L_DMPLS + w_sam * 0.5 [Dice(y1, PL_SAM) + Dice(y2, PL_SAM)]``."""

    sam_backend: str | None = None
    sam_checkpoint: str | None = None
    sam_rounds: int | None = None              # None: $NNUNET_SCRIBBLE_SAM_ROUNDS or 2
    sam_finetune_epochs: int | None = None     # None: $NNUNET_SCRIBBLE_SAM_EPOCHS or 30
    sam_pl_weight: float = 1.0
    sam_wait_seconds: float = 24 * 3600      # how long non-zero DDP ranks wait for rank 0's pseudo-labels

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._created = time.time()

    # ---- SAM stages A + B ---------------------------------------------------------------------
    def stage_b_config(self) -> StageBConfig:
        return StageBConfig(rounds=setting_from_env(self.sam_rounds, ENV_ROUNDS, DEFAULT_ROUNDS),
                            finetune=FinetuneConfig(epochs=setting_from_env(self.sam_finetune_epochs, ENV_EPOCHS,
                                                                            DEFAULT_EPOCHS)))

    def ensure_sam_pseudolabels(self) -> str:
        """Run (or resume) stages A and B for this fold; returns the folder of the final pseudo-labels."""
        ready = os.path.join(self.output_folder, READY_FILE)
        if self.local_rank != 0:
            return self._wait_for_rank0(ready)
        self.print_to_log_file("SAM-SP: preparing SAM pseudo-labels (stages A and B; finished work is reused)")
        config = self.stage_b_config()
        result = run_pseudolabels(self.plans_manager.dataset_name, self.configuration_name, self.fold,
                                  backend=self.sam_backend, checkpoint=self.sam_checkpoint,
                                  plans=self.plans_manager.plans_name, config=config,
                                  device=self.device, echo=lambda msg: self.print_to_log_file(msg),
                                  random_split=True)   # a fold beyond splits_final.json: as nnU-Net's do_split
        final = result.dice.get(config.rounds) or {}
        os.makedirs(self.output_folder, exist_ok=True)
        atomic_write_json(ready, {"folder": result.folder, "details": result.fold_folder, "rounds": config.rounds,
                                  "finetune_epochs": config.finetune.epochs,
                                  "pseudo_label_dice": final.get("mean"), "per_class": final.get("per_class")})
        return result.folder

    def _wait_for_rank0(self, ready: str) -> str:
        return wait_for_ready_file(ready, self._created, self.sam_wait_seconds, self.local_rank)["folder"]

    def on_train_start(self):
        # before nnU-Net builds the dataloaders, which read self.extra_seg_folder
        self.extra_seg_folder = self.ensure_sam_pseudolabels()
        self.print_to_log_file(f"SAM-SP: pseudo-labels from {self.extra_seg_folder}; L = L_DMPLS + "
                               f"{self.sam_pl_weight} * 0.5 [Dice(y1, PL_SAM) + Dice(y2, PL_SAM)]")
        super().on_train_start()

    # ---- loss -------------------------------------------------------------------------------
    def compute_loss_terms(self, data: torch.Tensor, scribbles, extras) -> dict[str, torch.Tensor]:
        out_main, out_aux = self.dual_forward(data)
        y1, y2 = probs = self.full_resolution_probabilities(out_main, out_aux)
        terms = self.dmpls_loss_terms(out_main, out_aux, scribbles, probs)
        pl_sam = full_resolution(extras)
        if pl_sam.shape[1] != 1:
            raise RuntimeError(f"{type(self).__name__} expects the SAM pseudo-label as the only extra channel, "
                               f"got {pl_sam.shape[1]}: is extra_seg_folder set?")
        ignore = self.label_manager.ignore_label
        w = self.sam_pl_weight * 0.5
        terms["sam_dice_main"] = w * self.pseudo_label_dice(y1, pl_sam, ignore_index=ignore)
        terms["sam_dice_aux"] = w * self.pseudo_label_dice(y2, pl_sam, ignore_index=ignore)
        return terms


__all__ = ["nnUNetTrainerSAMSP"] + add_budget_variants(nnUNetTrainerSAMSP, globals())
