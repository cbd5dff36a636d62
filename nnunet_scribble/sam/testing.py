"""A tiny randomly initialised official-format SAM for tests (here and in the trainer's tests).

Real SAM checkpoints cannot be shipped or downloaded in tests. ``write_tiny_sam`` saves a SAM built by the
same code as vit_b/l/h, with tiny dimensions, as a plain state dict - exactly what the official files hold.
``use_tiny_spec`` makes one official model type (default ``vit_b``) mean the tiny architecture, so the file
goes through the unchanged loading path (``load_backend("vit_b", path)``).
"""
from __future__ import annotations

from contextlib import contextmanager

from nnunet_scribble.sam.backends import OFFICIAL_SPECS, SamSpec, build_official_sam

TINY_SPEC = SamSpec(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                    image_size=64, patch_size=16, window_size=2, prompt_embed_dim=32, decoder_mlp_dim=64,
                    decoder_num_heads=2, iou_head_hidden_dim=32, file_name="tiny_sam.pth", approx_size="1 MB")


def write_tiny_sam(path: str, seed: int = 0, spec: SamSpec = TINY_SPEC) -> str:
    """Save a randomly initialised tiny SAM's state dict to ``path``."""
    import torch

    torch.manual_seed(seed)
    torch.save(build_official_sam(spec).state_dict(), path)
    return path


def patch_tiny_spec(monkeypatch, model_type: str = "vit_b", spec: SamSpec = TINY_SPEC) -> None:
    """pytest: let ``model_type`` denote the tiny architecture for the rest of the test."""
    monkeypatch.setitem(OFFICIAL_SPECS, model_type, spec)


@contextmanager
def use_tiny_spec(model_type: str = "vit_b", spec: SamSpec = TINY_SPEC):
    """Context manager version of ``patch_tiny_spec`` (restores the real spec on exit)."""
    old = OFFICIAL_SPECS[model_type]
    OFFICIAL_SPECS[model_type] = spec
    try:
        yield spec
    finally:
        OFFICIAL_SPECS[model_type] = old
