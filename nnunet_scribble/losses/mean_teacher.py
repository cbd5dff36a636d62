"""Mean Teacher pieces as pure torch functions (N-D): EMA update, ramp-up, softmax-MSE consistency.

Settings of the usual Mean Teacher for segmentation (Tarvainen & Valpola 2017; the semi-supervised
medical segmentation code bases use the same): teacher = exponential moving average of the student with
decay ``min(1 - 1/(t + 1), 0.99)`` at step ``t``; teacher input = student input + clamp(N(0, 0.1^2), +-0.2);
consistency = mean squared difference of the two softmax outputs over all voxels and classes, weighted
``0.1 * exp(-5 (1 - t/T)^2)`` (sigmoid-shaped ramp-up over ``T``).
"""
from __future__ import annotations

import torch

from nnunet_scribble.losses.rampup import sigmoid_rampup  # noqa: F401  (re-exported)

__all__ = ["ema_decay", "update_ema", "sigmoid_rampup", "teacher_noise", "softmax_mse"]


def ema_decay(step: int, max_decay: float = 0.99) -> float:
    """``min(1 - 1/(step + 1), max_decay)``: 0 at step 0 (the teacher copies the student), then rising."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


@torch.no_grad()
def update_ema(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student`` for every parameter; buffers are copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def teacher_noise(x: torch.Tensor, std: float = 0.1, clamp: float = 0.2,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``clamp(N(0, std^2), -clamp, clamp)`` noise of ``x``'s shape (added to the teacher's input)."""
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
    return (noise * std).clamp(-clamp, clamp).to(x.dtype)


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over all voxels, classes and samples of ``(softmax(student) - softmax(teacher))^2``;
    no gradient reaches the teacher."""
    s = torch.softmax(student_logits.float(), 1)
    t = torch.softmax(teacher_logits.detach().float(), 1)
    return ((s - t) ** 2).mean()
