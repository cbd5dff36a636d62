"""Pieces shared by scribble simulation (``simulate``) and shrinking (``shrink``): 2D connectivity and per-case seeding."""
from __future__ import annotations

import zlib

import numpy as np

EIGHT = np.ones((3, 3), dtype=bool)   # 8-connectivity of a 2D slice


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``case_id``."""
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode())])
