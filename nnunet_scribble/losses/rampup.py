"""Loss-weight ramp-ups shared by the trainers (one place for the schedule's shape).

``sigmoid_rampup``: the sigmoid-shaped ``exp(-5 (1 - t)^2)`` of Laine & Aila (2017) used by Mean Teacher,
AttenScribble and DMPLS's ramped variant; ``delayed_sigmoid_rampup`` starts it later (0 before ``start``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["sigmoid_rampup", "delayed_sigmoid_rampup"]


def sigmoid_rampup(current: float, length: float) -> float:
    """``exp(-5 (1 - clip(current / length, 0, 1))^2)``; 1 when ``length`` is 0."""
    if length == 0:
        return 1.0
    phase = 1.0 - float(np.clip(current, 0.0, length)) / length
    return float(np.exp(-5.0 * phase * phase))


def delayed_sigmoid_rampup(current: float, start: float, end: float) -> float:
    """0 before ``start``, then :func:`sigmoid_rampup` over ``[start, end]`` (1 from ``end`` on)."""
    if end < start:
        raise ValueError(f"ramp-up end {end} lies before its start {start}")
    if current < start:
        return 0.0
    return sigmoid_rampup(current - start, end - start)
