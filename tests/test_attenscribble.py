"""AttenScribble: masked gated CRF, attentive similarity loss, self-attention network, trainer."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from conftest import run_demo_cli
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.ext_trainers import TRAINERS_PATH
from nnunet_scribble.geometry import half_window_offsets, window_pairs, window_radii
from nnunet_scribble.losses.attentive_similarity import (attentive_similarity_loss,
                                                          samples_with_several_scribble_classes, unlabeled_tokens)
from nnunet_scribble.losses.crf import masked_gated_crf_loss
from nnunet_scribble.networks.attention import (SpatialSelfAttention, attention_with_window, choose_attention_stage,
                                                find_attention_block, similarity_head)
from nnunet_scribble.training.attenscribble import nnUNetTrainerAttenScribble, nnUNetTrainerAttenScribble_2epochs

IGNORE = 4


def symmetrized_window_attention(attention, idx_i, idx_j):
    """``A_ij + A_ji`` of a dense ``(B, heads, N, N)`` attention for the given pairs: ``(B, heads, P)``."""
    n = attention.shape[-1]
    flat = attention.reshape(attention.shape[0], attention.shape[1], n * n)
    return flat[:, :, idx_i * n + idx_j] + flat[:, :, idx_j * n + idx_i]


# ---- masked gated CRF -------------------------------------------------------------------------------
def crf_bruteforce(y, image, unlabeled, radius, sigma_xy, sigma_i, spacing=None, neighbours_unlabeled=True):
    """O(N^2) reference: every pair of voxels, the kernel and window written out literally."""
    spatial = y.shape[2:]
    spacing = spacing or [1.0] * len(spatial)
    s_min = min(spacing)
    coords = torch.tensor(list(itertools.product(*[range(n) for n in spatial])), dtype=torch.float64)
    phys = coords * torch.tensor(spacing, dtype=torch.float64) / s_min
    diff = phys[:, None] - phys[None]
    in_window = (diff.abs().amax(-1) <= radius + 1e-9) & (diff.abs().amax(-1) > 0)
    yf, imf = y.flatten(2).double(), image.flatten(2).double()
    mf = unlabeled.reshape(y.shape[0], -1).double()
    total = 0.0
    for b in range(y.shape[0]):
        d_i = ((imf[b][:, :, None] - imf[b][:, None, :]) ** 2).sum(0)
        k = torch.exp(-(diff ** 2).sum(-1) / (2 * sigma_xy ** 2) - d_i / (2 * sigma_i ** 2)) * in_window
        mask_j = mf[b][None] if neighbours_unlabeled else 1.0
        total = total + (k * (1 - yf[b].T @ yf[b]) * mf[b][:, None] * mask_j).sum()
    return total / mf.sum()


def crf_example_3x3():
    """Image columns 0|0|1; prediction class 0 left and middle, class 1 right; centre voxel scribbled."""
    image = torch.tensor([[0.0, 0.0, 1.0]] * 3).reshape(1, 1, 3, 3)
    y = torch.zeros(1, 2, 3, 3)
    y[0, 0, :, :2] = 1
    y[0, 1, :, 2] = 1
    unlabeled = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    unlabeled[0, 0, 1, 1] = False
    return image, y, unlabeled


def test_crf_hand_computed_3x3():
    """3x3 image, columns 0|0|1, centre pixel scribbled; prediction: class 0 left and middle, class 1 right.

    sigma_xy = sigma_I = 1: k = exp(-|d|^2/2 - dI^2/2); only pairs across the right column disagree.
    r = 1: (0,2)-(0,1) and (2,2)-(2,1): |d|^2=1, dI=1 -> e^-1 each; (1,2)-(0,1) and (1,2)-(2,1): |d|^2=2 ->
    e^-1.5 each; pairs with the scribbled centre (1,1) are masked. Both orders, |U| = 8.
    r = 2 adds column 0 - column 2 (dI=1): 3 pairs |d|^2=4, 4 pairs |d|^2=5, 2 pairs |d|^2=8, and
    (0,1)-(2,2), (2,1)-(0,2) with |d|^2=5.
    """
    image, y, unlabeled = crf_example_3x3()
    e = math.exp
    expected_r1 = 2 * (2 * e(-1) + 2 * e(-1.5)) / 8
    got = masked_gated_crf_loss(y, image, unlabeled, radius=1, sigma_xy=1.0, sigma_intensity=1.0)
    assert got.item() == pytest.approx(expected_r1, rel=1e-6)
    extra = 3 * e(-2.5) + 4 * e(-3) + 2 * e(-4.5) + 2 * e(-3)
    got = masked_gated_crf_loss(y, image, unlabeled, radius=2, sigma_xy=1.0, sigma_intensity=1.0)
    assert got.item() == pytest.approx(expected_r1 + 2 * extra / 8, rel=1e-6)
    # the scribbled centre contributes nothing: labelling more voxels only removes pairs
    unlabeled[0, 0, 0, 1] = False
    assert masked_gated_crf_loss(y, image, unlabeled, radius=1, sigma_xy=1.0, sigma_intensity=1.0).item() == \
        pytest.approx(2 * (e(-1) + e(-1.5)) / 7, rel=1e-6)


def test_crf_hand_computed_3x3_with_labelled_neighbours():
    """The 3x3 example with the authors' masking (centres unlabeled, neighbours anything).

    The scribbled centre (1,1) (class 0) is now a neighbour of every unlabeled voxel; it disagrees with
    the right column: (0,2),(2,2) at |d|^2=2 and (1,2) at |d|^2=1, each dI=1, once each (only as j).
    """
    image, y, unlabeled = crf_example_3x3()
    e = math.exp
    expected = (2 * (2 * e(-1) + 2 * e(-1.5)) + 2 * e(-1.5) + e(-1)) / 8
    got = masked_gated_crf_loss(y, image, unlabeled, radius=1, sigma_xy=1.0, sigma_intensity=1.0,
                                unlabeled_neighbours_only=False)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the scribbled voxel itself gets a gradient now (it is pulled towards its unlabeled neighbours)
    y.requires_grad_()
    masked_gated_crf_loss(y, image, unlabeled, radius=1, sigma_xy=1.0, sigma_intensity=1.0,
                          unlabeled_neighbours_only=False).backward()
    assert torch.count_nonzero(y.grad[0, :, 1, 1]) > 0


@pytest.mark.parametrize("neighbours_unlabeled", [True, False])
@pytest.mark.parametrize("shape,spacing", [((2, 3, 7, 6), None), ((2, 3, 7, 6), (2.0, 1.0)),
                                           ((2, 2, 4, 5, 6), None), ((1, 3, 5, 6, 7), (3.0, 1.0, 1.0))])
def test_crf_shifted_windows_equal_bruteforce(shape, spacing, neighbours_unlabeled):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64)
    image = torch.randn((shape[0], 2) + shape[2:], generator=gen)
    unlabeled = torch.rand((shape[0], 1) + shape[2:], generator=gen) > 0.3
    y = torch.softmax(logits.float(), 1).requires_grad_()
    loss = masked_gated_crf_loss(y, image, unlabeled, radius=2, sigma_xy=1.5, sigma_intensity=0.8, spacing=spacing,
                                 unlabeled_neighbours_only=neighbours_unlabeled)
    y_ref = y.detach().double().requires_grad_()
    ref = crf_bruteforce(y_ref, image, unlabeled, 2, 1.5, 0.8, spacing, neighbours_unlabeled)
    loss.backward()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(y.grad.double(), y_ref.grad, atol=1e-7)


def test_crf_window_follows_spacing_and_empty_mask_is_zero():
    assert window_radii(5, 3, (10.0, 1.5, 1.5)) == (0, 5, 5)      # ACDC 3d_fullres: in-plane window
    assert window_radii(5, 3, (1.0, 1.0, 1.0)) == (5, 5, 5)
    assert len(half_window_offsets((5, 5))) == 60                   # 120 neighbours, each pair once
    y = torch.softmax(torch.randn(1, 3, 6, 6), 1).requires_grad_()
    loss = masked_gated_crf_loss(y, torch.randn(1, 1, 6, 6), torch.zeros(1, 1, 6, 6, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(y.grad) == 0


# ---- attentive similarity ------------------------------------------------------------------------------
def atn_bruteforce(attention, y_tok, grid, weight, bias, radius, sigma, valid):
    """Dense reference on the full N x N matrices."""
    coords = torch.tensor(list(itertools.product(*[range(n) for n in grid])), dtype=torch.float64)
    diff = coords[:, None] - coords[None]
    cheb = diff.abs().amax(-1)
    prior = torch.exp(-(diff ** 2).sum(-1) / (2 * sigma ** 2)) * ((cheb > 0) & (cheb <= radius))
    s = torch.sigmoid(weight * (attention + attention.transpose(-1, -2)) + bias)
    agree = torch.einsum("bcn,bcm->bnm", y_tok, y_tok)
    per = (prior * s * (1 - agree)).sum((1, 2)) / coords.shape[0]
    return per[valid].mean()


def random_attention(b, n, gen):
    return torch.softmax(torch.randn(b, 1, n, n, generator=gen, dtype=torch.float64) * 3, -1)


def test_attention_loss_symmetry_and_dense_reference():
    gen = torch.Generator().manual_seed(1)
    grid = (5, 4)
    attn = random_attention(3, 20, gen).float()
    y = torch.softmax(torch.randn(3, 3, 10, 8, generator=gen), 1)          # full resolution = 2 x grid
    head = torch.nn.Conv1d(1, 1, 1)
    with torch.no_grad():
        head.weight.fill_(2.0)
        head.bias.fill_(-0.5)
    valid = torch.tensor([True, False, True])
    i, j, _ = window_pairs(grid, 2)
    sym = symmetrized_window_attention(attn, i, j)
    assert torch.allclose(sym, symmetrized_window_attention(attn.transpose(-1, -2), i, j))   # S_ij = S_ji
    loss = attentive_similarity_loss(sym, y, grid, head, radius=2, sigma=1.5, valid=valid)
    y_tok = torch.nn.functional.avg_pool2d(y, 2).flatten(2).double()
    ref = atn_bruteforce(attn.double()[:, 0], y_tok, grid, 2.0, -0.5, 2, 1.5, valid)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="attention pairs given"):
        attentive_similarity_loss(sym, y, grid, head, radius=1)


@pytest.mark.parametrize("grid, radius, spacing", [((2, 4, 4), 5, None), ((1, 3, 2), 5, None),
                                                    ((2, 6, 6), 5, (4.0, 2.0, 2.0)), ((3, 2), 4, None)])
def test_window_pairs_skip_offsets_wider_than_the_grid(grid, radius, spacing):
    """A window wider than the token grid on an axis (3d_fullres: few slices): every pair once, in the grid."""
    i, j, d2 = window_pairs(grid, radius, spacing)
    coords = torch.tensor(list(itertools.product(*[range(n) for n in grid])), dtype=torch.float64)
    radii = torch.tensor(window_radii(radius, len(grid), spacing), dtype=torch.float64)
    diff = coords[:, None] - coords[None]
    in_window = (diff.abs() <= radii).all(-1) & (diff.abs().amax(-1) > 0)
    expected = {tuple(sorted(p)) for p in torch.nonzero(in_window).tolist()}
    assert i.numel() == j.numel() == d2.numel() == len(expected)
    assert {tuple(sorted(p)) for p in zip(i.tolist(), j.tolist())} == expected
    # the network keeps exactly these pairs and the loss accepts them
    block = SpatialSelfAttention(8)
    block.train()
    block.expose_attention, block.window_radius, block.window_spacing = True, radius, spacing
    block(torch.randn((2, 8) + grid))
    window, got_grid = block.pop_attention()
    y = torch.softmax(torch.randn((2, 3) + grid), 1)
    loss = attentive_similarity_loss(window, y, got_grid, similarity_head(), radius=radius, spacing=spacing)
    assert torch.isfinite(loss)


def test_fused_attention_equals_autograd_reference():
    """attention_with_window: output, window values and every gradient equal plain autograd."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 12, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    i, j, _ = window_pairs((4, 3), 1)
    gw = torch.randn(2, 2, i.numel(), generator=gen, dtype=torch.float64)
    go = torch.randn(2, 2, 12, 4, generator=gen, dtype=torch.float64)
    out, window = attention_with_window(q, k, v, i, j, 0.5)
    grads = torch.autograd.grad((out * go).sum() + (window * gw).sum(), (q, k, v))
    attn = torch.softmax(0.5 * q @ k.transpose(-1, -2), -1)
    out_ref, window_ref = attn @ v, symmetrized_window_attention(attn, i, j)
    grads_ref = torch.autograd.grad((out_ref * go).sum() + (window_ref * gw).sum(), (q, k, v))
    assert torch.allclose(out, out_ref) and torch.allclose(window, window_ref)
    for g, r in zip(grads, grads_ref):
        assert torch.allclose(g, r)
    assert torch.autograd.gradcheck(lambda a, b, c: attention_with_window(a, b, c, i, j, 0.5), (q, k, v))


