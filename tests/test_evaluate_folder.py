"""Folder evaluation: pairing, summary numbers, JSON/Markdown output, and every bad-input error."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_scribble.cli import main
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.evaluation.evaluate_folder import evaluate_folders


def write(arr, path, spacing=(1.0, 1.0, 2.0)):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(); gt.mkdir()
    ref = np.zeros((3, 4, 6), np.uint8); ref[1, 1:3, 0:4] = 1; ref[1, 1:3, 4:6] = 2
    out = ref.copy(); out[1, 1:3, 3] = 2   # one column of class 1 predicted as class 2
    for case in ("a", "b"):
        write(ref, gt / f"{case}.nii.gz")
        write(out if case == "a" else ref, pred / f"{case}.nii.gz")
    return pred, gt


def test_summary_values_and_json(folders, tmp_path):
    pred, gt = folders
    summary = evaluate_folders(pred, gt, classes={1: "A", 2: "B"}, output_json=tmp_path / "s.json")
    # case a, class 1: ref 8 voxels, pred 6, overlap 6 -> 12/14; class 2: ref 4, pred 6, overlap 4 -> 8/10
    assert summary["per_case"]["a"]["1"]["Dice"] == pytest.approx(12 / 14)
    assert summary["per_case"]["a"]["2"]["Dice"] == pytest.approx(8 / 10)
    assert summary["per_case"]["b"]["1"]["Dice"] == 1.0
    assert summary["per_class"]["1"]["Dice_mean"] == pytest.approx((12 / 14 + 1) / 2)
    assert summary["per_class"]["1"]["Dice_std"] == pytest.approx((1 - 12 / 14) / 2)
    assert summary["mean"]["Dice"] == pytest.approx(((12 / 14 + 1) / 2 + (8 / 10 + 1) / 2) / 2)
    # class 2 in case a: x spacing is 1 mm; surfaces are 1 voxel apart at most
    assert summary["per_case"]["a"]["2"]["HD95"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "s.json").read_text())["n_cases"] == 2


def test_cli_prints_markdown_table(folders, capsys):
    pred, gt = folders
    assert main(["evaluate", "-pred", str(pred), "-gt", str(gt), "-l", "1", "2", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert "| class | Dice | HD95 (mm) |" in out and "| **mean** |" in out


def test_classes_from_dataset_json_next_to_predictions(folders):
    pred, gt = folders
    (pred / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "A": 1, "B": 2, "ignore": 3}}))
    summary = evaluate_folders(pred, gt)
    assert [e["name"] for e in summary["per_class"].values()] == ["A", "B"]


def test_missing_cases_are_listed(folders):
    pred, gt = folders
    (pred / "a.nii.gz").unlink()
    write(np.zeros((3, 4, 6)), pred / "c.nii.gz")
    with pytest.raises(UserFacingError) as e:
        evaluate_folders(pred, gt, classes=[1, 2])
    msg = str(e.value)
    assert "c.nii.gz: no reference" in msg and "have no prediction" in msg and "--allow-missing-predictions" in msg
    (pred / "c.nii.gz").unlink()
    assert evaluate_folders(pred, gt, classes=[1, 2], allow_missing_predictions=True)["n_cases"] == 1


def test_shape_and_spacing_mismatch_name_the_files(folders):
    pred, gt = folders
    write(np.zeros((3, 4, 5)), pred / "a.nii.gz")
    write(np.zeros((3, 4, 6)), pred / "b.nii.gz", spacing=(1.0, 1.0, 3.0))
    with pytest.raises(UserFacingError) as e:
        evaluate_folders(pred, gt, classes=[1, 2])
    msg = str(e.value)
    assert "a.nii.gz: shape" in msg and "b.nii.gz: spacing" in msg


def test_unexpected_labels_and_scribble_reference(folders):
    pred, gt = folders
    (pred / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "A": 1, "B": 2, "ignore": 3}}))
    scribble = np.full((3, 4, 6), 3, np.uint8); scribble[1, 1, 1] = 1
    write(scribble, gt / "a.nii.gz")
    bad = np.zeros((3, 4, 6), np.uint8); bad[0, 0, 0] = 7
    write(bad, pred / "b.nii.gz")
    with pytest.raises(UserFacingError) as e:
        evaluate_folders(pred, gt)
    msg = str(e.value)
    assert "b.nii.gz: prediction holds label values [7]" in msg
    assert "a.nii.gz: reference holds label values [3]" in msg and "scribble map" in msg


def test_cli_reports_errors_with_exit_code_2(folders, capsys):
    pred, gt = folders
    assert main(["evaluate", "-pred", str(pred / "nope"), "-gt", str(gt)]) == 2
    assert "does not exist" in capsys.readouterr().err
