"""Mixed-label datasets: `derive-mixed` and `convert acdc --dense-patients/--unlabeled-patients`.

Dense, scribbled and unlabeled training cases: the selection syntax, the labels written for each kind, the
patient grouping, the kept splits, the per-fold summary (printed and in mixed_labels.json), the bad-input
errors, and nnU-Net's planning and preprocessing of a mixed dataset (slow).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conversion_helpers import (assert_patient_grouped, convert_folder_3d, make_acdc, make_folder_3d, nnunet_dirs,
                                read, run_cli, splits_of)
from nnunet_scribble.conversion.mixed import choose_kinds
from nnunet_scribble.conversion.output import MARKER
from nnunet_scribble.demo.run import DATASET_NAME, write_dataset
from nnunet_scribble.errors import UserFacingError

__all__ = ["nnunet_dirs"]
IGNORE = 4
KIND_COUNTS = ("dense", "scribbled", "unlabeled")


@pytest.fixture
def demo_source(nnunet_dirs):
    """The demo's scribble dataset (ID 990): 8 training cases demo_000..007 with labelsTr_dense, 2 test cases."""
    return write_dataset(nnunet_dirs["nnUNet_raw"], n_train=8, n_test=2, seed=1)


def kinds_of(folder) -> dict:
    return json.loads((folder / "mixed_labels.json").read_text())["cases"]


def label(folder, sub, case):
    return read(folder / sub / f"{case}.nii.gz")[0]


# --- the selection -------------------------------------------------------------------------------------------------

PATIENTS = {f"patient{p:03d}_frame{f:02d}": f"patient{p:03d}" for p in range(1, 9) for f in (1, 12)}


def test_selection_by_ids_numbers_ranges_rest_and_seeded_draws():
    kinds = choose_kinds(PATIENTS, {"dense": ("--dense", "1-2,patient005"), "scribbled": ("--scribbled", "rest")},
                         "unlabeled")
    assert {c for c, k in kinds.items() if k == "dense"} == {
        "patient001_frame01", "patient001_frame12", "patient002_frame01", "patient002_frame12",
        "patient005_frame01", "patient005_frame12"}
    assert sum(k == "scribbled" for k in kinds.values()) == 10 and "unlabeled" not in kinds.values()

    drawn = choose_kinds(PATIENTS, {"dense": ("--dense", "random:2"), "scribbled": ("--scribbled", "3 random:1")},
                         "unlabeled", seed=7)
    assert drawn == choose_kinds(PATIENTS, {"dense": ("--dense", "random:2"),
                                            "scribbled": ("--scribbled", "3 random:1")}, "unlabeled", seed=7)
    counts = {k: sum(v == k for v in drawn.values()) for k in KIND_COUNTS}
    assert counts == {"dense": 4, "scribbled": 4, "unlabeled": 8}   # patients: 2 dense, 1 + 1 scribbled, 4 others
    assert drawn["patient003_frame01"] == drawn["patient003_frame12"] == "scribbled"  # the list goes first
    for patient in {p for p in PATIENTS.values()}:  # a patient's frames never get different kinds
        assert drawn[f"{patient}_frame01"] == drawn[f"{patient}_frame12"]
    others = [choose_kinds(PATIENTS, {"dense": ("--dense", "random:2")}, "unlabeled", seed=s) for s in range(6)]
    assert len({tuple(sorted(o.items())) for o in others}) > 1   # the seed matters

    single = {f"demo_{i:03d}": f"demo_{i:03d}" for i in range(8)}   # no grouping: a case is a patient
    assert choose_kinds(single, {"scribbled": ("--scribbled", "demo_000, 7")}, "unlabeled") == {
        **{c: "unlabeled" for c in single}, "demo_000": "scribbled", "demo_007": "scribbled"}


