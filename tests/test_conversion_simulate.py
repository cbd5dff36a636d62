"""Scribble simulation (ScribbleBench protocol) and shrinking (MaCo protocol): coverage, label agreement,
stroke geometry, reproducibility, and the `simulate-scribbles` / `shrink-scribbles` commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from conversion_helpers import convert_folder_3d, make_folder_3d, nnunet_dirs, read, run_cli, splits_of
from nnunet_scribble.conversion.output import MARKER
from nnunet_scribble.conversion.shrink import ShrinkHook, shrink_scribbles
from nnunet_scribble.conversion.simulate import (SimulateHook, border_line, case_rng, interior_line, pick_component,
                                                 simulate_scribbles, thicken)
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.geometry import through_plane_axis as slice_axis

__all__ = ["nnunet_dirs"]
EIGHT = np.ones((3, 3), bool)


def disc(radius: float, shape=(64, 64), center=(32, 32)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - center[0], xx - center[1]) < radius


def organs(n_slices: int = 3, shape=(80, 72)) -> np.ndarray:
    """0 background, 1 two blobs (areas ~4:1 in slice 0), 2 ring around 3 disc; class 1 absent in the last slice."""
    out = np.zeros((n_slices, *shape), np.uint8)
    for k in range(n_slices):
        center = (40 + k, 40 - k)
        if k < n_slices - 1:
            out[k][disc(9, shape, (40, 14))] = 1
            out[k][disc(4.5, shape, (12, 60))] = 1
        out[k][disc(12, shape, center)] = 2
        out[k][disc(7, shape, center)] = 3
    return out


def test_simulated_scribbles_cover_every_class_per_slice_and_agree_with_the_labels():
    dense = organs()
    scribble = simulate_scribbles(dense, 4, case_rng(0, "case"))
    assert scribble.dtype == np.uint8 and scribble.shape == dense.shape
    annotated = scribble != 4
    np.testing.assert_array_equal(scribble[annotated], dense[annotated])        # label agreement
    assert 0.02 < annotated.mean() < 0.35                                        # sparse
    for k in range(dense.shape[0]):
        for c in range(4):
            present, drawn = dense[k] == c, scribble[k] == c
            assert drawn.any() == present.any(), (k, c)                         # every present class, no other
            if drawn.any():                                                     # one component per class
                components, _ = ndimage.label(present, EIGHT)
                assert len(np.unique(components[drawn])) == 1, (k, c)
                assert drawn.sum() < 0.6 * present.sum()


def test_simulation_and_shrink_survive_odd_label_maps():
    """Noise, single voxels, one-voxel-thin slices, one class only, 2D input: no crash, labels kept."""
    rng = np.random.default_rng(0)
    for i in range(30):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 25)), int(rng.integers(1, 25)))
        dense = [rng.integers(0, 3, shape), np.zeros(shape), rng.random(shape) > 0.9][i % 3].astype(np.uint8)
        scribble = simulate_scribbles(dense, 3, case_rng(i, "odd"))
        annotated = scribble != 3
        assert (scribble[annotated] == dense[annotated]).all()
        for k in range(shape[0]):
            assert set(np.unique(scribble[k][annotated[k]])) == set(np.unique(dense[k])), (i, k)
        shrunk = shrink_scribbles(scribble, 3, 37, rng)
        for k in range(shape[0]):
            before = annotated[k].sum()
            assert before - (shrunk[k] != 3).sum() == round(0.37 * before)
    assert simulate_scribbles(organs(1)[0], 4, case_rng(0, "2d")).shape == (80, 72)


def test_simulation_is_seeded_and_independent_of_case_order():
    a, b = organs(2), organs(2)[:, ::-1].copy()
    hook = SimulateHook(4, seed=7)
    first = [hook("case_a", None, a, (5, 1, 1)), hook("case_b", None, b, (5, 1, 1))]
    fresh = SimulateHook(4, seed=7)
    second = [fresh("case_b", None, b, (5, 1, 1)), fresh("case_a", None, a, (5, 1, 1))]
    np.testing.assert_array_equal(first[0], second[1])
    np.testing.assert_array_equal(first[1], second[0])
    assert not np.array_equal(first[0], SimulateHook(4, seed=8)("case_a", None, a, (5, 1, 1)))
    assert not np.array_equal(first[0], hook("case_c", None, a, (5, 1, 1)))


def test_component_choice_is_proportional_to_area():
    mask = disc(11.3) | disc(5.6, center=(5, 5))  # ~400 vs ~100 voxels
    big = disc(11.3)
    rng = np.random.default_rng(0)
    share = np.mean([np.array_equal(pick_component(mask, rng), big) for _ in range(300)])
    assert abs(share - big.sum() / mask.sum()) < 0.07


def test_stroke_geometry_interior_border_and_width():
    component = disc(20)
    distance = ndimage.distance_transform_edt(component)
    rng = np.random.default_rng(1)
    for _ in range(10):
        inner = interior_line(component, 3, rng)
        assert inner.sum() >= 15                              # runs across the disc, not a dot
        assert (thicken(inner, 3) <= component).all()         # a width-3 stroke fits inside
        border = border_line(component, (2, 5), (0.07, 0.15), rng)
        contour_lengths = 2 * np.pi * np.array([20 - 5, 20 - 2])
        assert 0.05 * contour_lengths[0] <= border.sum() <= 0.2 * contour_lengths[1]
        assert 1.4 <= distance[border].min() and distance[border].max() <= 6.5  # on the 2-5 voxel eroded contour
    stroke = simulate_scribbles(component[None].astype(np.uint8), 2, case_rng(0, "w"), width=3)[0] == 1
    assert ndimage.binary_erosion(stroke, EIGHT).any()        # 3 voxels wide
    with pytest.raises(ValueError, match="odd"):
        simulate_scribbles(component[None].astype(np.uint8), 2, case_rng(0, "w"), width=2)
    with pytest.raises(UserFacingError, match="odd"):
        SimulateHook(2, width=4)


def test_slicing_axis_defaults_to_the_largest_spacing():
    assert slice_axis((5.0, 1.5, 1.5), 3) == 0 and slice_axis((1.0, 1.0, 3.0), 3) == 2 and slice_axis(None, 3) == 0
    dense = np.moveaxis(organs(3), 0, 2).copy()  # slices now along the last axis
    scribble = SimulateHook(4)("c", None, dense, (1.0, 1.0, 6.0))
    for k in range(dense.shape[2]):
        for c in np.unique(dense[..., k]):
            assert (scribble[..., k] == c).any(), (k, c)


def components_of(scribble2d: np.ndarray, ignore: int) -> list[np.ndarray]:
    out = []
    for value in np.unique(scribble2d[scribble2d != ignore]):
        labelled, n = ndimage.label(scribble2d == value, EIGHT)
        out += [labelled == i for i in range(1, n + 1)]
    return out


@pytest.mark.parametrize("ratio", [10, 30, 50, 90])
def test_shrink_removes_whole_components_first_then_a_contiguous_part(ratio):
    scribble = simulate_scribbles(organs(), 4, case_rng(0, "s"))
    shrunk = shrink_scribbles(scribble, 4, ratio, np.random.default_rng(3))
    kept = shrunk != 4
    assert (kept <= (scribble != 4)).all()
    np.testing.assert_array_equal(shrunk[kept], scribble[kept])
    for k in range(scribble.shape[0]):
        before = int((scribble[k] != 4).sum())
        assert before - kept[k].sum() == round(ratio / 100 * before)            # exact share per slice
        partial = [c for c in components_of(scribble[k], 4) if 0 < kept[k][c].sum() < c.sum()]
        assert len(partial) <= 1                                                 # whole components first
        for c in partial:                                                        # the rest stays connected
            assert ndimage.label(kept[k] & c, EIGHT)[1] == 1


def test_shrink_is_reproducible_and_validated():
    scribble = simulate_scribbles(organs(2), 4, case_rng(0, "s"))
    hook = ShrinkHook(4, 40, seed=2)
    np.testing.assert_array_equal(hook("x", scribble, None, None), ShrinkHook(4, 40, seed=2)("x", scribble, None, None))
    np.testing.assert_array_equal(shrink_scribbles(scribble, 4, 0, np.random.default_rng(0)), scribble)
    with pytest.raises(UserFacingError, match="--ratio"):
        ShrinkHook(4, 100)
    with pytest.raises(UserFacingError, match="--shrink"):
        SimulateHook(4, shrink=-1)


def test_simulate_and_shrink_datasets_through_the_cli(tmp_path, nnunet_dirs):
    make_folder_3d(tmp_path / "src", n_patients=3)
    assert convert_folder_3d(tmp_path / "src", 5, "Toy", "--preset", "acdc") == 0
    raw = nnunet_dirs["nnUNet_raw"]
    assert run_cli("simulate-scribbles", "-s", 5, "-d", 6, "-np", 1) == 0
    sim = raw / "Dataset006_ToySimulated"
    assert json.loads((sim / "dataset.json").read_text())["labels"]["ignore"] == 4
    assert splits_of(nnunet_dirs, sim.name) == splits_of(nnunet_dirs, "Dataset005_Toy")  # folds stay comparable
    assert sorted(p.name for p in (sim / "imagesTs").iterdir()) == ["tcase_0000.nii.gz"]
    scribble, header = read(sim / "labelsTr" / "pat1_visit0.nii.gz")
    dense, dense_header = read(sim / "labelsTr_dense" / "pat1_visit0.nii.gz")
    np.testing.assert_array_equal(dense, read(raw / "Dataset005_Toy" / "labelsTr_dense" / "pat1_visit0.nii.gz")[0])
    annotated = scribble != 4
    assert annotated.any() and (scribble[annotated] == dense[annotated]).all()
    assert header.GetSpacing() == dense_header.GetSpacing()

    assert run_cli("shrink-scribbles", "-s", 6, "-d", 7, "--ratio", 40, "-np", 1) == 0
    shrunk = read(raw / "Dataset007_ToySimulatedShrink40" / "labelsTr" / "pat1_visit0.nii.gz")[0]
    assert ((shrunk != 4) <= annotated).all()
    assert abs((shrunk != 4).sum() / annotated.sum() - 0.6) < 0.05

    assert run_cli("simulate-scribbles", "-s", 5, "-d", 8, "-n", "ToySim50", "--shrink", 50, "--seed", 1, "-np", 1) == 0
    half = read(raw / "Dataset008_ToySim50" / "labelsTr" / "pat1_visit0.nii.gz")[0]
    assert 0 < (half != 4).sum() < annotated.sum()

    out = tmp_path / "folder_mode"
    assert run_cli("simulate-scribbles", "-i", tmp_path / "src" / "dense", "-o", out, "--num-classes", 4, "-np", 1) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(p.name for p in (tmp_path / "src" / "dense").iterdir())
    assert (out / MARKER).is_file() and len(list(out.iterdir())) == 7  # the labels and the tool's marker
    # two workers: the parallel path (spawned processes, pickled hooks) is exercised here
    assert run_cli("shrink-scribbles", "-i", out, "-o", tmp_path / "shrunk", "--ignore-label", 4, "--ratio", 20,
                   "-np", 2) == 0
    assert len(list((tmp_path / "shrunk").glob("*.nii.gz"))) == 6


def test_simulation_and_shrink_refuse_unsuitable_sources(tmp_path, nnunet_dirs, capsys):
    make_folder_3d(tmp_path / "src", n_patients=2)
    assert run_cli("convert", "folder", "-i", tmp_path / "src" / "images", "-s", tmp_path / "src" / "scribbles",
                   "--scribble-suffix", "_scr", "--preset", "acdc", "-d", 5, "-n", "NoDense", "-np", 1) == 0
    assert run_cli("simulate-scribbles", "-s", 5, "-d", 6) == 2
    assert "simulation needs dense labels" in capsys.readouterr().err
    assert run_cli("simulate-scribbles", "-s", 5) == 2
    assert "give the target dataset ID with -d" in capsys.readouterr().err
    assert run_cli("shrink-scribbles", "-i", tmp_path / "src" / "dense", "-d", 6, "--ratio", 10) == 2
    assert "folder mode needs -o OUT and --ignore-label" in capsys.readouterr().err
    assert run_cli("simulate-scribbles", "-s", 99, "-d", 6) == 2
    assert "found 0 matching folders" in capsys.readouterr().err


def test_folder_mode_warns_about_scribbles_without_background(tmp_path, capsys):
    """Dense labels without background (a crop inside an organ) give scribbles without background: warned."""
    from conversion_helpers import write_nifti

    dense = tmp_path / "dense"
    write_nifti(organs(2)[:, 35:45, 35:45].copy(), dense / "inside.nii.gz")   # classes 2 and 3 only
    write_nifti(organs(2), dense / "whole.nii.gz")
    assert run_cli("simulate-scribbles", "-i", dense, "-o", tmp_path / "out", "--num-classes", 4, "-np", 1) == 0
    err = capsys.readouterr().err
    assert f"{dense / 'inside.nii.gz'}: no background scribble" in err
    assert "whole.nii.gz: no background" not in err
    assert "warning: 1 of 2 files have no background scribble (inside.nii.gz)" in err
