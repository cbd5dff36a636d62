"""The demo dataset (content, reuse, refusal) and one end-to-end run through the real CLI."""
import json
import re
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_demo_cli
from nnunet_scribble.demo import run as demo_run
from nnunet_scribble.demo.run import DATASET_NAME, EpochProgress, write_dataset
from nnunet_scribble.demo.synthetic import IGNORE, make_dataset
from nnunet_scribble.errors import UserFacingError


def test_synthetic_cases_are_reproducible_and_scribbles_agree_with_labels():
    a, b = make_dataset(3, seed=5), make_dataset(3, seed=5)
    for (im, lab, scr), (im2, _, scr2) in zip(a, b):
        assert np.array_equal(im, im2) and np.array_equal(scr, scr2)
        annotated = scr != IGNORE
        assert np.array_equal(scr[annotated], lab[annotated])
        assert set(np.unique(scr)) == {0, 1, 2, 3, IGNORE} and set(np.unique(lab)) == {0, 1, 2, 3}
        assert annotated.mean() < 0.1   # sparse


def test_dataset_is_reused_or_refused(tmp_path):
    raw = tmp_path / "raw"
    target = write_dataset(raw, n_train=3, n_test=1, seed=0)
    assert target.name == DATASET_NAME
    assert len(list((target / "labelsTr").iterdir())) == 3 and len(list((target / "labelsTs").iterdir())) == 1
    assert json.loads((target / "dataset.json").read_text())["labels"]["ignore"] == IGNORE
    scribble = sitk.ReadImage(str(target / "labelsTr" / "demo_000.nii.gz"))
    assert scribble.GetSpacing() == (1.25, 1.25)
    assert write_dataset(raw, n_train=3, n_test=1, seed=0) == target     # same recipe: reused
    with pytest.raises(UserFacingError, match=r"already holds a different dataset.*another --output"):
        write_dataset(raw, n_train=3, n_test=1, seed=1)
    (raw / "Dataset990_Other").mkdir()
    with pytest.raises(UserFacingError, match="Dataset990_Other uses the demo's dataset ID"):
        write_dataset(raw, n_train=3, n_test=1, seed=0)


# what nnUNetv2_train prints for one epoch of a scribble trainer (nnU-Net 2.8, numpy 2)
FAKE_EPOCH = """\
2026-12-02 07:42:27.101010: 
2026-12-02 07:42:27.101111: Epoch 3
2026-12-02 07:42:27.101222: Current learning rate: 0.00818
2026-12-02 07:42:39.383333: loss terms partial -0.6123
2026-12-02 07:42:39.384444: train_loss -0.6123
2026-12-02 07:42:39.385555: val_loss -0.5501
2026-12-02 07:42:39.386666: Pseudo dice [np.float32(0.8123), np.float32(0.7345), np.float32(nan)]
2026-12-02 07:42:39.387777: Epoch time: 12.29 s
2026-12-02 07:42:39.388888: Yayy! New best EMA pseudo Dice: 0.7234
"""


def test_epoch_progress_gives_one_line_per_epoch_from_nnunets_output():
    progress = EpochProgress()
    assert progress.feed("2026-12-02 07:40:00.000001: SAM-SP: preparing SAM pseudo-labels\n") == \
        "SAM-SP: preparing SAM pseudo-labels"
    assert progress.feed("2026-12-02 07:40:01.000001: Using splits from existing split file\n") is None
    lines = [progress.feed(line) for line in FAKE_EPOCH.splitlines(keepends=True)]
    summaries = [x for x in lines if x is not None]
    assert summaries == ["epoch 3: loss -0.6123 (partial -0.6123), val loss -0.5501, "
                         "pseudo Dice 0.81 0.73 nan, 12.3 s"]
    assert lines[-2] == summaries[0]     # given when the epoch's time is printed
    # stock nnU-Net trainers log no terms; older numpy prints plain floats
    stock = [progress.feed(x) for x in ("Epoch 4", "train_loss 0.9", "Pseudo dice [0.5, 0.25]", "Epoch time: 3.0 s")]
    assert stock[-1] == "epoch 4: loss 0.9, pseudo Dice 0.50 0.25, 3.0 s"


def test_training_progress_is_streamed_while_the_command_runs(tmp_path, monkeypatch):
    """The child prints one epoch, then waits until the demo has shown it: a demo that buffered the
    output (or only showed it at the end) would make the child give up and the step fail."""
    release = tmp_path / "shown"
    child = "\n".join([
        "import os, sys, time",
        f"print({FAKE_EPOCH!r})",           # no flush: the demo's environment must make it unbuffered
        "deadline = time.time() + 20",
        f"while not os.path.exists({str(release)!r}):",
        "    if time.time() > deadline: sys.exit(7)",
        "    time.sleep(0.05)",
        "print('2026-12-02 07:43:00.000000: Epoch 4')"])
    monkeypatch.setattr(demo_run, "nnunet_command", lambda name: sys.executable)
    shown = []

    def echo(msg, **_):
        shown.append(msg)
        if "epoch 3:" in msg:
            release.touch()

    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    demo_run.run_step("train_fake", ["nnUNetv2_train", "-c", child], demo_run.nnunet_env(tmp_path), tmp_path / "logs", verbose=False,
                      echo=echo)
    log = tmp_path / "logs" / "train_fake.log"
    assert str(log) in shown[0]                       # the log path is given before the step runs
    assert [m for m in shown if "epoch" in m] == ["[demo]   epoch 3: loss -0.6123 (partial -0.6123), val loss "
                                                  "-0.5501, pseudo Dice 0.81 0.73 nan, 12.3 s"]
    assert "Epoch 4" in log.read_text() and "Current learning rate" in log.read_text()


@pytest.mark.slow
def test_demo_end_to_end_through_the_cli(tmp_path):
    """Plan/preprocess, train 1 epoch, nnUNetv2_predict, dense evaluation: all through the real commands."""
    out = tmp_path / "demo"
    proc = run_demo_cli(out, "nnUNetTrainerPCE_1epoch")
    assert "| class | Dice | HD95 (mm) |" in proc.stdout
    # the epoch summary parsed from nnU-Net's real output (a format change would lose it silently)
    assert re.search(r"\[demo\]   epoch 0: loss -?[0-9.]+ \(partial -?[0-9.]+\), val loss -?[0-9.]+, "
                     r"pseudo Dice [0-9.]+ [0-9.]+ [0-9.]+, [0-9.]+ s", proc.stdout), proc.stdout
    summary = json.loads((out / "predictions" / "nnUNetTrainerPCE_1epoch_fold0" / "summary_dense.json").read_text())
    assert summary["n_cases"] == 2
    # one epoch on this easy task is far better than chance; a broken pipeline gives ~0
    assert summary["mean"]["Dice"] > 0.5
    fold = out / "nnUNet_results" / DATASET_NAME / "nnUNetTrainerPCE_1epoch__nnUNetPlans__2d" / "fold_0"
    dense = json.loads((fold / "validation" / "summary_dense.json").read_text())
    stock = json.loads((fold / "validation" / "summary.json").read_text())
    assert dense["n_cases"] == len(stock["metric_per_case"])
    assert (fold / "progress_loss_terms.png").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "loss terms partial" in log
