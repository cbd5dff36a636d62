"""Shared base of the scribble trainers: everything nnU-Net needs to train from scribbles.

What it adds to ``nnUNetTrainer`` (methods only implement ``compute_loss_terms``):
- refuses datasets without an ``ignore`` label (scribbles need one), and region-based datasets for the
  methods that need label maps (``needs_label_maps``);
- patch padding outside the image becomes ``ignore`` instead of background (stock nnU-Net turns the
  -1 padding into label 0, i.e. it would teach "background" where no annotation exists), while
  nnU-Net's crop marks (-1 in the stored map: background scribbles on zero-intensity voxels) are read as
  the background they are (``nnunet_scribble.crop_marks``);
- reads once, at the start of training, which classes each training case has scribbled
  (``training_case_classes``) and warns about scribbled cases without any background scribble;
- extra segmentation channels: if ``self.extra_seg_folder`` is set (before ``on_train_start``), each
  training case's map ``<case>.b2nd`` (or ``.npz``/``.npy`` for numpy-preprocessed data) from that
  folder rides as a second segmentation channel through nnU-Net's augmentation and deep-supervision
  downsampling (nnU-Net's cascade mechanism, without its one-hot input). ``compute_loss_terms``
  receives it separately from the scribbles. Validation batches carry scribbles only;
- every loss term is logged per epoch (log file, ``progress_loss_terms.png``, checkpoint);
- after training (and ``nnUNetv2_train --val``), if ``$nnUNet_raw/<dataset>/labelsTr_dense`` exists, the
  fold's validation predictions are evaluated against it: ``validation/summary_dense.json``. nnU-Net's
  own ``validation/summary.json`` only counts scribbled voxels.
- training budgets (``TrainingBudget``): the generated ``_<N>epochs``, ``_<N>it`` and ``_smoke`` variants;
  ``checkpoint_latest`` every 250 iterations, written atomically (``nnUNetv2_train --c`` after a kill).
"""
from __future__ import annotations

import os
from typing import List

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch import distributed as dist

from nnunet_scribble.crop_marks import with_crop_marks_as_background
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.files import atomic_write
from nnunet_scribble.training.budget_variants import TrainingBudget
from nnunet_scribble.training.case_labels import labeled_cases, scribbled_classes
from nnunet_scribble.training.labeled_sampling import labeled_count, loader_class_substituted
from nnunet_scribble.training.loss_terms import TERM_PREFIX, log_term, logged_terms, plot_loss_terms


def padding_becomes_ignore(composed, ignore_label: int):
    """Replace nnU-Net's ``RemoveLabelTransform(-1 -> 0)`` by ``-1 -> ignore_label`` in place."""
    for i, t in enumerate(composed.transforms):
        if isinstance(t, RemoveLabelTransform) and t.label_value == -1:
            composed.transforms[i] = RemoveLabelTransform(-1, ignore_label, t.segmentation_channels)
    return composed


def dense_labels_folder(dataset_name: str) -> str | None:
    """``$nnUNet_raw/<dataset>/labelsTr_dense`` if it exists."""
    if not nnUNet_raw.is_set():
        return None
    folder = os.path.join(os.fspath(nnUNet_raw), dataset_name, "labelsTr_dense")
    return folder if os.path.isdir(folder) else None


