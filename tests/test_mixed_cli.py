"""Training on mixed-label datasets (dense + scribbled + unlabeled cases) through nnU-Net's CLI: PCE, SAM-SP,
Mean Teacher and CFR in 2d, Mean Teacher in 3d_fullres; every batch draws its labeled share and prediction works."""
import json
import shutil
from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TINY_3D_ID, console_script, nnunet_env, predict_through_cli, run_checked, train_through_cli

from nnunet_scribble.demo.run import DATASET_ID


def _check_predictions(images, out, classes=(0, 1, 2, 3)):
    for image_file in sorted(images.glob("*_0000.nii.gz")):
        prediction = sitk.ReadImage(str(out / image_file.name.replace("_0000.nii.gz", ".nii.gz")))
        assert prediction.GetSize() == sitk.ReadImage(str(image_file)).GetSize()
        assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= set(classes)


def _assert_mixed_sampling(fold):
    log = open(next(fold.glob("training_log_*.txt"))).read()
    assert "Mixed dataset:" in log and "of each batch are drawn from them" in log


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["nnUNetTrainerPCE", "nnUNetTrainerSAMSP", "nnUNetTrainerMeanTeacher",
                                     "nnUNetTrainerCFR"])
def test_trains_and_predicts_on_a_mixed_dataset_in_2d(tiny_mixed_dataset, tmp_path, trainer):
    root, name = tiny_mixed_dataset
    shutil.copytree(root / "nnUNet_preprocessed", tmp_path / "nnUNet_preprocessed")   # caches are written there
    env = nnunet_env(root, nnUNet_preprocessed=str(tmp_path / "nnUNet_preprocessed"),
                     nnUNet_results=str(tmp_path / "nnUNet_results"))
    fold = train_through_cli(env, DATASET_ID + 1, "2d", f"{trainer}_smoke", tmp_path)
    _assert_mixed_sampling(fold)
    images = root / "nnUNet_raw" / name / "imagesTs"
    _check_predictions(images, predict_through_cli(env, DATASET_ID + 1, "2d", f"{trainer}_smoke", images,
                                                   tmp_path / "predictions"))


@pytest.mark.slow
def test_mean_teacher_on_a_mixed_dataset_in_3d_fullres(tiny_3d_dataset, tmp_path):
    from nnunet_scribble.conversion.command import run

    root, name = tiny_3d_dataset
    shutil.copytree(root / "nnUNet_raw", tmp_path / "nnUNet_raw")
    env = nnunet_env(tmp_path)
    mixed_id = TINY_3D_ID + 1
    with mock.patch.dict("os.environ", {k: v for k, v in env.items() if k.startswith("nnUNet")}):
        assert run(["derive-mixed", "-s", str(TINY_3D_ID), "-d", str(mixed_id), "-n", "Toy3DMixed", "--patient-pattern",
                    r"^(pat\d+)_", "--dense", "pat0", "--scribbled", "pat1", "-np", "1"]) == 0
    summary = json.load(open(tmp_path / "nnUNet_raw" / f"Dataset{mixed_id}_Toy3DMixed" / "mixed_labels.json"))
    assert "unlabeled" in json.dumps(summary)
    run_checked([console_script("nnUNetv2_plan_and_preprocess"), "-d", mixed_id, "-c", "3d_fullres", "-np", "1"], env)
    fold = train_through_cli(env, mixed_id, "3d_fullres", "nnUNetTrainerMeanTeacher_smoke", tmp_path)
    images = tmp_path / "nnUNet_raw" / f"Dataset{mixed_id}_Toy3DMixed" / "imagesTs"
    _check_predictions(images, predict_through_cli(env, mixed_id, "3d_fullres", "nnUNetTrainerMeanTeacher_smoke",
                                                   images, tmp_path / "predictions"))
    checkpoint = __import__("torch").load(fold / "checkpoint_final.pth", weights_only=False, map_location="cpu")
    assert "mean_teacher" in checkpoint      # the teacher is stored beside the student
