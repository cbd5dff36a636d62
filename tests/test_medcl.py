"""MedCL: loss terms against hand-computed values, the mixing rules, the training-only head, train steps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_scribble.losses.medcl import (anatomy_consistency_loss, assignment_loss, category_loss,
                                          class_subset_maps, cluster_loss, mix_consistency_loss,
                                          sample_class_subsets, sinkhorn, sinkhorn_plan)
from nnunet_scribble.targets.medcl_mix import (downsample_like, inter_mix, intra_mix, intra_mix_scribbles,
                                               random_boxes, rotate, rotation_theta)
from nnunet_scribble.geometry import rotation_plane

from conftest import make_trainer, run_demo_cli


# ---- losses -------------------------------------------------------------------------------------
def test_mix_consistency_loss_by_hand():
    # one sample, 2 classes x 2 voxels
    y1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    y2 = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    beta = torch.tensor([0.25])
    target = 0.25 * y1 + 0.75 * y2                     # [[.25,.75],[.75,.25]]
    y12 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])     # = y1
    # cos = (0.25 + 0.25) / (sqrt(2) * sqrt(4 * ... )) : dot = .25+.25 = .5; |y12| = sqrt2; |t| = sqrt(2*(.0625+.5625))
    cos = 0.5 / (math.sqrt(2) * math.sqrt(2 * (0.0625 + 0.5625)))
    assert float(mix_consistency_loss(y12, y1, y2, beta)) == pytest.approx(1 - cos, abs=1e-6)
    # the mixed prediction equal to the mix of predictions: zero loss
    assert float(mix_consistency_loss(target, y1, y2, beta)) == pytest.approx(0.0, abs=1e-6)


def test_mix_consistency_gradients_reach_both_sides():
    y1 = torch.rand(2, 3, 4, requires_grad=True)
    y12 = torch.rand(2, 3, 4, requires_grad=True)
    mix_consistency_loss(y12, y1, torch.flip(y1, (0,)), torch.tensor([0.3, 0.6])).backward()
    assert y1.grad.abs().sum() > 0 and y12.grad.abs().sum() > 0


def test_sinkhorn_marginals_are_uniform():
    scores = torch.randn(12, 5, generator=torch.Generator().manual_seed(0)) * 0.05   # scores / eps ~ 1
    plan = sinkhorn_plan(scores, eps=0.05, iterations=3)
    assert torch.allclose(plan.sum(1), torch.full((12,), 1 / 12), atol=1e-6)     # last step: exact
    assert torch.allclose(plan.sum(0), torch.full((5,), 1 / 5), rtol=0.5)        # approximately after 3 steps
    plan50 = sinkhorn_plan(scores, eps=0.05, iterations=200)
    assert torch.allclose(plan50.sum(0), torch.full((5,), 1 / 5), atol=1e-4)
    q = sinkhorn(scores)
    assert torch.allclose(q.sum(1), torch.ones(12), atol=1e-6)


def test_sinkhorn_by_hand_two_by_two():
    # exp(scores / eps) with eps = 1: [[e, 1], [1, e]] is symmetric: every iteration leaves it doubly uniform
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    plan = sinkhorn_plan(scores, eps=1.0, iterations=1)
    e = math.e
    expected = torch.tensor([[e, 1.0], [1.0, e]]) / (2 * (e + 1))
    assert torch.allclose(plan, expected, atol=1e-6)
    q = sinkhorn(scores, eps=1.0, iterations=1)
    assert torch.allclose(q, torch.tensor([[e, 1.0], [1.0, e]]) / (e + 1), atol=1e-6)


def test_assignment_loss_by_hand():
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss, p = assignment_loss(scores, eps=1.0, iterations=1, temperature=1.0, per_sample_sum=False)
    e = math.e
    q = torch.tensor([[e, 1.0], [1.0, e]]) / (e + 1)
    log_p = torch.log_softmax(scores.detach(), 1)
    assert float(loss) == pytest.approx(float(-(q * log_p).mean()), abs=1e-6)
    assert torch.allclose(p, log_p.exp(), atol=1e-6)
    loss.backward()
    assert scores.grad is not None


def test_cluster_loss_two_classes_two_samples_by_hand():
    # codes (B=2, C=2, d=2): class 0 along x, class 1 along y, sample 2 of class 0 tilted by 90 deg
    codes = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                          [[0.0, 1.0], [0.0, 1.0]]])
    c0 = torch.tensor([0.5, 0.5]); c1 = torch.tensor([0.0, 1.0])
    cos = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm()))
    compact = (math.exp(cos(torch.tensor([1.0, 0.0]), c0)) + math.exp(cos(torch.tensor([0.0, 1.0]), c0))
               + 2 * math.exp(cos(torch.tensor([0.0, 1.0]), c1)))
    discriminate = 2 * math.exp(cos(c0, c1))
    expected = -math.log(compact / (compact + discriminate))
    assert float(cluster_loss(codes, tau=1.0)) == pytest.approx(expected, abs=1e-6)


def test_cluster_loss_prefers_compact_separated_clusters():
    good = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    bad = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    assert float(cluster_loss(good)) < float(cluster_loss(bad))


def test_anatomy_consistency_code_term_by_hand():
    class_codes = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])   # B=1, C=3
    subset_codes = torch.tensor([[[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])                  # u for {1,2}, {1,2} again
    subsets = [[1, 2], [1, 2]]
    # first subset: code = sum of its classes' codes -> 0; second: cos([1,0,0], [0,1,1]) = 0 -> 1
    assert float(anatomy_consistency_loss(class_codes, subset_codes, subsets)) == pytest.approx(1.0, abs=1e-6)
    assert float(anatomy_consistency_loss(class_codes, subset_codes[:, :0], [])) == 0.0


def test_category_loss_with_and_without_the_class_present():
    # one voxel, 3 classes: y = [0.5, 0.3, 0.2]
    y = torch.tensor([[[0.5], [0.3], [0.2]]])
    all_present = torch.tensor([[True, True, True]])
    assert float(category_loss(y, all_present)) == pytest.approx(-math.log(1.0), abs=1e-6)
    without_2 = torch.tensor([[True, True, False]])
    assert float(category_loss(y, without_2)) == pytest.approx(-math.log(0.8), abs=1e-6)
    only_0 = torch.tensor([[True, False, False]])
    assert float(category_loss(y, only_0)) == pytest.approx(-math.log(0.5), abs=1e-6)
    # a sample without any scribbled class is left out
    y2 = torch.cat([y, y])
    rows = torch.tensor([[True, False, False], [False, False, False]])
    assert float(category_loss(y2, rows)) == pytest.approx(-math.log(0.5), abs=1e-6)
    assert float(category_loss(y2, torch.zeros(2, 3, dtype=torch.bool))) == 0.0


def test_class_subsets_and_maps():
    rng = np.random.default_rng(0)
    subsets = sample_class_subsets([1, 2, 3], rng)
    assert [len(s) for s in subsets] == [2, 3] and subsets[1] == [1, 2, 3]
    assert set(subsets[0]) <= {1, 2, 3}
    y = torch.rand(2, 4, 5, 5)
    u = class_subset_maps(y, [[1, 3]])
    assert torch.allclose(u[:, 0], y[:, 1] + y[:, 3])
    assert sample_class_subsets([1], rng) == []


# ---- mixing -------------------------------------------------------------------------------------
def test_rotation_by_90_degrees_matches_rot90():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = rotate(x, torch.tensor([math.pi / 2]), (0, 1), "nearest")
    assert torch.equal(out, torch.rot90(x, 1, (2, 3))) or torch.equal(out, torch.rot90(x, -1, (2, 3)))
    theta0 = rotation_theta((8, 4), torch.tensor([0.0]), (0, 1))
    assert torch.allclose(theta0, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))


def test_rotation_keeps_a_circle_on_a_non_square_patch():
    yy, xx = np.mgrid[:32, :64]
    disk = torch.from_numpy(((yy - 15.5) ** 2 + (xx - 31.5) ** 2 < 8 ** 2).astype(np.float32))[None, None]
    out = rotate(disk, torch.tensor([math.radians(30)]), (0, 1), "nearest")
    assert abs(float(out.sum()) - float(disk.sum())) / float(disk.sum()) < 0.05
    assert float((out * disk).sum()) / float(disk.sum()) > 0.95


def test_3d_rotation_leaves_the_low_resolution_axis_alone():
    assert rotation_plane([5.0, 1.0, 1.0]) == (1, 2)
    assert rotation_plane([1.0, 1.0, 4.0]) == (0, 1)
    assert rotation_plane([1.0, 1.0]) == (0, 1)
    x = torch.zeros(1, 1, 4, 8, 8)
    x[0, 0, 1] = 1.0                   # one full slice along axis 0
    out = rotate(x, torch.tensor([0.4]), (1, 2), "nearest")
    assert out[0, 0, [0, 2, 3]].abs().sum() == 0 and out[0, 0, 1].sum() > 0


def test_intra_mix_keeps_the_box_and_mixes_the_rest():
    rng = np.random.default_rng(3)
    x = torch.randn(2, 1, 32, 32)
    s = torch.randint(0, 3, (2, 1, 32, 32)).float()
    x1, s1, d = intra_mix(x, s, 3, (0, 1), 15.0, (0.5, 0.9), (0.5, 0.5), rng)
    box = d["box"]
    assert torch.equal(x1[box], x[box]) and torch.equal(s1[box], s[box])
    rot = rotate(x, d["angles"], (0, 1), "bilinear")
    w = d["weights"].float().view(-1, 1, 1, 1)
    expected = w * x + (1 - w) * rot
    assert torch.allclose(x1[~box], expected.expand_as(x1)[~box], atol=1e-5)
    fractions = box.float().mean((1, 2, 3))
    assert bool(((fractions > 0.2) & (fractions < 0.85)).all())


def test_intra_mix_scribble_rule():
    s = torch.tensor([[[[0.0, 1.0, 2.0, 4.0]]]])
    rot = torch.tensor([[[[0.0, 2.0, 2.0, 4.0]]]])
    box = torch.tensor([[[[False, True, False, False]]]])
    out = intra_mix_scribbles(s, rot, box, ignore_label=4)
    # in the box: kept (1); outside: kept where equal (0, 2, ignore stays ignore)
    assert out.tolist() == [[[[0.0, 1.0, 2.0, 4.0]]]]
    out2 = intra_mix_scribbles(s, rot, torch.zeros_like(box), ignore_label=4)
    assert out2.tolist() == [[[[0.0, 4.0, 2.0, 4.0]]]]


def test_intra_mix_marks_voxels_rotated_in_from_outside_as_ignore():
    rng = np.random.default_rng(0)
    s = torch.zeros(1, 1, 16, 16)                      # background scribbled everywhere
    x = torch.zeros(1, 1, 16, 16)
    _, s1, d = intra_mix(x, s, 9, (0, 1), 45.0, (0.5, 0.5), (0.5, 0.5), rng)
    corners = s1[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    if abs(float(d["angles"][0])) > math.radians(10):
        assert bool((corners == 9).all())


def test_inter_mix_partner_is_the_reversed_batch():
    rng = np.random.default_rng(1)
    x = torch.randn(3, 1, 4, 4)
    x12, b = inter_mix(x, (0.5, 0.5), rng)
    w = b.float().view(-1, 1, 1, 1)
    assert torch.allclose(x12, w * x + (1 - w) * x.flip(0), atol=1e-6)


def test_random_boxes_sizes():
    rng = np.random.default_rng(2)
    boxes = random_boxes((50, 1, 20, 10), (0.5, 0.9), rng)
    for k in range(50):
        rows, cols = boxes[k, 0].any(1).sum(), boxes[k, 0].any(0).sum()
        assert 10 <= rows <= 18 and 5 <= cols <= 9
        assert int(boxes[k].sum()) == int(rows * cols)


def test_downsample_like_matches_nnunet_nearest():
    s = torch.randint(0, 4, (2, 1, 16, 16)).float()
    targets = [torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 8, 8)]
    out = downsample_like(s, targets)
    assert out[0] is s and out[1].shape == (2, 1, 8, 8)
    assert torch.equal(out[1], torch.nn.functional.interpolate(s, [8, 8], mode="nearest-exact"))


# ---- trainer ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_step_logs_every_term_and_the_head_is_training_only(nnunet_paths, one_torch_thread, tmp_path):
    from nnunet_scribble.training.medcl import HEAD_KEY, nnUNetTrainerMedCL

    root, name = nnunet_paths
    trainer = make_trainer(root, name, nnUNetTrainerMedCL)
    trainer.on_train_start()
    batch = next(trainer.dataloader_train)
    head_before = [p.detach().clone() for p in trainer.anatomy_head.parameters()]
    out = trainer.train_step(batch)
    for term in ("partial", "mix", "assignment", "cluster", "anatomy_consistency", "category"):
        assert np.isfinite(out[f"train_term_{term}"]), term
    assert any(not torch.equal(a, b) for a, b in zip(head_before, trainer.anatomy_head.parameters()))
    # every case of the demo has all classes scribbled
    assert all(v.all() for v in trainer._case_classes.values())
    # the prediction network has no head parameters; the checkpoint carries the head separately
    ckpt = tmp_path / "ckpt.pth"
    trainer.save_checkpoint(str(ckpt))
    loaded = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert HEAD_KEY in loaded and set(loaded["network_weights"]) == set(trainer.network.state_dict())
    assert not any(k.startswith("mlp") for k in loaded["network_weights"])
    fresh = make_trainer(root, name, nnUNetTrainerMedCL)
    fresh.load_checkpoint(str(ckpt))
    for a, b in zip(fresh.anatomy_head.parameters(), trainer.anatomy_head.parameters()):
        assert torch.equal(a.cpu(), b.cpu())


@pytest.mark.slow
def test_no_cluster_variant_has_no_head(nnunet_paths, one_torch_thread):
    from nnunet_scribble.training.medcl import nnUNetTrainerMedCL_noCluster, nnUNetTrainerMedCL_noMix

    root, name = nnunet_paths
    trainer = make_trainer(root, name, nnUNetTrainerMedCL_noCluster)
    trainer.initialize()
    assert trainer.anatomy_head is None
    trainer = make_trainer(root, name, nnUNetTrainerMedCL_noMix)
    trainer.on_train_start()
    out = trainer.train_step(next(trainer.dataloader_train))
    assert "train_term_mix" not in out and "train_term_cluster" in out


@pytest.mark.slow
def test_medcl_demo_through_the_cli(tmp_path):
    proc = run_demo_cli(tmp_path / "demo", "nnUNetTrainerMedCL_5epochs")
    assert "Dice" in proc.stdout