def test_attention_loss_gradients_reach_attention_head_and_prediction():
    torch.manual_seed(0)
    block = SpatialSelfAttention(8).train()
    block.expose_attention = True
    head = similarity_head()
    assert head.weight.item() == 1 and head.bias.item() == 0      # starts as sigmoid(A + A^T)
    features = torch.randn(2, 8, 6, 6, requires_grad=True)
    logits = torch.randn(2, 3, 12, 12, requires_grad=True)
    block(features)
    window, grid = block.pop_attention()
    assert block.window_attention is None and grid == (6, 6)
    assert window.shape == (2, 1, window_pairs(grid, 5)[0].numel())
    loss = attentive_similarity_loss(window, torch.softmax(logits, 1), grid, head,
                                     valid=torch.tensor([True, True]))
    loss.backward()
    params = {**dict(block.named_parameters()), **{f"similarity.{k}": v for k, v in head.named_parameters()}}
    for name in ("q.weight", "kv.weight", "similarity.weight", "similarity.bias"):
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert logits.grad.abs().sum() > 0 and features.grad.abs().sum() > 0
    # no valid sample: zero, but still connected (DDP needs every parameter in the graph)
    block(features)
    window, grid = block.pop_attention()
    zero = attentive_similarity_loss(window, torch.softmax(logits, 1), grid, head,
                                     valid=torch.tensor([False, False]))
    assert zero.item() == 0 and zero.requires_grad


