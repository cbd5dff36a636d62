"""Shared fixtures: a tiny synthetic scribble dataset, planned and preprocessed by stock nnU-Net."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# nnUNet_n_proc_DA=0 breaks nnU-Net's planner (torch.set_num_threads(0)); in-process tests set it to 0 themselves
CPU_ENV = {"nnUNet_compile": "f", "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "2"}


def nnunet_env(root: Path, **extra) -> dict:
    """Environment for nnU-Net child processes with all nnU-Net folders under ``root``."""
    from nnunet_scribble.ext_trainers import TRAINERS_PATH

    env = dict(os.environ)
    env.update(CPU_ENV)
    env.update({"nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
                "nnUNet_results": str(root / "nnUNet_results"), "nnUNet_extTrainer": TRAINERS_PATH})
    env.update(extra)
    return env


def make_trainer(root: Path, name: str, cls, dataset_json: dict | None = None, configuration: str = "2d", fold=0):
    """An in-process trainer of class ``cls`` on the preprocessed dataset ``name`` under ``root``."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    pre = root / "nnUNet_preprocessed" / name
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False
    return cls(plans, configuration, fold, dataset_json or load_json(str(pre / "dataset.json")),
               device=torch.device("cpu"))


def console_script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Demo dataset (8 train, 2 test cases of 80x80) under a temp root, planned + preprocessed for 2d.

    Returns (root, dataset_name). Read-only for tests: copy before modifying.
    """
    from nnunet_scribble.demo.run import DATASET_ID, DATASET_NAME, write_dataset

    root = tmp_path_factory.mktemp("nnunet")
    write_dataset(root / "nnUNet_raw", n_train=8, n_test=2, seed=1)
    subprocess.run([console_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", "1"],
                   env=nnunet_env(root), check=True, capture_output=True)
    return root, DATASET_NAME


@pytest.fixture(scope="session")
def tiny_mixed_dataset(tmp_path_factory):
    """A mixed-label dataset derived from the demo dataset (8 train, 2 test cases of 80x80) with `derive-mixed`:
    demo_000-001 dense, demo_002-003 scribbled, demo_004-007 unlabeled (ignore everywhere); planned and
    preprocessed for 2d. Returns (root, dataset_name). Read-only for tests: copy before modifying."""
    from unittest import mock

    from nnunet_scribble.conversion.command import run
    from nnunet_scribble.demo.run import DATASET_ID, write_dataset

    root = tmp_path_factory.mktemp("nnunet_mixed")
    write_dataset(root / "nnUNet_raw", n_train=8, n_test=2, seed=1)
    env = nnunet_env(root)
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k.startswith("nnUNet")}):
        assert run(["derive-mixed", "-s", str(DATASET_ID), "-d", str(DATASET_ID + 1), "-n", "ScribbleDemoMixed",
                    "--dense", "0-1", "--scribbled", "2-3", "-np", "1"]) == 0
    subprocess.run([console_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID + 1), "-c", "2d", "-np", "1"],
                   env=env, check=True, capture_output=True)
    return root, f"Dataset{DATASET_ID + 1:03d}_ScribbleDemoMixed"


TINY_3D_ID, TINY_3D_NAME = 993, "Dataset993_Toy3D"


@pytest.fixture(scope="session")
def tiny_3d_dataset(tmp_path_factory):
    """A tiny anisotropic 3D scribble dataset planned + preprocessed for 3d_fullres: 6 training cases (3
    patients x 2 visits) and 1 test case of 4 x 40 x 36 voxels at 1.25 x 1.5 x 5 mm (SimpleITK order x, y, z),
    oblique direction, converted with `nnunet-scribble convert folder`. 4 slices: narrower than the attention
    window along z. Returns (root, dataset_name). Read-only for tests: copy before modifying."""
    from unittest import mock

    from conversion_helpers import convert_folder_3d, make_folder_3d

    root = tmp_path_factory.mktemp("nnunet_3d")
    make_folder_3d(root / "src")
    env = nnunet_env(root)
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k.startswith("nnUNet")}):
        assert convert_folder_3d(root / "src", TINY_3D_ID, "Toy3D", "--classes", "background", "RV", "Myo", "LV",
                                 "--unlabeled", "max") == 0
    subprocess.run([console_script("nnUNetv2_plan_and_preprocess"), "-d", str(TINY_3D_ID), "-c", "3d_fullres",
                    "-np", "1"], env=env, check=True, capture_output=True)
    return root, TINY_3D_NAME


@pytest.fixture
def nnunet_paths(monkeypatch, tiny_dataset):
    """Point nnU-Net's environment variables (read at call time since 2.8) at the tiny dataset's root."""
    root, name = tiny_dataset
    for k, v in nnunet_env(root).items():
        if k.startswith("nnUNet") or k == "OMP_NUM_THREADS":
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")   # augmentation in the test process
    return root, name


@pytest.fixture
def one_torch_thread():
    """Tiny models: one torch thread avoids oversubscription stalls on a shared 2-core CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_copy(tiny_dataset, tmp_path, monkeypatch):
    """A writable copy of the tiny dataset's raw + preprocessed folders, nnU-Net's variables pointed at it,
    no SAM backend chosen by the environment, and ``vit_b`` meaning the tiny test SAM."""
    import shutil

    from nnunet_scribble.sam.backends import ENV_BACKEND, ENV_CHECKPOINT
    from nnunet_scribble.sam.testing import patch_tiny_spec

    root, name = tiny_dataset
    for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(root / sub, tmp_path / sub)
        monkeypatch.setenv(sub, str(tmp_path / sub))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "nnUNet_results"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")   # augmentation in the test process
    monkeypatch.delenv(ENV_BACKEND, raising=False)
    monkeypatch.delenv(ENV_CHECKPOINT, raising=False)
    patch_tiny_spec(monkeypatch, "vit_b")
    return tmp_path, name


