"""nnU-Net finds our trainers through nnUNet_extTrainer, and they pickle into spawned workers."""
import multiprocessing
import pickle

import pytest
import torch

from nnunet_scribble.ext_trainers import TRAINERS_PATH
from nnunet_scribble.training.pce import nnUNetTrainerPCE


def find(name):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    return recursive_find_trainer_class_by_name(name)


@pytest.mark.parametrize("name", ["nnUNetTrainerPCE", "nnUNetTrainerPCE_5epochs", "nnUNetTrainerPCE_1epoch", "nnUNetTrainerPCE_3000it"])
def test_found_through_ext_trainer_path(monkeypatch, name):
    monkeypatch.setenv("nnUNet_extTrainer", TRAINERS_PATH)
    cls = find(name)
    # the package's own class, not a second copy imported from the shim folder
    assert cls.__module__ == "nnunet_scribble.training.pce"
    assert pickle.loads(pickle.dumps(cls)) is cls
    if name.endswith("epoch") or name.endswith("epochs"):
        assert issubclass(cls, nnUNetTrainerPCE) and cls.budget_epochs == int(name.split("_")[1].rstrip("epochs"))
    elif name.endswith("3000it"):
        assert (cls.budget_epochs, cls.budget_iterations_per_epoch) == (120, 25)


def test_stock_trainer_with_benchmark_budget_is_found(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", TRAINERS_PATH)
    assert find("nnUNetTrainer_3000it").__module__ == "nnunet_scribble.training.stock"


def test_not_found_without_ext_trainer_path(monkeypatch):
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match="nnUNetTrainerPCE"):
        find("nnUNetTrainerPCE")


def test_cli_prints_the_path(capsys):
    from nnunet_scribble.cli import main

    assert main(["trainers-path"]) == 0
    assert capsys.readouterr().out.strip() == TRAINERS_PATH


def _augment(transforms, seg):
    return transforms(image=torch.zeros((1, 8, 8)), segmentation=seg)["segmentation"]


def test_transforms_run_in_a_spawned_worker():
    transforms = nnUNetTrainerPCE.get_validation_transforms(
        [[1, 1], [0.5, 0.5]], is_cascaded=False, foreground_labels=[1, 2, 3], regions=None, ignore_label=4)
    seg = torch.full((2, 8, 8), -1, dtype=torch.int16)
    seg[:, 2:6, 2:6] = 1
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out = pool.apply(_augment, (transforms, seg))
    assert len(out) == 2 and out[0].shape == (2, 8, 8) and out[1].shape == (2, 4, 4)
    # padding (-1) became ignore (4) in every channel, not background
    assert set(out[0].unique().tolist()) == {1, 4}
