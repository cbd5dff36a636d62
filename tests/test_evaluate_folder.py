"""Folder evaluation: pairing, summary numbers, JSON/Markdown output, and every bad-input error."""
import json
from pathlib import Path

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


def write_geometry(arr, path, origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing((1.0, 1.0, 2.0))
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


def test_origin_and_direction_mismatch_name_the_files(folders):
    pred, gt = folders
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(gt / "a.nii.gz")))
    write_geometry(ref, pred / "a.nii.gz", origin=(20.0, 0.0, 0.0))  # same voxels, shifted by 20 mm
    write_geometry(ref, pred / "b.nii.gz", direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(UserFacingError) as e:
        evaluate_folders(pred, gt, classes=[1, 2])
    msg = str(e.value)
    assert "a.nii.gz: origin" in msg and "b.nii.gz: direction" in msg
    write_geometry(ref, pred / "a.nii.gz", origin=(1e-5, 0.0, 0.0))  # header rounding is not a mismatch
    write_geometry(ref, pred / "b.nii.gz")
    assert evaluate_folders(pred, gt, classes=[1, 2])["per_case"]["a"]["1"]["Dice"] == 1.0


def test_truncated_files_are_reported_with_the_other_problems(folders):
    pred, gt = folders
    for path in (pred / "a.nii.gz", gt / "b.nii.gz"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    (gt / "c.nii.gz").write_bytes((gt / "a.nii.gz").read_bytes())  # a reference without prediction
    with pytest.raises(UserFacingError) as e:
        evaluate_folders(pred, gt, classes=[1, 2])
    msg = str(e.value)
    assert f"{pred / 'a.nii.gz'}: the file is truncated or corrupt" in msg
    assert f"{gt / 'b.nii.gz'}: the file is truncated or corrupt" in msg
    assert "have no prediction" in msg


def test_missing_cases_do_not_hide_a_scribble_reference(folders):
    pred, gt = folders
    (pred / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "A": 1, "B": 2, "ignore": 3}}))
    scribble = np.full((3, 4, 6), 3, np.uint8); scribble[1, 1, 1] = 1
    write(scribble, gt / "a.nii.gz")
    write(scribble, gt / "c.nii.gz")
    with pytest.raises(UserFacingError) as e:
        evaluate_folders(pred, gt)
    msg = str(e.value)
    assert "have no prediction" in msg and "scribble map" in msg


def test_nan_in_a_float_reference_is_reported(folders):
    pred, gt = folders
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(gt / "a.nii.gz"))).astype(np.float32)
    ref[0, 0, 0] = np.nan
    img = sitk.GetImageFromArray(ref)
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, str(gt / "a.nii.gz"))
    with pytest.raises(UserFacingError, match="a.nii.gz: .*1 NaN or infinite"):
        evaluate_folders(pred, gt, classes=[1, 2])


@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_unwritable_output_is_an_error_before_the_work(folders, tmp_path, capsys, monkeypatch, where):
    pred, gt = folders
    (tmp_path / "file").write_text("")
    output = tmp_path / "file" / "s.json" if where == "under_a_file" else pred
    from nnunet_scribble.evaluation import evaluate_folder

    def no_work(job):
        raise AssertionError("evaluated before checking the output")
    monkeypatch.setattr(evaluate_folder, "_evaluate_case", no_work)
    assert main(["evaluate", "-pred", str(pred), "-gt", str(gt), "-l", "1", "2", "-np", "1", "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert "Cannot write the evaluation summary to" in err and str(output.parent) in err
    with pytest.raises(UserFacingError, match="Cannot write"):
        evaluate_folders(pred, gt, classes=[1, 2], output_json=output)


def test_read_only_output_location(folders, tmp_path, capsys):
    import os
    pred, gt = folders
    ro = tmp_path / "ro"; ro.mkdir(); ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores folder permissions; sysfs refuses new files even to root
            ro = Path("/sys")
            if not ro.is_dir():
                pytest.skip("no read-only folder to test with")
        assert main(["evaluate", "-pred", str(pred), "-gt", str(gt), "-l", "1", "2", "-np", "1",
                     "-o", str(ro / "s.json")]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err.lower() and str(ro) in err and "Traceback" not in err
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_table_is_printed_before_a_failing_write(folders, tmp_path, capsys, monkeypatch):
    pred, gt = folders
    from nnunet_scribble.evaluation import evaluate_folder

    def full_disk(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(evaluate_folder.os, "replace", full_disk)
    assert main(["evaluate", "-pred", str(pred), "-gt", str(gt), "-l", "1", "2", "-np", "1",
                 "-o", str(tmp_path / "s.json")]) == 2
    out, err = capsys.readouterr()
    assert "| **mean** |" in out and "No space left on device" in err and "table above" in err
    assert not (tmp_path / "s.json").exists()
    assert not list(tmp_path.glob("*s.json*"))  # no temporary file left behind
    with pytest.raises(UserFacingError, match="(?s)not saved:\n.*\\| \\*\\*mean"):  # the API keeps the table too
        evaluate_folders(pred, gt, classes=[1, 2], output_json=tmp_path / "s.json")
