"""Model selection against dense labels (`find-best-configuration`), the scribble proxy, and `export` to stock
nnU-Net. Fast tests build nnU-Net results folders by hand (validation predictions made from the dense labels);
the slow test trains a 5-fold CV of two trainers through nnU-Net's CLI once and checks stock nnU-Net's commands."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import console_script, nnunet_env, run_checked

from nnunet_scribble.demo.run import DATASET_ID
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.selection import proxy

ENDING = ".nii.gz"
FOLDS = {f: [f"demo_{i:03d}" for i in range(8) if i % 5 == f] for f in range(5)}
SPECKS, GOOD = "nnUNetTrainerSpecks", "nnUNetTrainerGood"


# ---- the proxy (pure functions) --------------------------------------------------------------------
def _loop_case():
    """40x40: background scribble = a closed square ring (rows/cols 5..34), class-1 scribble inside; the
    prediction has a 11x11 class-1 box inside the loop and a 2x2 false positive outside it."""
    ignore = 4
    s = np.full((40, 40), ignore)
    s[5, 5:35] = s[34, 5:35] = s[5:35, 5] = s[5:35, 34] = 0
    s[20, 16:25] = 1
    p = np.zeros((40, 40), int)
    p[15:26, 15:26] = 1
    p[0:2, 0:2] = 1
    return p, s, ignore


def test_enclosed_region_is_the_inside_of_the_background_loop():
    _, s, ignore = _loop_case()
    region = proxy.enclosed_region(s, ignore_label=ignore)
    assert region[6:34, 6:34].all() and not region[5, 10] and not region[0, 0] and region.sum() == 28 * 28
    open_loop = s.copy()
    open_loop[5, 20] = ignore                      # a gap: nothing enclosed -> the whole image
    assert proxy.enclosed_region(open_loop, ignore_label=ignore).all()


def test_outside_fraction_counts_the_false_positives_outside_the_loop():
    p, s, ignore = _loop_case()
    region = proxy.enclosed_region(s, ignore_label=ignore)
    assert proxy.outside_fraction(p, region) == pytest.approx(4 / 125)
    assert proxy.outside_fraction(np.zeros_like(p), region) == 0.0


def test_scribble_dice_and_components():
    p, s, ignore = _loop_case()
    assert proxy.scribble_dice(p, s, [1, 2], ignore) == {1: 1.0, 2: pytest.approx(float("nan"), nan_ok=True)}
    wrong = p.copy()
    wrong[20, 16:20] = 0                           # 4 of 9 scribbled voxels missed
    assert proxy.scribble_dice(wrong, s, [1], ignore)[1] == pytest.approx(2 * 5 / (5 + 9))
    stats = proxy.component_stats(p, [1, 2])
    assert stats[1] == {"components": 2, "outside_largest": pytest.approx(4 / 125)} and stats[2]["components"] == 0
    case = proxy.case_proxy(p, s, [1, 2], ignore)
    assert case["score"] == pytest.approx(1.0 * (1 - 4 / 125))
    clean = p.copy()
    clean[0:2, 0:2] = 0
    assert proxy.case_proxy(clean, s, [1, 2], ignore)["score"] > case["score"]
    summary = proxy.proxy_score({"a": case, "b": proxy.case_proxy(clean, s, [1, 2], ignore)})
    assert summary["n_cases"] == 2 and summary["score"] == pytest.approx((1 + 1 - 4 / 125) / 2)


def test_region_per_slice_along_the_slice_axis():
    _, s2, ignore = _loop_case()
    s = np.stack([s2, np.full_like(s2, ignore)])    # slice 1 has no scribble: all of it may be foreground
    region = proxy.enclosed_region(s, ignore_label=ignore, axis=0)
    assert region[1].all() and region[0].sum() == 28 * 28
    assert proxy.slice_axis((999.0, 1.25, 1.25)) == 0 and proxy.slice_axis((1.0, 1.0, 1.2)) is None
    assert proxy.slice_axis((1.25, 1.25)) is None


# ---- hand-made nnU-Net results folders ------------------------------------------------------------------
def _specks(dense: np.ndarray, scribble: np.ndarray, ignore: int) -> np.ndarray:
    """Right on every scribbled voxel, but a 12x12 block of class 1 in unscribbled background (dense Dice drops,
    nnU-Net's scribble-voxel Dice stays 1)."""
    p = dense.copy()
    p[..., :12, :12][(scribble[..., :12, :12] == ignore) & (dense[..., :12, :12] == 0)] = 1
    return p


def _good(dense: np.ndarray, scribble: np.ndarray, ignore: int) -> np.ndarray:
    """Dense labels with half of the class-1 scribble voxels missed (scribble-voxel Dice drops, dense Dice
    barely) and a 2x2 speck of class 2 in unscribbled background (removed by keeping the largest component)."""
    p = dense.copy()
    idx = np.flatnonzero(scribble == 1)
    p.flat[idx[::2]] = 0
    from scipy.ndimage import distance_transform_edt
    far = np.where((scribble == ignore) & (dense == 0), distance_transform_edt(dense == 0), 0)
    y, x = np.unravel_index(int(np.argmax(far)), far.shape)[-2:]
    y, x = min(y, dense.shape[-2] - 2), min(x, dense.shape[-1] - 2)
    p[..., y:y + 2, x:x + 2] = np.where(scribble[..., y:y + 2, x:x + 2] == ignore, 2, p[..., y:y + 2, x:x + 2])
    return p


def _write_like(array: np.ndarray, like: Path, out: Path) -> None:
    ref = sitk.ReadImage(str(like))
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(ref)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(out))


