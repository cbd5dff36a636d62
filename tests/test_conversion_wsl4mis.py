"""`convert wsl4mis`: h5 volumes without geometry, on synthetic files and on the real WSL4MIS ACDC volumes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conversion_helpers import (assert_patient_grouped, dense_volume, image_volume, make_wsl4mis, nnunet_dirs, read,
                                run_cli, scribbles_from, shared_data, splits_of, symlink_subset, write_h5)

__all__ = ["nnunet_dirs"]


def test_wsl4mis_synthetic_with_spacing(tmp_path, nnunet_dirs, capsys):
    make_wsl4mis(tmp_path / "h5", patients=(1, 2, 3, 4))
    assert run_cli("convert", "wsl4mis", "-i", tmp_path / "h5", "--spacing", 10, 1.5, 1.25, "-d", 28,
                   "--test-patients", "patient004", "-np", 1) == 0
    assert "store no voxel spacing" not in capsys.readouterr().err
    out = nnunet_dirs["nnUNet_raw"] / "Dataset028_WSL4MISScribble"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 6 and ds["numTest"] == 2 and ds["labels"]["ignore"] == 4
    image, header = read(out / "imagesTr" / "patient002_frame12_0000.nii.gz")
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, image_volume(2, dtype=np.float32) / 800)
    assert header.GetSpacing() == pytest.approx((1.25, 1.5, 10))  # SimpleITK order x, y, z
    assert header.GetOrigin() == (0, 0, 0) and header.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    np.testing.assert_array_equal(read(out / "labelsTr" / "patient002_frame12.nii.gz")[0],
                                  scribbles_from(dense_volume(21)))
    np.testing.assert_array_equal(read(out / "labelsTr_dense" / "patient002_frame12.nii.gz")[0], dense_volume(21))
    np.testing.assert_array_equal(read(out / "labelsTs" / "patient004_frame01.nii.gz")[0], dense_volume(40))
    splits = splits_of(nnunet_dirs, "Dataset028_WSL4MISScribble")
    assert len(splits) == 3
    assert_patient_grouped(splits, lambda c: c[:10])


def test_wsl4mis_default_spacing_is_acdc_typical_and_warned(tmp_path, nnunet_dirs, capsys):
    make_wsl4mis(tmp_path / "h5", patients=(1,))
    assert run_cli("convert", "wsl4mis", "-i", tmp_path / "h5", "-d", 28, "-np", 1) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "store no voxel spacing" in err and "--spacing" in err
    out = nnunet_dirs["nnUNet_raw"] / "Dataset028_WSL4MISScribble"
    _, header = read(out / "labelsTr" / "patient001_frame01.nii.gz")
    assert header.GetSpacing() == pytest.approx((1.5, 1.5, 10.0))


def test_wsl4mis_bad_files_are_listed_together(tmp_path, nnunet_dirs, capsys):
    make_wsl4mis(tmp_path / "h5", patients=(1, 2))
    d = dense_volume(3)
    write_h5(tmp_path / "h5" / "patient003_frame01.h5", image=image_volume(3, dtype=np.float32), label=d)  # no scribble
    (tmp_path / "h5" / "patient004_frame01.h5").write_text("not an h5 file")
    bad = scribbles_from(dense_volume(5))
    bad[0, 0, 0] = 9
    write_h5(tmp_path / "h5" / "patient005_frame01.h5", image=image_volume(5, dtype=np.float32), label=dense_volume(5),
             scribble=bad)
    write_h5(tmp_path / "h5" / "patient006_frame01.h5", image=image_volume(6, dtype=np.float32),
             label=dense_volume(6)[:, :30], scribble=scribbles_from(dense_volume(6)))
    assert run_cli("convert", "wsl4mis", "-i", tmp_path / "h5", "--spacing", 10, 1.5, 1.5, "-d", 28, "-np", 1) == 2
    err = capsys.readouterr().err
    for offending in ("patient003_frame01.h5: no scribble array (found ['image', 'label'])",
                      "patient004_frame01.h5: cannot read", "patient005_frame01.h5[scribble]: unknown label values [9]",
                      "patient006_frame01.h5[label]: geometry mismatch"):
        assert offending in err, offending
    assert list(nnunet_dirs["nnUNet_raw"].iterdir()) == []


def test_wsl4mis_slice_folder_and_bad_spacing_are_refused(tmp_path, nnunet_dirs, capsys):
    d = dense_volume(1)
    write_h5(tmp_path / "slices" / "patient001_frame01_slice_0.h5", image=image_volume(1)[0], label=d[0],
             scribble=scribbles_from(d)[0])
    assert run_cli("convert", "wsl4mis", "-i", tmp_path / "slices", "-d", 28) == 2
    assert "2D slice files" in capsys.readouterr().err
    make_wsl4mis(tmp_path / "h5", patients=(1,))
    assert run_cli("convert", "wsl4mis", "-i", tmp_path / "h5", "--spacing", 10, 0, 1, "-d", 28) == 2
    assert "--spacing needs three positive numbers" in capsys.readouterr().err


@pytest.mark.realdata
def test_wsl4mis_real_volumes_match_the_acdc_release(tmp_path, nnunet_dirs):
    """The real h5 scribbles and labels come out voxel-identical to the official ACDC files."""
    h5_dir = shared_data("ACDC_WSL4MIS_h5") / "ACDC_training_volumes"
    acdc = shared_data("ACDC")
    subset = symlink_subset(h5_dir, tmp_path / "h5", ("patient001", "patient002"))
    assert run_cli("convert", "wsl4mis", "-i", subset, "--spacing", 10, 1.5625, 1.5625, "--test-patients", "2",
                   "-d", 28, "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset028_WSL4MISScribble"
    scribble, header = read(out / "labelsTr" / "patient001_frame12.nii.gz")
    np.testing.assert_array_equal(scribble, read(acdc / "scribbles" / "patient001_frame12_scribble.nii.gz")[0])
    np.testing.assert_array_equal(read(out / "labelsTr_dense" / "patient001_frame12.nii.gz")[0],
                                  read(acdc / "training" / "patient001" / "patient001_frame12_gt.nii.gz")[0])
    np.testing.assert_array_equal(read(out / "labelsTs" / "patient002_frame01.nii.gz")[0],
                                  read(acdc / "training" / "patient002" / "patient002_frame01_gt.nii.gz")[0])
    assert header.GetSpacing() == pytest.approx((1.5625, 1.5625, 10))
    image = read(out / "imagesTr" / "patient001_frame01_0000.nii.gz")[0]
    assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
