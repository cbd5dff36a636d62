"""nnUNetTrainerDMPLS: dual-branch network with dynamically mixed pseudo-label supervision.

Paper: Luo, Hu, Liao, Zhai, Song, Wang, Zhang, "Scribble-supervised medical image segmentation via
dual-branch network and dynamically mixed pseudo labels supervision", MICCAI 2022.

Formulation
-----------
Network: nnU-Net's planned U-Net (2D or 3D) whose encoder feeds two decoders of the same
architecture (:class:`nnunet_scribble.networks.dual_decoder.DualDecoderUNet`); the auxiliary decoder
reads every encoder output through feature dropout (p = ``aux_dropout_p`` = 0.5). Both decoders have
nnU-Net's deep-supervision heads. With ``y1``/``y2`` the main/auxiliary softmax outputs::

    a ~ U(0, 1)                                   (one draw per iteration)
    PL = argmax_c(a y1 + (1 - a) y2)              (no gradient)
    L  = 0.5 [L_part(y1) + L_part(y2)] + 0.5 * 0.5 [Dice(y1, PL) + Dice(y2, PL)]

``L_part`` is nnU-Net's ignore-aware Dice+CE with deep supervision (``self.loss``) on all
deep-supervision outputs of each decoder. Logged terms (weighted; their sum is the loss):
``partial_main``, ``partial_aux``, ``pl_dice_main``, ``pl_dice_aux``. Prediction uses the main
decoder only: stock ``nnUNetv2_predict`` rebuilds the dual network with this class's
``build_network_architecture`` and, in eval mode, the auxiliary decoder is never run.

Deviations from the paper / official code (WSL4MIS ``UNet_CCT`` + DMPLS training script) and guesses
----------------------------------------------------------------------------------------------------
- Backbone: nnU-Net's planned U-Net (instance norm, LeakyReLU, strided convs, no dropout inside the
  encoder) instead of the paper's small 2D U-Net (batch norm, dropout 0.05-0.5 in the encoder);
  nnU-Net's optimizer, schedule, patch sampling and augmentation instead of the paper's (SGD lr 0.01,
  256x256 slices, 60k iterations, flips/rotations).
- Partial loss: nnU-Net's ignore-aware Dice + CE with deep supervision on both decoders, not partial
  CE alone on the full-resolution outputs (in every trainer of this plugin ``L_part`` is nnU-Net's own ignore-aware loss).
- Pseudo-label Dice acts on the full-resolution outputs only (the plugin's rule: method terms act on
  the full-resolution output unless stated). Decision: the paper has no deep supervision; the lower
  scales already get ``L_part``, and an argmax pseudo label downsampled to 1/16 is mostly boundary
  noise. The pseudo label is computed from the full-resolution outputs of both decoders.
- Dice to the pseudo label: as the official ``pDLoss`` (per class over the whole batch, squared
  prediction term in the denominator, smooth 1e-5, mean over all classes including background). Under
  DDP the per-class sums are gathered across ranks (batch Dice of the global batch, like nnU-Net's own
  batch Dice). Not tested with more than one process here (no GPU); the gather is tested on CPU (gloo).
- Feature dropout: channel-wise dropout p=0.5 on all encoder outputs (skips and bottleneck), as the
  official ``Dropout(x, p=0.5) = dropout2d``; ``dropout3d`` semantics for 3D. The paper only says
  "dropout"; element-wise dropout is available with ``aux_dropout_channelwise = False``.
- ``a ~ U[0, 1)`` from torch's generator (official: ``random.random() + 1e-10``); set
  ``self.mixing_generator`` (a ``torch.Generator``) for reproducible draws. Under DDP every rank draws
  its own ``a`` (guess: harmless, the paper is single-GPU).
- The auxiliary decoder gets its own nnU-Net initialisation (it is the decoder of a second network
  built from the same plans).
- 3D (``3d_fullres``) is this plugin's extension; the paper is 2D only.
- ``-pretrained_weights`` with a stock nnU-Net checkpoint fails nnU-Net's key check (no
  ``aux_decoder.*`` keys); a DMPLS checkpoint works.

Probes (``benchmarks/dmpls_probe.py``; each changes one thing, results in ``dmpls_investigation.md``)
---------------------------------------------------------------------------------------------------
``_rampup`` (``pl_rampup = (0.1, 0.75)``: the pseudo-label weight is 0 for the first 10 % of the epochs and
ramps up sigmoidally to full at 75 %, as in the DMPLS authors' PyMIC implementation), ``_padBackground``
(patch padding is background, as stock nnU-Net, not ``ignore``), ``_paperSGD`` (the papers' SGD: momentum
0.9, no Nesterov, weight decay 1e-4).
"""
from __future__ import annotations

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch._dynamo import OptimizedModule

