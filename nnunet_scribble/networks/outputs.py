"""Handling nnU-Net network outputs, which are a list of scales under deep supervision (full resolution
first) and a tensor without it."""
from __future__ import annotations

from typing import Sequence

import torch


def full_resolution(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution output: ``output[0]`` under deep supervision, else ``output``."""
    return output[0] if isinstance(output, (list, tuple)) else output


def split_batch(output, b: int):
    """The output of a forward pass over two concatenated batches, as the outputs of the first ``b`` samples and
    of the rest (per scale under deep supervision)."""
    if isinstance(output, (list, tuple)):
        return [o[:b] for o in output], [o[b:] for o in output]
    return output[:b], output[b:]
