"""`nnunet-scribble overlay` on a tiny synthetic dataset: colours, transparency, slice choice, files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_scribble.cli import main
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.geometry import display_slice_axis
from nnunet_scribble.visualization import overlay

IGNORE = 4


def _write(array, path, spacing=(1.0, 1.0, 5.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _dataset(root):
    """Dataset042_Tiny: case a (training: scribbles on slices 1 and 3 of 6, dense labels), case t (test)."""
    folder = root / "Dataset042_Tiny"
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (6, 24, 24)).astype(np.float32)
    dense = np.zeros((6, 24, 24), np.uint8)
    dense[1:4, 8:16, 8:16] = 1
    dense[1:4, 10:14, 10:14] = 3
    scribble = np.full((6, 24, 24), IGNORE, np.uint8)
    for z in (1, 3):
        scribble[z, 12, 9:15] = 1      # a foreground stroke
        scribble[z, 2, 2:22] = 0       # a background stroke
    scribble[3, 12, 11:13] = 3
    _write(image, folder / "imagesTr" / "a_0000.nii.gz")
    _write(scribble, folder / "labelsTr" / "a.nii.gz")
    _write(dense, folder / "labelsTr_dense" / "a.nii.gz")
    _write(image, folder / "imagesTs" / "t_0000.nii.gz")
    _write(dense, folder / "labelsTs" / "t.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "ring": 1, "x": 2, "core": 3, "ignore": IGNORE},
        "numTraining": 1, "file_ending": ".nii.gz"}))
    return folder


def test_slices_are_spread_over_those_with_foreground():
    label = np.zeros((20, 4, 4), np.int32)
    label[5:15, 1, 1] = 2
    assert overlay.choose_slices([label], 0, 3, 4) == [5, 9, 14]
    assert overlay.choose_slices([label], 0, 30, 4) == list(range(5, 15))
    only_background = np.full((20, 4, 4), IGNORE)
    only_background[7, 0, 0] = 0                    # a background scribble: still a place with labels
    assert overlay.choose_slices([only_background], 0, 3, 4) == [7]
    assert overlay.choose_slices([np.full((20, 4, 4), IGNORE)], 0, 3, 4) == [10]
    # the coarsest axis is cut (ACDC: 10 mm between slices, 1.5 mm in-plane)
    assert display_slice_axis((10.0, 1.5, 1.5), (9, 200, 180)) == 0
    assert display_slice_axis((1.0, 1.0, 3.0), (1, 40, 40)) == 2


def test_scribbles_are_coloured_and_unlabeled_pixels_transparent():
    image = np.linspace(0, 1, 100).reshape(10, 10)
    scribble = np.full((10, 10), IGNORE)
    scribble[5, 2:5] = 1
    scribble[0, 0] = 0
    rgb = overlay.draw_scribbles(image, scribble, 4)
    assert np.allclose(rgb[5, 3], overlay.colour(1)) and np.allclose(rgb[0, 0], overlay.colour(0))
    assert np.allclose(rgb[5, 1], overlay.colour(1))               # drawn one pixel thicker
    assert np.allclose(rgb[9, 9], image[9, 9]) and np.allclose(rgb[8, 8], image[8, 8])   # ignore: the image
    dense = np.zeros((10, 10))
    dense[5, 5] = 3
    tinted = overlay.tint_labels(image, dense, 4)
    assert np.allclose(tinted[0, 1], image[0, 1])                   # background untinted
    assert np.allclose(tinted[5, 5], 0.5 * image[5, 5] + 0.5 * overlay.colour(3))


def test_case_panels_show_scribbles_and_dense_labels_on_the_scribbled_slices(tmp_path):
    folder = _dataset(tmp_path)
    ds = overlay.Dataset.open(folder)
    maps = {"scribbles (labelsTr)": folder / "labelsTr" / "a.nii.gz",
            "dense labels (labelsTr_dense)": folder / "labelsTr_dense" / "a.nii.gz"}
    slices, titles, rows = overlay.case_panels(ds, "a", maps, 2)
    assert slices == [1, 3] and titles == list(maps)
    scribbled = rows[1][0]
    assert np.allclose(scribbled[12, 12], overlay.colour(3)) and np.allclose(scribbled[2, 10], overlay.colour(0))
    assert np.allclose(scribbled[20, 20], scribbled[20, 20, 0])     # unlabeled pixel: grey, untinted
    assert not np.allclose(rows[1][1][12, 12], rows[1][1][12, 12, 0])   # dense core tinted


def test_overlay_command_writes_one_png_per_case_and_never_overwrites(tmp_path, capsys):
    import matplotlib.image

    folder = _dataset(tmp_path)
    out = tmp_path / "png"
    assert main(["overlay", "-d", str(folder), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]       # every training case, nothing else
    assert "scribbles (labelsTr), dense labels (labelsTr_dense); slices 1, 3" in capsys.readouterr().out
    png = (matplotlib.image.imread(out / "a.png")[..., :3] * 255).round().astype(int)
    for c in (0, 1, 3):                                             # the scribble colours are in the picture
        assert (np.abs(png - (overlay.colour(c) * 255).round()).max(axis=-1) <= 2).sum() > 20
    before = (out / "a.png").read_bytes()
    assert main(["overlay", "-d", str(folder), "-o", str(out)]) == 2
    assert "a.png already exists" in capsys.readouterr().err and (out / "a.png").read_bytes() == before
    assert main(["overlay", "-d", str(folder), "-o", str(out), "--overwrite", "--slices", "1"]) == 0


def test_overlay_of_a_prediction_folder_and_its_errors(tmp_path, capsys):
    folder = _dataset(tmp_path)
    pred = tmp_path / "pred"
    _write(np.zeros((6, 24, 24), np.uint8), pred / "t.nii.gz")
    assert main(["overlay", "-d", str(folder), "-o", str(tmp_path / "o1"), "--pred", str(pred)]) == 0
    assert "t.png: image, prediction (pred), dense labels (labelsTs)" in capsys.readouterr().out
    assert main(["overlay", "-d", str(folder), "-o", str(tmp_path / "o2"), "--pred", str(pred), "--cases", "a"]) == 2
    assert f"{pred / 'a.nii.gz'} not found" in capsys.readouterr().err
    assert main(["overlay", "-d", str(folder), "-o", str(tmp_path / "o3"), "--cases", "nope"]) == 2
    assert "no image nope_0000.nii.gz" in capsys.readouterr().err
    _write(np.zeros((6, 20, 24), np.uint8), pred / "t.nii.gz")
    with pytest.raises(UserFacingError, match=r"t\.nii\.gz has shape .* its image .*t_0000"):
        overlay.write_overlays(folder, tmp_path / "o4", pred=pred)
    assert not (tmp_path / "o4" / "t.png").exists()
    listing = tmp_path / "cases.txt"
    listing.write_text("a\nt\n")
    assert main(["overlay", "-d", str(folder), "-o", str(tmp_path / "o5"), "--cases", f"@{listing}"]) == 0
    assert sorted(p.name for p in (tmp_path / "o5").iterdir()) == ["a.png", "t.png"]
