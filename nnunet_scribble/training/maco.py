"""nnUNetTrainerMaCo: masked context modeling + continuous pseudo labels (MaCo).

Loss (the paper's equations were not legible in the copy this project worked from; this is the project's
reading, detailed in docs/methods/maco.md):

    L = L_part(y) + 0.5 L_part(y_m) + 0.1 L_cc + 0.1 L_ep + 0.1 L_cpl

- ``y = softmax(f(x))``; ``y_m = softmax(f(x_m))`` where ``x_m`` is ``x`` with half of its 16^N cubes
  set to 0, cubes holding scribble 3x as likely to be drawn (MCM, ``targets.mcm``).
- ``L_part``: nnU-Net's ignore-aware Dice + CE with deep supervision (the paper uses partial CE; the
  project's baseline is nnU-Net's own partial loss, so every method shares it).
- ``L_cc = 1 - cos(y_m, sg(y))``; ``L_ep = 1 - cos(y, sg(y * GC))`` with the GC region enclosed by the
  background scribble; ``L_cpl`` = squared error to the continuous pseudo labels
  ``exp(-0.1 d_k)`` (floor 0.05) on voxels where they are non-zero (``losses.maco``).

Plumbing and the choices where the paper is silent (also in docs/methods/maco.md):
- The clean and the masked input go through the network as one batch of 2B (nnU-Net's networks use
  instance norm, so this equals two passes and is faster). Method terms use the full-resolution output.
- CPL targets are computed on the augmented patch, in the augmentation workers
  (``targets.cpl_transform``), with distances in units of the smallest voxel spacing of the
  configuration (``spacing / min(spacing)``): 2D and isotropic 3D get voxel units as in the paper,
  anisotropic 3D gets physical through-plane steps.
- GC regions are computed once per case from the raw scribbles, per slice for anisotropic volumes,
  with a closing of radius ``gc_close_gaps`` voxels that bridges small gaps in hand-drawn loops, and
  ride through augmentation as an extra label channel (``targets.gc_maps``). Slices whose loop does
  not enclose all foreground scribbles get GC = everything (``L_ep`` is then 0 there).
- ``y_e`` leaves the background channel unmasked (``losses.maco.enhanced_prediction``).
- Each term can be switched off by setting its weight to 0 (the ablation variants below); the
  masked forward pass is skipped when neither ``L_part(y_m)`` nor ``L_cc`` is used.
"""
from __future__ import annotations

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

from nnunet_scribble.losses.maco import context_consistency_loss, cpl_loss, enhanced_prediction_loss
from nnunet_scribble.targets.cpl_transform import AppendCPLTransform
from nnunet_scribble.targets.gc_maps import INSIDE, build_gc_maps
from nnunet_scribble.networks.outputs import full_resolution, split_batch
from nnunet_scribble.targets.mcm import apply_mcm, mcm_keep_mask
from nnunet_scribble.training.budget_variants import add_budget_variants
from nnunet_scribble.training.scribble_trainer import nnUNetTrainerScribble