def write_fake_model(results: Path, raw: Path, preprocessed: Path, trainer: str, make, confidence: float,
                     folds=FOLDS, npz: bool = True) -> Path:
    """A results folder ``<trainer>__nnUNetPlans__2d`` whose validation predictions are ``make(dense,
    scribble, ignore)``, with probabilities (``confidence`` on the predicted class) for ensembling."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    folder = results / preprocessed.name / f"{trainer}__nnUNetPlans__2d"
    folder.mkdir(parents=True)
    shutil.copy(preprocessed / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(preprocessed / "dataset.json", folder / "dataset.json")
    ignore = json.loads((preprocessed / "dataset.json").read_text())["labels"]["ignore"]
    rw = SimpleITKIO()
    for f, cases in folds.items():
        for c in cases:
            dense_file = raw / "labelsTr_dense" / f"{c}{ENDING}"
            dense = sitk.GetArrayFromImage(sitk.ReadImage(str(dense_file)))
            scribble = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{c}{ENDING}")))
            out = folder / f"fold_{f}" / "validation" / f"{c}{ENDING}"
            _write_like(make(dense, scribble, ignore), dense_file, out)
            if npz:
                seg, props = rw.read_seg(str(out))
                probs = np.stack([(seg[0] == k) * confidence + (1 - confidence) / 4 for k in range(4)]).astype(np.float32)
                np.savez_compressed(out.parent / f"{c}.npz", probabilities=probs)
                with open(out.parent / f"{c}.pkl", "wb") as fh:
                    pickle.dump(props, fh)
    return folder


@pytest.fixture
def fake_results(tiny_dataset, tmp_path, monkeypatch):
    """nnU-Net's variables at the tiny dataset (raw, preprocessed: read only) and an empty results folder."""
    root, name = tiny_dataset
    env = nnunet_env(root, nnUNet_results=str(tmp_path / "nnUNet_results"))
    for k, v in env.items():
        if k.startswith("nnUNet") or k == "OMP_NUM_THREADS":
            monkeypatch.setenv(k, v)
    return tmp_path / "nnUNet_results", root / "nnUNet_raw" / name, root / "nnUNet_preprocessed" / name


def _two_models(fake_results):
    results, raw, pre = fake_results
    write_fake_model(results, raw, pre, SPECKS, _specks, 0.9)
    write_fake_model(results, raw, pre, GOOD, _good, 0.6)
    from nnunet_scribble.selection.best_configuration import models_from_lists
    return models_from_lists([SPECKS, GOOD], ["2d"], ["nnUNetPlans"])


def _run_cli(*args) -> int:
    from nnunet_scribble.cli import main
    return main(["find-best-configuration", *map(str, args)])