def test_block_trains_under_autocast():
    """Mixed precision (CPU bfloat16 autocast standing in for CUDA fp16): the explicit attention runs in
    float32 and the backward works."""
    torch.manual_seed(0)
    block = SpatialSelfAttention(8).train()
    block.expose_attention = True
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
        window, _ = block.pop_attention()
        assert window.dtype == torch.float32
        (out.float().sum() + window.sum()).backward()
    assert x.grad.dtype == torch.float32 and block.q.weight.grad.abs().sum() > 0


def test_attention_kept_under_torch_compile():
    """The block stores its window attention during a compiled forward (dynamo graph; eager backend)."""
    torch.manual_seed(0)
    block = SpatialSelfAttention(8).train()
    block.expose_attention = True
    x = torch.randn(2, 8, 6, 6)
    compiled = torch.compile(block, backend="aot_eager")
    out = compiled(x)
    window, _ = block.pop_attention()
    out_eager = block(x)
    assert torch.allclose(out, out_eager, atol=1e-6) and torch.allclose(window, block.pop_attention()[0], atol=1e-6)


def test_scribble_class_test_and_unlabeled_tokens():
    s = torch.full((3, 1, 4, 4), IGNORE)
    s[0, 0, 0, 0], s[0, 0, 3, 3] = 0, 2          # two classes
    s[1, 0, 0, :] = 1                             # one class
    valid = samples_with_several_scribble_classes(s, IGNORE)
    assert valid.tolist() == [True, False, False]
    u = unlabeled_tokens(s, IGNORE, (2, 2))
    assert u.shape == (3, 1, 2, 2)
    assert u[0, 0].tolist() == [[0, 1], [1, 0]] and u[1, 0].tolist() == [[0, 0], [1, 1]] and u[2].min() == 1


