"""nnUNetTrainerAttenScribble: self-attention + masked gated CRF + attentive similarity (Tian et al. 2023).

Formulation (``docs/methods/attenscribble.md`` has the long version)::

    L = L_part + 0.1 L_mcrf + 0.1 L_atn      (both 0.1 ramped up over the first 10 % of the epochs)

- ``L_part``: nnU-Net's ignore-aware Dice + CE on the scribbled voxels, with deep supervision.
- Network: nnU-Net's planned U-Net with a spatial self-attention block (1 head, dim = stage channels,
  LayerNorm, MLP ratio 4, residual, output LayerNorm) after the convs of encoder stage 2 (1/4
  resolution); its output replaces that stage's features (skip and next stage). Built by the
  ``build_network_architecture`` classmethod, so ``nnUNetv2_predict`` rebuilds it from the checkpoint.
- ``L_mcrf`` (:func:`~nnunet_scribble.losses.crf.masked_gated_crf_loss`) on the full-resolution softmax,
  unlabeled voxels ``U`` (scribble == ignore, patch padding included), window ``0 < |i-j|_inf <= 5``,
  ``k_ij = exp(-|d|^2/(2*6^2) - |dI|^2/(2 sigma_I^2))`` on the (augmented, z-scored) network input.
- ``L_atn`` (:func:`~nnunet_scribble.losses.attentive_similarity.attentive_similarity_loss`):
  ``S = sigmoid(conv1x1(A + A^T))`` from the block's attention ``A``, spatial prior
  ``exp(-d^2/(2*6^2))`` within radius 5 tokens, prediction averaged down to the token grid; samples
  whose patch holds scribbles of fewer than two classes are left out.

Deviations from the paper / the authors' code, and guesses:
- ``sigma_I = 0.7`` (z-score units) instead of 0.1 on [0, 1]: the paper min-max scales each volume; on
  ACDC (170 volumes) ``(max - min) / std`` has median 6.76 (p10 5.07, p90 13.55), so 0.1 of the
  min-max range is ~0.68 z-scores (``benchmarks/acdc_intensity_stats.py``). A guess
  for other data: for CT (nnU-Net's global clipping + z-score) the equivalent differs; set it per
  dataset in a subclass.
- Distances use the configuration's voxel spacing in units of its finest spacing (2D in-plane: pixels,
  exactly the paper's); the CRF window is ``floor(5 * s_min / s_a)`` voxels per axis (ACDC 3d_fullres:
  in-plane only). The paper works on 2D slices resized to 256 x 256 (ACDC pixels ~1.5 mm; nnU-Net's
  2d spacing is similar, so 6 pixels is about the same physical sigma).
- The CRF window is ``|i-j|_inf <= r`` (the Gated CRF code's 11 x 11 box; the paper's eq. 4 writes ``< r``)
  and both ``i`` and ``j`` must be unlabeled (eq. 4; the authors' code masks only ``i``:
  ``crf_unlabeled_neighbours_only = False``).
- Regularizer ramp-up (not in the paper): both weights rise as ``exp(-5 (1 - t)^2)`` over the first
  ``regularizer_rampup_fraction`` = 10 % of the epochs (0 switches it off). At initialisation
  ``0.1 L_mcrf`` (~5.3) and ``0.1 L_atn`` (~3.0) are 2-4x the partial loss (~1.4) and pull every voxel
  towards its neighbours' (near-uniform) prediction; with nnU-Net's SGD (momentum 0.99) the network
  on ACDC ``2d_quick`` then predicted background everywhere within 25 iterations and never recovered
  RV/LV in 1000 iterations (test mean Dice 0.006; ``benchmarks/results/acdc_quick.md``). Short probes
  located it (LV recall on validation scribbles after 50 iterations): no extra loss 0.30-0.59, CRF
  alone 0.11-0.42, L_atn alone 0.24-0.54, both 0.02-0.05, both with the authors' CRF masking the
  same. With the ramp-up, the same run reached 0.770 mean Dice and 24.4 mm HD95 (PCE: 0.624, 144 mm).
  The authors' code trains with momentum 0.9 and has a (for ACDC disabled) start iteration for ``L_atn``.
- ``S`` uses the attention's own (``1/sqrt(d)``-scaled) softmax, as in the paper's text; the authors' code
  re-applies a softmax to the unscaled ``QK^T`` for the loss (one extra N x N softmax).
- ``L_atn``'s single-class test uses the scribble classes in the patch, never dense labels (the
  authors' code reads the ground truth for it). ``L_atn`` sums over all tokens (authors' code);
  ``attention_loss_unlabeled_only = True`` gives the paper's eq. 6 (``p, q`` in ``U``).
- The conv1x1 belongs to the loss: the trainer owns it (``self.similarity``, trained by the same SGD), the
  network holds only the attention block, and the checkpoint stores the conv1x1 beside the network under
  ``attenscribble_similarity`` (``--c`` resumes it; prediction never needs it).
- The conv1x1 starts at weight 1, bias 0 (PyTorch default in the authors' code: random sign);
  the MLP is a plain Linear-GELU-Linear (the authors' code adds a depthwise conv, SegFormer's Mix-FFN).
- Global attention is quadratic in tokens: the block goes to the first stage ``>= attention_stage`` whose
  attention matrix over the planned batch (``batch x heads x tokens^2``) has at most
  ``attention_max_elements`` = 2^30 entries (4 GiB float32). ACDC 2d (batch 56): stage 2 (64 x 56) as in
  the paper; ACDC 3d_fullres (10 x 256 x 224, batch 6): stage 3 (5 x 32 x 28, 1/8 in-plane); large 2D
  patches: one stage deeper (logged at start). A configuration with no such stage is refused with a
  ``UserFacingError``.
- Optimiser, schedule, augmentation and inference are nnU-Net's (paper: SGD poly, rotations/flips,
  256 x 256 resizing, 60k iterations of batch 12).

Variants: budget variants (``_5epochs``, ``_3000it``, ...) and ``nnUNetTrainerAttenScribbleStage3``
(attention after stage 3, 1/8 resolution: a speed variant, not the paper's placement).
"""
from __future__ import annotations

