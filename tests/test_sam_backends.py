"""SAM backends: tiny official-format SAM through the real loading path, LiteMedSAM, checkpoint errors."""
from __future__ import annotations

import os
import pickle
import traceback

import numpy as np
import pytest
import torch

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.sam import backends
from nnunet_scribble.sam.backends import ENV_BACKEND, ENV_CHECKPOINT, load_backend, resolve_backend
from nnunet_scribble.sam.testing import TINY_SPEC, patch_tiny_spec, write_tiny_sam


@pytest.fixture
def tiny_ckpt(tmp_path, monkeypatch):
    patch_tiny_spec(monkeypatch, "vit_b")
    monkeypatch.delenv(ENV_BACKEND, raising=False)
    monkeypatch.delenv(ENV_CHECKPOINT, raising=False)
    return write_tiny_sam(str(tmp_path / "sam_vit_b_tiny.pth"))


def test_tiny_official_sam_loads_and_encodes(tiny_ckpt):
    sam = load_backend("vit_b", tiny_ckpt, device="cpu")
    assert sam.name == "vit_b" and not sam.box_trained and sam.input_size == TINY_SPEC.image_size
    assert len(sam.checkpoint_sha256) == 64 and sam.key == f"vit_b-{sam.checkpoint_sha256[:12]}"
    assert not any(p.requires_grad for p in sam.mask_decoder.parameters())
    emb = sam.encode(np.random.rand(2, 50, 40).astype(np.float32))
    grid = TINY_SPEC.image_size // TINY_SPEC.patch_size
    assert emb.shape == (2, TINY_SPEC.prompt_embed_dim, grid, grid) and emb.dtype == torch.float32
    x = sam.prepare(np.ones((1, 50, 40), np.float32))
    assert x.shape == (1, 3, 64, 64)
    assert sam.resized_shape((50, 40)) == (64, 51)
    assert torch.all(x[..., 51:] == 0) and torch.all(x[..., :51] != 0)   # padded right, normalised left
    # the same weights come back (state dict round trip) and the hash identifies the content
    again = load_backend("vit_b", tiny_ckpt, device="cpu")
    for a, b in zip(sam.mask_decoder.state_dict().values(), again.mask_decoder.state_dict().values()):
        assert torch.equal(a, b)
    other = write_tiny_sam(tiny_ckpt.replace(".pth", "_2.pth"), seed=1)
    assert load_backend("vit_b", other, device="cpu").checkpoint_sha256 != sam.checkpoint_sha256


def test_backend_and_checkpoint_from_environment(tiny_ckpt, monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "vit_b")
    monkeypatch.setenv(ENV_CHECKPOINT, tiny_ckpt)
    assert resolve_backend() == ("vit_b", tiny_ckpt)
    assert resolve_backend("vit_l", "/x/y.pth") == ("vit_l", "/x/y.pth")       # options win
    monkeypatch.delenv(ENV_CHECKPOINT)
    with pytest.raises(UserFacingError, match=f"{ENV_CHECKPOINT}.*"):
        resolve_backend()
    monkeypatch.setenv(ENV_BACKEND, "vit_x")
    with pytest.raises(UserFacingError, match="Unknown SAM backend 'vit_x'"):
        resolve_backend()


