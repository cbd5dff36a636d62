"""The demo dataset (content, reuse, refusal) and one end-to-end run through the real CLI."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_demo_cli
from nnunet_scribble.demo.run import DATASET_NAME, write_dataset
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


@pytest.mark.slow
def test_demo_end_to_end_through_the_cli(tmp_path):
    """Plan/preprocess, train 1 epoch, nnUNetv2_predict, dense evaluation: all through the real commands."""
    out = tmp_path / "demo"
    proc = run_demo_cli(out, "nnUNetTrainerPCE_1epoch")
    assert "| class | Dice | HD95 (mm) |" in proc.stdout
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
