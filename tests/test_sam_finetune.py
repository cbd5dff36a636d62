"""Decoder-only fine-tuning on cached embeddings with the tiny SAM."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from nnunet_scribble.sam.backends import load_backend
from nnunet_scribble.sam.decoder import FinetuneConfig, SliceSample, decode, finetune_decoder, mean_loss, predict_probs
from nnunet_scribble.sam.prompts import PromptRules, slice_prompts
from nnunet_scribble.sam.testing import patch_tiny_spec, write_tiny_sam

IGNORE = 4


def _toy_slice(rng, size=48):
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size / 2 + rng.uniform(-3, 3, 2)
    d = np.hypot(yy - cy, xx - cx)
    label = np.zeros((size, size), np.int16)
    label[(d <= 12) & (d > 7)] = 2
    label[d <= 7] = 3
    label[(np.abs(yy - cy) < 8) & (np.abs(xx - (cx - 17)) < 3)] = 1
    image = np.clip(label / 3.0 + rng.normal(0, 0.05, label.shape), 0, 1).astype(np.float32)
    scribble = np.full(label.shape, IGNORE, np.int16)
    for c in (1, 2, 3):
        rows, cols = np.nonzero(label == c)
        keep = rng.random(len(rows)) < 0.15
        scribble[rows[keep], cols[keep]] = c
    scribble[(d > 20) & (d < 21.5)] = 0
    return image, label, scribble


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def toy(tmp_path, monkeypatch):
    patch_tiny_spec(monkeypatch, "vit_b")
    sam = load_backend("vit_b", write_tiny_sam(str(tmp_path / "tiny.pth")), device="cpu")
    rng = np.random.default_rng(0)
    samples, targets, embeddings = [], {}, {}
    for i in range(3):
        image, label, scribble = _toy_slice(rng)
        embeddings[f"case{i}"] = sam.encode(image[None]).numpy().astype(np.float16)
        prompts = slice_prompts(scribble, [1, 2, 3], 4, PromptRules(mode="box+points"))
        samples.append(SliceSample(f"case{i}", 0, scribble, prompts))
        targets[(f"case{i}", 0)] = label
    return sam, samples, targets, embeddings.__getitem__


def test_decode_returns_slice_resolution_logits(toy):
    sam, samples, _, embeddings = toy
    probs = predict_probs(sam.mask_decoder, sam, embeddings, samples[0])
    assert probs.shape == (3, 48, 48) and (probs >= 0).all() and (probs <= 1).all()


def test_finetuning_lowers_the_loss_and_touches_only_the_decoder(toy):
    sam, samples, targets, embeddings = toy
    config = FinetuneConfig(epochs=15, lr=1e-3)
    decoder = copy.deepcopy(sam.mask_decoder)
    encoder_before = [p.clone() for p in sam.image_encoder.parameters()]
    prompt_before = [p.clone() for p in sam.prompt_encoder.parameters()]
    before = mean_loss(decoder, sam, embeddings, samples, targets, 4, config)
    stats = finetune_decoder(decoder, sam, embeddings, samples, targets, 4, config, progress=False, log=None)
    after = mean_loss(decoder, sam, embeddings, samples, targets, 4, config)
    assert after < 0.8 * before, (before, after, stats["epoch_losses"])
    assert stats["epoch_losses"][-1] < stats["epoch_losses"][0]
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, sam.image_encoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(prompt_before, sam.prompt_encoder.parameters()))
    assert not any(p.requires_grad for p in decoder.parameters())      # frozen again afterwards
    assert not torch.equal(next(decoder.parameters()), next(sam.mask_decoder.parameters()))


def test_finetuning_resumes_from_its_epoch_state(toy, tmp_path):
    sam, samples, targets, embeddings = toy
    state = str(tmp_path / "state.pth")
    full = copy.deepcopy(sam.mask_decoder)
    finetune_decoder(full, sam, embeddings, samples, targets, 4, FinetuneConfig(epochs=4, lr=1e-3), progress=False,
                     log=lambda m: None)
    part = copy.deepcopy(sam.mask_decoder)
    first = finetune_decoder(part, sam, embeddings, samples, targets, 4, FinetuneConfig(epochs=2, lr=1e-3),
                             state_file=state, progress=False, log=lambda m: None)
    messages = []
    resumed = copy.deepcopy(sam.mask_decoder)
    second = finetune_decoder(resumed, sam, embeddings, samples, targets, 4, FinetuneConfig(epochs=4, lr=1e-3),
                              state_file=state, progress=False, log=messages.append)
    assert second["resumed_from_epoch"] == 2 and len(second["epoch_losses"]) == 4
    assert second["epoch_losses"][:2] == first["epoch_losses"]
    assert any("resuming" in m for m in messages)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    assert os.path.isfile(state)
    # other settings: the state is not reused
    other = finetune_decoder(copy.deepcopy(sam.mask_decoder), sam, embeddings, samples, targets, 4,
                             FinetuneConfig(epochs=4, lr=2e-3), state_file=state, progress=False, log=None)
    assert other["resumed_from_epoch"] == 0


def test_decode_is_differentiable_wrt_decoder(toy):
    sam, samples, _, embeddings = toy
    decoder = copy.deepcopy(sam.mask_decoder)
    for p in decoder.parameters():
        p.requires_grad_(True)
    emb = torch.from_numpy(embeddings("case0")[0].astype(np.float32))[None]
    decode(decoder, sam, emb, samples[0]).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