class nnUNetTrainerScribble(TrainingBudget, nnUNetTrainer):
    """Base of all scribble trainers; trains with ``L_part`` (nnU-Net's ignore-aware Dice+CE)."""

    # True for methods whose loss needs softmax class probabilities (label maps): they refuse
    # region-based datasets ("regions_class_order" in dataset.json)
    needs_label_maps: bool = False
    # share of each batch drawn from labeled cases when a fold also has unlabeled ones (mixed datasets)
    labeled_batch_share: float = 0.5
    # patch padding outside the image: ``ignore`` (False, the default) or stock nnU-Net's background (True)
    padding_is_background: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not self.label_manager.has_ignore_label:
            where = (os.path.join(self.preprocessed_dataset_folder_base, "dataset.json")
                     if self.preprocessed_dataset_folder_base else "dataset.json")
            raise UserFacingError(
                f"{type(self).__name__} trains from scribbles and needs an 'ignore' label, but {where} "
                f"has none (labels: {dataset_json.get('labels')}). Add \"ignore\": <largest label + 1> to "
                "\"labels\" in the raw dataset.json, give every unannotated voxel of labelsTr that value "
                "(`nnunet-scribble convert` does both), and rerun nnUNetv2_plan_and_preprocess. "
                "For dense labels use the stock nnUNetTrainer.")
        if self.needs_label_maps and self.label_manager.has_regions:
            where = (os.path.join(self.preprocessed_dataset_folder_base, "dataset.json")
                     if self.preprocessed_dataset_folder_base else "dataset.json")
            raise UserFacingError(
                f"{type(self).__name__} needs label maps (its loss uses softmax class probabilities), but {where} "
                "defines regions (\"regions_class_order\"). Train this dataset with nnUNetTrainerPCE, or give it "
                "plain labels (one integer per class, no regions_class_order) and rerun "
                "nnUNetv2_plan_and_preprocess.")
        self.extra_seg_folder: str | None = None
        self._training_case_classes: dict[str, np.ndarray] | None = None

    # ---- data -------------------------------------------------------------------------------
    @classmethod
    def get_training_transforms(cls, *args, **kwargs):
        composed = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        return composed if cls.padding_is_background else padding_becomes_ignore(composed, kwargs["ignore_label"])

    @classmethod
    def get_validation_transforms(cls, *args, **kwargs):
        composed = nnUNetTrainer.get_validation_transforms(*args, **kwargs)
        return composed if cls.padding_is_background else padding_becomes_ignore(composed, kwargs["ignore_label"])

    def get_tr_and_val_datasets(self):
        tr_keys, val_keys = self.do_split()
        self.dataset_class = with_crop_marks_as_background(self.dataset_class)
        dataset_tr = self.dataset_class(self.preprocessed_dataset_folder, tr_keys,
                                        folder_with_segs_from_previous_stage=self.extra_seg_folder)
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=None)
        return dataset_tr, dataset_val

    def get_dataloaders(self):
        """nnU-Net's loaders; on a fold with unlabeled training cases (``ignore`` everywhere) each batch draws
        ``labeled_batch_share`` of its cases from the labeled ones (``training.labeled_sampling``)."""
        tr_keys, _ = self.do_split()
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        labeled = labeled_cases(self.dataset_class(self.preprocessed_dataset_folder, tr_keys), tr_keys,
                                tuple([-1] + self.label_manager.all_labels))
        if len(labeled) == len(tr_keys):
            return super().get_dataloaders()
        if not labeled:
            raise UserFacingError(
                f"Fold {self.fold} of {self.plans_manager.dataset_name} has no labeled training case: all "
                f"{len(tr_keys)} are 'ignore' everywhere. Give some cases labels (dense or scribbles; "
                "`nnunet-scribble derive-mixed` chooses them), or change splits_final.json in "
                f"{self.preprocessed_dataset_folder_base} so that every fold's training part holds labeled cases.")
        n = labeled_count(self.batch_size, self.labeled_batch_share)
        self.print_to_log_file(f"Mixed dataset: {len(labeled)} of {len(tr_keys)} training cases are labeled; "
                               f"{n} of the {self.batch_size} cases of each batch are drawn from them.")
        with loader_class_substituted(labeled, self.labeled_batch_share):
            return super().get_dataloaders()

    def training_case_classes(self) -> dict[str, np.ndarray]:
        """``{case: (C,) bool}``: the classes scribbled (or densely labeled) in each training case of the fold,
        read once from the preprocessed segmentations (crop marks count as background)."""
        if self._training_case_classes is None:
            tr_keys, _ = self.do_split()
            dataset = with_crop_marks_as_background(
                self.dataset_class or infer_dataset_class(self.preprocessed_dataset_folder))
            self._training_case_classes = scribbled_classes(dataset(self.preprocessed_dataset_folder, tr_keys),
                                                            tr_keys, self.label_manager.num_segmentation_heads)
        return self._training_case_classes

    def on_train_start(self):
        super().on_train_start()
        self.warn_about_missing_background()

    def warn_about_missing_background(self) -> list[str]:
        """Log (and return) the labeled training cases that have no background scribble."""
        if self.label_manager.has_regions:
            return []
        classes = self.training_case_classes()
        missing = sorted(k for k, present in classes.items() if present.any() and not present[0])
        if missing:
            self.print_to_log_file(
                f"WARNING: {len(missing)} of {len(classes)} training cases have scribbles but no background scribble "
                f"(e.g. {', '.join(missing[:5])}). Without background scribbles the network has no example of "
                "background in them and tends to paint the whole image with the scribbled classes. Scribble some "
                "background (label 0) in each case, or simulate scribbles with `nnunet-scribble "
                "simulate-scribbles`, and rerun nnUNetv2_plan_and_preprocess.")
        return missing

    # ---- loss -------------------------------------------------------------------------------
    def compute_loss_terms(self, data: torch.Tensor, scribbles, extras) -> dict[str, torch.Tensor]:
        """Weighted loss terms whose sum is the training loss.

        ``scribbles``/``extras``: per deep-supervision scale (a list, full resolution first; a tensor
        when deep supervision is off) the scribble map (B, 1, ...) and the extra channels (B, E, ...).
        """
        return {"partial": self.loss(self.network(data), scribbles)}

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        targets = [t.to(self.device, non_blocking=True) for t in (target if isinstance(target, list) else [target])]
        scribbles, extras = [t[:, :1] for t in targets], [t[:, 1:] for t in targets]
        if not isinstance(target, list):
            scribbles, extras = scribbles[0], extras[0]

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            terms = self.compute_loss_terms(data, scribbles, extras)
            loss = sum(terms.values())
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        out = {"loss": loss.detach().cpu().numpy()}
        out.update({TERM_PREFIX + k: v.detach().float().cpu().numpy() for k, v in terms.items()})
        return out

    # ---- logging ----------------------------------------------------------------------------
    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        for key in (k for k in train_outputs[0] if k.startswith(TERM_PREFIX)):
            values = np.array([o[key] for o in train_outputs], dtype=np.float64)
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, values)
                values = np.concatenate(gathered)
            log_term(self.logger, key[len(TERM_PREFIX):], values.mean(), self.current_epoch)

    def on_epoch_end(self):
        terms = {k: v[-1] for k, v in logged_terms(self.logger).items()}
        if terms:
            self.print_to_log_file("loss terms", ", ".join(f"{k} {v:.4f}" for k, v in terms.items()))
        super().on_epoch_end()
        if self.local_rank == 0:
            plot_loss_terms(self.logger, self.output_folder)

    # ---- validation -------------------------------------------------------------------------
    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)
        if self.local_rank == 0 and not self.skip_final_validation:
            self.print_to_log_file("Warning: the Mean Validation Dice above counts scribbled voxels only and overstates the quality: see validation/summary_dense.json, and choose models with `nnunet-scribble find-best-configuration`.", also_print_to_console=True)
            self.evaluate_validation_against_dense_labels()

    def evaluate_validation_against_dense_labels(self) -> dict | None:
        """Dense-label Dice/HD95 of ``validation/`` -> ``validation/summary_dense.json`` (if labels exist)."""
        from nnunet_scribble.evaluation.evaluate_folder import classes_from_labels, evaluate_folders, markdown_table

        dense = dense_labels_folder(self.plans_manager.dataset_name)
        if dense is None:
            self.print_to_log_file("No labelsTr_dense in the raw dataset: skipping the dense-label evaluation.")
            return None
        validation = os.path.join(self.output_folder, "validation")
        try:
            summary = evaluate_folders(validation, dense, classes=classes_from_labels(self.dataset_json["labels"])[0],
                                       output_json=os.path.join(validation, "summary_dense.json"),
                                       allow_missing_predictions=True)
        except UserFacingError as e:
            self.print_to_log_file(f"Dense-label evaluation failed: {e}")
            return None
        self.print_to_log_file("Validation against dense labels (labelsTr_dense):\n" + markdown_table(summary))
        return summary

    # ---- trainer-owned modules beside the network ----------------------------------------------
    def extra_checkpoint_state(self) -> dict:
        """State of modules the trainer owns besides ``self.network`` (a training-only head, a teacher),
        saved under its own checkpoint keys: ``network_weights`` stays what stock ``nnUNetv2_predict`` loads."""
        return {}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Restore what :meth:`extra_checkpoint_state` saved; ``checkpoint`` is the whole loaded dict."""

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        extra = self.extra_checkpoint_state()
        if not extra or self.local_rank != 0 or self.disable_checkpointing:
            return
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        checkpoint.update(extra)
        atomic_write(filename, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = (torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
                      if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint)
        self.load_extra_checkpoint_state(checkpoint)
