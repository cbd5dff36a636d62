"""Mean Teacher pieces by hand, the labeled share of mixed batches, and the trainer in process."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.losses.mean_teacher import ema_decay, sigmoid_rampup, softmax_mse, teacher_noise, update_ema
from nnunet_scribble.training.labeled_sampling import LabeledShareDataLoader, labeled_count

from conftest import make_trainer


def test_ema_decay_values():
    assert ema_decay(0) == 0.0
    assert ema_decay(1) == pytest.approx(0.5)
    assert ema_decay(9) == pytest.approx(0.9)
    assert ema_decay(99) == pytest.approx(0.99)
    assert ema_decay(5000) == pytest.approx(0.99)
    assert ema_decay(5000, max_decay=0.999) == pytest.approx(0.999)


def test_update_ema_by_hand():
    student, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        student.weight[:] = torch.tensor([[1.0, 2.0]]); student.bias[:] = 4.0
        teacher.weight[:] = torch.tensor([[3.0, 0.0]]); teacher.bias[:] = 0.0
    update_ema(teacher, student, 0.75)
    assert torch.allclose(teacher.weight, torch.tensor([[0.75 * 3 + 0.25 * 1, 0.25 * 2]]))
    assert torch.allclose(teacher.bias, torch.tensor([1.0]))
    update_ema(teacher, student, 0.0)        # step 0: a copy
    assert torch.equal(teacher.weight, student.weight) and torch.equal(teacher.bias, student.bias)


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(50, 10) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0


def test_teacher_noise_is_clamped():
    noise = teacher_noise(torch.zeros(10000), 0.1, 0.2, torch.Generator().manual_seed(0))
    assert float(noise.abs().max()) <= 0.2 + 1e-7
    assert 0.08 < float(noise.std()) < 0.11


def test_softmax_mse_by_hand():
    # one voxel, two classes: softmax([0, 0]) = [.5, .5]; softmax([ln 3, 0]) = [.75, .25]
    student = torch.tensor([[[0.0], [0.0]]], requires_grad=True)
    teacher = torch.tensor([[[math.log(3.0)], [0.0]]])
    loss = softmax_mse(student, teacher)
    assert float(loss) == pytest.approx((0.25 ** 2 + 0.25 ** 2) / 2)
    loss.backward()
    assert student.grad is not None


def test_labeled_count_rejects_bad_shares():
    assert labeled_count(8, 0.5) == 4 and labeled_count(2, 0.1) == 1 and labeled_count(8, 1.0) == 8
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(UserFacingError, match="labeled share"):
            labeled_count(8, bad)


def test_labeled_share_over_many_batches(nnunet_paths):
    """Fixed seed: every batch holds exactly the labeled count, drawn from the labeled cases, at the
    last positions (where nnU-Net's foreground oversampling acts); the rest is uniform over all cases."""
    root, name = nnunet_paths
    trainer = make_trainer(root, name, __import__("nnunet_scribble.training.pce", fromlist=["x"]).nnUNetTrainerPCE)
    trainer.initialize()
    tr_keys, _ = trainer.do_split()
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, tr_keys)
    labeled = tr_keys[:2]
    loader = LabeledShareDataLoader(dataset, 8, trainer.configuration_manager.patch_size,
                                    trainer.configuration_manager.patch_size, trainer.label_manager,
                                    oversample_foreground_percent=0.33, labeled_keys=labeled, labeled_share=0.5)
    np.random.seed(0)
    counts = {k: 0 for k in tr_keys}
    for _ in range(400):
        keys = loader.get_indices()
        assert len(keys) == 8 and set(keys[4:]) <= set(labeled)
        for k in keys[:4]:
            counts[k] += 1
    expected = 400 * 4 / len(tr_keys)
    assert all(abs(c - expected) < 0.35 * expected for c in counts.values())
    # oversampling forces foreground on the last positions only
    assert [loader.get_do_oversample(i) for i in range(8)] == [False] * 5 + [True] * 3


@pytest.mark.slow
def test_train_step_updates_the_teacher_and_the_checkpoint_resumes_it(nnunet_paths, one_torch_thread, tmp_path):
    from nnunet_scribble.training.mean_teacher import STEP_KEY, TEACHER_KEY, nnUNetTrainerMeanTeacher

    root, name = nnunet_paths
    trainer = make_trainer(root, name, nnUNetTrainerMeanTeacher)
    trainer.on_train_start()
    # step 0: decay 0, the teacher becomes a copy of the updated student
    out = trainer.train_step(next(trainer.dataloader_train))
    assert np.isfinite(out["train_term_supervised"]) and np.isfinite(out["train_term_consistency"])
    assert out["train_term_consistency"] >= 0
    for t, s in zip(trainer.teacher.parameters(), trainer.student().parameters()):
        assert torch.equal(t, s)
        assert not t.requires_grad
    before = [p.detach().clone() for p in trainer.teacher.parameters()]
    student_before = [p.detach().clone() for p in trainer.student().parameters()]
    trainer.train_step(next(trainer.dataloader_train))       # step 1: decay 0.5
    for t, t0, s in zip(trainer.teacher.parameters(), before, trainer.student().parameters()):
        assert torch.allclose(t, 0.5 * t0 + 0.5 * s, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(student_before, trainer.student().parameters()))
    # the consistency weight ramps up with the epoch: 0.1 * exp(-5) at epoch 0
    assert trainer.consistency_weight_now() == pytest.approx(0.1 * np.exp(-5))

    ckpt = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(ckpt))
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved[STEP_KEY] == 2 and set(saved[TEACHER_KEY]) == set(saved["network_weights"])
    resumed = make_trainer(root, name, nnUNetTrainerMeanTeacher)
    resumed.load_checkpoint(str(ckpt))
    assert resumed.ema_step == 2
    for a, b in zip(resumed.teacher.parameters(), trainer.teacher.parameters()):
        assert torch.equal(a.cpu(), b.cpu())
    # the student is what stock nnUNetv2_predict loads
    for k, v in saved["network_weights"].items():
        assert torch.equal(v, trainer.student().state_dict()[k].cpu())


def test_delayed_sigmoid_rampup_values():
    from nnunet_scribble.losses.rampup import delayed_sigmoid_rampup
    assert delayed_sigmoid_rampup(3.9, 4, 30) == 0.0
    assert delayed_sigmoid_rampup(4, 4, 30) == pytest.approx(math.exp(-5))
    assert delayed_sigmoid_rampup(17, 4, 30) == pytest.approx(math.exp(-5 * 0.25))
    assert delayed_sigmoid_rampup(30, 4, 30) == 1.0 and delayed_sigmoid_rampup(99, 4, 30) == 1.0
    assert delayed_sigmoid_rampup(5, 5, 5) == 1.0
    with pytest.raises(ValueError, match="before its start"):
        delayed_sigmoid_rampup(1, 10, 5)