# nnUNetv2_train's entry point with the official vit_b meaning the tiny test SAM (no real SAM weights here)
_TRAIN_WITH_TINY_SAM = ("import sys; from nnunet_scribble.sam.backends import OFFICIAL_SPECS; "
                        "from nnunet_scribble.sam.testing import TINY_SPEC; OFFICIAL_SPECS['vit_b'] = TINY_SPEC; "
                        "from nnunet_scribble.sam.pseudolabels import ENV_EPOCHS, ENV_ROUNDS; import os; "
                        "os.environ.setdefault(ENV_ROUNDS, '1'); os.environ.setdefault(ENV_EPOCHS, '1'); "
                        "os.environ.setdefault('NNUNET_SCRIBBLE_CFR_ITERATIONS', '2'); "
                        "from nnunetv2.run.run_training import run_training_entry; "
                        "sys.argv[0] = 'nnUNetv2_train'; run_training_entry()")


def run_checked(cmd, env) -> "subprocess.CompletedProcess":
    """Run ``cmd``; fail the test with the command and the end of its output unless it succeeds."""
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, " ".join(map(str, cmd)) + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train_through_cli(env: dict, dataset_id: int, configuration: str, trainer: str, tmp_path: Path,
                      fold: str = "0") -> Path:
    """``nnUNetv2_train`` in a child process (SAM-SP and CFR trainers: with the tiny test SAM; SAM-SP 1 round of
    1 decoder epoch, CFR 2 fine-tuning iterations); returns the fold's output folder (``checkpoint_final.pth``)."""
    from nnunet_scribble.sam.backends import ENV_BACKEND, ENV_CHECKPOINT
    from nnunet_scribble.sam.testing import write_tiny_sam

    args = [dataset_id, configuration, fold, "-tr", trainer, "-device", "cpu"]
    if "SAMSP" in trainer or "CFR" in trainer:
        env = {**env, ENV_BACKEND: "vit_b", ENV_CHECKPOINT: write_tiny_sam(str(tmp_path / "tiny_vit_b.pth"))}
        run_checked([sys.executable, "-c", _TRAIN_WITH_TINY_SAM, *args], env)
    else:
        run_checked([console_script("nnUNetv2_train"), *args], env)
    dataset = next(Path(env["nnUNet_results"]).glob(f"Dataset{int(dataset_id):03d}_*"))
    folder = dataset / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"
    assert (folder / "checkpoint_final.pth").is_file(), folder
    return folder


def predict_through_cli(env: dict, dataset_id: int, configuration: str, trainer: str, images: Path, out: Path,
                        fold: str = "0") -> Path:
    """``nnUNetv2_predict`` (no TTA, one process) of ``images`` into ``out``; returns ``out``."""
    run_checked([console_script("nnUNetv2_predict"), "-i", images, "-o", out, "-d", dataset_id, "-c", configuration,
                 "-f", fold, "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    return out


def run_demo_cli(out: Path, trainer: str, unset_env=()) -> "subprocess.CompletedProcess":
    """``nnunet-scribble demo`` with TRAINER on 6 training / 2 test cases on the CPU, in a child process,
    writing to ``out``; fails the test (showing the output) unless it succeeds."""
    env = {**os.environ, **CPU_ENV}
    for name in ("nnUNet_extTrainer", *unset_env):   # the demo sets nnUNet_extTrainer itself
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "nnunet_scribble.cli", "demo", "--trainer", trainer,
                           "--n-train", "6", "--n-test", "2", "--output", str(out), "--device", "cpu"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
