"""`convert mscmr`: CycleMix layout, scribble-only training set, and the subject43 label-header fault."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conversion_helpers import (DIRECTION, ORIGIN, dense_volume, make_mscmr, nnunet_dirs, read, run_cli,
                                scribbles_from, shared_data, splits_of)

__all__ = ["nnunet_dirs"]


def test_mscmr_synthetic_layout_and_header_repair(tmp_path, nnunet_dirs, capsys):
    make_mscmr(tmp_path / "MSCMR")
    assert run_cli("convert", "mscmr", "-i", tmp_path / "MSCMR", "-d", 29, "-np", 1) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "TestSet/labels/subject43_DE_manual.nii.gz: header origin and direction differ" in err
    assert "repaired by copying the image header" in err
    out = nnunet_dirs["nnUNet_raw"] / "Dataset029_MSCMRScribble"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 3 and ds["numTest"] == 2 and ds["channel_names"] == {"0": "LGE"}
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [
        "subject2_DE.nii.gz", "subject4_DE.nii.gz", "subject6_DE.nii.gz"]
    assert not (out / "labelsTr_dense").exists()  # CycleMix gives no dense labels for training subjects
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["subject1_DE.nii.gz", "subject43_DE.nii.gz"]
    np.testing.assert_array_equal(read(out / "labelsTr" / "subject4_DE.nii.gz")[0], scribbles_from(dense_volume(4)))
    label, header = read(out / "labelsTs" / "subject43_DE.nii.gz")
    np.testing.assert_array_equal(label, dense_volume(43))
    assert header.GetDirection() == pytest.approx(DIRECTION) and header.GetOrigin() == pytest.approx(ORIGIN)
    assert [len(f["val"]) for f in splits_of(nnunet_dirs, "Dataset029_MSCMRScribble")] == [1, 1, 1]


def test_mscmr_header_fault_refused_without_repair(tmp_path, nnunet_dirs, capsys):
    make_mscmr(tmp_path / "MSCMR", identity_header_for=(4, 43))
    assert run_cli("convert", "mscmr", "-i", tmp_path / "MSCMR", "-d", 29, "--no-repair-geometry", "-np", 1) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    for name in ("train/labels/subject4_DE_scribble.nii.gz", "TestSet/labels/subject43_DE_manual.nii.gz"):
        assert f"{name}: header origin and direction differ" in err and "pass --repair-geometry" in err
    assert list(nnunet_dirs["nnUNet_raw"].iterdir()) == []


def test_mscmr_missing_files_are_listed_together(tmp_path, nnunet_dirs, capsys):
    root = tmp_path / "MSCMR"
    make_mscmr(root)
    (root / "train" / "labels" / "subject2_DE_scribble.nii.gz").unlink()
    (root / "val" / "images" / "subject1_DE.nii.gz").unlink()
    assert run_cli("convert", "mscmr", "-i", root, "-d", 29, "-np", 1) == 2
    err = capsys.readouterr().err
    assert "train/images/subject2_DE.nii.gz: no label subject2_DE_scribble.nii.gz" in err
    assert "val/labels/subject1_DE_manual.nii.gz: label without image subject1_DE.nii.gz" in err
    assert run_cli("convert", "mscmr", "-i", root / "train", "-d", 29) == 2
    assert "not the CycleMix MSCMR layout" in capsys.readouterr().err


@pytest.mark.realdata
def test_mscmr_real_subset_repairs_subject43(tmp_path, nnunet_dirs, capsys):
    mscmr = shared_data("MSCMR")
    assert run_cli("convert", "mscmr", "-i", mscmr, "-d", 29, "-np", 1) == 0
    err = capsys.readouterr().err
    repaired = [line for line in err.splitlines() if line.startswith("warning:") and "repaired" in line]
    assert len(repaired) == 1 and "TestSet/labels/subject43_DE_manual.nii.gz" in repaired[0]
    out = nnunet_dirs["nnUNet_raw"] / "Dataset029_MSCMRScribble"
    assert len(list((out / "imagesTr").iterdir())) == 4 and len(list((out / "labelsTs").iterdir())) == 3
    label, header = read(out / "labelsTs" / "subject43_DE.nii.gz")
    source_label = read(mscmr / "TestSet" / "labels" / "subject43_DE_manual.nii.gz")[0]
    _, image_header = read(mscmr / "TestSet" / "images" / "subject43_DE.nii.gz")
    np.testing.assert_array_equal(label, source_label)  # same voxels, image's header
    assert header.GetDirection() == pytest.approx(image_header.GetDirection())
    assert header.GetOrigin() == pytest.approx(image_header.GetOrigin())
    scribble = read(out / "labelsTr" / "subject2_DE.nii.gz")[0]
    np.testing.assert_array_equal(scribble, read(mscmr / "train" / "labels" / "subject2_DE_scribble.nii.gz")[0])
    assert read(out / "imagesTr" / "subject2_DE_0000.nii.gz")[0].dtype == np.float32
