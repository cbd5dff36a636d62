"""Writing a benchmark's generated section into its results file under ``benchmarks/results/``."""
from __future__ import annotations

import os


def write_generated_section(path: str, marker: str, text: str, default_head: str = "") -> None:
    """Replace everything below ``marker`` in ``path`` by ``text``; the hand-written reading above the
    marker is kept. A new file starts with ``default_head`` and the marker."""
    head = default_head + marker + "\n\n"
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if marker in old:
            head = old[:old.index(marker) + len(marker)] + "\n\n"
    with open(path, "w") as f:
        f.write(head + text)