import numpy as np
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_scribble.geometry import stage_spacing, stage_token_grids
from nnunet_scribble.losses.attentive_similarity import (attentive_similarity_loss,
                                                          samples_with_several_scribble_classes, unlabeled_tokens)
from nnunet_scribble.losses.crf import masked_gated_crf_loss
from nnunet_scribble.losses.rampup import sigmoid_rampup
from nnunet_scribble.networks.attention import (attach_attention, choose_attention_stage, find_attention_block,
                                                similarity_head)
from nnunet_scribble.training.budget_variants import add_budget_variants
from nnunet_scribble.training.scribble_trainer import nnUNetTrainerScribble

SIMILARITY_KEY = "attenscribble_similarity"


class nnUNetTrainerAttenScribble(nnUNetTrainerScribble):
    """``L = L_part + crf_weight * L_mcrf + attention_weight * L_atn`` with a self-attention U-Net."""

    needs_label_maps = True   # CRF and attentive similarity compare softmax class probabilities

    # loss weights
    crf_weight: float = 0.1
    attention_weight: float = 0.1
    regularizer_rampup_fraction: float = 0.1  # both weights ramp up over this fraction of the epochs (0: off)
    # masked gated CRF
    crf_radius: int = 5
    crf_sigma_xy: float = 6.0
    crf_sigma_intensity: float = 0.7          # z-score units (see module docstring)
    crf_unlabeled_neighbours_only: bool = True
    crf_use_spacing: bool = True
    # self-attention block
    attention_stage: int = 2                  # preferred encoder stage (2 = 1/4 resolution for stock plans)
    attention_max_elements: int = 2 ** 30     # batch x heads x tokens^2; deeper stage if exceeded
    attention_heads: int = 1
    attention_mlp_ratio: float = 4.0
    # attentive similarity loss
    attention_radius: int = 5                 # tokens
    attention_sigma: float = 6.0              # tokens
    attention_loss_unlabeled_only: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # fail early (before data loading) if the configuration has no stage where attention fits
        self.attention_stage_used = self.attention_stage_for(self.configuration_manager, self.configuration_name)
        self.similarity = None   # the attentive-similarity conv1x1 (trainer-owned, see configure_optimizers)

    # ---- network ---------------------------------------------------------------------------------
    @classmethod
    def attention_stage_for(cls, configuration_manager: ConfigurationManager, configuration: str = "") -> int:
        strides = configuration_manager.network_arch_init_kwargs["strides"]
        return choose_attention_stage(configuration_manager.patch_size, strides, cls.attention_stage,
                                      configuration_manager.batch_size, cls.attention_heads,
                                      cls.attention_max_elements, configuration)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> torch.nn.Module:
        """nnU-Net's planned network with the self-attention block grafted in (also used by predict)."""
        network = get_network_from_plans(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
            allow_init=True, deep_supervision=enable_deep_supervision)
        stage = cls.attention_stage_for(configuration_manager)
        block = attach_attention(network, stage, cls.attention_heads, cls.attention_mlp_ratio)
        block.expose_attention = cls.attention_weight > 0
        block.window_radius = cls.attention_radius
        block.window_spacing = cls.token_spacing(configuration_manager, stage)
        return network

    def configure_optimizers(self):
        """nnU-Net's SGD + poly schedule over the network and the attentive-similarity conv1x1 (not part of the
        network: stock prediction never needs it); stored in the checkpoint under ``SIMILARITY_KEY``."""
        if self.attention_weight:
            head = similarity_head(self.attention_heads).to(self.device)
            self.similarity = DDP(head, device_ids=[self.local_rank]) if self.is_ddp else head
        params = list(self.network.parameters())
        if self.similarity is not None:
            params += list(self.similarity.parameters())
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _similarity_module(self):
        return self.similarity.module if isinstance(self.similarity, DDP) else self.similarity

    def extra_checkpoint_state(self) -> dict:
        head = self._similarity_module()
        return {} if head is None else {SIMILARITY_KEY: head.state_dict()}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        head = self._similarity_module()
        if head is not None and SIMILARITY_KEY in checkpoint:
            head.load_state_dict(checkpoint[SIMILARITY_KEY])
        elif head is not None:
            self.print_to_log_file("AttenScribble: the checkpoint holds no similarity conv1x1; it starts anew.")

    def initialize(self):
        super().initialize()
        strides = self.configuration_manager.network_arch_init_kwargs["strides"]
        stage = self.attention_stage_used
        grid = stage_token_grids(self.configuration_manager.patch_size, strides)[stage]
        self.print_to_log_file(
            f"AttenScribble: self-attention after encoder stage {stage} ({'x'.join(map(str, grid))} = "
            f"{int(np.prod(grid))} tokens per patch; preferred stage {self.attention_stage}, at most "
            f"{self.attention_max_elements} attention entries per batch of {self.configuration_manager.batch_size})")

    # ---- spacing helpers --------------------------------------------------------------------------
    def _voxel_spacing(self):
        return [float(v) for v in self.configuration_manager.spacing] if self.crf_use_spacing else None

    @classmethod
    def token_spacing(cls, configuration_manager: ConfigurationManager, stage: int):
        """Spacing of the attention's token grid (voxel spacing x cumulative stride), or None."""
        if not cls.crf_use_spacing:
            return None
        return stage_spacing(configuration_manager.spacing, configuration_manager.network_arch_init_kwargs["strides"],
                             stage)

    # ---- loss -------------------------------------------------------------------------------------
    def regularizer_factor(self) -> float:
        """Sigmoid ramp-up ``exp(-5 (1 - t)^2)``, ``t = epoch / (rampup_fraction * num_epochs)`` capped at 1,
        applied to both regularizer weights (1 without ramp-up)."""
        if self.regularizer_rampup_fraction <= 0:
            return 1.0
        return sigmoid_rampup(self.current_epoch, self.regularizer_rampup_fraction * self.num_epochs)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        factor = self.regularizer_factor()
        if factor < 1.0:
            self.print_to_log_file(f"AttenScribble: regularizer ramp-up, weights x {factor:.4f} "
                                   f"(L_mcrf {self.crf_weight * factor:.4g}, L_atn {self.attention_weight * factor:.4g})")

    def compute_loss_terms(self, data, scribbles, extras) -> dict[str, torch.Tensor]:
        output = self.network(data)
        terms = {"partial": self.loss(output, scribbles)}
        logits = output[0] if isinstance(output, (list, tuple)) else output
        scribble = scribbles[0] if isinstance(scribbles, (list, tuple)) else scribbles
        ignore = self.label_manager.ignore_label
        y = torch.softmax(logits.float(), dim=1)
        ramp = self.regularizer_factor()
        if self.crf_weight:
            terms["mcrf"] = ramp * self.crf_weight * masked_gated_crf_loss(
                y, data, scribble == ignore, radius=self.crf_radius, sigma_xy=self.crf_sigma_xy,
                sigma_intensity=self.crf_sigma_intensity, spacing=self._voxel_spacing(),
                unlabeled_neighbours_only=self.crf_unlabeled_neighbours_only)
        if self.attention_weight:
            block = find_attention_block(self.network)
            window_attention, grid = block.pop_attention()
            unlabeled = unlabeled_tokens(scribble, ignore, grid) if self.attention_loss_unlabeled_only else None
            terms["attention"] = ramp * self.attention_weight * attentive_similarity_loss(
                window_attention, y, grid, self.similarity, radius=block.window_radius, sigma=self.attention_sigma,
                spacing=block.window_spacing, valid=samples_with_several_scribble_classes(scribble, ignore),
                unlabeled=unlabeled)
        return terms


class nnUNetTrainerAttenScribbleStage3(nnUNetTrainerAttenScribble):
    """Speed variant (not the paper's): the self-attention block after encoder stage 3 (1/8 resolution in
    stock plans), 16x fewer attention entries than stage 2; the attention loss works on that grid."""

    attention_stage = 3


__all__ = (["nnUNetTrainerAttenScribble", "nnUNetTrainerAttenScribbleStage3"]
           + add_budget_variants(nnUNetTrainerAttenScribble, globals())
           + add_budget_variants(nnUNetTrainerAttenScribbleStage3, globals()))
