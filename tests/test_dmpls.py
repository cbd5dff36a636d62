"""DMPLS: loss pieces (hand values), dual-decoder network, trainer (2D dataset, 3D plans), prediction path."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

from conftest import run_demo_cli
from nnunet_scribble.losses.dmpls import mixed_pseudo_label, sample_mixing_weight, soft_dice_loss
from nnunet_scribble.networks.dual_decoder import DualDecoderUNet, build_dual_decoder_network, feature_dropout
from nnunet_scribble.networks.outputs import full_resolution

UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
REQ_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]
IGNORE = 4


def arch_kwargs(dim: int, resenc: bool = False) -> dict:
    k = [3] * dim
    kw = dict(n_stages=3, features_per_stage=[4, 8, 16], conv_op=f"torch.nn.modules.conv.Conv{dim}d",
              kernel_sizes=[k] * 3, strides=[[1] * dim, [2] * dim, [2] * dim],
              n_conv_per_stage_decoder=[1, 1], conv_bias=True,
              norm_op=f"torch.nn.modules.instancenorm.InstanceNorm{dim}d", norm_op_kwargs={"eps": 1e-5, "affine": True},
              dropout_op=None, dropout_op_kwargs=None, nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True})
    kw["n_blocks_per_stage" if resenc else "n_conv_per_stage"] = [1, 1, 1]
    return kw


def stock_network(dim, resenc=False, deep_supervision=True, classes=3):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    return get_network_from_plans(RESENC if resenc else UNET, arch_kwargs(dim, resenc), REQ_IMPORT, 1, classes,
                                  deep_supervision=deep_supervision)


def dual_network(dim, resenc=False, deep_supervision=True, **kw):
    return build_dual_decoder_network(RESENC if resenc else UNET, arch_kwargs(dim, resenc), REQ_IMPORT, 1, 3,
                                      deep_supervision=deep_supervision, **kw)


# ---- mixing and pseudo label ------------------------------------------------------------------
def test_mixing_weight_is_uniform_and_reproducible():
    draws = [sample_mixing_weight(torch.Generator().manual_seed(3)) for _ in range(2)]
    assert draws[0] == draws[1]
    g = torch.Generator().manual_seed(0)
    many = np.array([sample_mixing_weight(g) for _ in range(4000)])
    assert many.min() >= 0 and many.max() < 1
    assert abs(many.mean() - 0.5) < 0.02 and abs((many < 0.25).mean() - 0.25) < 0.03


def test_mixed_pseudo_label_hand_values():
    # 1 sample, 3 classes, 1x2 voxels: (class probabilities of voxel 0, voxel 1)
    y1 = torch.tensor([[0.6, 0.2], [0.3, 0.5], [0.1, 0.3]]).reshape(1, 3, 1, 2)
    y2 = torch.tensor([[0.1, 0.4], [0.2, 0.1], [0.7, 0.5]]).reshape(1, 3, 1, 2)
    # a=0.75: v0 = (.475, .275, .25) -> 0; v1 = (.25, .40, .35) -> 1
    assert mixed_pseudo_label(y1, y2, 0.75).flatten().tolist() == [0, 1]
    # a=0.25: v0 = (.225, .225, .55) -> 2; v1 = (.35, .20, .45) -> 2
    assert mixed_pseudo_label(y1, y2, 0.25).flatten().tolist() == [2, 2]
    assert mixed_pseudo_label(y1, y2, 1.0).flatten().tolist() == [0, 1]    # = argmax y1
    assert mixed_pseudo_label(y1, y2, 0.0).flatten().tolist() == [2, 2]    # = argmax y2


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_pseudo_label_shape_dtype_and_detached(spatial):
    logits1 = torch.randn(2, 4, *spatial, requires_grad=True)
    logits2 = torch.randn(2, 4, *spatial, requires_grad=True)
    y1, y2 = logits1.softmax(1), logits2.softmax(1)
    pl = mixed_pseudo_label(y1, y2, 0.3)
    assert pl.shape == (2, 1, *spatial) and pl.dtype == torch.int64 and not pl.requires_grad
    assert torch.equal(pl, (0.3 * y1 + 0.7 * y2).argmax(1, keepdim=True))
    with pytest.raises(ValueError, match="mixing weight"):
        mixed_pseudo_label(y1, y2, 1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        mixed_pseudo_label(y1, y2[:, :3], 0.5)


# ---- Dice to a label map ------------------------------------------------------------------------
def two_class_probs(p1):
    p1 = torch.tensor(p1, dtype=torch.float32)
    return torch.stack([1 - p1, p1]).reshape(1, 2, 1, -1)


def test_dice_hand_values():
    probs = two_class_probs([0.9, 0.2, 0.6, 0.1])          # class 0: 0.1, 0.8, 0.4, 0.9
    labels = torch.tensor([1, 0, 1, 0]).reshape(1, 1, 1, 4)
    # squared: class 1: 2*1.5 / (0.81+0.04+0.36+0.01 + 2); class 0: 2*1.7 / (0.01+0.64+0.16+0.81 + 2)
    expected = 1 - (3.0 / 3.22 + 3.4 / 3.62) / 2
    assert soft_dice_loss(probs, labels, smooth=0) == pytest.approx(expected, abs=1e-6)
    assert soft_dice_loss(probs, labels[:, 0], smooth=0) == pytest.approx(expected, abs=1e-6)   # (B, *spatial)
    # linear denominators: class 1: 3 / (1.8 + 2); class 0: 3.4 / (2.2 + 2)
    assert soft_dice_loss(probs, labels, smooth=0, squared_pred=False) == pytest.approx(
        1 - (3.0 / 3.8 + 3.4 / 4.2) / 2, abs=1e-6)
    # background left out
    assert soft_dice_loss(probs, labels, smooth=0, include_background=False) == pytest.approx(1 - 3.0 / 3.22, abs=1e-6)
    # ignored voxel 2 leaves every sum: class 1: 2*0.9 / (0.86 + 1); class 0: 2*1.7 / (1.46 + 2)
    ignored = torch.tensor([1, 0, 9, 0]).reshape(1, 1, 1, 4)
    assert soft_dice_loss(probs, ignored, smooth=0, ignore_index=9) == pytest.approx(
        1 - (1.8 / 1.86 + 3.4 / 3.46) / 2, abs=1e-6)
    # perfect prediction -> 0
    assert soft_dice_loss(two_class_probs([1, 0, 1, 0]), labels) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="must lie in"):
        soft_dice_loss(probs, ignored)


def test_dice_batch_versus_per_sample():
    a = two_class_probs([0.9, 0.2, 0.6, 0.1])
    b = two_class_probs([0.0, 0.0, 0.0, 0.0])                 # sample B: all background, predicted perfectly
    probs = torch.cat([a, b])
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]]).reshape(2, 1, 1, 4)
    s = 1e-5
    d_a1, d_a0 = (3 + s) / (3.22 + s), (3.4 + s) / (3.62 + s)
    # per sample: sample B's absent class 1 scores (0 + s) / (0 + s) = 1
    assert soft_dice_loss(probs, labels, batch_dice=False) == pytest.approx(1 - (d_a1 + d_a0 + 1 + 1) / 4, abs=1e-6)
    # batch: class 1 sums only see sample A; class 0: 2*(1.7+4) / (1.62+4 + 2+4)
    assert soft_dice_loss(probs, labels, batch_dice=True) == pytest.approx(
        1 - ((3 + s) / (3.22 + s) + (11.4 + s) / (11.62 + s)) / 2, abs=1e-6)


def test_dice_gradient_reaches_probabilities_only():
    logits = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4))
    soft_dice_loss(logits.softmax(1), labels).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


DDP_WORKER = """
import sys, torch, torch.distributed as dist
from nnunet_scribble.losses.dmpls import soft_dice_loss
rank, world, init_file, data_file, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
data = torch.load(data_file, weights_only=True)
local = data["probs"][rank * 2:(rank + 1) * 2].clone().requires_grad_(True)
loss = soft_dice_loss(local, data["labels"][rank * 2:(rank + 1) * 2], ddp=True)
loss.backward()
torch.save({"loss": loss.detach(), "grad": local.grad}, out_file)
dist.destroy_process_group()
"""


def test_batch_dice_under_ddp_equals_global_batch(tmp_path):
    """Two gloo ranks (CPU processes) with half the batch each compute the Dice of the whole batch."""
    torch.manual_seed(0)
    probs = torch.randn(4, 3, 6, 6).softmax(1)
    labels = torch.randint(0, 3, (4, 1, 6, 6))
    full = probs.clone().requires_grad_(True)
    expected = soft_dice_loss(full, labels)
    expected.backward()
    torch.save({"probs": probs, "labels": labels}, tmp_path / "data.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", DDP_WORKER, str(rank), "2", str(tmp_path / "init"),
                               str(tmp_path / "data.pt"), str(tmp_path / f"rank{rank}.pt")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    for proc in procs:
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, output[-2000:]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
        # AllGatherGrad sums the identical per-rank gradients; DDP then averages over the 2 ranks
        assert torch.allclose(got["grad"] / 2, full.grad[rank * 2:(rank + 1) * 2], atol=1e-6)


# ---- network --------------------------------------------------------------------------------------
def test_feature_dropout():
    x = torch.ones(4, 32, 3, 3, 3)
    y = feature_dropout(x, 0.5, channelwise=True)
    per_channel = y.flatten(2)
    assert torch.all(per_channel.amax(2) == per_channel.amin(2))       # whole channels kept or dropped
    assert set(y.unique().tolist()) <= {0.0, 2.0} and 0.3 < (y == 0).float().mean() < 0.7
    e = feature_dropout(x, 0.5, channelwise=False)
    assert not torch.all(e.flatten(2).amax(2) == e.flatten(2).amin(2))
    assert feature_dropout(x, 0.5, training=False) is x and feature_dropout(x, 0.0) is x


@pytest.mark.parametrize("dim,resenc", [(2, False), (3, False), (2, True)])
def test_dual_decoder_train_and_eval_forward(dim, resenc):
    torch.manual_seed(0)
    net = dual_network(dim, resenc)
    stock = stock_network(dim, resenc)
    stock.load_state_dict(net.main_state_dict(), strict=True)     # the main branch has the stock keys
    assert isinstance(net, DualDecoderUNet) and net.aux_decoder.encoder is net.encoder
    assert any(k.startswith("aux_decoder.") for k in net.state_dict())
    calls = []
    net.aux_decoder.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 1, *([16] * dim))

    net.train()
    main, aux = net(x)
    assert [t.shape for t in main] == [t.shape for t in aux] == [(2, 3, *[16] * dim), (2, 3, *[8] * dim)]
    assert calls == [1]
    main2, aux2 = net(x)
    assert torch.equal(main[0], main2[0])            # main branch: no dropout
    assert not torch.allclose(aux[0], aux2[0])       # aux branch: feature dropout differs per call

    net.eval()
    stock.eval()
    calls.clear()
    with torch.no_grad():
        out, ref = net(x), stock(x)
    assert calls == []                               # aux decoder not run in eval mode
    assert isinstance(out, list) and len(out) == len(ref)
    for o, r in zip(out, ref):
        assert o.shape == r.shape and torch.allclose(o, r, atol=1e-6)


def test_deep_supervision_toggling_reaches_both_decoders():
    net = dual_network(2).train()
    x = torch.randn(1, 1, 16, 16)
    net.decoder.deep_supervision = False            # what nnU-Net's set_deep_supervision_enabled does
    main, aux = net(x)
    assert torch.is_tensor(main) and torch.is_tensor(aux) and main.shape == aux.shape == (1, 3, 16, 16)
    net.set_deep_supervision_enabled(True)
    main, aux = net(x)
    assert isinstance(main, list) and isinstance(aux, list) and len(main) == len(aux) == 2
    assert net.aux_decoder.deep_supervision and net.deep_supervision
    net.eval()
    net.set_deep_supervision_enabled(False)
    with torch.no_grad():
        assert net(x).shape == (1, 3, 16, 16)
    assert full_resolution([main[0], main[1]]) is main[0] and full_resolution(main[0]) is main[0]


def test_aux_loss_trains_encoder_and_aux_decoder_not_main_decoder():
    net = dual_network(2, aux_dropout_p=0.0).train()
    _, aux = net(torch.randn(2, 1, 16, 16))
    aux[0].sum().backward()
    assert all(p.grad is None for p in net.decoder.stages.parameters())
    assert all(p.grad is not None for p in net.aux_decoder.stages.parameters())
    assert all(p.grad is not None for p in net.encoder.parameters())


# ---- trainer -----------------------------------------------------------------------------------------
def make_trainer(root, name, cls=None, configuration="2d", plans_edit=None):
    from nnunet_scribble.training.dmpls import nnUNetTrainerDMPLS_2epochs
    pre = root / "nnUNet_preprocessed" / name
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False
    if plans_edit:
        plans_edit(plans)
    return (cls or nnUNetTrainerDMPLS_2epochs)(plans, configuration, 0, load_json(str(pre / "dataset.json")),
                                               device=torch.device("cpu"))


def test_trainer_train_step_logs_the_four_terms(nnunet_paths):
    from nnunet_scribble.training.loss_terms import logged_terms
    trainer = make_trainer(*nnunet_paths)
    trainer.initialize()
    trainer.set_deep_supervision_enabled(True)
    assert isinstance(trainer.network, DualDecoderUNet) and trainer.network.aux_decoder.deep_supervision
    dl_tr, _ = trainer.get_dataloaders()
    trainer.on_train_epoch_start()
    out = trainer.train_step(next(dl_tr))
    terms = {k[len("train_term_"):]: float(v) for k, v in out.items() if k.startswith("train_term_")}
    assert set(terms) == {"partial_main", "partial_aux", "pl_dice_main", "pl_dice_aux"}
    assert all(np.isfinite(v) for v in terms.values())
    assert sum(terms.values()) == pytest.approx(float(out["loss"]), rel=1e-5)
    trainer.on_train_epoch_end([out])
    assert set(logged_terms(trainer.logger)) == set(terms)


def test_trainer_loss_weights_and_pseudo_label(nnunet_paths):
    """compute_loss_terms = 0.5 L_part per decoder + 0.25 Dice(y, PL) per decoder, PL from the drawn a."""
    trainer = make_trainer(*nnunet_paths)
    trainer.initialize()
    torch.manual_seed(0)
    main = [torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8)]
    aux = [torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8)]
    scribbles = [torch.randint(0, 5, (2, 1, 16, 16)), torch.randint(0, 5, (2, 1, 8, 8))]
    trainer.loss.weight_factors = (2 / 3, 1 / 3)    # tiny outputs: 2 deep-supervision scales
    trainer.dual_forward = lambda data: (main, aux)
    trainer.mixing_generator = torch.Generator().manual_seed(7)
    terms = trainer.compute_loss_terms(None, scribbles, None)
    a = sample_mixing_weight(torch.Generator().manual_seed(7))
    y1, y2 = main[0].softmax(1), aux[0].softmax(1)
    pl = (a * y1 + (1 - a) * y2).argmax(1, keepdim=True)
    assert terms["partial_main"].item() == pytest.approx(0.5 * trainer.loss(main, scribbles).item(), rel=1e-6)
    assert terms["partial_aux"].item() == pytest.approx(0.5 * trainer.loss(aux, scribbles).item(), rel=1e-6)
    assert terms["pl_dice_main"].item() == pytest.approx(0.25 * soft_dice_loss(y1, pl).item(), rel=1e-6)
    assert terms["pl_dice_aux"].item() == pytest.approx(0.25 * soft_dice_loss(y2, pl).item(), rel=1e-6)


def test_pseudo_label_rampup_factor_and_weight(nnunet_paths):
    """_rampup: 0 before 10 % of the epochs, exp(-5 (1 - t)^2) between 10 % and 75 %, then 1; the paper's
    DMPLS has no ramp (factor 1); the PL terms carry the factor."""
    from nnunet_scribble.training.dmpls import nnUNetTrainerDMPLS_rampup_2epochs
    plain = make_trainer(*nnunet_paths)
    assert plain.pseudo_label_factor() == 1.0
    trainer = make_trainer(*nnunet_paths, cls=nnUNetTrainerDMPLS_rampup_2epochs)
    trainer.num_epochs = 40                                  # ramp over epochs 4 .. 30
    expected = {0: 0.0, 3: 0.0, 4: math.exp(-5.0), 17: math.exp(-5 * 0.25), 30: 1.0, 39: 1.0}
    for epoch, value in expected.items():
        trainer.current_epoch = epoch
        assert trainer.pseudo_label_factor() == pytest.approx(value, abs=1e-12)
    trainer.initialize()
    torch.manual_seed(0)
    main, aux = [torch.randn(2, 4, 16, 16)], [torch.randn(2, 4, 16, 16)]
    scribbles = [torch.randint(0, 5, (2, 1, 16, 16))]
    trainer.loss.weight_factors = (1.0,)
    trainer.dual_forward = lambda data: (main, aux)
    trainer.current_epoch = 17
    trainer.mixing_generator = torch.Generator().manual_seed(3)
    ramped = trainer.compute_loss_terms(None, scribbles, None)
    trainer.current_epoch = 30
    trainer.mixing_generator = torch.Generator().manual_seed(3)
    full = trainer.compute_loss_terms(None, scribbles, None)
    for key in ("pl_dice_main", "pl_dice_aux"):
        assert ramped[key].item() == pytest.approx(math.exp(-5 * 0.25) * full[key].item(), rel=1e-6)
    assert ramped["partial_main"].item() == pytest.approx(full["partial_main"].item(), rel=1e-6)


def test_paper_sgd_probe_uses_the_papers_optimizer(nnunet_paths):
    from nnunet_scribble.training.dmpls import nnUNetTrainerDMPLS_paperSGD_2epochs
    trainer = make_trainer(*nnunet_paths, cls=nnUNetTrainerDMPLS_paperSGD_2epochs)
    trainer.initialize()
    group = trainer.optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"], group["lr"]) == (0.9, False, 1e-4, 0.01)
    assert sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]) == \
        sum(p.numel() for p in trainer.network.parameters())          # both decoders are optimised


def add_3d_configuration(plans):
    """A small 3d_fullres configuration (the tiny dataset is 2D; only the network and loss are exercised)."""
    plans["configurations"]["3d_fullres"] = {
        "inherits_from": "2d", "patch_size": [8, 16, 16], "spacing": [1.0, 1.25, 1.25], "batch_size": 2,
        "architecture": {"network_class_name": UNET, "arch_kwargs": arch_kwargs(3), "_kw_requires_import": REQ_IMPORT},
        "batch_dice": False}


def test_trainer_3d_fullres_train_step(nnunet_paths):
    trainer = make_trainer(*nnunet_paths, configuration="3d_fullres", plans_edit=add_3d_configuration)
    trainer.initialize()
    trainer.set_deep_supervision_enabled(True)
    trainer.network.train()
    torch.manual_seed(0)
    scales = trainer._get_deep_supervision_scales()
    assert len(scales) == 2
    seg = torch.full((2, 1, 8, 16, 16), IGNORE, dtype=torch.float32)
    seg[:, :, 4, 4:12, 6] = 1
    seg[:, :, 2, 2, :] = 0
    targets = [F.interpolate(seg, scale_factor=s, mode="nearest") for s in scales]
    out = trainer.train_step({"data": torch.randn(2, 1, 8, 16, 16), "target": targets})
    terms = [float(v) for k, v in out.items() if k.startswith("train_term_")]
    assert len(terms) == 4 and all(np.isfinite(terms)) and sum(terms) == pytest.approx(float(out["loss"]), rel=1e-5)


def test_checkpoint_predicts_with_stock_predictor_main_decoder_only(nnunet_paths, tmp_path):
    """The checkpoint loads through nnU-Net's predictor (build_network_architecture + strict load); the
    predictor's logits are the main decoder's and the aux decoder is never run."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    trainer = make_trainer(*nnunet_paths)
    trainer.initialize()
    model_dir = tmp_path / "model"
    os.makedirs(model_dir / "fold_0")
    save_json(trainer.plans_manager.plans, str(model_dir / "plans.json"))
    save_json(trainer.dataset_json, str(model_dir / "dataset.json"))
    trainer.save_checkpoint(str(model_dir / "fold_0" / "checkpoint_final.pth"))

    predictor = nnUNetPredictor(tile_step_size=1.0, use_gaussian=False, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), (0,), "checkpoint_final.pth")
    assert isinstance(predictor.network, DualDecoderUNet) and not predictor.network.deep_supervision
    calls = []
    predictor.network.aux_decoder.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(1, 1, 80, 80)                     # one 2D case (c, z, y, x) of exactly one patch
    logits = predictor.predict_logits_from_preprocessed_data(x)
    assert calls == [] and logits.shape == (4, 1, 80, 80)
    trainer.network.eval()
    trainer.set_deep_supervision_enabled(False)
    with torch.no_grad():
        expected = trainer.network(x[:, 0][None])   # (1, c, y, x)
    assert torch.allclose(logits[:, 0].float(), expected[0], atol=1e-2, rtol=1e-2)   # predictor keeps fp16 logits