# ---- network --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial", [(6, 5), (3, 4, 5)])
def test_block_shapes_and_both_attention_paths_agree(spatial):
    torch.manual_seed(0)
    block = SpatialSelfAttention(16)
    x = torch.randn((2, 16) + spatial)
    block.eval()
    out_eval = block(x)
    assert out_eval.shape == x.shape and block.window_attention is None
    block.train()
    block.expose_attention = True
    block.window_radius = 1
    out_train = block(x)
    window, grid = block.pop_attention()
    assert grid == spatial and window.shape == (2, 1, window_pairs(spatial, 1)[0].numel())
    # A is row-stochastic: every A_ij + A_ji lies in (0, 2)
    assert window.min() > 0 and window.max() < 2
    assert torch.allclose(out_train, out_eval, atol=1e-5)


def test_attention_stage_choice_and_refusal():
    acdc_2d = [[1, 1]] + [[2, 2]] * 5                                  # the ACDC plans of nnU-Net 2.8.1
    assert choose_attention_stage([256, 224], acdc_2d, batch_size=56) == 2       # 64 x 56 tokens, as the paper
    assert choose_attention_stage([512, 512], [[1, 1]] + [[2, 2]] * 6, batch_size=12) == 3   # 128^2 -> 64^2
    acdc_3d = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert choose_attention_stage([10, 256, 224], acdc_3d, batch_size=6) == 3    # 5 x 32 x 28
    assert choose_attention_stage([128, 128, 128], [[1, 1, 1]] + [[2, 2, 2]] * 5, batch_size=2) == 3
    with pytest.raises(UserFacingError, match=r"Configuration '3d_fullres'.*no encoder stage.*3d_lowres"):
        choose_attention_stage([256, 256, 256], [[1, 1, 1], [2, 2, 2], [2, 2, 2]], batch_size=2,
                               configuration="3d_fullres")


