"""LoRA on the query and value parts of fused ``qkv`` projections (SAMed style, CFR's SAM fine-tuning).

A wrapped ``qkv = nn.Linear(dim, 3 * dim)`` computes ``base(x) + [s * B_q A_q x, 0, s * B_v A_v x]`` with
``s = alpha / rank``; A is kaiming-uniform (as ``nn.Linear``), B zero, so the model is unchanged at start. The
wrapper keeps the original ``weight`` and ``bias`` (frozen) under their original names, so the pretrained
state dict still fits; the LoRA tensors are ``<...>.qkv.lora_{q,v}_{a,b}``. Output layouts handled: official
SAM's ViT ([q | k | v], each ``dim`` wide) and LiteMedSAM's TinyViT (per head [q_h | k_h | v_h]).

Why not ``peft``: its LoRA wraps whole ``nn.Linear`` modules chosen by name, so on a fused qkv it adapts q, k
and v together; q and v only would need splitting qkv into three Linears, which changes the pretrained module
structure (state-dict names and the attention code of both encoders).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

LORA_NAMES = ("lora_q_a", "lora_q_b", "lora_v_a", "lora_v_b")


class LoRAQV(nn.Module):
    """A fused qkv Linear (weight and bias shared with the original, frozen) plus LoRA on its q and v rows."""

    def __init__(self, base: nn.Linear, q_index: torch.Tensor, v_index: torch.Tensor, rank: int, alpha: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = int(rank), float(alpha), float(alpha) / int(rank)
        self.weight = base.weight
        self.weight.requires_grad_(False)
        if base.bias is not None:
            self.bias = base.bias
            self.bias.requires_grad_(False)
        else:
            self.register_parameter("bias", None)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        for part, index in (("q", q_index), ("v", v_index)):
            a = nn.Parameter(torch.empty(rank, self.in_features, **kw))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            setattr(self, f"lora_{part}_a", a)
            setattr(self, f"lora_{part}_b", nn.Parameter(torch.zeros(len(index), rank, **kw)))
            self.register_buffer(f"{part}_index", index.to(device=base.weight.device, dtype=torch.long),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        dq = F.linear(F.linear(x, self.lora_q_a), self.lora_q_b) * self.scale
        dv = F.linear(F.linear(x, self.lora_v_a), self.lora_v_b) * self.scale
        return out.index_add(-1, self.q_index, dq.to(out.dtype)).index_add(-1, self.v_index, dv.to(out.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, q={len(self.q_index)}, v={len(self.v_index)}")


def _qv_indices(parent: nn.Module, qkv: nn.Linear, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Output rows of q and v in the fused projection ``qkv`` of the attention module ``parent``."""
    if all(hasattr(parent, a) for a in ("key_dim", "d", "num_heads")):     # TinyViT: per head [q_h | k_h | v_h]
        kd, d, heads = int(parent.key_dim), int(parent.d), int(parent.num_heads)
        chunk = 2 * kd + d
        if heads * chunk == qkv.out_features:
            start = torch.arange(heads) * chunk
            q = (start[:, None] + torch.arange(kd)).flatten()
            v = (start[:, None] + 2 * kd + torch.arange(d)).flatten()
            return q, v
    elif qkv.out_features == 3 * qkv.in_features:                           # [q | k | v]
        dim = qkv.in_features
        return torch.arange(dim), torch.arange(2 * dim, 3 * dim)
    raise ValueError(f"{name} ({qkv.in_features} -> {qkv.out_features}) in {type(parent).__name__} has an unknown "
                     f"q/k/v layout: LoRA on q/v supports nn.Linear(dim, 3*dim) ordered [q | k | v] (segment_anything "
                     f"ViT) and TinyViT's per-head layout.")


def add_lora_qv(module: nn.Module, rank: int = 4, alpha: Optional[float] = None) -> list[str]:
    """Freeze every parameter of ``module`` and put trainable LoRA (``rank``, scale ``alpha / rank``; alpha
    None = rank, i.e. scale 1 as SAMed) on q and v of each fused ``qkv`` Linear in it. Returns the wrapped names."""
    if int(rank) != rank or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}.")
    rank = int(rank)
    if any(isinstance(m, LoRAQV) for m in module.modules()):
        raise ValueError(f"{type(module).__name__} already has LoRA layers; add_lora_qv must be called once per "
                         f"module (deep-copy the original module to add another adapter).")
    targets = [n for n, m in module.named_modules() if n.rsplit(".", 1)[-1] == "qkv" and isinstance(m, nn.Linear)]
    if not targets:
        raise ValueError(f"No fused 'qkv' nn.Linear found in {type(module).__name__}: LoRA on q/v needs attention "
                         f"blocks with a fused qkv projection (segment_anything ImageEncoderViT, LiteMedSAM TinyViT). "
                         f"Pass the image encoder, not the whole model's wrapper or an already split module.")
    for p in module.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        base = getattr(parent, attr)
        q, v = _qv_indices(parent, base, name)
        setattr(parent, attr, LoRAQV(base, q, v, rank, float(rank if alpha is None else alpha)))
    return targets


def _lora_modules(module: nn.Module) -> dict[str, LoRAQV]:
    found = {n: m for n, m in module.named_modules() if isinstance(m, LoRAQV)}
    if not found:
        raise ValueError(f"{type(module).__name__} has no LoRA layers; call add_lora_qv(module) first.")
    return found


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters of ``module`` (in a fixed order)."""
    return [getattr(m, p) for m in _lora_modules(module).values() for p in LORA_NAMES]


def lora_state_dict(module: nn.Module) -> dict:
    """The LoRA tensors only (detached copies), keyed ``<qkv name>.lora_{q,v}_{a,b}``."""
    return {f"{n}.{p}" if n else p: getattr(m, p).detach().clone()
            for n, m in _lora_modules(module).items() for p in LORA_NAMES}


def load_lora_state_dict(module: nn.Module, state_dict: dict) -> None:
    """Load LoRA tensors saved by ``lora_state_dict``; names and shapes must match exactly."""
    expected = {f"{n}.{p}" if n else p: getattr(m, p) for n, m in _lora_modules(module).items() for p in LORA_NAMES}
    problems = mismatch_report(expected, state_dict)
    if problems:
        raise ValueError(f"LoRA state does not fit {type(module).__name__}: {problems}. It was saved from another "
                         f"encoder or LoRA rank; use the adapter saved for this backend and rank.")
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(state_dict[k])


def mismatch_report(expected: dict, given: dict) -> str:
    """'' if ``given`` has exactly ``expected``'s names and shapes, else what differs (a few names each)."""
    def few(keys):
        return "; ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [f"{k}: {tuple(given[k].shape)} given, {tuple(v.shape)} expected" for k, v in expected.items()
                if k in given and tuple(given[k].shape) != tuple(v.shape)]
    parts = [f"{what} {len(keys)}: {few(keys)}" for what, keys in
             (("missing", missing), ("unexpected", unexpected), ("shape differs for", reshaped)) if keys]
    return ", ".join(parts)