from nnunet_scribble.losses.dmpls import mixed_pseudo_label, sample_mixing_weight, soft_dice_loss
from nnunet_scribble.losses.rampup import delayed_sigmoid_rampup
from nnunet_scribble.networks.dual_decoder import DualDecoderUNet, build_dual_decoder_network_from_plans
from nnunet_scribble.networks.outputs import full_resolution
from nnunet_scribble.training.budget_variants import add_budget_variants
from nnunet_scribble.training.scribble_trainer import nnUNetTrainerScribble


class nnUNetTrainerDMPLS(nnUNetTrainerScribble):
    """DMPLS: ``L = w_part [L_part(y1) + L_part(y2)] + w_pl * 0.5 [Dice(y1, PL) + Dice(y2, PL)]``."""

    needs_label_maps = True   # mixes softmax class probabilities

    # loss weights (paper: 0.5 and 0.5)
    partial_weight: float = 0.5
    pseudo_label_weight: float = 0.5
    # network (read by build_network_architecture, also at prediction time)
    aux_dropout_p: float = 0.5
    aux_dropout_channelwise: bool = True
    # Dice to the pseudo label (official pDLoss settings)
    pl_dice_include_background: bool = True
    pl_dice_batch: bool = True
    pl_dice_squared_pred: bool = True
    pl_dice_smooth: float = 1e-5
    # ramp-up of the pseudo-label weight: None (the paper: full weight from the first iteration) or
    # (start, end) as fractions of the epochs: 0 before start, sigmoid ramp to 1 at end
    pl_rampup: tuple[float, float] | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mixing_generator: torch.Generator | None = None

    # ---- network ----------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> DualDecoderUNet:
        """nnU-Net's planned network plus an auxiliary decoder (also what ``nnUNetv2_predict`` builds).

        A classmethod (nnU-Net calls it on the class or the instance with the same arguments) so that
        subclasses can change ``aux_dropout_p``/``aux_dropout_channelwise`` by class attribute.
        """
        return build_dual_decoder_network_from_plans(
            plans_manager, configuration_manager, num_input_channels, num_output_channels,
            enable_deep_supervision, aux_dropout_p=cls.aux_dropout_p,
            aux_dropout_channelwise=cls.aux_dropout_channelwise)

    def _dual_network(self) -> DualDecoderUNet:
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def set_deep_supervision_enabled(self, enabled: bool):
        self._dual_network().set_deep_supervision_enabled(enabled)

    def pseudo_label_factor(self) -> float:
        """Multiplier of the pseudo-label weight at this epoch (1 without ``pl_rampup``)."""
        if self.pl_rampup is None:
            return 1.0
        start, end = self.pl_rampup
        return delayed_sigmoid_rampup(self.current_epoch, start * self.num_epochs, end * self.num_epochs)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self.pl_rampup is not None:
            self.print_to_log_file(f"DMPLS: pseudo-label weight x {self.pseudo_label_factor():.4f} (ramp-up)")

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(
            f"DMPLS: L = {self.partial_weight} [L_part(y1) + L_part(y2)] + {self.pseudo_label_weight} * 0.5 "
            f"[Dice(y1, PL) + Dice(y2, PL)], PL = argmax(a y1 + (1-a) y2), a ~ U(0,1); aux decoder feature "
            f"dropout p={self.aux_dropout_p} ({'channel' if self.aux_dropout_channelwise else 'element'}-wise); "
            f"PL Dice: full resolution, background {self.pl_dice_include_background}, batch "
            f"{self.pl_dice_batch}, squared {self.pl_dice_squared_pred}, smooth {self.pl_dice_smooth}; "
            f"weight ramp-up {self.pl_rampup or 'none'} (fractions of the epochs)")

    # ---- loss -------------------------------------------------------------------------------
    def dual_forward(self, data: torch.Tensor):
        """``(main, aux)`` outputs through ``self.network`` (so DDP / torch.compile wrappers are used)."""
        out = self.network(data)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise RuntimeError("the dual-decoder network returned a single output: it must be in training mode "
                               "(network.train()) to run the auxiliary decoder")
        return out

    def pseudo_label_dice(self, probs: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = None):
        """``Dice(probs, labels)`` with this trainer's pseudo-label Dice settings (also for SAM-SP's PL)."""
        return soft_dice_loss(probs, labels, ignore_index=ignore_index,
                              include_background=self.pl_dice_include_background, batch_dice=self.pl_dice_batch,
                              squared_pred=self.pl_dice_squared_pred, smooth=self.pl_dice_smooth,
                              ddp=self.is_ddp and self.pl_dice_batch)

    @staticmethod
    def full_resolution_probabilities(out_main, out_aux) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 softmax of both decoders' full-resolution outputs ``(y1, y2)``."""
        return (torch.softmax(full_resolution(out_main).float(), 1),
                torch.softmax(full_resolution(out_aux).float(), 1))

    def dmpls_loss_terms(self, out_main, out_aux, scribbles, probs=None) -> dict[str, torch.Tensor]:
        """The four weighted DMPLS terms from both decoders' raw outputs (lists under deep supervision).

        ``probs``: ``(y1, y2)`` from :meth:`full_resolution_probabilities` if the caller already has them
        (SAM-SP adds its own terms on the same probabilities).
        """
        y1, y2 = probs if probs is not None else self.full_resolution_probabilities(out_main, out_aux)
        pl = mixed_pseudo_label(y1, y2, sample_mixing_weight(self.mixing_generator))
        w_pl = self.pseudo_label_weight * 0.5 * self.pseudo_label_factor()
        return {
            "partial_main": self.partial_weight * self.loss(out_main, scribbles),
            "partial_aux": self.partial_weight * self.loss(out_aux, scribbles),
            "pl_dice_main": w_pl * self.pseudo_label_dice(y1, pl),
            "pl_dice_aux": w_pl * self.pseudo_label_dice(y2, pl),
        }

    def compute_loss_terms(self, data: torch.Tensor, scribbles, extras) -> dict[str, torch.Tensor]:
        out_main, out_aux = self.dual_forward(data)
        return self.dmpls_loss_terms(out_main, out_aux, scribbles)


