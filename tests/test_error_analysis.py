"""benchmarks/error_analysis.py: pooled confusion matrix and Dice after largest-component clean-up."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
error_analysis = pytest.importorskip("error_analysis")


def test_confusion_counts_rows_are_reference_columns_prediction():
    reference = np.array([[0, 0, 1], [1, 2, 2]])
    prediction = np.array([[0, 1, 1], [0, 2, 0]])
    counts = error_analysis.confusion_counts(prediction, reference, 3)
    # reference 0: predicted 0, 1; reference 1: predicted 1, 0; reference 2: predicted 2, 0
    assert counts.tolist() == [[1, 1, 0], [1, 1, 0], [1, 0, 1]]


def test_largest_component_clean_up_drops_when_the_false_blob_is_bigger():
    reference = np.zeros((20, 20), np.uint8)
    reference[2:5, 2:5] = 1                       # true structure: 9 px
    prediction = reference.copy()
    prediction[10:15, 10:15] = 1                  # hallucinated blob elsewhere: 25 px
    raw, cleaned = error_analysis.dice_per_class(prediction, reference, [1])[1]
    assert raw == pytest.approx(2 * 9 / (34 + 9))
    assert cleaned == 0.0                         # only the false blob survives
    prediction[10:15, 10:15] = 0
    prediction[18, 18] = 1                        # a speck: clean-up removes it
    assert error_analysis.dice_per_class(prediction, reference, [1])[1] == (pytest.approx(18 / 19), 1.0)


def _write(path: Path, array: np.ndarray) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def test_folder_analysis_and_markdown(tmp_path):
    gt, pred = tmp_path / "labelsTs", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "A": 1, "ignore": 2}}))
    reference = np.zeros((4, 6, 6)); reference[1:3, 1:3, 1:3] = 1
    prediction = reference.copy(); prediction[0, 5, 5] = 1
    _write(gt / "c1.nii.gz", reference); _write(pred / "c1.nii.gz", prediction)
    _write(gt / "c2.nii.gz", reference); _write(pred / "c2.nii.gz", reference)
    out = tmp_path / "errors.md"
    assert error_analysis.main([str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    text = out.read_text()
    assert "### pred (2 cases)" in text
    assert "| A | 0.971 | 1.000 |" in text          # mean of 16/17 and 1
    # 1 of 272 background voxels (2 x 136) predicted as A
    assert "| background | 99.6 | 0.4 |" in text


def test_missing_prediction_is_named(tmp_path, capsys):
    gt, pred = tmp_path / "labelsTs", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "A": 1}}))
    _write(gt / "c1.nii.gz", np.zeros((3, 3)))
    assert error_analysis.main([str(pred), "--gt", str(gt)]) == 1
    assert "c1.nii.gz" in capsys.readouterr().err


def test_scribble_reference_is_refused_with_the_fix(tmp_path, capsys):
    gt, pred = tmp_path / "labelsTr", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "A": 1, "ignore": 2}}))
    _write(gt / "c1.nii.gz", np.full((3, 3), 2)); _write(pred / "c1.nii.gz", np.zeros((3, 3)))
    assert error_analysis.main([str(pred), "--gt", str(gt)]) == 1
    err = capsys.readouterr().err
    assert "c1.nii.gz" in err and "ignore label" in err and "labelsTs" in err