@pytest.mark.parametrize("specs, message", [
    ({"dense": ("--dense", "1"), "scribbled": ("--scribbled", "1-2")}, "patient patient001 is chosen both as dense"),
    ({"dense": ("--dense", "patient001_frame01")}, "case patient001_frame01 belongs to patient patient001, which has 2"),
    ({"dense": ("--dense", "9")}, "no training patient numbered 9"),
    ({"dense": ("--dense", "patient071")}, "patient071 is a test case or patient"),
    ({"dense": ("--dense", "bogus")}, "'bogus' is neither a training patient nor a training case"),
    ({"dense": ("--dense", "random:9")}, "random:9: only 8 training patient"),
    ({"dense": ("--dense", "random:two")}, "write random:N with a whole number"),
    ({"dense": ("--dense", "rest"), "scribbled": ("--scribbled", "rest")}, "'rest' is given to both"),
])
def test_selection_errors_name_the_option_and_the_fix(specs, message):
    with pytest.raises(UserFacingError, match=message):
        choose_kinds(PATIENTS, specs, "unlabeled", test_ids={"patient071"})


def test_numbers_need_numbered_patient_ids():
    with pytest.raises(UserFacingError, match="not one prefix plus a number"):
        choose_kinds({"liver_a": "liver_a", "lung_b": "lung_b"}, {"dense": ("--dense", "1")}, "unlabeled")


# --- derive-mixed ---------------------------------------------------------------------------------------------------