def plans_and_managers(root, name):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = root / "nnUNet_preprocessed" / name
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False
    pm = PlansManager(plans)
    return plans, load_json(str(pre / "dataset.json")), pm, pm.get_configuration("2d")


def test_network_matches_stock_structure(nnunet_paths):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    _, _, pm, cm = plans_and_managers(*nnunet_paths)
    torch.manual_seed(0)
    ours = nnUNetTrainerAttenScribble.build_network_architecture(pm, cm, 1, 4, enable_deep_supervision=True)
    stock = nnUNetTrainer.build_network_architecture(pm, cm, 1, 4, enable_deep_supervision=True)
    assert type(ours) is type(stock)
    host = ours.encoder.stages[2][-1]
    assert type(host) is type(stock.encoder.stages[2][-1])              # no class changed
    assert isinstance(host.convs[-1], SpatialSelfAttention) and len(host.convs) == len(stock.encoder.stages[2][-1].convs) + 1
    ours_sd, stock_sd = ours.state_dict(), stock.state_dict()
    extra = set(ours_sd) - set(stock_sd)
    block_keys = f"encoder.stages.2.{len(ours.encoder.stages[2]) - 1}.convs.{len(host.convs) - 1}."  # (decoder.)encoder...
    assert set(stock_sd) <= set(ours_sd) and extra and all(block_keys in k for k in extra)
    assert all(ours_sd[k].shape == v.shape for k, v in stock_sd.items())
    missing = ours.load_state_dict(stock_sd, strict=False).missing_keys   # stock weights load into ours
    assert set(missing) == extra
    x = torch.randn(2, 1, *cm.patch_size)
    for ds in (True, False):
        ours.decoder.deep_supervision = stock.decoder.deep_supervision = ds
        ours.eval(), stock.eval()
        with torch.no_grad():
            a, b = ours(x), stock(x)
        a, b = (a, b) if ds else ([a], [b])
        assert [t.shape for t in a] == [t.shape for t in b]
    assert find_attention_block(ours).window_attention is None   # nothing kept at inference
    assert ours.compute_conv_feature_map_size(cm.patch_size) > stock.compute_conv_feature_map_size(cm.patch_size)


def test_graft_into_residual_encoder_unet():
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from dynamic_network_architectures.building_blocks.residual import StackedResidualBlocks

    from nnunet_scribble.networks.attention import attach_attention

    net = ResidualEncoderUNet(1, 4, [4, 8, 16, 16], torch.nn.Conv2d, 3, [1, 2, 2, 2], [1, 1, 1, 1], 3, [1, 1, 1],
                              True, torch.nn.InstanceNorm2d, {"affine": True}, None, None, torch.nn.LeakyReLU,
                              {"inplace": True}, deep_supervision=True)
    stock_keys = set(net.state_dict())
    block = attach_attention(net, 2)
    assert type(net.encoder.stages[2]) is StackedResidualBlocks and block.channels == 16
    assert net.encoder.stages[2].blocks[-1] is block
    n = len(net.encoder.stages[2].blocks) - 1
    assert {k for k in net.state_dict() if k not in stock_keys} == {
        k for k in net.state_dict() if f"encoder.stages.2.blocks.{n}." in k}
    assert [o.shape[-1] for o in net(torch.randn(2, 1, 32, 32))] == [32, 16, 8]
    assert net.compute_conv_feature_map_size((32, 32)) > 0


