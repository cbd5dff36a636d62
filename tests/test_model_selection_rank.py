"""benchmarks/model_selection_rank.py: proxy values per prediction folder and Kendall tau with dense Dice."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
rank = pytest.importorskip("model_selection_rank")


def _write(path: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 10.0))
    sitk.WriteImage(image, str(path))


def test_models_ranked_by_dense_dice_with_proxy_values_and_tau(tmp_path):
    scribbles = tmp_path / "scribbles"
    scribbles.mkdir()
    scribble = np.full((2, 32, 32), 4, np.uint8)
    scribble[:, 4, 4:28] = scribble[:, 27, 4:28] = scribble[:, 4:28, 4] = scribble[:, 4:28, 27] = 0   # the loop
    scribble[:, 14:18, 15] = 3
    _write(scribbles / "patient071_frame01_scribble.nii.gz", scribble)
    good = np.zeros((2, 32, 32), np.uint8)
    good[:, 12:20, 12:20] = 3
    specks = good.copy()
    specks[:, 0:2, 0:8] = 3                     # 16 of 80 foreground voxels per slice outside the loop
    for name, pred, dice in (("a_good", good, 0.9), ("b_specks", specks, 0.6), ("c_empty", good * 0, 0.1)):
        folder = tmp_path / "predictions" / name
        folder.mkdir(parents=True)
        _write(folder / "patient071_frame01.nii.gz", pred)
        (folder / "summary_dense.json").write_text(json.dumps(
            {"mean": {"Dice": dice}, "per_case": {"patient071_frame01": {"3": {"Dice": dice}}}}))
    folders = rank.scored_folders(tmp_path / "predictions")
    assert [f.name for f in folders["summary_dense.json"]] == ["a_good", "b_specks", "c_empty"]
    lines = rank.rank_section(folders["summary_dense.json"], "summary_dense.json", scribbles)
    values = json.loads((tmp_path / "predictions" / "b_specks" / "proxy_scores.json").read_text())
    assert values["inside_share"] == pytest.approx(1 - 16 / 80)
    assert values["scribble_dice_mean"] == pytest.approx(1.0)   # LV scribble hit; loop predicted background
    empty = json.loads((tmp_path / "predictions" / "c_empty" / "proxy_scores.json").read_text())
    assert empty["score"] == 0.0                                 # the LV scribble is missed
    tau_line = next(line for line in lines if line.startswith("Kendall tau"))
    assert "proxy score **+1.00**" in tau_line
    assert "| 1 | 100% | +1.00 |" in lines                      # one patient: all there is


def test_missing_scribble_names_the_file(tmp_path):
    folder = tmp_path / "predictions" / "m"
    folder.mkdir(parents=True)
    _write(folder / "patient099_frame01.nii.gz", np.zeros((1, 8, 8)))
    with pytest.raises(SystemExit, match="patient099_frame01_scribble.nii.gz"):
        rank.folder_criteria(folder, tmp_path)


def test_subset_stability_hand_values():
    # patient 1 favours model a, patient 2 favours b twice as strongly; overall best: b
    dice = {"a": {"p1_f1": 0.9, "p1_f2": 0.9, "p2_f1": 0.5, "p2_f2": 0.5},
            "b": {"p1_f1": 0.8, "p1_f2": 0.8, "p2_f1": 0.7, "p2_f2": 0.7}}
    out = rank.subset_stability(dice, (1, 2, 3), draws=400)
    assert set(out) == {1, 2}                                    # only 2 patients
    hit, tau = out[1]
    assert hit == pytest.approx(0.5, abs=0.08) and tau == pytest.approx(0.0, abs=0.16)   # tau +-1 per draw
    assert out[2] == (1.0, 1.0)                                  # all patients: the full ranking
