"""nnUNetTrainerMeanTeacher: nnU-Net's network as the student, an EMA teacher, softmax-MSE consistency.

For datasets that mix dense, scribbled and unlabeled cases (all ``ignore``)::

    L = L_sup(f(x), s) + w(t) * mean((softmax f(x) - softmax f_teacher(x + noise))^2)

- ``L_sup``: nnU-Net's ignore-aware Dice + CE with deep supervision on the labeled voxels (dense cases
  are scribble cases without ``ignore``; unlabeled cases contribute nothing to it).
- Teacher: an exponential moving average of the student after every optimizer step, decay
  ``min(1 - 1/(t + 1), ema_max_decay = 0.99)`` at step ``t``; its input is the student's plus
  ``clamp(N(0, 0.1^2), +-0.2)``; it runs without gradients and without deep supervision.
- Consistency on every voxel of every sample (full resolution), weight ``w = 0.1 *
  exp(-5 (1 - e / E)^2)`` with ``e`` nnU-Net's epoch and ``E = consistency_rampup_fraction * num_epochs``
  (1.0: the ramp spans the whole training, as the usual Mean Teacher code ramps over its iterations).
- Batches: the base trainer's labeled share (``labeled_batch_share``, default 0.5) when the fold has
  unlabeled cases.
- Checkpoints: ``network_weights`` = the student (what stock ``nnUNetv2_predict`` loads); the teacher and
  the EMA step under ``mean_teacher`` / ``mean_teacher_step``, so ``--c`` resumes both.
  ``predict_with_teacher = True`` (``nnUNetTrainerMeanTeacher_predictTeacher``) puts the teacher's weights
  into the final network before ``checkpoint_final.pth`` is written and the final validation runs (the
  student stays in the checkpoint under ``mean_teacher_student``).
"""
from __future__ import annotations

import copy

import torch
from torch._dynamo import OptimizedModule

from nnunet_scribble.networks.outputs import full_resolution
from nnunet_scribble.losses.mean_teacher import ema_decay, softmax_mse, teacher_noise, update_ema
from nnunet_scribble.losses.rampup import sigmoid_rampup
from nnunet_scribble.training.budget_variants import add_budget_variants
from nnunet_scribble.training.scribble_trainer import nnUNetTrainerScribble

TEACHER_KEY, STEP_KEY, STUDENT_KEY = "mean_teacher", "mean_teacher_step", "mean_teacher_student"


class nnUNetTrainerMeanTeacher(nnUNetTrainerScribble):
    """Mean Teacher on nnU-Net's network; see the module docstring."""

    ema_max_decay = 0.99
    consistency_weight = 0.1
    consistency_rampup_fraction = 1.0
    teacher_noise_std = 0.1
    teacher_noise_clamp = 0.2
    predict_with_teacher = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher: torch.nn.Module | None = None
        self.ema_step = 0

    def student(self) -> torch.nn.Module:
        """The student network without DDP / torch.compile wrappers."""
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def initialize(self):
        super().initialize()
        self.teacher = copy.deepcopy(self.student()).requires_grad_(False)
        if hasattr(self.teacher, "decoder") and hasattr(self.teacher.decoder, "deep_supervision"):
            self.teacher.decoder.deep_supervision = False
        self.teacher.eval()

    def consistency_weight_now(self) -> float:
        return self.consistency_weight * sigmoid_rampup(self.current_epoch,
                                                        self.consistency_rampup_fraction * self.num_epochs)

    # ---- loss ------------------------------------------------------------------------------------
    def compute_loss_terms(self, data: torch.Tensor, scribbles, extras) -> dict[str, torch.Tensor]:
        return self.mean_teacher_terms(data, scribbles)[0]

    def mean_teacher_terms(self, data: torch.Tensor, scribbles) -> tuple[dict[str, torch.Tensor], object]:
        """(``supervised`` + ``consistency`` terms, the student's output) for subclasses that add terms."""
        output = self.network(data)
        terms = {"supervised": self.loss(output, scribbles)}
        with torch.no_grad():
            noisy = data + teacher_noise(data, self.teacher_noise_std, self.teacher_noise_clamp)
            teacher_out = full_resolution(self.teacher(noisy))
        terms["consistency"] = self.consistency_weight_now() * softmax_mse(full_resolution(output), teacher_out)
        return terms, output

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        update_ema(self.teacher, self.student(), ema_decay(self.ema_step, self.ema_max_decay))
        self.ema_step += 1
        return out

    # ---- checkpoints -----------------------------------------------------------------------------
    def extra_checkpoint_state(self) -> dict:
        return {TEACHER_KEY: self.teacher.state_dict(), STEP_KEY: self.ema_step}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        if TEACHER_KEY in checkpoint:
            self.teacher.load_state_dict(checkpoint[TEACHER_KEY])
            self.ema_step = int(checkpoint.get(STEP_KEY, 0))
        else:
            self.print_to_log_file("Mean Teacher: the checkpoint holds no teacher; it restarts as a copy of the "
                                   "student.")
            self.teacher.load_state_dict(self.student().state_dict())

    def on_train_end(self):
        if self.predict_with_teacher:
            self._student_weights = {k: v.detach().clone() for k, v in self.student().state_dict().items()}
            self.student().load_state_dict(self.teacher.state_dict())
            self.print_to_log_file("Mean Teacher: the final network (checkpoint_final, validation) is the teacher.")
        super().on_train_end()

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(
            f"Mean Teacher: EMA decay min(1 - 1/(t+1), {self.ema_max_decay}); teacher noise clamp(N(0, "
            f"{self.teacher_noise_std}^2), +-{self.teacher_noise_clamp}); consistency {self.consistency_weight} x "
            f"sigmoid ramp-up over {self.consistency_rampup_fraction * self.num_epochs:g} epochs; labeled share "
            f"of a batch {self.labeled_batch_share}; predict with the teacher: {self.predict_with_teacher}")


class nnUNetTrainerMeanTeacher_predictTeacher(nnUNetTrainerMeanTeacher):
    """Mean Teacher whose final network (checkpoint_final, validation, prediction) is the teacher."""
    predict_with_teacher = True

    def extra_checkpoint_state(self) -> dict:
        state = super().extra_checkpoint_state()
        if getattr(self, "_student_weights", None) is not None:
            state[STUDENT_KEY] = self._student_weights
        return state


_TRAINERS = [nnUNetTrainerMeanTeacher, nnUNetTrainerMeanTeacher_predictTeacher]
__all__ = [t.__name__ for t in _TRAINERS] + [n for t in _TRAINERS for n in add_budget_variants(t, globals())]
