"""nnU-Net's planned U-Net with a second, auxiliary decoder (DMPLS, Luo et al. 2022; SAM-SP's segmentor).

The planned network is built by nnU-Net's own ``get_network_from_plans`` (any
``dynamic_network_architectures`` U-Net with ``.encoder`` and ``.decoder``: ``PlainConvUNet``,
``ResidualEncoderUNet``, ``ResidualUNet``; 2D and 3D). A second network is built from the same plans
and only its decoder is kept: same architecture, its own nnU-Net initialisation, reading the shared
encoder. The auxiliary decoder sees every encoder output (skips and bottleneck) through feature
dropout (channel-wise, p=0.5 by default, like the official code's ``dropout2d`` on all features).

Modes:

- ``train()``: ``forward(x)`` returns ``(main, aux)``, each exactly what a stock network returns (a
  list of deep-supervision outputs, full resolution first, or one tensor). Calling the module itself
  (not a helper) keeps DDP's and ``torch.compile``'s wrappers in the loop.
- ``eval()``: ``forward(x)`` returns the main decoder's output only, computed exactly as the stock
  network computes it; the auxiliary decoder is not run. This is what nnU-Net's validation and
  ``nnUNetv2_predict`` see.

State dict: ``encoder.*`` and ``decoder.*`` have exactly the stock network's keys (so
:meth:`DualDecoderUNet.main_state_dict` loads into a stock network with ``strict=True``), plus
``aux_decoder.*``. The checkpoint written by nnU-Net therefore loads into the same dual network,
which the trainer's ``build_network_architecture`` rebuilds for ``nnUNetv2_predict``.

Deep supervision: nnU-Net toggles ``network.decoder.deep_supervision``; the main decoder's flag is
authoritative and the auxiliary decoder follows it on every forward
(:meth:`DualDecoderUNet.set_deep_supervision_enabled` sets both explicitly).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DualDecoderUNet", "feature_dropout", "build_dual_decoder_network",
           "build_dual_decoder_network_from_plans"]


def feature_dropout(x: torch.Tensor, p: float, channelwise: bool = True, training: bool = True) -> torch.Tensor:
    """Dropout for N-D feature maps ``(B, C, *spatial)``; kept values are scaled by ``1/(1-p)``.

    ``channelwise=True`` drops whole channels per sample (torch's ``dropout2d``/``dropout3d``; other
    numbers of spatial dims go through ``dropout2d`` with the spatial axes flattened), ``False`` drops
    single elements (``dropout``). Identity when not ``training`` or ``p == 0`` (no random draw).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if not channelwise:
        return F.dropout(x, p, training=True)
    if x.ndim == 4:
        return F.dropout2d(x, p, training=True)
    if x.ndim == 5:
        return F.dropout3d(x, p, training=True)
    return F.dropout2d(x.reshape(x.shape[0], x.shape[1], -1, 1), p, training=True).reshape(x.shape)


