"""Spatial self-attention block (AttenScribble) grafted into nnU-Net's planned U-Net encoder.

Block (paper sec. 2.3; layer layout as in the authors' code): tokens = the stage's feature vectors,
``dim`` = the stage's channels, one head::

    t = t + proj(softmax(Q K^T / sqrt(d)) V)      Q = W_q LN1(t), K, V = W_kv LN1(t)
    t = t + MLP(LN2(t))                           MLP: dim -> 4 dim -> dim, GELU
    out = LN_out(t)                               replaces the stage's output (skip + next stage)

The attentive-similarity ``conv1x1`` belongs to the loss, not to the block: the trainer owns it
(:func:`similarity_head`). In training mode with ``expose_attention`` set, the attention is computed explicitly
(:func:`attention_with_window`, float32) and what the loss needs is kept: ``A_ij + A_ji`` of the
row-softmaxed matrix ``A`` for the token pairs inside the loss window
(``window_pairs(grid, window_radius, window_spacing)``), ``(B, heads, P)``, in
``block.window_attention`` with ``block.grid_shape``; gradients flow from it into ``A``. Otherwise (eval,
prediction) the block runs ``F.scaled_dot_product_attention`` and keeps nothing. Both paths compute the
same features.

Grafting (:func:`attach_attention`): nnU-Net builds its network from the plans as usual; the block is
appended to the module list of one encoder stage's conv stack (``StackedConvBlocks.convs`` or
``StackedResidualBlocks.blocks``, which run in sequence), so it runs after the convs and no class changes.
Every stock parameter keeps its name; the block adds ``<stage conv stack>.<n>.*``. The decoder, deep
supervision and nnU-Net's inference code see the usual ``PlainConvUNet`` / ``ResidualEncoderUNet``, and
nnU-Net's feature-map size estimate counts the block (``compute_conv_feature_map_size``).

Where: paper = after encoder stage 2 (1/4 resolution). Global attention is quadratic in the number of
tokens, so :func:`choose_attention_stage` takes the first stage ``>= preferred`` whose attention matrix
over the planned batch, ``batch x heads x tokens^2``, has at most 2^30 entries (4 GiB in float32).
ACDC 2d (256 x 224 -> 64 x 56 = 3584 tokens, batch 56 -> 0.72 x 2^30) gets stage 2 as in the paper;
ACDC 3d_fullres (10 x 256 x 224, batch 6) gets stage 3 (5 x 32 x 28 tokens, 1/8 in-plane); a 128^3
CT patch with batch 2 gets stage 3 (16^3). The stage is a pure function of the plans, so training and
``nnUNetv2_predict`` build the same network.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.residual import StackedResidualBlocks
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.geometry import stage_token_grids, window_pairs

__all__ = ["SpatialSelfAttention", "attention_with_window", "attach_attention", "similarity_head", "choose_attention_stage", "find_attention_block",
           "unwrap_network"]


class _AttentionWithWindow(torch.autograd.Function):
    """``out = softmax(scale Q K^T) V`` plus ``A_ij + A_ji`` for given pairs, one ``N x N`` buffer each way.

    Same maths as autograd through matmul/softmax/gather, written out so the window gradient is added
    in place into ``dL/dA`` (autograd would allocate a zero ``N x N`` tensor for the gather's backward,
    scatter into it and add it) and the softmax and its backward run in place.
    """

    @staticmethod
    def forward(ctx, q, k, v, idx_i, idx_j, scale: float):
        with torch.autocast(q.device.type, enabled=False):      # inputs and maths in the inputs' dtype
            attn = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
            attn.sub_(attn.amax(dim=-1, keepdim=True)).exp_()
            attn.div_(attn.sum(dim=-1, keepdim=True))
            out = torch.matmul(attn, v)
            n = attn.shape[-1]
            flat = attn.view(*attn.shape[:-2], n * n)
            fwd, bwd = idx_i * n + idx_j, idx_j * n + idx_i
            window = flat[..., fwd] + flat[..., bwd]
        ctx.save_for_backward(q, k, v, attn, fwd, bwd)
        ctx.scale = scale
        return out, window

    @staticmethod
    def backward(ctx, grad_out, grad_window):
        q, k, v, attn, fwd, bwd = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):
            grad_out = grad_out.to(attn.dtype)
            grad_v = torch.matmul(attn.transpose(-2, -1), grad_out)
            grad_attn = torch.matmul(grad_out, v.transpose(-2, -1))
            if grad_window is not None:
                n = attn.shape[-1]
                flat = grad_attn.view(*grad_attn.shape[:-2], n * n)
                grad_window = grad_window.to(attn.dtype)
                flat[..., fwd] += grad_window        # indices are unique: a plain in-place add is exact
                flat[..., bwd] += grad_window
            # softmax backward in place: dL/dlogits = A * (dL/dA - sum_j A_ij dL/dA_ij)
            row = torch.matmul(grad_attn.unsqueeze(-2), attn.unsqueeze(-1)).squeeze(-1)
            grad_logits = grad_attn.sub_(row).mul_(attn)
            grad_q = torch.matmul(grad_logits, k).mul_(ctx.scale)
            grad_k = torch.matmul(grad_logits.transpose(-2, -1), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None, None, None


def attention_with_window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx_i: torch.Tensor,
                          idx_j: torch.Tensor, scale: float | None = None):
    """``(softmax(scale Q K^T) V, A_ij + A_ji for the pairs (idx_i, idx_j))`` for ``(B, heads, N, d)`` inputs.

    Computed in float32 (float64 inputs stay float64), also under autocast.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return _AttentionWithWindow.apply(q.to(dtype), k.to(dtype), v.to(dtype), idx_i, idx_j, scale)


