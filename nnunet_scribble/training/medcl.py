"""nnUNetTrainerMedCL: feature mixing + anatomy-code clustering (MedCL-UNet, no text prompts).

Paper: Zhang et al., "MedCL: learning consistent anatomy distribution for scribble-supervised medical
image segmentation" (the UNet variant). Loss, on nnU-Net's augmented batch ``x`` with scribbles ``s``::

    x', s'  = intra_mix(x, s)           box kept, outside b' x + (1 - b') R(x, theta); s' see targets.medcl_mix
    x12     = b x' + (1 - b) flip(x')    (partner = the batch reversed)
    y', y12 = softmax(f(x')), softmax(f(x12))
    L = L_part(f(x'), s') + L_mix + L_cluster + L_ac + L_sk + L_category     (weights 1, attributes)

- ``L_mix = 1 - cos(y12, b y' + (1 - b) flip(y'))`` (eq. 1; gradients into both sides, as the official code).
- Anatomy codes: the ``C`` class maps of ``y'`` and one derived subset map ``u_k = sum_{i in Omega_k} y'_i``
  per ``k = 2 .. m`` foreground classes (a random subset per iteration) go through
  :class:`~nnunet_scribble.networks.anatomy_head.AnatomyHead` (pool to a fixed grid, MLP -> 1024 -> d=128
  prototype scores: cosines of the L2-normalised map embedding and prototypes, as SwAV). ``L_sk = -mean_maps
  sum_d q log p`` (SwAV's normalisation; the pseudo-code's mean over all entries is
  ``assignment_per_sample_sum = False``), ``q = sinkhorn(scores)`` (eps 0.05, 3 iterations, over all maps of
  the batch), ``p = softmax(scores / w)``, w = 0.1 (eqs. 2-3, appendix pseudo-code).
- ``L_cluster`` (eq. 4, cosine, tau = 1) on the class codes; ``L_ac`` (eq. 5) between each subset map's
  code centre and the sum of its classes' centres (the segmentation half of eq. 5 is zero by
  construction and not computed). Codes = ``p`` (``code_source = "assignments"``; ``"scores"`` uses the
  head's raw scores).
- ``L_category = -mean log sum_{i in Psi} y'_i`` with ``Psi`` = the classes scribbled anywhere in the case.

Choices where the paper is silent or differs from the official code (also in docs/methods/medcl.md):
- ``L_part`` (nnU-Net's ignore-aware Dice + CE with deep supervision) is applied to ``f(x')`` only, as the
  official code trains on its mixed views only; the clean ``x`` is not a separate forward pass. ``x'``
  and ``x12`` go through the network as one batch of 2B (instance norm: equal to two passes).
- Scribbles of ``x'`` (official: soft one-hot mixes of dense-looking labels): inside the box ``s``;
  outside, ``s`` where ``s`` and ``R(s)`` agree, else ``ignore``; deep-supervision targets are ``s'``
  downsampled nearest-exact like nnU-Net's own. ``x12`` gets no label (official: a CE to mixed labels,
  not in the paper's eq. 6).
- Rotation ``|theta| <= rotation_degrees`` = 15 (the paper's "small angle"; official U(0, 360):
  ``rotation_degrees = 180``), in-plane: 2D the image plane, 3D the plane of the two axes other than
  the one of lowest resolution (largest spacing; axis 0 when isotropic). Box side per axis
  ``U(box_fraction)`` = U(0.5, 0.9) of the patch (a guess; official U(0.9, 1.0)). ``b', b ~ Beta(0.5, 0.5)``.
- ``Psi`` is taken per case (the classes present in its preprocessed scribble map; nnU-Net's crop marks
  -1 count as background). A patch never contains a class its case lacks, so ``L_category`` never
  penalises a class the patch holds, also for 3D patches whose scribble lies outside the patch; the
  price is that it says nothing about classes the case has but the patch lacks. Cases with no
  scribble at all (unlabeled cases of a mixed dataset) get no ``L_category``.
- Batch statistics (code centres, Sinkhorn) are per process under DDP (over the local batch), not over the
  global batch: the centres need gradients through a gather and nothing here could test multi-GPU runs.
  With nnU-Net's DDP batch split, each rank's batch is smaller than the planned one; say so when
  comparing to single-GPU runs.
- The anatomy head is training-only: not part of ``self.network`` (stock ``nnUNetv2_predict`` loads
  ``network_weights`` and predicts with the plain nnU-Net network, no extra cost), trained by the same
  SGD, and stored in the checkpoint under ``medcl_anatomy_head`` so that ``--c`` resumes it.
- Ablations (paper Table 5): ``_noMix`` (no mixing, no ``L_mix``: clean ``x``), ``_noCluster`` (no
  ``L_cluster``/``L_ac``/``L_sk``: mixing only), ``_noAC`` (no ``L_ac``), ``_noCategory``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.geometry import rotation_plane   # the intra-mix rotates in-plane
from nnunet_scribble.losses.medcl import (anatomy_consistency_loss, assignment_loss, category_loss,
                                          class_subset_maps, cluster_loss, mix_consistency_loss,
                                          sample_class_subsets)
from nnunet_scribble.networks.anatomy_head import AnatomyHead
from nnunet_scribble.networks.outputs import full_resolution, split_batch
from nnunet_scribble.targets.medcl_mix import downsample_like, inter_mix, intra_mix
from nnunet_scribble.training.budget_variants import add_budget_variants
from nnunet_scribble.training.scribble_trainer import nnUNetTrainerScribble

HEAD_KEY = "medcl_anatomy_head"


class nnUNetTrainerMedCL(nnUNetTrainerScribble):
    """MedCL-UNet: ``L_part(f(x')) + L_mix + L_cluster + L_ac + L_sk + L_category``; see the module docstring."""

    weight_mix = 1.0
    weight_cluster = 1.0
    weight_ac = 1.0
    weight_sk = 1.0
    weight_category = 1.0
    use_mixing = True                 # intra- + inter-mix (False: clean x, no L_mix)
    mix_beta = (0.5, 0.5)             # Beta parameters of b' (intra) and b (inter)
    rotation_degrees = 15.0           # |theta| bound (official code: 180, i.e. any angle)
    box_fraction = (0.5, 0.9)         # box side per axis, fraction of the patch (official: (0.9, 1.0))
    code_grid_2d = 32                 # maps pooled to code_grid^2 (2D) / code_grid_3d^3 (3D)
    code_grid_3d = 16
    code_hidden = 1024
    code_prototypes = 128             # d
    code_source = "assignments"       # codes for L_cluster / L_ac: "assignments" (p) or "scores"
    sinkhorn_eps = 0.05
    sinkhorn_iterations = 3
    assignment_temperature = 0.1      # w
    assignment_per_sample_sum = True  # L_sk as SwAV (-mean_n sum_d q log p); False: the pseudo-code's mean
    cluster_tau = 1.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise UserFacingError(f"{type(self).__name__} clusters softmax class maps and needs a label-based "
                                  "dataset; region-based training (\"regions_class_order\") is not supported.")
        if self.code_source not in ("assignments", "scores"):
            raise ValueError(f"code_source must be 'assignments' or 'scores', not {self.code_source!r}")
        self.mix_rng = np.random.default_rng()
        self.anatomy_head = None
        self._case_classes: dict[str, np.ndarray] = {}
        self._batch_keys = None

    @property
    def uses_anatomy_codes(self) -> bool:
        return max(self.weight_cluster, self.weight_ac, self.weight_sk) > 0

    # ---- optimizer, checkpoint -----------------------------------------------------------------
    def configure_optimizers(self):
        """nnU-Net's SGD + poly schedule over the network and (if used) the anatomy head."""
        params = list(self.network.parameters())
        if self.uses_anatomy_codes:
            dims = len(self.configuration_manager.patch_size)
            head = AnatomyHead(dims, self.code_grid_2d if dims == 2 else self.code_grid_3d, self.code_hidden,
                               self.code_prototypes).to(self.device)
            self.anatomy_head = DDP(head, device_ids=[self.local_rank]) if self.is_ddp else head
            params += list(head.parameters())
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _head_module(self) -> AnatomyHead | None:
        head = self.anatomy_head
        return head.module if isinstance(head, DDP) else head

    def extra_checkpoint_state(self) -> dict:
        head = self._head_module()
        return {} if head is None else {HEAD_KEY: head.state_dict()}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        head = self._head_module()
        if head is None:
            return
        if HEAD_KEY in checkpoint:
            head.load_state_dict(checkpoint[HEAD_KEY])
        else:
            self.print_to_log_file("MedCL: the checkpoint holds no anatomy head; it starts from scratch.")

    # ---- per-case class sets (Psi) ---------------------------------------------------------------
    def on_train_start(self):
        super().on_train_start()
        if self.weight_category > 0:
            self._case_classes = self._scribbled_classes()
        self.print_to_log_file(
            f"MedCL: mixing {self.use_mixing} (rotation <= {self.rotation_degrees} deg in plane "
            f"{rotation_plane(self.configuration_manager.spacing)}, box {self.box_fraction}, Beta{self.mix_beta}); "
            f"weights mix {self.weight_mix}, cluster {self.weight_cluster}, ac {self.weight_ac}, "
            f"sk {self.weight_sk}, category {self.weight_category}; codes {self.code_source}, grid "
            f"{self.code_grid_2d if len(self.configuration_manager.patch_size) == 2 else self.code_grid_3d}, "
            f"d {self.code_prototypes}, Sinkhorn eps {self.sinkhorn_eps} x{self.sinkhorn_iterations}, "
            f"w {self.assignment_temperature}, tau {self.cluster_tau}")

    def _scribbled_classes(self) -> dict[str, np.ndarray]:
        """``{case: (C,) bool}`` the classes scribbled in each training case (the base trainer's, read once)."""
        classes = self.training_case_classes()
        missing = [k for k, v in classes.items() if not v.any()]
        if missing:
            self.print_to_log_file(f"MedCL: {len(missing)} training case(s) without any scribble get no "
                                   f"L_category (e.g. {', '.join(missing[:5])})")
        return classes

    def _present_classes(self, batch_size: int) -> torch.Tensor:
        n = self.label_manager.num_segmentation_heads
        keys = self._batch_keys if self._batch_keys is not None else [None] * batch_size
        rows = [self._case_classes.get(k, np.zeros(n, dtype=bool)) for k in keys]
        return torch.as_tensor(np.stack(rows), device=self.device)

    def train_step(self, batch: dict) -> dict:
        self._batch_keys = list(batch.get("keys", [])) or None
        return super().train_step(batch)

    # ---- loss ------------------------------------------------------------------------------------
    def compute_loss_terms(self, data: torch.Tensor, scribbles, extras) -> dict[str, torch.Tensor]:
        b = data.shape[0]
        if self.use_mixing:
            ds_targets = scribbles if isinstance(scribbles, list) else [scribbles]
            x1, s1, _ = intra_mix(data, ds_targets[0], self.label_manager.ignore_label,
                                  rotation_plane(self.configuration_manager.spacing), self.rotation_degrees,
                                  self.box_fraction, self.mix_beta, self.mix_rng)
            x12, beta = inter_mix(x1, self.mix_beta, self.mix_rng)
            output, output_mix = split_batch(self.network(torch.cat([x1, x12])), b)
            targets = downsample_like(s1, ds_targets) if isinstance(scribbles, list) else s1
        else:
            output, output_mix, targets = self.network(data), None, scribbles
        terms = {"partial": self.loss(output, targets)}
        y = torch.softmax(full_resolution(output).float(), 1)
        if self.use_mixing and self.weight_mix > 0:
            y12 = torch.softmax(full_resolution(output_mix).float(), 1)
            terms["mix"] = self.weight_mix * mix_consistency_loss(y12, y, torch.flip(y, (0,)), beta)
        if self.uses_anatomy_codes:
            terms.update(self.anatomy_code_terms(y))
        if self.weight_category > 0:
            terms["category"] = self.weight_category * category_loss(y, self._present_classes(b))
        return terms

    def anatomy_code_terms(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``L_sk``, ``L_cluster``, ``L_ac`` (weighted, those with weight > 0) from the class maps ``y``."""
        c = y.shape[1]
        subsets = sample_class_subsets(range(1, c), self.mix_rng)
        maps = torch.cat([y, class_subset_maps(y, subsets)], 1)
        scores = self.anatomy_head(maps)                                   # (B, M, d)
        l_sk, p = assignment_loss(scores.flatten(0, 1), self.sinkhorn_eps, self.sinkhorn_iterations,
                                  self.assignment_temperature, self.assignment_per_sample_sum)
        codes = p.view_as(scores) if self.code_source == "assignments" else scores
        terms = {}
        if self.weight_sk > 0:
            terms["assignment"] = self.weight_sk * l_sk
        if self.weight_cluster > 0:
            terms["cluster"] = self.weight_cluster * cluster_loss(codes[:, :c], self.cluster_tau)
        if self.weight_ac > 0:
            terms["anatomy_consistency"] = self.weight_ac * anatomy_consistency_loss(codes[:, :c], codes[:, c:],
                                                                                     subsets)
        return terms


class nnUNetTrainerMedCL_noMix(nnUNetTrainerMedCL):
    """Ablation (paper Table 5 without Mix / L_mix): clean batch, clustering and category terms."""
    use_mixing = False
    weight_mix = 0.0


class nnUNetTrainerMedCL_noCluster(nnUNetTrainerMedCL):
    """Ablation (paper Table 5, row 2): mixing + L_mix only, no clustering terms (L_cluster, L_ac, L_sk)."""
    weight_cluster = weight_ac = weight_sk = 0.0


class nnUNetTrainerMedCL_noAC(nnUNetTrainerMedCL):
    """Ablation (paper Table 5, row 3): everything but the anatomy consistency loss."""
    weight_ac = 0.0


class nnUNetTrainerMedCL_noCategory(nnUNetTrainerMedCL):
    """Ablation (paper appendix Table I): without L_category."""
    weight_category = 0.0


_TRAINERS = [nnUNetTrainerMedCL, nnUNetTrainerMedCL_noMix, nnUNetTrainerMedCL_noCluster, nnUNetTrainerMedCL_noAC,
             nnUNetTrainerMedCL_noCategory]
__all__ = [t.__name__ for t in _TRAINERS] + [n for t in _TRAINERS for n in add_budget_variants(t, globals())]
