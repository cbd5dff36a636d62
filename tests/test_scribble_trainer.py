"""The scribble trainer base, in-process on the tiny preprocessed dataset."""
import copy
import os
import re

import blosc2
import conftest
import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.training.loss_terms import logged_terms
from nnunet_scribble.training.pce import nnUNetTrainerPCE, nnUNetTrainerPCE_2epochs

IGNORE = 4


def make_trainer(root, name, cls=nnUNetTrainerPCE_2epochs, dataset_json=None):
    return conftest.make_trainer(root, name, cls, dataset_json)


def test_dataset_without_ignore_label_is_refused(nnunet_paths):
    root, name = nnunet_paths
    dj = load_json(str(root / "nnUNet_preprocessed" / name / "dataset.json"))
    dj = copy.deepcopy(dj)
    del dj["labels"]["ignore"]
    with pytest.raises(UserFacingError, match=r"needs an 'ignore' label.*dataset\.json.*stock nnUNetTrainer"):
        make_trainer(root, name, dataset_json=dj)


def regions_dataset_json(root, name):
    dj = copy.deepcopy(load_json(str(root / "nnUNet_preprocessed" / name / "dataset.json")))
    dj["labels"] = {"background": 0, "any": [1, 2, 3], "inner": [2, 3], "core": 3, "ignore": IGNORE}
    dj["regions_class_order"] = [1, 2, 3]
    return dj


@pytest.mark.parametrize("module, trainer", [("maco", "nnUNetTrainerMaCo"), ("dmpls", "nnUNetTrainerDMPLS"),
                                             ("attenscribble", "nnUNetTrainerAttenScribble"),
                                             ("samsp", "nnUNetTrainerSAMSP")])
def test_trainers_that_need_label_maps_refuse_region_datasets(nnunet_paths, module, trainer):
    import importlib

    root, name = nnunet_paths
    cls = getattr(importlib.import_module(f"nnunet_scribble.training.{module}"), trainer)
    assert cls.needs_label_maps
    with pytest.raises(UserFacingError, match=rf"{trainer} needs label maps.*dataset\.json defines regions.*nnUNetTrainerPCE"):
        make_trainer(root, name, cls=cls, dataset_json=regions_dataset_json(root, name))


def test_pce_trains_region_datasets(nnunet_paths):
    root, name = nnunet_paths
    trainer = make_trainer(root, name, dataset_json=regions_dataset_json(root, name))
    assert trainer.label_manager.has_regions and not nnUNetTrainerPCE.needs_label_maps


def test_budget_variant_sets_epochs(nnunet_paths):
    trainer = make_trainer(*nnunet_paths)
    assert trainer.num_epochs == 2
    assert make_trainer(*nnunet_paths, cls=nnUNetTrainerPCE).num_epochs == 1000


def test_iteration_budget_variants_of_ours_and_of_stock(nnunet_paths):
    from nnunet_scribble.training.pce import nnUNetTrainerPCE_3000it
    from nnunet_scribble.training.stock import nnUNetTrainer_3000it

    dj = load_json(str(nnunet_paths[0] / "nnUNet_preprocessed" / nnunet_paths[1] / "dataset.json"))
    dense_dj = copy.deepcopy(dj)
    del dense_dj["labels"]["ignore"]
    for cls, dataset_json in ((nnUNetTrainerPCE_3000it, None), (nnUNetTrainer_3000it, dense_dj)):
        trainer = make_trainer(*nnunet_paths, cls=cls, dataset_json=dataset_json)
        assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (120, 25, 5)
        assert trainer.save_every == 10   # nnU-Net's 50 would lose up to 50 epochs of a cut benchmark run
        assert trainer.skip_final_validation and type(trainer).__name__ == cls.__name__
    assert nnUNetTrainer_3000it.__mro__[3] is nnUNetTrainer   # stock trainer, only the budget mixin added


def test_padding_becomes_ignore_not_background():
    seg = torch.full((1, 4, 4), -1, dtype=torch.int16)
    kwargs = dict(is_cascaded=False, foreground_labels=[1, 2, 3], regions=None, ignore_label=IGNORE)
    ours = nnUNetTrainerPCE.get_validation_transforms(None, **kwargs)(image=torch.zeros(1, 4, 4), segmentation=seg.clone())
    stock = nnUNetTrainer.get_validation_transforms(None, **kwargs)(image=torch.zeros(1, 4, 4), segmentation=seg.clone())
    assert (ours["segmentation"] == IGNORE).all() and (stock["segmentation"] == 0).all()
    from nnunet_scribble.training.dmpls import nnUNetTrainerDMPLS_padBackground   # the probe: stock behaviour
    probe = nnUNetTrainerDMPLS_padBackground.get_validation_transforms(None, **kwargs)(
        image=torch.zeros(1, 4, 4), segmentation=seg.clone())
    assert (probe["segmentation"] == 0).all()