class nnUNetTrainerMaCo(nnUNetTrainerScribble):
    """MaCo (masked context modeling + continuous pseudo labels); see the module docstring."""

    needs_label_maps = True   # consistency terms and CPL act on softmax class probabilities

    weight_masked = 0.5   # L_part(y_m)
    weight_cc = 0.1       # context consistency
    weight_ep = 0.1       # enhanced prediction (GC region)
    weight_cpl = 0.1      # continuous pseudo labels
    cpl_decay = 0.1
    cpl_floor = 0.05
    mcm_patch_size = 16
    mcm_scribble_weight = 3.0
    mcm_ratio = 0.5
    gc_close_gaps = 8.0
    gc_require_fg_inside = True

    # ---- data -------------------------------------------------------------------------------
    def get_training_transforms(self, *args, **kwargs):
        composed = super().get_training_transforms(*args, **kwargs)
        if self.weight_cpl > 0:
            spacing = np.asarray(self.configuration_manager.spacing, dtype=float)
            cpl = AppendCPLTransform(self.label_manager.num_segmentation_heads, self.cpl_decay, self.cpl_floor,
                                     spacing=spacing / spacing.min())
            at = next((i for i, t in enumerate(composed.transforms) if isinstance(t, DownsampleSegForDSTransform)),
                      len(composed.transforms))
            composed.transforms.insert(at, cpl)
        return composed

    def on_train_start(self):
        if self.weight_ep > 0:
            self.extra_seg_folder = self._gc_maps_once()
        super().on_train_start()

    def _gc_maps_once(self) -> str:
        """Build the GC maps of this fold's training cases (rank 0 only under DDP; others wait)."""
        from torch import distributed as dist

        tr_keys, _ = self.do_split()
        folder = None
        if self.local_rank == 0 or not self.is_ddp:
            self.print_to_log_file("MaCo: GC regions from the raw scribbles (cached, computed once per dataset)")
            folder = build_gc_maps(self, tr_keys, self.gc_close_gaps, self.gc_require_fg_inside)
        if self.is_ddp:
            shared = [folder]
            dist.broadcast_object_list(shared, src=0)
            folder = shared[0]
        return folder

    # ---- loss -------------------------------------------------------------------------------
    def compute_loss_terms(self, data: torch.Tensor, scribbles, extras) -> dict[str, torch.Tensor]:
        n_in = self.num_input_channels
        x, cpl = data[:, :n_in], data[:, n_in:]
        b = x.shape[0]
        scribble = full_resolution(scribbles)
        use_masked = self.weight_masked > 0 or self.weight_cc > 0
        if use_masked:
            keep = mcm_keep_mask(scribble, self.label_manager.num_segmentation_heads, self.mcm_patch_size,
                                 self.mcm_ratio, self.mcm_scribble_weight)
            output, output_m = split_batch(self.network(torch.cat([x, apply_mcm(x, keep)])), b)
        else:
            output, output_m = self.network(x), None
        terms = {"partial": self.loss(output, scribbles)}
        y = torch.softmax(full_resolution(output).float(), 1)
        if self.weight_masked > 0:
            terms["partial_masked"] = self.weight_masked * self.loss(output_m, scribbles)
        if self.weight_cc > 0:
            y_m = torch.softmax(full_resolution(output_m).float(), 1)
            terms["context_consistency"] = self.weight_cc * context_consistency_loss(y_m, y)
        if self.weight_ep > 0:
            gc = full_resolution(extras)[:, :1] == INSIDE
            terms["enhanced_prediction"] = self.weight_ep * enhanced_prediction_loss(y, gc)
        if self.weight_cpl > 0:
            terms["cpl"] = self.weight_cpl * cpl_loss(y, cpl)
        return terms


class nnUNetTrainerMaCo_MCM(nnUNetTrainerMaCo):
    """Ablation (paper Table 2, row 2): L_part(y) + 0.5 L_part(y_m)."""
    weight_cc = weight_ep = weight_cpl = 0.0


class nnUNetTrainerMaCo_MCM_CC_EP(nnUNetTrainerMaCo):
    """Ablation (paper Table 2, row 3): MCM with the consistency terms, no CPL."""
    weight_cpl = 0.0


class nnUNetTrainerMaCo_CPL(nnUNetTrainerMaCo):
    """Ablation (paper Table 2, row 4): L_part(y) + 0.1 L_cpl."""
    weight_masked = weight_cc = weight_ep = 0.0


class nnUNetTrainerMaCo_noEP(nnUNetTrainerMaCo):
    """MaCo without L_ep: needs no GC region, hence no raw scribbles at training time."""
    weight_ep = 0.0


_TRAINERS = [nnUNetTrainerMaCo, nnUNetTrainerMaCo_MCM, nnUNetTrainerMaCo_MCM_CC_EP, nnUNetTrainerMaCo_CPL,
             nnUNetTrainerMaCo_noEP]
__all__ = [t.__name__ for t in _TRAINERS] + [n for t in _TRAINERS for n in add_budget_variants(t, globals())]