@pytest.mark.parametrize("name", ["nnUNetTrainerAttenScribble", "nnUNetTrainerAttenScribble_5epochs",
                                  "nnUNetTrainerAttenScribbleStage3_1epoch"])
def test_trainer_found_through_ext_trainer_path(monkeypatch, name):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", TRAINERS_PATH)
    cls = recursive_find_trainer_class_by_name(name)
    assert cls.__module__ == "nnunet_scribble.training.attenscribble"
    assert issubclass(cls, nnUNetTrainerAttenScribble)


def test_train_step_logs_three_terms(nnunet_paths):
    root, name = nnunet_paths
    plans, dataset_json, _, _ = plans_and_managers(root, name)
    trainer = nnUNetTrainerAttenScribble_2epochs(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    block = find_attention_block(trainer.network)
    assert not any("similarity" in k for k in trainer.network.state_dict())   # trainer-owned, not in the network
    before = trainer.similarity.weight.detach().clone()
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    trainer.on_train_epoch_start()
    out = trainer.train_step(next(trainer.dataloader_train))
    terms = {k: float(v) for k, v in out.items() if k.startswith("train_term_")}
    assert set(terms) == {"train_term_partial", "train_term_mcrf", "train_term_attention"}
    assert all(np.isfinite(v) for v in terms.values()) and terms["train_term_mcrf"] > 0
    assert float(out["loss"]) == pytest.approx(sum(terms.values()), rel=1e-5)
    assert block.window_attention is None                        # released after the loss
    assert not torch.equal(before, trainer.similarity.weight)    # the conv1x1 is trained
    assert torch.equal(trainer.extra_checkpoint_state()["attenscribble_similarity"]["weight"], trainer.similarity.weight)


def test_ramp_up_scales_both_regularizers_in_the_loss(nnunet_paths):
    """At epoch 0 of 2 (ramp over 0.2 epochs) both regularizer terms are exp(-5) of their full weight."""
    root, name = nnunet_paths
    plans, dataset_json, _, _ = plans_and_managers(root, name)
    trainer = nnUNetTrainerAttenScribble_2epochs(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    batch = next(trainer.dataloader_train)
    scribbles = [t[:, :1] for t in batch["target"]]
    extras = [t[:, 1:] for t in batch["target"]]
    trainer.network.train()
    with torch.no_grad():
        ramped = trainer.compute_loss_terms(batch["data"], scribbles, extras)
        trainer.regularizer_rampup_fraction = 0.0
        full = trainer.compute_loss_terms(batch["data"], scribbles, extras)
    assert float(ramped["partial"]) == pytest.approx(float(full["partial"]), rel=1e-5)
    for term in ("mcrf", "attention"):
        assert float(full[term]) > 0
        assert float(ramped[term]) == pytest.approx(math.exp(-5) * float(full[term]), rel=1e-4)


def test_regularizer_rampup_factor():
    """exp(-5 (1 - t)^2), t = epoch / (fraction * epochs), capped at 1; fraction 0 switches it off."""
    from types import SimpleNamespace

    def factor(epoch, fraction=0.1, epochs=100):
        state = SimpleNamespace(regularizer_rampup_fraction=fraction, num_epochs=epochs, current_epoch=epoch)
        return nnUNetTrainerAttenScribble.regularizer_factor(state)

    assert factor(0) == pytest.approx(math.exp(-5))
    assert factor(5) == pytest.approx(math.exp(-1.25))             # t = 0.5
    assert factor(10) == 1.0 and factor(99) == 1.0
    assert factor(0, fraction=0.0) == 1.0
    assert factor(1, epochs=40) == pytest.approx(math.exp(-5 * 0.75 ** 2))   # the 1000-it budget: 4 ramp epochs


@pytest.mark.slow
def test_demo_end_to_end_through_the_cli(tmp_path):
    """Plan/preprocess, train 1 epoch, stock nnUNetv2_predict (rebuilds the attention network), evaluate."""
    out = tmp_path / "demo"
    trainer = "nnUNetTrainerAttenScribble_1epoch"
    run_demo_cli(out, trainer)
    summary = json.loads((out / "predictions" / f"{trainer}_fold0" / "summary_dense.json").read_text())
    assert summary["n_cases"] == 2 and summary["mean"]["Dice"] > 0.3
    fold = out / "nnUNet_results" / "Dataset990_ScribbleDemo" / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "self-attention after encoder stage 2" in log and "mcrf" in log and "attention" in log