def test_chooses_by_dense_dice_where_nnunet_scribble_dice_disagrees(fake_results, capsys):
    from nnunet_scribble.selection.best_configuration import find_best_configuration

    results, raw, pre = fake_results
    models = _two_models(fake_results)
    info = find_best_configuration(DATASET_ID, models, num_processes=1)
    scores = info["nnunet_scribble"]["results"]
    specks, good = (f"{t}__nnUNetPlans__2d" for t in (SPECKS, GOOD))
    # nnU-Net's own (scribble-voxel) Dice prefers the specks model; the dense Dice the good one
    assert scores[specks]["nnunet_scribble_voxel_dice"] > scores[good]["nnunet_scribble_voxel_dice"]
    assert info["all_results"][good] > info["all_results"][specks]
    assert info["best_model_or_ensemble"]["selected_model_or_models"] == [
        {"configuration": "2d", "trainer": GOOD, "plans_identifier": "nnUNetPlans"}]
    assert len(info["all_results"]) == 3 and any(k.startswith("ensemble___") for k in info["all_results"])
    assert info["nnunet_scribble"]["n_cases_scored"] == 8
    # nnU-Net's files, where nnU-Net writes them; the speck is removed by the postprocessing found on dense labels
    dataset = results / pre.name
    crossval = dataset / f"{good}" / "crossval_results_folds_0_1_2_3_4"
    fns, kwargs = pickle.load(open(crossval / "postprocessing.pkl", "rb"))
    assert [f.__name__ for f in fns] and all(f.__module__.startswith("nnunetv2.") for f in fns)
    assert info["best_model_or_ensemble"]["result_on_crossval_post_pp"] > info["best_model_or_ensemble"]["result_on_crossval_pre_pp"]
    assert (crossval / "postprocessed" / "summary.json").is_file()
    summary = json.loads((crossval / "summary.json").read_text())
    assert summary["foreground_mean"]["Dice"] == pytest.approx(info["all_results"][good])
    assert json.loads((dataset / "inference_information.json").read_text())["all_results"] == info["all_results"]
    text = (dataset / "inference_instructions.txt").read_text()
    assert f"nnUNetv2_predict -d {pre.name}" in text and f"-tr {GOOD}" in text and "nnUNetv2_apply_postprocessing" in text
    out = capsys.readouterr().out
    assert "8 of the 8 cross-validation cases" in out and "scribble-voxel Dice" in out
    # stock nnUNetv2_apply_postprocessing takes what was written
    line = next(l for l in text.splitlines() if l.startswith("nnUNetv2_apply_postprocessing"))
    cmd = line.replace("OUTPUT_FOLDER_PP", str(results / "pp")).replace("OUTPUT_FOLDER", str(crossval)).split()
    cmd[cmd.index("-np") + 1] = "1"
    run_checked([console_script(cmd[0]), *cmd[1:]], dict(os.environ))
    assert len(list((results / "pp").glob(f"*{ENDING}"))) == 8


def test_scores_only_the_cases_with_dense_labels(fake_results, tmp_path, capsys):
    results, raw, pre = fake_results
    _two_models(fake_results)
    subset = tmp_path / "dense_subset"
    subset.mkdir()
    for f, cases in FOLDS.items():
        shutil.copy(raw / "labelsTr_dense" / f"{cases[0]}{ENDING}", subset)   # one case per fold
    assert _run_cli(DATASET_ID, "-c", "2d", "-tr", SPECKS, GOOD, "--dense", subset, "--no-ensembling") == 0
    info = json.loads((results / pre.name / "inference_information.json").read_text())
    assert info["nnunet_scribble"]["n_cases_scored"] == 5 and info["nnunet_scribble"]["cases_scored"] == sorted(
        c[0] for c in FOLDS.values())
    assert info["best_model_or_ensemble"]["selected_model_or_models"][0]["trainer"] == GOOD
    assert len(info["all_results"]) == 2
    assert "5 of the 8 cross-validation cases have one (only those are scored)" in capsys.readouterr().out
    crossval = results / pre.name / f"{GOOD}__nnUNetPlans__2d" / "crossval_results_folds_0_1_2_3_4"
    assert len(json.loads((crossval / "summary.json").read_text())["metric_per_case"]) == 5
    assert len(list(crossval.glob(f"*{ENDING}"))) == 8          # nnU-Net's accumulated predictions stay complete
    assert not any(p.is_symlink() for p in crossval.rglob("*"))


