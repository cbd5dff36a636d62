"""`convert folder`: pairing, label maps and presets, geometry, 2D PNG, bad input, overwrite."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conversion_helpers import (DIRECTION, ORIGIN, SPACING, assert_patient_grouped, convert_folder_3d, dense_volume,
                                image_volume, make_folder_3d, make_png_folder, nnunet_dirs, read, run_cli,
                                scribbles_from, splits_of, write_nifti)

__all__ = ["nnunet_dirs"]


def convert_3d(root, *extra):
    return convert_folder_3d(root, 5, "Toy", *extra)


def test_folder_3d_layout_labels_geometry_and_splits(tmp_path, nnunet_dirs):
    dense = make_folder_3d(tmp_path / "src")
    assert convert_3d(tmp_path / "src", "--classes", "background", "RV", "Myo", "LV", "--unlabeled", "max") == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset005_Toy"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "RV": 1, "Myo": 2, "LV": 3, "ignore": 4}
    assert ds["numTraining"] == 6 and ds["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (out / "imagesTr").iterdir())[:2] == ["pat0_visit0_0000.nii.gz",
                                                                        "pat0_visit1_0000.nii.gz"]
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["tcase_0000.nii.gz"]

    image, header = read(out / "imagesTr" / "pat1_visit0_0000.nii.gz")
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, image_volume(1))
    assert header.GetSpacing() == pytest.approx(SPACING) and header.GetOrigin() == pytest.approx(ORIGIN)
    assert header.GetDirection() == pytest.approx(DIRECTION)

    scribble, _ = read(out / "labelsTr" / "pat1_visit0.nii.gz")
    dense_out, _ = read(out / "labelsTr_dense" / "pat1_visit0.nii.gz")
    np.testing.assert_array_equal(scribble, scribbles_from(dense["pat1_visit0"]))
    np.testing.assert_array_equal(dense_out, dense["pat1_visit0"])
    assert set(np.unique(read(out / "labelsTs" / "tcase.nii.gz")[0])) == {0, 1, 2, 3}

    splits = splits_of(nnunet_dirs, "Dataset005_Toy")
    assert len(splits) == 3  # 3 patients -> 3 folds
    assert_patient_grouped(splits, lambda c: c.split("_")[0])
    assert json.loads((out / "splits_final.json").read_text()) == splits


def test_myops_preset_translates_codes(tmp_path, nnunet_dirs):
    codes = (3000, 200, 500, 600, 1220, 2221)
    src = tmp_path / "myops"
    d = dense_volume(3)
    d[0, :3, :3] = 4  # a bit of 'edema' and 'scar'
    d[0, 3:6, :3] = 5
    write_nifti(image_volume(3), src / "img" / "case1.nii.gz")
    write_nifti(scribbles_from(d, 0, codes), src / "scr" / "case1.nii.gz")
    write_nifti(np.array((0,) + codes[1:], dtype=np.int16)[d], src / "gt" / "case1.nii.gz")
    assert run_cli("convert", "folder", "-i", src / "img", "-s", src / "scr", "--dense", src / "gt",
                   "--preset", "myops", "-d", 7, "-n", "MyoPS", "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset007_MyoPS"
    assert json.loads((out / "dataset.json").read_text())["labels"]["ignore"] == 6
    np.testing.assert_array_equal(read(out / "labelsTr" / "case1.nii.gz")[0], scribbles_from(d, 6, range(6)))
    np.testing.assert_array_equal(read(out / "labelsTr_dense" / "case1.nii.gz")[0], d)


def test_png_2d_with_255_unlabeled(tmp_path, nnunet_dirs):
    src = tmp_path / "png"
    make_png_folder(src, unlabeled=255)
    assert run_cli("convert", "folder", "-i", src / "img", "-s", src / "scr", "--dense", src / "gt", "--classes",
                   "background", "RV", "Myo", "LV", "--unlabeled", "255", "-d", 8, "-n", "Png", "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset008_Png"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["file_ending"] == ".png" and ds["channel_names"] == {"0": "image"}
    scribble = np.asarray(Image.open(out / "labelsTr" / "a.png"))
    assert scribble.shape == (40, 36) and set(np.unique(scribble)) == {0, 1, 2, 3, 4}
    d = np.asarray(Image.open(src / "gt" / "a.png"))
    np.testing.assert_array_equal(scribble, scribbles_from(d[None], 4)[0])
    np.testing.assert_array_equal(np.asarray(Image.open(out / "labelsTr_dense" / "a.png")), d)
    assert np.asarray(Image.open(out / "imagesTr" / "a_0000.png")).dtype == np.uint8


def test_rgb_png_images_get_three_channel_names(tmp_path, nnunet_dirs):
    src = tmp_path / "rgb"
    make_png_folder(src, names=("a", "b"))
    for name in ("a", "b"):
        grey = np.asarray(Image.open(src / "img" / f"{name}.png"))
        Image.fromarray(np.stack([grey, grey // 2, 255 - grey], -1)).save(src / "img" / f"{name}.png")
        d = np.asarray(Image.open(src / "gt" / f"{name}.png"))[None]
        # unlabeled 0, classes 1..4 in the scribble files (a common PNG convention)
        Image.fromarray(scribbles_from(d, 0, (1, 2, 3, 4))[0].astype(np.uint8)).save(src / "scr" / f"{name}.png")
    assert run_cli("convert", "folder", "-i", src / "img", "-s", src / "scr", "--classes", "background", "a", "b", "c",
                   "--scribble-values", 1, 2, 3, 4, "--unlabeled", 0, "-d", 10, "-n", "Rgb", "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset010_Rgb"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "R", "1": "G", "2": "B"} and ds["labels"]["ignore"] == 4
    assert np.asarray(Image.open(out / "imagesTr" / "a_0000.png")).shape == (40, 36, 3)
    assert set(np.unique(np.asarray(Image.open(out / "labelsTr" / "b.png")))) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("preset, scribble_codes, unlabeled, dense_codes", [
    ("chaos", (5, 1, 2, 3, 4), 0, (0, 1, 2, 3, 4)),
    ("nci-isbi", (0, 1, 2), 3, (0, 1, 2)),
])
def test_chaos_and_nci_isbi_presets(tmp_path, nnunet_dirs, preset, scribble_codes, unlabeled, dense_codes):
    """CHAOS (0 unlabeled, 5 background), NCI-ISBI (highest value unlabeled): codes -> 0..K-1, ignore = K."""
    k = len(scribble_codes)
    d = np.minimum(dense_volume(5), k - 1)
    d[0, :4, :4] = k - 1  # every class present
    src = tmp_path / preset
    write_nifti(image_volume(5), src / "img" / "p1.nii.gz")
    write_nifti(scribbles_from(d, unlabeled, scribble_codes), src / "scr" / "p1.nii.gz")
    write_nifti(np.asarray(dense_codes, np.uint8)[d], src / "gt" / "p1.nii.gz")
    assert run_cli("convert", "folder", "-i", src / "img", "-s", src / "scr", "--dense", src / "gt",
                   "--preset", preset, "-d", 11, "-n", "Preset", "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset011_Preset"
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert labels["ignore"] == k and list(labels.values()) == list(range(k + 1))
    np.testing.assert_array_equal(read(out / "labelsTr" / "p1.nii.gz")[0], scribbles_from(d, k, range(k)))
    np.testing.assert_array_equal(read(out / "labelsTr_dense" / "p1.nii.gz")[0], d)


def test_preset_and_custom_values_are_exclusive(tmp_path, nnunet_dirs, capsys):
    make_folder_3d(tmp_path / "src", n_patients=1)
    assert convert_3d(tmp_path / "src", "--preset", "acdc", "--unlabeled", "4") == 2
    assert "either --preset or" in capsys.readouterr().err
    assert convert_3d(tmp_path / "src", "--classes", "bg", "a") == 2
    assert "--classes and --unlabeled" in capsys.readouterr().err
    assert convert_3d(tmp_path / "src", "--classes", "bg", "a", "--unlabeled", "1") == 2
    err = capsys.readouterr().err
    assert "the unlabeled value 1 is also a class value" in err
    assert "the first class must be called 'background' (nnU-Net requires it), got 'bg'" in err


def test_crash_while_writing_leaves_nothing_behind(tmp_path, nnunet_dirs, monkeypatch):
    """An exception after some files were written (disk full, Ctrl-C) leaves neither a dataset nor a partial folder."""
    from nnunet_scribble import volume

    make_folder_3d(tmp_path / "src", n_patients=2)
    written, real_write = [], volume.write

    def failing_write(vol, path):
        if len(written) == 5:
            raise OSError("No space left on device")
        written.append(path)
        real_write(vol, path)

    monkeypatch.setattr(volume, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        convert_3d(tmp_path / "src", "--preset", "acdc")
    assert len(written) == 5
    assert list(nnunet_dirs["nnUNet_raw"].iterdir()) == []
    assert list(nnunet_dirs["nnUNet_preprocessed"].iterdir()) == []


def test_bad_input_lists_every_offending_file_and_writes_nothing(tmp_path, nnunet_dirs, capsys):
    src = tmp_path / "bad"
    make_folder_3d(src, n_patients=3)
    (src / "scribbles" / "pat0_visit0_scr.nii.gz").unlink()                               # image without scribble
    write_nifti(image_volume(5), src / "images" / "lonely.nii.gz")                        # ... and another
    write_nifti(scribbles_from(dense_volume(1)), src / "scribbles" / "orphan_scr.nii.gz")   # scribble without image
    write_nifti(scribbles_from(dense_volume(1))[:, :30], src / "scribbles" / "pat0_visit1_scr.nii.gz")  # shape
    write_nifti(scribbles_from(dense_volume(2)), src / "scribbles" / "pat1_visit0_scr.nii.gz", spacing=(2, 2, 2))
    bad_values = scribbles_from(dense_volume(3))
    bad_values[0, 0, 0] = 7
    write_nifti(bad_values, src / "scribbles" / "pat1_visit1_scr.nii.gz")                 # unknown label value
    write_nifti(np.full((4, 40, 36), 4, np.uint8), src / "scribbles" / "pat2_visit0_scr.nii.gz")  # empty scribble
    write_nifti(np.full((4, 40, 36), 0.5, np.float32), src / "dense" / "pat2_visit1.nii.gz")       # wrong dtype
    write_nifti(image_volume(1).astype(np.complex64), src / "images" / "cplx.nii.gz")             # ... of an image
    write_nifti(scribbles_from(dense_volume(1)), src / "scribbles" / "cplx_scr.nii.gz")
    write_nifti(dense_volume(1), src / "dense" / "cplx.nii.gz")

    assert convert_3d(src, "--preset", "acdc") == 2
    err = capsys.readouterr().err
    for offending in ("images/pat0_visit0.nii.gz: no scribble", "images/lonely.nii.gz: no scribble",
                      "orphan_scr.nii.gz: scribble file without image", "pat0_visit1_scr.nii.gz: geometry mismatch",
                      "pat1_visit0_scr.nii.gz: geometry mismatch", "pat1_visit1_scr.nii.gz: unknown label values [7]",
                      "pat2_visit0_scr.nii.gz: empty scribble map", "pat2_visit1.nii.gz: wrong data type",
                      "images/cplx.nii.gz: wrong data type complex64 for an image"):
        assert offending in err, offending
    assert "nothing was written" in err
    assert list(nnunet_dirs["nnUNet_raw"].iterdir()) == []
    assert list(nnunet_dirs["nnUNet_preprocessed"].iterdir()) == []


def test_existing_dataset_needs_overwrite_and_ids_stay_unique(tmp_path, nnunet_dirs, capsys):
    make_folder_3d(tmp_path / "src", n_patients=2)
    args = ("--preset", "acdc")
    assert convert_3d(tmp_path / "src", *args) == 0
    marker = nnunet_dirs["nnUNet_raw"] / "Dataset005_Toy" / "imagesTr" / "stale.txt"
    marker.write_text("old")
    assert convert_3d(tmp_path / "src", *args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    (nnunet_dirs["nnUNet_preprocessed"] / "Dataset005_Toy" / "nnUNetPlans.json").write_text("{}")
    assert convert_3d(tmp_path / "src", *args, "--overwrite") == 0
    assert not marker.exists()
    assert "holds plans/data of the replaced dataset (nnUNetPlans.json...)" in capsys.readouterr().err
    assert run_cli("convert", "folder", "-i", tmp_path / "src" / "images", "-s", tmp_path / "src" / "scribbles",
                   "--scribble-suffix", "_scr", "--preset", "acdc", "-d", 5, "-n", "Other") == 2
    assert "already used by" in capsys.readouterr().err
    assert sorted(p.name for p in nnunet_dirs["nnUNet_raw"].iterdir()) == ["Dataset005_Toy"]


def test_geometry_header_fault_is_refused_or_repaired(tmp_path, nnunet_dirs, capsys):
    src = tmp_path / "hdr"
    d = dense_volume(4)
    write_nifti(image_volume(4), src / "img" / "c1.nii.gz")
    write_nifti(scribbles_from(d), src / "scr" / "c1.nii.gz", origin=(0, 0, 0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    base = ("convert", "folder", "-i", src / "img", "-s", src / "scr", "--preset", "acdc", "-d", 9, "-n", "Hdr")
    assert run_cli(*base) == 2
    assert "c1.nii.gz: header origin and direction differ" in capsys.readouterr().err
    assert run_cli(*base, "--repair-geometry") == 0
    captured = capsys.readouterr().err
    assert "warning:" in captured and "scr/c1.nii.gz" in captured and "repaired" in captured
    _, header = read(nnunet_dirs["nnUNet_raw"] / "Dataset009_Hdr" / "labelsTr" / "c1.nii.gz")
    assert header.GetDirection() == pytest.approx(DIRECTION) and header.GetOrigin() == pytest.approx(ORIGIN)


def test_missing_raw_folder_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    make_folder_3d(tmp_path / "src", n_patients=1)
    assert convert_3d(tmp_path / "src", "--preset", "acdc") == 2
    assert "set the environment variable nnUNet_raw or pass --nnunet-raw" in capsys.readouterr().err


def test_scribbles_without_background_are_warned_per_case_and_summed_up(tmp_path, nnunet_dirs, capsys):
    """The trainers learn background only from background scribbles: a case without any is converted (it may be
    intended) with a warning naming its file, and one summary line counts and names such cases."""
    src = tmp_path / "src"
    make_folder_3d(src, n_patients=4)
    unscribbled = ("pat0_visit0", "pat1_visit1", "pat2_visit0", "pat2_visit1", "pat3_visit0", "pat3_visit1")
    for case in unscribbled:
        path = src / "scribbles" / f"{case}_scr.nii.gz"
        scribble, _ = read(path)
        scribble[scribble == 0] = 4
        write_nifti(scribble, path)
    assert convert_3d(src, "--preset", "acdc") == 0
    err = capsys.readouterr().err
    for case in unscribbled:
        assert f"scribbles/{case}_scr.nii.gz: no background scribble" in err, case
    assert err.count(": no background scribble (no voxel of class 0") == len(unscribbled)
    summary = [line for line in err.splitlines() if "training cases have no background scribble" in line]
    assert len(summary) == 1
    assert summary[0].startswith("warning: 6 of 8 training cases have no background scribble "
                                 "(pat0_visit0, pat1_visit1, pat2_visit0, pat2_visit1, pat3_visit0 and 1 more)")
    labels, _ = read(nnunet_dirs["nnUNet_raw"] / "Dataset005_Toy" / "labelsTr" / "pat0_visit0.nii.gz")
    assert 0 not in labels                                                    # converted as given

    make_folder_3d(tmp_path / "fine", n_patients=1)
    assert convert_folder_3d(tmp_path / "fine", 6, "Fine", "--preset", "acdc") == 0
    assert "no background scribble" not in capsys.readouterr().err