def test_extra_channel_rides_through_augmentation_and_reaches_the_loss(nnunet_paths, tmp_path):
    root, name = nnunet_paths
    trainer = make_trainer(root, name)
    data_folder = root / "nnUNet_preprocessed" / name / "nnUNetPlans_2d"
    # extra map = a voxel-wise function of the scribble map, so alignment can be checked after augmentation
    for seg_file in data_folder.glob("*_seg.b2nd"):
        seg = blosc2.open(str(seg_file), mode="r")[:][0]
        extra = np.where(seg == IGNORE, 0, seg + 5).astype(np.int16)
        nnUNetDatasetBlosc2.save_seg(extra, str(tmp_path / seg_file.name[: -len("_seg.b2nd")]))
    trainer.initialize()
    trainer.extra_seg_folder = str(tmp_path)
    seen = {}

    def spy(data, scribbles, extras):
        seen["scribbles"], seen["extras"] = scribbles, extras
        return nnUNetTrainerPCE.compute_loss_terms(trainer, data, scribbles, extras)

    trainer.compute_loss_terms = spy
    dl_tr, dl_val = trainer.get_dataloaders()
    batch = next(dl_tr)
    assert isinstance(batch["target"], list) and len(batch["target"]) > 1   # deep supervision scales
    for target in batch["target"]:
        assert target.shape[1] == 2
        scribble, extra = target[:, 0], target[:, 1]
        labelled = scribble != IGNORE
        assert labelled.any()
        assert torch.equal(extra[labelled], scribble[labelled] + 5)
        assert set(extra[~labelled].unique().tolist()) <= {0, IGNORE}
    assert next(dl_val)["target"][0].shape[1] == 1   # validation batches carry scribbles only

    trainer.on_train_epoch_start()
    out = trainer.train_step(batch)
    assert [s.shape[1] for s in seen["scribbles"]] == [1] * len(batch["target"])
    assert [e.shape[1] for e in seen["extras"]] == [1] * len(batch["target"])
    assert np.isfinite(out["loss"]) and out["train_term_partial"] == pytest.approx(out["loss"])

    trainer.on_train_epoch_end([out, out])
    assert logged_terms(trainer.logger)["partial"] == [pytest.approx(float(out["loss"]))]
    from nnunet_scribble.training.loss_terms import plot_loss_terms
    assert os.path.isfile(plot_loss_terms(trainer.logger, trainer.output_folder))


# ---- budgets, checkpoints, resume -----------------------------------------------------------------
def test_every_budget_variant_saves_checkpoint_latest_every_250_iterations_at_most(nnunet_paths):
    from nnunet_scribble.training import pce, stock

    variants = [getattr(m, n) for m in (pce, stock) for n in m.__all__]
    assert {"nnUNetTrainerPCE_5epochs", "nnUNetTrainerPCE_3000it", "nnUNetTrainerPCE_smoke",
            "nnUNetTrainer_smoke"} <= {v.__name__ for v in variants}
    for cls in variants:   # nnU-Net's defaults: 250 iterations per epoch, checkpoint_latest every 50 epochs
        assert (cls.budget_save_every or 50) * (cls.budget_iterations_per_epoch or 250) <= 250, cls.__name__
    trainer = make_trainer(*nnunet_paths, cls=pce.nnUNetTrainerPCE_5epochs)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.save_every) == (5, 250, 1)
    smoke = make_trainer(*nnunet_paths, cls=pce.nnUNetTrainerPCE_smoke)
    assert (smoke.num_epochs, smoke.num_iterations_per_epoch, smoke.num_val_iterations_per_epoch) == (2, 5, 2)
    assert smoke.save_every == 1 and not smoke.skip_final_validation


def test_a_kill_while_saving_keeps_the_previous_checkpoint(nnunet_paths, monkeypatch):
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as stock_module

    trainer = make_trainer(*nnunet_paths)
    trainer.initialize()
    path = os.path.join(trainer.output_folder, "checkpoint_latest.pth")
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=False)["current_epoch"] == 1

    def killed_mid_write(obj, filename):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(stock_module.torch, "save", killed_mid_write)
    trainer.current_epoch = 7
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=False)["current_epoch"] == 1


KILLING_TRAINER = '''
import os
import signal

from nnunet_scribble.training.pce import nnUNetTrainerPCE_5epochs


class nnUNetTrainerPCE_5epochs_killed(nnUNetTrainerPCE_5epochs):
    """The real _5epochs variant with 2 iterations per epoch; SIGKILLs itself after $KILL_AFTER_EPOCHS epochs."""
    budget_iterations_per_epoch = 2
    budget_val_iterations_per_epoch = 1

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.current_epoch == int(os.environ.get("KILL_AFTER_EPOCHS", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.mark.slow
def test_kill_then_continue_resumes_after_the_last_finished_epoch(tiny_dataset, tmp_path):
    """nnUNetv2_train killed after 3 of 5 epochs; ``--c`` trains epochs 3 and 4 only (it used to go back to
    checkpoint_best: an _<N>epochs variant wrote checkpoint_latest every 50 epochs)."""
    import subprocess

    from nnunet_scribble.ext_trainers import TRAINERS_PATH

    root, name = tiny_dataset
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "killing_trainer.py").write_text(KILLING_TRAINER)
    env = conftest.nnunet_env(root, nnUNet_results=str(tmp_path / "results"), nnUNet_n_proc_DA="0",
                              nnUNet_extTrainer=TRAINERS_PATH + os.pathsep + str(ext))
    trainer = "nnUNetTrainerPCE_5epochs_killed"
    cmd = [conftest.console_script("nnUNetv2_train"), name, "2d", "0", "-tr", trainer, "-device", "cpu"]
    first = subprocess.run(cmd, env={**env, "KILL_AFTER_EPOCHS": "3"}, capture_output=True, text=True)
    assert first.returncode == -9, first.stdout[-2000:] + first.stderr[-2000:]
    fold = tmp_path / "results" / name / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    assert torch.load(fold / "checkpoint_latest.pth", weights_only=False)["current_epoch"] == 3
    assert not (fold / "checkpoint_final.pth").exists()

    second = subprocess.run(cmd + ["--c"], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert re.findall(r": Epoch (\d+)$", second.stdout, flags=re.M) == ["3", "4"], second.stdout[-3000:]
    assert (fold / "checkpoint_final.pth").is_file()
    assert torch.load(fold / "checkpoint_final.pth", weights_only=False)["current_epoch"] == 5