def test_a_fold_without_dense_case_is_refused(fake_results, tmp_path, capsys):
    results, raw, pre = fake_results
    _two_models(fake_results)
    subset = tmp_path / "dense_subset"
    subset.mkdir()
    shutil.copy(raw / "labelsTr_dense" / f"demo_000{ENDING}", subset)
    assert _run_cli(DATASET_ID, "-c", "2d", "-tr", GOOD, "--dense", subset) == 2
    err = capsys.readouterr().err
    assert "fold 1 of nnUNetTrainerGood__nnUNetPlans__2d" in err and str(subset) in err and "-f" in err
    assert not (results / pre.name / "inference_information.json").exists()


def test_missing_validation_names_the_folder_and_the_fix(fake_results, capsys):
    results, raw, pre = fake_results
    folder = write_fake_model(results, raw, pre, GOOD, _good, 0.6, npz=False)
    shutil.rmtree(folder / "fold_3" / "validation")
    assert _run_cli(DATASET_ID, "-c", "2d", "-tr", GOOD, "nnUNetTrainerAbsent") == 2
    err = capsys.readouterr().err
    assert str(folder / "fold_3" / "validation") in err and f"nnUNetv2_train {DATASET_ID} 2d 3 -tr {GOOD} -p nnUNetPlans --val --npz" in err
    assert "nnUNetTrainerAbsent__nnUNetPlans__2d does not exist" in err
    # ensembling needs probabilities: says so, and how to skip it
    shutil.rmtree(folder)
    write_fake_model(results, raw, pre, GOOD, _good, 0.6, npz=False)
    write_fake_model(results, raw, pre, SPECKS, _specks, 0.9, npz=False)
    assert _run_cli(DATASET_ID, "-c", "2d", "-tr", GOOD, SPECKS) == 2
    err = capsys.readouterr().err
    assert "--val --npz" in err and "--no-ensembling" in err


def test_dense_geometry_mismatch_is_refused(fake_results, tmp_path, capsys):
    results, raw, pre = fake_results
    write_fake_model(results, raw, pre, GOOD, _good, 0.6, npz=False)
    dense = tmp_path / "dense"
    shutil.copytree(raw / "labelsTr_dense", dense)
    bad = sitk.ReadImage(str(dense / f"demo_002{ENDING}"))
    bad.SetSpacing((2.0, 2.0))
    bad.SetOrigin((5.0, 0.0))
    sitk.WriteImage(bad, str(dense / f"demo_002{ENDING}"))
    assert _run_cli(DATASET_ID, "-c", "2d", "-tr", GOOD, "--dense", dense) == 2
    err = capsys.readouterr().err
    assert f"demo_002{ENDING}: spacing (2.0, 2.0) differs from the raw image" in err and "origin" in err
    assert str(raw / "imagesTr" / f"demo_002_0000{ENDING}") in err
    assert _run_cli(DATASET_ID, "-c", "2d", "-tr", GOOD, "--dense", tmp_path / "nowhere") == 2
    assert "is not a folder" in capsys.readouterr().err


def test_without_dense_labels_the_proxy_decides(fake_results, tmp_path, monkeypatch, capsys):
    results, raw, pre = fake_results
    raw_copy = tmp_path / "raw" / raw.name
    shutil.copytree(raw, raw_copy, ignore=shutil.ignore_patterns("labelsTr_dense"))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    write_fake_model(results, raw, pre, SPECKS, _specks, 0.9, npz=False)
    write_fake_model(results, raw, pre, GOOD, _good, 0.6, npz=False)
    assert _run_cli(DATASET_ID, "-c", "2d", "-tr", SPECKS, GOOD, "--no-ensembling") == 0
    out = capsys.readouterr().out
    assert "scribble proxy" in out and "not measured yet" in out
    info = json.loads((results / pre.name / "inference_information.json").read_text())
    assert info["nnunet_scribble"]["criterion"] == proxy.CRITERION and info["nnunet_scribble"]["reference_folder"] is None
    best = info["best_model_or_ensemble"]
    fns, kwargs = pickle.load(open(best["postprocessing_file"], "rb"))
    assert all(f.__module__.startswith("nnunetv2.") for f in fns) and len(fns) == len(kwargs)
    assert best["result_on_crossval_post_pp"] >= best["result_on_crossval_pre_pp"]
    assert (results / pre.name / "inference_instructions.txt").is_file()


