"""Every trainer trains and predicts in 3d_fullres through nnU-Net's own CLI (``nnUNetv2_train`` with the
``_smoke`` budget, then ``nnUNetv2_predict``) on a tiny anisotropic 3D dataset whose 4 slices are fewer than
the attention window of AttenScribble along z."""
import json
import os
import shutil

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TINY_3D_ID, nnunet_env, predict_through_cli, train_through_cli

from nnunet_scribble.training.cfr import READY_FILE as CFR_READY_FILE
from nnunet_scribble.training.samsp import READY_FILE

TRAINERS = ["nnUNetTrainerPCE", "nnUNetTrainerMaCo", "nnUNetTrainerDMPLS", "nnUNetTrainerAttenScribble",
            "nnUNetTrainerSAMSP", "nnUNetTrainerMedCL", "nnUNetTrainerMeanTeacher", "nnUNetTrainerCFR"]

@pytest.mark.slow
@pytest.mark.parametrize("trainer", TRAINERS)
def test_trains_and_predicts_in_3d_fullres_through_the_cli(tiny_3d_dataset, tmp_path, trainer):
    root, name = tiny_3d_dataset
    shutil.copytree(root / "nnUNet_preprocessed", tmp_path / "nnUNet_preprocessed")   # caches are written there
    env = nnunet_env(root, nnUNet_preprocessed=str(tmp_path / "nnUNet_preprocessed"),
                     nnUNet_results=str(tmp_path / "nnUNet_results"))
    plans = json.load(open(tmp_path / "nnUNet_preprocessed" / name / "nnUNetPlans.json"))
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    assert len(patch) == 3 and patch[0] <= 4                      # few slices: anisotropic patch
    fold = train_through_cli(env, TINY_3D_ID, "3d_fullres", f"{trainer}_smoke", tmp_path)
    assert fold == tmp_path / "nnUNet_results" / name / f"{trainer}_smoke__nnUNetPlans__3d_fullres" / "fold_0"
    assert json.load(open(fold / "validation" / "summary_dense.json"))   # the dense-label evaluation ran

    if trainer in ("nnUNetTrainerSAMSP", "nnUNetTrainerCFR"):   # the SAM stages' slice-wise pseudo-labels, stacked
        ready = json.load(open(fold / (READY_FILE if trainer.endswith("SAMSP") else CFR_READY_FILE)))
        data_folder = tmp_path / "nnUNet_preprocessed" / name / "nnUNetPlans_3d_fullres"
        pl_files = sorted(f for f in os.listdir(ready["folder"]) if f.endswith(".b2nd"))
        assert pl_files
        for f in pl_files:
            pl = blosc2.open(os.path.join(ready["folder"], f), mode="r")[:]
            seg = blosc2.open(str(data_folder / f.replace(".b2nd", "_seg.b2nd")), mode="r")[:]
            assert pl.shape[-3:] == seg.shape[-3:] and set(np.unique(pl)) <= {0, 1, 2, 3, 4}

    out = predict_through_cli(env, TINY_3D_ID, "3d_fullres", f"{trainer}_smoke", root / "nnUNet_raw" / name / "imagesTs",
                              tmp_path / "predictions")
    image = sitk.ReadImage(str(next((root / "nnUNet_raw" / name / "imagesTs").glob("*.nii.gz"))))
    prediction = sitk.ReadImage(str(next(out.glob("*.nii.gz"))))
    assert prediction.GetSize() == image.GetSize()
    assert np.allclose(prediction.GetDirection(), image.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2, 3}