class nnUNetTrainerDMPLS_rampup(nnUNetTrainerDMPLS):
    """Probe: pseudo-label weight ramped up (0 until 10 % of the epochs, sigmoid to full at 75 %).

    The schedule of the DMPLS authors' PyMIC implementation (there with weight 0.1; here the paper's 0.5)."""
    pl_rampup = (0.1, 0.75)


class nnUNetTrainerDMPLS_padBackground(nnUNetTrainerDMPLS):
    """Probe: patch padding outside the image is background (stock nnU-Net), not ignore."""
    padding_is_background = True


class nnUNetTrainerDMPLS_paperSGD(nnUNetTrainerDMPLS):
    """Probe: the papers' SGD (momentum 0.9, no Nesterov, weight decay 1e-4).

    DMPLS's and SAM-SP's optimizer instead of nnU-Net's (momentum 0.99, Nesterov, weight decay 3e-5); same
    learning rate 0.01 and poly schedule."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=1e-4, momentum=0.9)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


_TRAINERS = [nnUNetTrainerDMPLS, nnUNetTrainerDMPLS_rampup, nnUNetTrainerDMPLS_padBackground,
             nnUNetTrainerDMPLS_paperSGD]
__all__ = [t.__name__ for t in _TRAINERS] + [n for t in _TRAINERS for n in add_budget_variants(t, globals())]