# ---- export: which trainers' networks are stock (fast, no training) ------------------------------------------
@pytest.mark.parametrize("trainer,stock", [
    ("nnUNetTrainerPCE", True), ("nnUNetTrainerMaCo", True), ("nnUNetTrainerDMPLS", True),
    ("nnUNetTrainerSAMSP", True), ("nnUNetTrainerMedCL", True), ("nnUNetTrainerMeanTeacher", True),
    ("nnUNetTrainerCFR", True),
    ("nnUNetTrainerAttenScribble", False)])
def test_export_keeps_stock_networks_and_refuses_the_others(tiny_dataset, monkeypatch, trainer, stock):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_scribble.selection.export import stock_checkpoint

    root, name = tiny_dataset
    monkeypatch.setenv("nnUNet_extTrainer", nnunet_env(root)["nnUNet_extTrainer"])
    pre = root / "nnUNet_preprocessed" / name
    plans, dataset_json = (json.loads((pre / n).read_text()) for n in ("nnUNetPlans.json", "dataset.json"))
    pm = PlansManager(plans)
    cm = pm.get_configuration("2d")
    net = recursive_find_trainer_class_by_name(trainer).build_network_architecture(pm, cm, 1, 4, False)
    checkpoint = {"network_weights": net.state_dict(), "trainer_name": trainer, "init_args": {"configuration": "2d"},
                  "optimizer_state": {"x": 1}, "mean_teacher": {}}
    if not stock:
        with pytest.raises(UserFacingError, match="keep needing the plugin.*--keep-trainer"):
            stock_checkpoint(checkpoint, plans, dataset_json, source="x.pth")
        return
    out = stock_checkpoint(checkpoint, plans, dataset_json)
    assert out["trainer_name"] == "nnUNetTrainer" and out["nnunet_scribble_trainer_name"] == trainer
    assert "optimizer_state" not in out and "mean_teacher" not in out
    reference = nnUNetTrainer.build_network_architecture(pm, cm, 1, 4, False).state_dict()
    assert set(out["network_weights"]) == set(reference)
    assert all(torch.equal(out["network_weights"][k], net.state_dict()[k]) for k in reference)


def test_export_of_an_untrained_model_names_the_folder(fake_results, tmp_path, capsys):
    from nnunet_scribble.cli import main

    results, raw, pre = fake_results
    folder = write_fake_model(results, raw, pre, GOOD, _good, 0.6, npz=False)
    assert main(["export", str(DATASET_ID), "-o", str(tmp_path / "m.zip"), "-c", "2d", "-tr", GOOD, "-f", "0"]) == 2
    err = capsys.readouterr().err
    assert str(folder / "fold_0" / "checkpoint_final.pth") in err and f"nnUNetv2_train {DATASET_ID} 2d 0 -tr {GOOD}" in err
    assert not (tmp_path / "m.zip").exists()


# ---- slow: a real 5-fold CV of two trainers, stock nnU-Net afterwards ----------------------------------------
TRAINERS = ("nnUNetTrainerPCE_smoke", "nnUNetTrainerDMPLS_smoke")

# stock nnUNetv2_predict in a process where nnunet_scribble cannot be imported
_PREDICT_WITHOUT_PLUGIN = ("import sys; sys.modules['nnunet_scribble'] = None; "
                           "from nnunetv2.inference.predict_from_raw_data import predict_entry_point; "
                           "sys.argv[0] = 'nnUNetv2_predict'; predict_entry_point()")


@pytest.fixture(scope="module")
def trained_cv(tiny_dataset, tmp_path_factory):
    """Both trainers, folds 0-4 with --npz, trained once through nnUNetv2_train."""
    root, name = tiny_dataset
    tmp = tmp_path_factory.mktemp("selection_cv")
    env = nnunet_env(root, nnUNet_results=str(tmp / "nnUNet_results"))
    for trainer in TRAINERS:
        for fold in range(5):
            run_checked([console_script("nnUNetv2_train"), DATASET_ID, "2d", fold, "-tr", trainer, "-device", "cpu",
                         "--npz"], env)
    return root, name, tmp, env


def _predict(env, trainer, images, out, folds=("0", "1", "2", "3", "4"), without_plugin=False):
    args = ["-i", images, "-o", out, "-d", DATASET_ID, "-c", "2d", "-tr", trainer, "-f", *folds, "-device", "cpu",
            "--disable_tta", "-npp", "1", "-nps", "1"]
    if without_plugin:
        run_checked([sys.executable, "-c", _PREDICT_WITHOUT_PLUGIN, *args], env)
    else:
        run_checked([console_script("nnUNetv2_predict"), *args], env)
    return out


