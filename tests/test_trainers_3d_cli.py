"""Every trainer trains and predicts in 3d_fullres through nnU-Net's own CLI (``nnUNetv2_train`` with the
``_smoke`` budget, then ``nnUNetv2_predict``) on a tiny anisotropic 3D dataset whose 4 slices are fewer than
the attention window of AttenScribble along z."""
import json
import os
import shutil
import subprocess
import sys

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TINY_3D_ID, console_script, nnunet_env

from nnunet_scribble.sam.backends import ENV_BACKEND, ENV_CHECKPOINT
from nnunet_scribble.sam.pseudolabels import ENV_EPOCHS, ENV_ROUNDS
from nnunet_scribble.training.samsp import READY_FILE

TRAINERS = ["nnUNetTrainerPCE", "nnUNetTrainerMaCo", "nnUNetTrainerDMPLS", "nnUNetTrainerAttenScribble",
            "nnUNetTrainerSAMSP", "nnUNetTrainerMedCL", "nnUNetTrainerMeanTeacher"]

# nnUNetv2_train's entry point with the official vit_b meaning the tiny test SAM (no real SAM weights here)
TRAIN_WITH_TINY_SAM = ("import sys; from nnunet_scribble.sam.backends import OFFICIAL_SPECS; "
                       "from nnunet_scribble.sam.testing import TINY_SPEC; OFFICIAL_SPECS['vit_b'] = TINY_SPEC; "
                       "from nnunetv2.run.run_training import run_training_entry; "
                       "sys.argv[0] = 'nnUNetv2_train'; run_training_entry()")


def _run(cmd, env):
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, " ".join(map(str, cmd)) + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


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
    train = ["nnUNetv2_train", TINY_3D_ID, "3d_fullres", "0", "-tr", f"{trainer}_smoke", "-device", "cpu"]
    if trainer == "nnUNetTrainerSAMSP":
        from nnunet_scribble.sam.testing import write_tiny_sam

        env.update({ENV_BACKEND: "vit_b", ENV_CHECKPOINT: write_tiny_sam(str(tmp_path / "tiny_vit_b.pth")),
                    ENV_ROUNDS: "1", ENV_EPOCHS: "1"})
        _run([sys.executable, "-c", TRAIN_WITH_TINY_SAM, *train[1:]], env)
    else:
        _run([console_script(train[0]), *train[1:]], env)
    fold = tmp_path / "nnUNet_results" / name / f"{trainer}_smoke__nnUNetPlans__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert json.load(open(fold / "validation" / "summary_dense.json"))   # the dense-label evaluation ran

    if trainer == "nnUNetTrainerSAMSP":   # the SAM stages' slice-wise pseudo-labels, stacked to the case's 3D grid
        ready = json.load(open(fold / READY_FILE))
        data_folder = tmp_path / "nnUNet_preprocessed" / name / "nnUNetPlans_3d_fullres"
        pl_files = sorted(f for f in os.listdir(ready["folder"]) if f.endswith(".b2nd"))
        assert pl_files
        for f in pl_files:
            pl = blosc2.open(os.path.join(ready["folder"], f), mode="r")[:]
            seg = blosc2.open(str(data_folder / f.replace(".b2nd", "_seg.b2nd")), mode="r")[:]
            assert pl.shape[-3:] == seg.shape[-3:] and set(np.unique(pl)) <= {0, 1, 2, 3, 4}

    out = tmp_path / "predictions"
    _run([console_script("nnUNetv2_predict"), "-i", root / "nnUNet_raw" / name / "imagesTs", "-o", out, "-d",
          TINY_3D_ID, "-c", "3d_fullres", "-f", "0", "-tr", f"{trainer}_smoke", "-device", "cpu", "--disable_tta",
          "-npp", "1", "-nps", "1"], env)
    image = sitk.ReadImage(str(next((root / "nnUNet_raw" / name / "imagesTs").glob("*.nii.gz"))))
    prediction = sitk.ReadImage(str(next(out.glob("*.nii.gz"))))
    assert prediction.GetSize() == image.GetSize()
    assert np.allclose(prediction.GetDirection(), image.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2, 3}