class SpatialSelfAttention(nn.Module):
    """Transformer block over the spatial positions of a ``(B, C, *spatial)`` feature map (2D or 3D)."""

    def __init__(self, channels: int, num_heads: int = 1, mlp_ratio: float = 4.0, qkv_bias: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.channels, self.num_heads = channels, num_heads
        self.head_dim = channels // num_heads
        self.norm1 = nn.LayerNorm(channels)
        self.q = nn.Linear(channels, channels, bias=qkv_bias)
        self.kv = nn.Linear(channels, 2 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        hidden = int(round(channels * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))
        self.norm_out = nn.LayerNorm(channels)
        # training: keep A_ij + A_ji for the pairs of this window (set by the trainer)
        self.expose_attention = False
        self.window_radius: int = 5
        self.window_spacing: tuple[float, ...] | None = None
        self.window_attention: torch.Tensor | None = None
        self.grid_shape: tuple[int, ...] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        spatial = tuple(x.shape[2:])
        tokens = x.flatten(2).transpose(1, 2)                                   # (B, N, C)
        n = tokens.shape[1]
        h = self.norm1(tokens)
        q = self.q(h).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.training and self.expose_attention:
            idx_i, idx_j, _ = window_pairs(spatial, self.window_radius, self.window_spacing, device=x.device)
            out, window = attention_with_window(q, k, v, idx_i, idx_j, self.head_dim ** -0.5)
            self.window_attention, self.grid_shape = window, spatial
        else:
            out = F.scaled_dot_product_attention(q, k, v)
            self.window_attention, self.grid_shape = None, spatial
        out = out.to(tokens.dtype).transpose(1, 2).reshape(b, n, c)
        tokens = tokens + self.proj(out)
        tokens = tokens + self.mlp(self.norm2(tokens))
        tokens = self.norm_out(tokens)
        return tokens.transpose(1, 2).reshape(b, c, *spatial)

    def pop_attention(self) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``(A_ij + A_ji`` of the window pairs ``(B, heads, P)``, token grid``)`` of the last training
        forward; releases the reference. Pairs: ``window_pairs(grid, window_radius, window_spacing)``."""
        if self.window_attention is None:
            raise RuntimeError("no attention stored: run a forward pass in training mode with expose_attention=True")
        window, grid = self.window_attention, self.grid_shape
        self.window_attention = None
        return window, grid

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Rough activation count (nnU-Net's planner proxy for memory): ~13 token-sized tensors + A."""
        n = int(np.prod(input_size, dtype=np.int64))
        return np.int64(13 * n * self.channels + 2 * self.num_heads * n * n)


# the conv stacks the block can follow, and the attribute holding their modules in sequence
_STACK_MODULES = {StackedConvBlocks: "convs", StackedResidualBlocks: "blocks"}


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


def choose_attention_stage(patch_size: Sequence[int], strides: Sequence[Sequence[int]], preferred: int = 2,
                           batch_size: int = 1, num_heads: int = 1, max_elements: int = 2 ** 30,
                           configuration: str = "") -> int:
    """First encoder stage ``>= preferred`` whose attention matrix over the batch,
    ``batch_size x num_heads x tokens^2``, has at most ``max_elements`` entries (default 2^30: 4 GiB in
    float32; the training step keeps a few such tensors)."""
    grids = stage_token_grids(patch_size, strides)
    if not 0 <= preferred < len(grids):
        raise UserFacingError(f"attention_stage={preferred} does not exist: the {configuration or 'planned'} network "
                              f"has encoder stages 0..{len(grids) - 1}.")
    for stage in range(preferred, len(grids)):
        if batch_size * num_heads * math.prod(grids[stage]) ** 2 <= max_elements:
            return stage
    tokens = ", ".join(f"stage {i}: {'x'.join(map(str, g))}" for i, g in enumerate(grids))
    raise UserFacingError(
        f"Configuration '{configuration}' (patch size {tuple(patch_size)}, batch size {batch_size}) has no encoder "
        f"stage at or after stage {preferred} where global self-attention fits: batch x heads x tokens^2 must be "
        f"at most {max_elements} ({tokens}). Use a configuration with a smaller patch or batch (e.g. 2d or "
        "3d_lowres), or a trainer subclass with a larger attention_max_elements if the GPU memory allows it.")


def attach_attention(network: nn.Module, stage: int, num_heads: int = 1,
                     mlp_ratio: float = 4.0) -> SpatialSelfAttention:
    """Append a :class:`SpatialSelfAttention` to the conv stack of encoder stage ``stage`` (in place).

    Supports nnU-Net's ``PlainConvUNet`` and ``ResidualEncoderUNet`` (any network whose
    ``encoder.stages[stage]`` is, or ends with, a ``StackedConvBlocks``/``StackedResidualBlocks``).
    Returns the block.
    """
    net = unwrap_network(network)
    stages = getattr(getattr(net, "encoder", None), "stages", None)
    if stages is None:
        raise UserFacingError(f"Cannot attach self-attention to {type(net).__name__}: it has no encoder.stages. "
                              "Supported: nnU-Net's PlainConvUNet and ResidualEncoderUNet plans.")
    host = stages[stage][-1] if isinstance(stages[stage], nn.Sequential) else stages[stage]
    if type(host) not in _STACK_MODULES:
        raise UserFacingError(f"Cannot attach self-attention after encoder stage {stage} of {type(net).__name__}: "
                              f"its conv stack is a {type(host).__name__}. Supported: StackedConvBlocks "
                              "(PlainConvUNet) and StackedResidualBlocks (ResidualEncoderUNet).")
    block = SpatialSelfAttention(int(host.output_channels), num_heads=num_heads, mlp_ratio=mlp_ratio)
    ref = next(host.parameters(), None)
    if ref is not None:
        block.to(device=ref.device)
    getattr(host, _STACK_MODULES[type(host)]).append(block)
    return block


def similarity_head(num_heads: int = 1) -> nn.Conv1d:
    """The attentive-similarity conv1x1 of ``S = sigmoid(conv1x1(A + A^T))`` (acts on the head axis), owned and
    trained by the trainer, not part of the network. Starts as ``sigmoid(A + A^T)`` (weight 1, bias 0):
    increasing in the attention, the sign the paper intends."""
    head = nn.Conv1d(num_heads, 1, kernel_size=1)
    nn.init.constant_(head.weight, 1.0)
    nn.init.zeros_(head.bias)
    return head


def find_attention_block(network: nn.Module) -> SpatialSelfAttention:
    """The (first) :class:`SpatialSelfAttention` inside ``network`` (DDP/compile wrappers are unwrapped)."""
    for m in unwrap_network(network).modules():
        if isinstance(m, SpatialSelfAttention):
            return m
    raise RuntimeError("the network has no SpatialSelfAttention block")
