"""`convert acdc`: official layout + Valvano scribbles, on synthetic data and on a few real patients."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conversion_helpers import (assert_patient_grouped, dense_volume, image_volume, make_acdc, nnunet_dirs, read,
                                run_cli, scribbles_from, shared_data, splits_of, symlink_subset, write_nifti)

__all__ = ["nnunet_dirs"]


def test_acdc_synthetic(tmp_path, nnunet_dirs):
    make_acdc(tmp_path / "ACDC")
    assert run_cli("convert", "acdc", "-i", tmp_path / "ACDC", "-s", tmp_path / "ACDC" / "scribbles", "-d", 27,
                   "--test-patients", "5-6", "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset027_ACDCScribble"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 8 and ds["numTest"] == 4 and ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == {"background": 0, "RV": 1, "Myo": 2, "LV": 3, "ignore": 4}
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [
        "patient005_frame01_0000.nii.gz", "patient005_frame12_0000.nii.gz",
        "patient006_frame01_0000.nii.gz", "patient006_frame12_0000.nii.gz"]
    assert len(list((out / "imagesTr").iterdir())) == 8  # no 4D file
    for name in ("patient001_frame01", "patient001_frame12", "patient002_frame01", "patient002_frame12"):
        image = read(out / "imagesTr" / f"{name}_0000.nii.gz")[0]  # sources: float32, float64, uint8, int16
        assert image.dtype == np.float32
    np.testing.assert_array_equal(read(out / "imagesTr" / "patient002_frame12_0000.nii.gz")[0],
                                  image_volume(2, dtype=np.uint8))  # values kept, only the type changes
    np.testing.assert_array_equal(read(out / "labelsTr" / "patient003_frame12.nii.gz")[0],
                                  scribbles_from(dense_volume(31)))
    np.testing.assert_array_equal(read(out / "labelsTr_dense" / "patient003_frame12.nii.gz")[0], dense_volume(31))
    np.testing.assert_array_equal(read(out / "labelsTs" / "patient006_frame01.nii.gz")[0], dense_volume(60))
    splits = splits_of(nnunet_dirs, "Dataset027_ACDCScribble")
    assert len(splits) == 4  # 4 training patients
    assert_patient_grouped(splits, lambda c: c[:10])
    assert all(len(f["val"]) == 2 for f in splits)  # both frames of one patient
    assert not (out / "mixed_labels.json").exists()  # only mixed-label datasets carry the label summary


def test_acdc_official_testing_folder_goes_to_imagesTs(tmp_path, nnunet_dirs):
    make_acdc(tmp_path / "ACDC", patients=(1, 2))
    folder = tmp_path / "ACDC" / "testing" / "patient101"
    for frame in (1, 14):
        write_nifti(image_volume(101), folder / f"patient101_frame{frame:02d}.nii.gz")
        write_nifti(dense_volume(101), folder / f"patient101_frame{frame:02d}_gt.nii.gz")
    assert run_cli("convert", "acdc", "-i", tmp_path / "ACDC", "-s", tmp_path / "ACDC" / "scribbles", "-d", 27,
                   "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset027_ACDCScribble"
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["patient101_frame01.nii.gz",
                                                                    "patient101_frame14.nii.gz"]
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 4


def test_acdc_pairing_problems_are_listed_together(tmp_path, nnunet_dirs, capsys):
    make_acdc(tmp_path / "ACDC", patients=(1, 2, 3))
    (tmp_path / "ACDC" / "scribbles" / "patient002_frame12_scribble.nii.gz").unlink()
    (tmp_path / "ACDC" / "training" / "patient003" / "patient003_frame01_gt.nii.gz").unlink()
    write_nifti(scribbles_from(dense_volume(1)), tmp_path / "ACDC" / "scribbles" / "patient009_frame01_scribble.nii.gz")
    assert run_cli("convert", "acdc", "-i", tmp_path / "ACDC", "-s", tmp_path / "ACDC" / "scribbles", "-d", 27,
                   "--test-patients", "8", "-np", 1) == 2
    err = capsys.readouterr().err
    assert "4 problem(s)" in err and "nothing was written" in err
    assert "patient002_frame12.nii.gz: no scribble patient002_frame12_scribble.nii.gz" in err
    assert "patient003_frame01.nii.gz: no ground truth patient003_frame01_gt.nii.gz" in err
    assert "patient009_frame01_scribble.nii.gz: scribble without image" in err
    assert "test patient patient008: not found" in err
    assert not any(nnunet_dirs["nnUNet_raw"].iterdir())


def test_acdc_wrong_folder_is_a_clear_error(tmp_path, nnunet_dirs, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli("convert", "acdc", "-i", tmp_path / "empty", "-s", tmp_path / "empty", "-d", 27) == 2
    assert "give the ACDC folder that contains 'training/'" in capsys.readouterr().err


@pytest.mark.realdata
def test_acdc_real_subset(tmp_path, nnunet_dirs):
    """Four real patients (8 volumes, mixed dtypes) via symlinks; scribbles and GT kept voxel for voxel."""
    acdc = shared_data("ACDC")
    patients = ("patient001", "patient002", "patient071", "patient072")
    symlink_subset(acdc / "training", tmp_path / "ACDC" / "training", patients, "{}")
    symlink_subset(acdc / "scribbles", tmp_path / "scribbles", patients)
    assert run_cli("convert", "acdc", "-i", tmp_path / "ACDC", "-s", tmp_path / "scribbles", "-d", 27,
                   "--test-patients", "71", "72", "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset027_ACDCScribble"
    scribble, header = read(out / "labelsTr" / "patient001_frame01.nii.gz")
    source, source_header = read(acdc / "scribbles" / "patient001_frame01_scribble.nii.gz")
    np.testing.assert_array_equal(scribble, source)  # same 0-4 convention, voxel for voxel
    assert header.GetSpacing() == pytest.approx(source_header.GetSpacing())
    assert header.GetDirection() == pytest.approx(source_header.GetDirection(), abs=1e-4)
    gt = read(out / "labelsTr_dense" / "patient001_frame01.nii.gz")[0]
    np.testing.assert_array_equal(gt, read(acdc / "training" / "patient001" / "patient001_frame01_gt.nii.gz")[0])
    annotated = scribble != 4
    assert (scribble[annotated] == gt[annotated]).mean() > 0.99
    assert sorted(p.name for p in (out / "labelsTs").iterdir())[0] == "patient071_frame01.nii.gz"
    assert len(list((out / "labelsTs").iterdir())) == 4
    splits = splits_of(nnunet_dirs, "Dataset027_ACDCScribble")
    assert len(splits) == 2 and all(len(f["val"]) == 2 for f in splits)
    assert_patient_grouped(splits, lambda c: c[:10])