def test_found_through_ext_trainer_path(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_scribble.ext_trainers import TRAINERS_PATH
    from nnunet_scribble.training import dmpls
    monkeypatch.setenv("nnUNet_extTrainer", TRAINERS_PATH)
    for name in ("nnUNetTrainerDMPLS", "nnUNetTrainerDMPLS_1epoch", "nnUNetTrainerDMPLS_5epochs",
                 "nnUNetTrainerDMPLS_3000it"):
        cls = recursive_find_trainer_class_by_name(name)
        assert cls is getattr(dmpls, name) and cls.__module__ == "nnunet_scribble.training.dmpls"
    assert dmpls.nnUNetTrainerDMPLS_5epochs.budget_epochs == 5


# ---- end to end through the CLI ------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_end_to_end_dmpls(tmp_path):
    """Plan/preprocess, 1 epoch of DMPLS, stock nnUNetv2_predict, dense evaluation: the real commands."""
    from nnunet_scribble.demo.run import DATASET_NAME
    trainer = "nnUNetTrainerDMPLS_1epoch"
    out = tmp_path / "demo"
    run_demo_cli(out, trainer)
    summary = json.loads((out / "predictions" / f"{trainer}_fold0" / "summary_dense.json").read_text())
    assert summary["n_cases"] == 2 and np.isfinite(summary["mean"]["Dice"])
    fold = out / "nnUNet_results" / DATASET_NAME / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    for term in ("partial_main", "partial_aux", "pl_dice_main", "pl_dice_aux"):
        assert term in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer
    assert any(k.startswith("aux_decoder.") for k in checkpoint["network_weights"])