def test_checkpoint_errors_name_the_file_and_the_fix(tiny_ckpt, tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(UserFacingError, match=r"nope\.pth .*does not exist.*--checkpoint"):
        load_backend("vit_b", missing)
    truncated = str(tmp_path / "truncated.pth")
    with open(tiny_ckpt, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(UserFacingError, match=r"truncated\.pth .*truncated"):
        load_backend("vit_b", truncated)
    garbage = str(tmp_path / "garbage.pth")
    with open(garbage, "wb") as f:
        f.write(b"not a checkpoint at all")
    with pytest.raises(UserFacingError, match=r"garbage\.pth .*not a PyTorch checkpoint"):
        load_backend("vit_b", garbage)
    # a SAM of another type: detected from the shapes before anything is built
    with pytest.raises(UserFacingError, match=r"holds a SAM vit_b .*not the vit_h.*--backend vit_b"):
        load_backend("vit_h", tiny_ckpt)
    # pickled objects are refused for safety (weights_only=True)
    pickled = str(tmp_path / "pickled.pth")
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)
    with pytest.raises(UserFacingError, match=r"pickled\.pth .*refused for safety.*torch\.nn\.modules\.linear\.Linear"):
        load_backend("vit_b", pickled)
    # a state dict that is not SAM
    notsam = str(tmp_path / "notsam.pth")
    torch.save({"weight": torch.zeros(3)}, notsam)
    with pytest.raises(UserFacingError, match="not the vit_b"):
        load_backend("vit_b", notsam)
    # right kind, wrong shapes (e.g. a decoder of another width)
    sd = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    broken = str(tmp_path / "broken.pth")
    torch.save(sd, broken)
    with pytest.raises(UserFacingError, match=r"broken\.pth does not fit the vit_b architecture: mask_decoder has "
                                              r"1 weight\(s\) of another shape \(iou_token\.weight"):
        load_backend("vit_b", broken)
    # right kind, weights missing (e.g. a file saved from a modified model)
    del sd["mask_decoder.iou_token.weight"], sd["prompt_encoder.no_mask_embed.weight"]
    torch.save(sd, broken)
    with pytest.raises(UserFacingError, match=r"broken\.pth does not fit the vit_b architecture: prompt_encoder misses "
                                              r"1 weight\(s\) \(no_mask_embed\.weight\)"):
        load_backend("vit_b", broken)


class _RunsCode:
    """Unpickling this object would call os.mkdir(marker): a checkpoint with code in it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_checkpoint_with_code_is_refused_for_safety_and_never_run(tiny_ckpt, tmp_path, protocol):
    marker = str(tmp_path / "code_ran")
    evil = str(tmp_path / "evil.pth")
    with open(evil, "wb") as f:
        pickle.dump({"model": _RunsCode(marker)}, f, protocol=protocol)
    with pytest.raises(UserFacingError) as info:
        load_backend("vit_b", evil)
    msg = str(info.value)
    assert "evil.pth" in msg and "refused for safety" in msg and "mkdir" in msg, msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg, msg
    assert "corrupt" not in msg
    shown = "".join(traceback.format_exception(info.value))       # what a traceback would print
    assert "weights_only" not in shown and "arbitrary code execution" not in shown   # torch's advice is not chained
    assert not os.path.exists(marker)


@pytest.mark.parametrize("content", [b"hello\n", b"", b"\x80\x02", b"PK\x03\x04 truncated zip"])
def test_file_that_is_no_checkpoint_names_the_file(tiny_ckpt, tmp_path, content):
    """A 6-byte text file used to give `KeyError: 101` from inside torch."""
    path = str(tmp_path / "notes.pth")
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(UserFacingError, match=rf"notes\.pth \({len(content)} bytes\) is not a PyTorch checkpoint"):
        load_backend("vit_b", path)


def test_litemedsam_default_checkpoint_is_identified_and_loads():
    path = backends.bundled_litemedsam_checkpoint()
    assert os.path.isfile(path)
    sd = backends.read_state_dict(path, "litemedsam")
    assert backends.describe_state_dict(sd)[0] == "litemedsam"
    with pytest.raises(UserFacingError, match=r"holds a LiteMedSAM.*--backend litemedsam"):
        backends.check_kind(sd, path, "vit_b")
    sam = load_backend("litemedsam", None, device="cpu")
    assert sam.box_trained and sam.input_size == 256
    assert sam.checkpoint_sha256 == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    # decoder + prompt encoder are segment-anything modules with the checkpoint's weights: a box prompt on a
    # random embedding gives a (1, 1, 256, 256) low-res mask
    sparse, dense = sam.prompt_encoder(points=None, boxes=torch.tensor([[10.0, 10.0, 100.0, 120.0]]), masks=None)
    with torch.no_grad():
        low, iou = sam.mask_decoder(image_embeddings=torch.randn(1, 256, 64, 64),
                                    image_pe=sam.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                    dense_prompt_embeddings=dense, multimask_output=False)
    assert low.shape == (1, 1, 256, 256) and iou.shape == (1, 1)