class DualDecoderUNet(nn.Module):
    """One encoder, a main decoder and an auxiliary decoder fed through feature dropout.

    Args:
        network: the planned stock network (with ``.encoder`` and ``.decoder``); its encoder and
            decoder become this module's ``encoder`` and ``decoder``.
        aux_decoder: a decoder of the same architecture (e.g. the decoder of a second network built
            from the same plans). Its ``encoder`` reference, if any, is pointed at the shared encoder.
        aux_dropout_p: dropout probability on every encoder output before the auxiliary decoder.
        aux_dropout_channelwise: drop whole channels (official DMPLS code) instead of elements.
    """

    def __init__(self, network: nn.Module, aux_decoder: nn.Module, aux_dropout_p: float = 0.5,
                 aux_dropout_channelwise: bool = True):
        super().__init__()
        for attr in ("encoder", "decoder"):
            if not isinstance(getattr(network, attr, None), nn.Module):
                raise TypeError(f"{type(network).__name__} has no '{attr}' module; the dual-decoder network needs "
                                "an nnU-Net U-Net (PlainConvUNet, ResidualEncoderUNet, ResidualUNet)")
        if aux_decoder is network.decoder:
            raise ValueError("the auxiliary decoder must be a separate module, not the main decoder")
        if not 0.0 <= aux_dropout_p < 1.0:
            raise ValueError(f"aux_dropout_p must be in [0, 1), got {aux_dropout_p}")
        self.encoder = network.encoder
        self.decoder = network.decoder
        if isinstance(getattr(aux_decoder, "encoder", None), nn.Module):
            aux_decoder.encoder = self.encoder   # the stock decoder keeps a reference to its encoder
        self.aux_decoder = aux_decoder
        self.aux_dropout_p = float(aux_dropout_p)
        self.aux_dropout_channelwise = bool(aux_dropout_channelwise)
        # attributes of dynamic_network_architectures' AbstractDynamicNetworkArchitectures (same keys here)
        for attr in ("key_to_encoder", "key_to_stem", "keys_to_in_proj", "key_to_lpe"):
            if hasattr(network, attr):
                setattr(self, attr, getattr(network, attr))
        self.aux_decoder.deep_supervision = self.decoder.deep_supervision

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Any:
        """Training mode: ``(main, aux)``. Eval mode: the main output only (aux decoder not run)."""
        if self.training:
            return self.forward_both(x)
        return self.decoder(self.encoder(x))

    def forward_both(self, x: torch.Tensor) -> tuple[Any, Any]:
        """``(main, aux)`` in any mode; feature dropout is applied in training mode only."""
        skips = self.encoder(x)
        main = self.decoder(skips)
        self.aux_decoder.deep_supervision = self.decoder.deep_supervision
        dropped = [feature_dropout(s, self.aux_dropout_p, self.aux_dropout_channelwise, self.training)
                   for s in skips]
        return main, self.aux_decoder(dropped)

    # ---- nnU-Net integration ----------------------------------------------------------------
    @property
    def deep_supervision(self) -> bool:
        return bool(self.decoder.deep_supervision)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Set deep supervision on both decoders (nnU-Net itself only sets ``decoder.deep_supervision``)."""
        self.decoder.deep_supervision = enabled
        self.aux_decoder.deep_supervision = enabled

    def main_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict of the main branch with the stock network's keys (``strict=True`` compatible)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("aux_decoder.")}

    def compute_conv_feature_map_size(self, input_size) -> int:
        """nnU-Net's feature-map size estimate: encoder + both decoders (training-time footprint)."""
        return int(self.encoder.compute_conv_feature_map_size(input_size)
                   + self.decoder.compute_conv_feature_map_size(input_size)
                   + self.aux_decoder.compute_conv_feature_map_size(input_size))


def build_dual_decoder_network(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str],
                               input_channels: int, output_channels: int, deep_supervision: bool = True,
                               aux_dropout_p: float = 0.5, aux_dropout_channelwise: bool = True) -> DualDecoderUNet:
    """Build the planned network twice with nnU-Net's ``get_network_from_plans`` (each with nnU-Net's
    initialisation) and combine the first network with the second one's decoder."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    def build():
        return get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, input_channels,
                                      output_channels, allow_init=True, deep_supervision=deep_supervision)

    main, second = build(), build()
    if not isinstance(getattr(second, "decoder", None), nn.Module):
        raise TypeError(f"{arch_class_name} has no '.decoder'; the dual-decoder network needs an nnU-Net U-Net "
                        "(PlainConvUNet, ResidualEncoderUNet, ResidualUNet)")
    return DualDecoderUNet(main, second.decoder, aux_dropout_p, aux_dropout_channelwise)


def build_dual_decoder_network_from_plans(plans_manager, configuration_manager, num_input_channels: int,
                                          num_output_channels: int, enable_deep_supervision: bool = True,
                                          aux_dropout_p: float = 0.5,
                                          aux_dropout_channelwise: bool = True) -> DualDecoderUNet:
    """:func:`build_dual_decoder_network` with the arguments of nnU-Net's ``build_network_architecture``."""
    return build_dual_decoder_network(
        configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
        deep_supervision=enable_deep_supervision, aux_dropout_p=aux_dropout_p,
        aux_dropout_channelwise=aux_dropout_channelwise)