@pytest.mark.slow
def test_cross_validation_through_nnunet(trained_cv):
    root, name, tmp, env = trained_cv
    results = Path(env["nnUNet_results"]) / name
    raw = root / "nnUNet_raw" / name
    # 1. on the real CV results: the command runs, nnU-Net's files are where nnU-Net puts them
    run_checked([sys.executable, "-m", "nnunet_scribble.cli", "find-best-configuration", DATASET_ID, "-c", "2d",
                 "-tr", *TRAINERS], env)
    info = json.loads((results / "inference_information.json").read_text())
    assert len(info["all_results"]) == 3 and info["nnunet_scribble"]["n_cases_scored"] == 8
    for trainer in TRAINERS:
        log = next((results / f"{trainer}__nnUNetPlans__2d" / "fold_0").glob("training_log_*.txt")).read_text()
        assert "summary_dense.json" in log and "find-best-configuration" in log
    # 2. hand-made validation predictions where scribble and dense Dice disagree: the dense one decides
    for trainer, make, conf in ((TRAINERS[0], _specks, 0.9), (TRAINERS[1], _good, 0.6)):
        folder = results / f"{trainer}__nnUNetPlans__2d"
        splits = {int(p.parent.name[5:]): [] for p in folder.glob("fold_*/validation")}
        for f in splits:
            splits[f] = sorted(p.name[: -len(ENDING)] for p in (folder / f"fold_{f}" / "validation").glob(f"*{ENDING}"))
        tmp_model = write_fake_model(tmp / "made", raw, root / "nnUNet_preprocessed" / name, trainer, make, conf, splits)
        for f in splits:
            for p in (tmp_model / f"fold_{f}" / "validation").iterdir():
                shutil.copy(p, folder / f"fold_{f}" / "validation" / p.name)
    run_checked([sys.executable, "-m", "nnunet_scribble.cli", "find-best-configuration", DATASET_ID, "-c", "2d",
                 "-tr", *TRAINERS, "-np", "1"], env)
    info = json.loads((results / "inference_information.json").read_text())
    assert info["best_model_or_ensemble"]["selected_model_or_models"][0]["trainer"] == TRAINERS[1]
    # 3. the written instructions run with stock nnU-Net (predict + apply postprocessing)
    text = (results / "inference_instructions.txt").read_text()
    images = raw / "imagesTs"
    pred = _predict(env, TRAINERS[1], images, tmp / "pred")
    line = next(l for l in text.splitlines() if l.startswith("nnUNetv2_apply_postprocessing"))
    cmd = line.replace("OUTPUT_FOLDER_PP", str(tmp / "pred_pp")).replace("OUTPUT_FOLDER", str(pred)).split()
    cmd[cmd.index("-np") + 1] = "1"
    run_checked([console_script(cmd[0]), *cmd[1:]], env)
    assert len(list((tmp / "pred_pp").glob(f"*{ENDING}"))) == len(list(images.glob(f"*_0000{ENDING}")))
    # 4. export: stock nnU-Net predicts the same without the plugin
    plain = {k: v for k, v in env.items() if k != "nnUNet_extTrainer"}
    for trainer in TRAINERS:
        zip_file = tmp / f"{trainer}.zip"
        run_checked([sys.executable, "-m", "nnunet_scribble.cli", "export", DATASET_ID, "-o", zip_file, "-c", "2d",
                     "-tr", trainer, "-f", "0", "1"], env)
        installed = {**plain, "nnUNet_results": str(tmp / f"installed_{trainer}")}
        run_checked([console_script("nnUNetv2_install_pretrained_model_from_zip"), zip_file], installed)
        import zipfile
        names = zipfile.ZipFile(zip_file).namelist()
        assert any(n.endswith("validation/summary_dense.json") for n in names)
        with_plugin = _predict(env, trainer, images, tmp / f"with_{trainer}", folds=("0", "1"))
        without = _predict(installed, trainer, images, tmp / f"without_{trainer}", folds=("0", "1"),
                           without_plugin=True)
        for p in sorted(with_plugin.glob(f"*{ENDING}")):
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(without / p.name)))
            assert np.array_equal(a, b), p.name