def test_derive_mixed_keeps_dense_scribbles_and_makes_the_rest_unlabeled(demo_source, nnunet_dirs, capsys):
    assert run_cli("derive-mixed", "-s", 990, "-d", 991, "--dense", "demo_000,demo_001", "--scribbled", "2-3",
                   "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset991_ScribbleDemoMixed"
    stdout = capsys.readouterr().out
    assert "mixed labels: 8 training cases: 2 dense, 2 scribbled, 4 unlabeled; 2 test cases" in stdout
    kinds = kinds_of(out)
    assert kinds == {"demo_000": "dense", "demo_001": "dense", "demo_002": "scribbled", "demo_003": "scribbled",
                     **{f"demo_{i:03d}": "unlabeled" for i in range(4, 8)}}
    for case, kind in kinds.items():
        dense = label(demo_source, "labelsTr_dense", case)
        np.testing.assert_array_equal(label(out, "labelsTr_dense", case), dense)   # kept for every case
        written = label(out, "labelsTr", case)
        if kind == "dense":
            np.testing.assert_array_equal(written, dense)
        elif kind == "scribbled":
            np.testing.assert_array_equal(written, label(demo_source, "labelsTr", case))
        else:
            assert (written == IGNORE).all() and written.shape == dense.shape
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["demo_008.nii.gz", "demo_009.nii.gz"]
    np.testing.assert_array_equal(label(out, "labelsTs", "demo_008"), label(demo_source, "labelsTs", "demo_008"))
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"]["ignore"] == IGNORE and dataset["numTraining"] == 8 and dataset["numTest"] == 2
    assert (out / MARKER).is_file()

    # the per-fold summary matches the splits, and is printed
    summary = json.loads((out / "mixed_labels.json").read_text())
    splits = splits_of(nnunet_dirs, out.name)
    assert summary["training_cases"] == {"dense": 2, "scribbled": 2, "unlabeled": 4}
    assert len(summary["folds"]) == len(splits) == 5
    for fold, split in zip(summary["folds"], splits):
        for part in ("train", "val"):
            assert fold[part] == {k: sum(kinds[c] == k for c in split[part]) for k in KIND_COUNTS}
        t, v = fold["train"], fold["val"]
        assert (f"fold {fold['fold']}: train {t['dense']} dense, {t['scribbled']} scribbled, {t['unlabeled']} "
                f"unlabeled | val {v['dense']} dense") in stdout

    # no scribble-map complaints for the unlabeled cases; a rerun needs --overwrite, which replaces it
    assert "empty scribble" not in capsys.readouterr().err
    assert run_cli("derive-mixed", "-s", 990, "-d", 991, "--dense", "rest", "-np", 1) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert run_cli("derive-mixed", "-s", 990, "-d", 991, "--dense", "rest", "--overwrite", "-np", 1) == 0
    assert set(kinds_of(out).values()) == {"dense"}


def test_derive_mixed_keeps_patients_together_and_the_source_splits(tmp_path, nnunet_dirs, capsys):
    make_folder_3d(tmp_path / "src", n_patients=5)
    assert convert_folder_3d(tmp_path / "src", 5, "Toy", "--preset", "acdc") == 0
    assert run_cli("derive-mixed", "-s", 5, "-d", 6, "--patient-pattern", r"^(pat\d+)_", "--dense", "pat0",
                   "--scribbled", "random:2", "--seed", 3, "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset006_ToyMixed"
    kinds = kinds_of(out)
    assert len(kinds) == 10
    for p in range(5):
        assert kinds[f"pat{p}_visit0"] == kinds[f"pat{p}_visit1"]
    assert kinds["pat0_visit0"] == "dense"
    assert sum(k == "scribbled" for k in kinds.values()) == 4
    assert splits_of(nnunet_dirs, out.name) == splits_of(nnunet_dirs, "Dataset005_Toy")
    assert json.loads((out / "splits_final.json").read_text()) == splits_of(nnunet_dirs, "Dataset005_Toy")
    assert_patient_grouped(splits_of(nnunet_dirs, out.name), lambda c: c.split("_")[0])
    assert (out / "imagesTs" / "tcase_0000.nii.gz").is_file()

    # a case of a two-case patient cannot be chosen alone
    assert run_cli("derive-mixed", "-s", 5, "-d", 7, "--patient-pattern", r"^(pat\d+)_", "--dense", "pat0_visit0",
                   "--scribbled", "rest", "-np", 1) == 2
    assert "belongs to patient pat0, which has 2 training cases" in capsys.readouterr().err


def test_acdc_style_ids_group_by_patient_without_a_pattern(tmp_path, nnunet_dirs):
    make_acdc(tmp_path / "ACDC", patients=(1, 2, 3, 4, 5, 6))
    assert run_cli("convert", "acdc", "-i", tmp_path / "ACDC", "-s", tmp_path / "ACDC" / "scribbles", "-d", 27,
                   "-np", 1) == 0
    assert run_cli("derive-mixed", "-s", 27, "-d", 28, "--dense", "random:2", "--scribbled", "random:2",
                   "--seed", 1, "-np", 1) == 0
    kinds = kinds_of(nnunet_dirs["nnUNet_raw"] / "Dataset028_ACDCScribbleMixed")
    for p in range(1, 7):
        assert kinds[f"patient{p:03d}_frame01"] == kinds[f"patient{p:03d}_frame12"]
    assert sorted(kinds.values()).count("dense") == 4 and sorted(kinds.values()).count("unlabeled") == 4


def test_a_fold_without_labeled_training_case_is_refused_or_warned(demo_source, nnunet_dirs, capsys):
    assert run_cli("derive-mixed", "-s", 990, "-d", 991, "--dense", "demo_003", "-np", 1) == 2
    err = capsys.readouterr().err
    assert "holds no dense or scribbled case" in err and "--allow-unlabeled-folds" in err and "nothing was written" in err
    assert not (nnunet_dirs["nnUNet_raw"] / "Dataset991_ScribbleDemoMixed").exists()
    assert run_cli("derive-mixed", "-s", 990, "-d", 991, "--dense", "demo_003", "--allow-unlabeled-folds",
                   "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset991_ScribbleDemoMixed"
    fold, split = next((i, f) for i, f in enumerate(splits_of(nnunet_dirs, out.name)) if "demo_003" in f["val"])
    n = len(split["train"])
    assert f"warning: fold {fold}: its training part ({n} cases) holds no dense or scribbled case" in \
        capsys.readouterr().err
    assert json.loads((out / "mixed_labels.json").read_text())["folds"][fold]["train"] == {
        "dense": 0, "scribbled": 0, "unlabeled": n}

    assert run_cli("derive-mixed", "-s", 990, "-d", 992, "--dense", "none", "--scribbled", "none",
                   "--allow-unlabeled-folds") == 2
    assert "no training case is dense or scribbled" in capsys.readouterr().err
    assert run_cli("derive-mixed", "-s", 990, "-d", 992) == 2
    assert "choose the labeled cases with --dense SPEC and/or --scribbled SPEC" in capsys.readouterr().err


def test_a_dense_source_gives_dense_and_unlabeled_cases_but_no_scribbled(demo_source, nnunet_dirs, capsys):
    dense_source = nnunet_dirs["nnUNet_raw"] / "Dataset980_DenseDemo"
    shutil.copytree(demo_source, dense_source)
    shutil.rmtree(dense_source / "labelsTr")
    (dense_source / "labelsTr_dense").rename(dense_source / "labelsTr")
    dataset = json.loads((dense_source / "dataset.json").read_text())
    del dataset["labels"]["ignore"]
    (dense_source / "dataset.json").write_text(json.dumps(dataset))

    assert run_cli("derive-mixed", "-s", 980, "-d", 981, "--scribbled", "demo_001", "--dense", "0") == 2
    err = capsys.readouterr().err
    assert "labelsTr holds dense labels (dataset.json has no ignore label)" in err
    assert "Run simulate-scribbles first (nnunet-scribble simulate-scribbles -s Dataset980_DenseDemo" in err

    assert run_cli("derive-mixed", "-s", 980, "-d", 981, "--dense", "0-3", "-np", 1) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset981_DenseDemoMixed"
    assert json.loads((out / "dataset.json").read_text())["labels"]["ignore"] == IGNORE
    np.testing.assert_array_equal(label(out, "labelsTr", "demo_002"), label(dense_source, "labelsTr", "demo_002"))
    assert (label(out, "labelsTr", "demo_006") == IGNORE).all()
    np.testing.assert_array_equal(label(out, "labelsTr_dense", "demo_006"), label(dense_source, "labelsTr", "demo_006"))


def test_dense_cases_need_dense_labels_and_scribbled_cases_real_scribbles(demo_source, nnunet_dirs, capsys):
    no_dense = nnunet_dirs["nnUNet_raw"] / "Dataset980_NoDense"
    shutil.copytree(demo_source, no_dense)
    shutil.rmtree(no_dense / "labelsTr_dense")
    empty = label(no_dense, "labelsTr", "demo_005")
    empty[:] = IGNORE
    from conversion_helpers import write_nifti

    write_nifti(empty, no_dense / "labelsTr" / "demo_005.nii.gz", spacing=(1.25, 1.25), origin=(0, 0),
                direction=(1, 0, 0, 1))
    assert run_cli("derive-mixed", "-s", 980, "-d", 981, "--dense", "1", "--scribbled", "rest") == 2
    assert "no labelsTr_dense folder, so there are no dense labels for the 1 case(s) chosen with --dense (demo_001)" \
        in capsys.readouterr().err
    # an all-ignore scribble map is an error for a scribbled case, and fine (no warning) for an unlabeled one
    assert run_cli("derive-mixed", "-s", 980, "-d", 981, "--scribbled", "rest", "-np", 1) == 2
    assert "demo_005.nii.gz: empty scribble map (no annotated voxel)" in capsys.readouterr().err
    assert run_cli("derive-mixed", "-s", 980, "-d", 981, "--scribbled", "0-4,6-7", "-np", 1) == 0
    err = capsys.readouterr().err
    assert "empty scribble" not in err and "no background scribble" not in err
    assert not (nnunet_dirs["nnUNet_raw"] / "Dataset981_NoDenseMixed" / "labelsTr_dense").exists()


# --- convert acdc with mixed labels ---------------------------------------------------------------------------------

def test_acdc_dense_and_unlabeled_patients(tmp_path, nnunet_dirs, capsys):
    make_acdc(tmp_path / "ACDC", patients=(1, 2, 3, 4, 5, 6))
    for frame in ("01", "12"):   # unlabeled and dense patients need no scribble files
        (tmp_path / "ACDC" / "scribbles" / f"patient002_frame{frame}_scribble.nii.gz").unlink()
        (tmp_path / "ACDC" / "scribbles" / f"patient001_frame{frame}_scribble.nii.gz").unlink()
    args = ("convert", "acdc", "-i", tmp_path / "ACDC", "-s", tmp_path / "ACDC" / "scribbles", "-d", 27, "-np", 1)
    assert run_cli(*args, "--test-patients", 6, "--dense-patients", 1, "--unlabeled-patients", "2-3") == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset027_ACDCScribble"
    assert "mixed labels: 10 training cases: 2 dense, 4 scribbled, 4 unlabeled; 2 test cases" in capsys.readouterr().out
    kinds = kinds_of(out)
    for frame in ("01", "12"):
        np.testing.assert_array_equal(label(out, "labelsTr", f"patient001_frame{frame}"),
                                      label(out, "labelsTr_dense", f"patient001_frame{frame}"))
        for p in (2, 3):
            assert (label(out, "labelsTr", f"patient00{p}_frame{frame}") == IGNORE).all()
            assert kinds[f"patient00{p}_frame{frame}"] == "unlabeled"
        np.testing.assert_array_equal(label(out, "labelsTr", f"patient004_frame{frame}"),
                                      read(tmp_path / "ACDC" / "scribbles" / f"patient004_frame{frame}_scribble.nii.gz")[0])
    assert "patient006_frame01" not in kinds

    # a scribbled patient still needs its scribbles; a patient chosen twice and a fold without labels are errors
    assert run_cli(*args, "--overwrite", "--dense-patients", 2, "--unlabeled-patients", 3) == 2
    assert "patient001_frame01.nii.gz: no scribble patient001_frame01_scribble.nii.gz" in capsys.readouterr().err
    assert run_cli(*args, "--overwrite", "--dense-patients", "1-2", "--unlabeled-patients", 2) == 2
    assert "patient patient002 is chosen both as dense and as unlabeled" in capsys.readouterr().err
    assert run_cli(*args, "--overwrite", "--dense-patients", 1, "--unlabeled-patients", "rest") == 2
    assert "holds no dense or scribbled case" in capsys.readouterr().err
    assert kinds_of(out) == kinds   # nothing was replaced


# --- nnU-Net on a mixed dataset ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_nnunet_plans_and_preprocesses_a_mixed_dataset(tiny_mixed_dataset):
    """The conftest fixture runs `nnUNetv2_plan_and_preprocess -c 2d` on a derived 2 dense / 2 scribbled / 4
    unlabeled dataset; nnU-Net keeps the all-ignore cases, with no annotated voxel."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    root, name = tiny_mixed_dataset
    pre = root / "nnUNet_preprocessed" / name
    kinds = kinds_of(root / "nnUNet_raw" / name)
    assert list(kinds.values()).count("unlabeled") == 4
    folder = pre / "nnUNetPlans_2d"
    dataset = infer_dataset_class(str(folder))(str(folder))
    assert sorted(dataset.identifiers) == sorted(kinds)
    annotated = (-1, 0, 1, 2, 3)   # nnU-Net's key of the annotated-voxel locations of an ignore-label dataset
    for case, kind in kinds.items():
        seg = np.asarray(dataset.load_case(case)[1][:])
        locations = dataset.load_case(case)[3]["class_locations"]
        if kind == "unlabeled":
            assert set(np.unique(seg)) <= {-1, IGNORE} and len(locations.get(annotated, ())) == 0
        else:
            assert len(locations[annotated]) > 0
            if kind == "dense":
                assert IGNORE not in np.unique(seg)
    assert json.loads((pre / "splits_final.json").read_text()) == json.loads(
        (root / "nnUNet_raw" / name / "splits_final.json").read_text())
