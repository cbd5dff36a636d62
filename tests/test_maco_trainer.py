"""nnUNetTrainerMaCo in-process on the tiny preprocessed dataset, and once through the real CLI."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

import conftest
from conftest import run_demo_cli
from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.targets.cpl import cpl_targets
from nnunet_scribble.targets.cpl_transform import AppendCPLTransform
from nnunet_scribble.targets.gc_maps import INSIDE, OUTSIDE, raw_gc_map
from nnunet_scribble.training import maco

IGNORE = 4


def make_trainer(root, name, cls=maco.nnUNetTrainerMaCo_2epochs):
    return conftest.make_trainer(root, name, cls)


def test_cpl_transform_appends_maps_of_the_augmented_scribble():
    seg = torch.full((2, 12, 10), IGNORE, dtype=torch.int16)
    seg[0, 3, 4], seg[0, 8, 2] = 0, 2
    out = AppendCPLTransform(4, 0.1, 0.05)(image=torch.ones(1, 12, 10), segmentation=seg)
    assert out["image"].shape == (5, 12, 10)
    assert torch.equal(out["image"][0], torch.ones(12, 10))                 # image untouched
    assert np.allclose(out["image"][1:].numpy(), cpl_targets(seg[0].numpy(), 4))
    assert out["image"][1, 3, 4] == 1 and out["image"][2].abs().sum() == 0  # class 1 unscribbled: no target


def test_raw_gc_map_per_slice_for_anisotropic_volumes():
    scribble = np.full((2, 11, 11), IGNORE, np.int16)
    scribble[0, 2, 2:9] = scribble[0, 8, 2:9] = scribble[0, 2:9, 2] = scribble[0, 2:9, 8] = 0  # closed loop
    scribble[0, 5, 5] = 1
    scribble[1, 2, 2:9] = 0                                                                    # open stroke
    gc = raw_gc_map(scribble, spacing=(10.0, 1.0, 1.0), ignore_label=IGNORE, close_gaps=0, require_fg_inside=True)
    assert set(np.unique(gc)) == {INSIDE, OUTSIDE}
    assert gc[0, 5, 5] == INSIDE and gc[0, 0, 0] == OUTSIDE and gc[0, 2, 5] == OUTSIDE
    assert (gc[1] == INSIDE).all()          # nothing enclosed in this slice: GC = everything


def test_transform_placement_gc_maps_and_train_step(nnunet_paths, monkeypatch):
    root, name = nnunet_paths
    trainer = make_trainer(root, name)
    trainer.on_train_start()
    transforms = trainer.dataloader_train.data_loader.transforms.transforms   # single-threaded augmenter
    kinds = [type(t) for t in transforms]
    assert kinds.index(AppendCPLTransform) == kinds.index(DownsampleSegForDSTransform) - 1

    # GC maps: one per training case, on the preprocessed grid, cached
    folder = trainer.extra_seg_folder
    tr_keys, _ = trainer.do_split()
    files = sorted(f for f in os.listdir(folder) if f.endswith(".b2nd"))
    assert files == sorted(f"{k}.b2nd" for k in tr_keys)
    mtimes = {f: os.path.getmtime(os.path.join(folder, f)) for f in files}
    os.remove(os.path.join(folder, files[0]))                    # a killed run: one map missing
    assert maco.build_gc_maps(trainer, tr_keys, trainer.gc_close_gaps, trainer.gc_require_fg_inside) == folder
    assert all(os.path.getmtime(os.path.join(folder, f)) == mtimes[f] for f in files[1:])  # not recomputed
    assert os.path.isfile(os.path.join(folder, files[0]))                                   # resumed

    batch = next(trainer.dataloader_train)
    n_in, classes = trainer.num_input_channels, trainer.label_manager.num_segmentation_heads
    assert batch["data"].shape[1] == n_in + classes
    scribbles = batch["target"][0][:, 0]
    for b in range(scribbles.shape[0]):   # CPL channels belong to the augmented scribble of the sample
        assert np.allclose(batch["data"][b, n_in:].numpy(), cpl_targets(scribbles[b].numpy(), classes), atol=1e-6)
    gc = batch["target"][0][:, 1]
    assert set(gc.unique().tolist()) <= {INSIDE, OUTSIDE, IGNORE}
    # the demo's background loop encloses the structures: foreground scribbles lie inside GC
    fg = (scribbles > 0) & (scribbles < IGNORE)
    assert (gc[fg] == INSIDE).float().mean() > 0.95

    calls = []
    forward = trainer.network.forward
    monkeypatch.setattr(trainer.network, "forward", lambda x: calls.append(x.shape[0]) or forward(x))
    out = trainer.train_step(batch)
    assert calls == [2 * batch["data"].shape[0]]                 # clean + masked in one pass
    terms = {k[len("train_term_"):]: float(v) for k, v in out.items() if k.startswith("train_term_")}
    assert set(terms) == {"partial", "partial_masked", "context_consistency", "enhanced_prediction", "cpl"}
    assert all(np.isfinite(v) for v in terms.values())
    assert sum(terms.values()) == pytest.approx(float(out["loss"]), rel=1e-5)


def test_ablation_variant_skips_masked_pass_and_gc(nnunet_paths):
    root, name = nnunet_paths
    trainer = make_trainer(root, name, maco.nnUNetTrainerMaCo_CPL_2epochs)
    trainer.on_train_start()
    assert trainer.extra_seg_folder is None
    batch = next(trainer.dataloader_train)
    out = trainer.train_step(batch)
    assert {k for k in out if k.startswith("train_term_")} == {"train_term_partial", "train_term_cpl"}


def test_missing_raw_scribbles_is_a_clear_error(nnunet_paths, monkeypatch, tmp_path):
    root, name = nnunet_paths
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    trainer = make_trainer(root, name)
    tr_keys, _ = trainer.do_split()
    trainer.preprocessed_dataset_folder = str(tmp_path / "pre" / "nnUNetPlans_2d")   # no cache there
    with pytest.raises(UserFacingError, match=r"raw scribbles.*nnUNet_raw.*nnUNetTrainerMaCo_noEP"):
        maco.build_gc_maps(trainer, tr_keys, 4.0, True)


def test_found_through_ext_trainer_path(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_scribble.ext_trainers import TRAINERS_PATH

    monkeypatch.setenv("nnUNet_extTrainer", TRAINERS_PATH)
    for name in ("nnUNetTrainerMaCo", "nnUNetTrainerMaCo_5epochs", "nnUNetTrainerMaCo_CPL_3000it"):
        assert recursive_find_trainer_class_by_name(name).__module__ == "nnunet_scribble.training.maco"


@pytest.mark.slow
def test_demo_through_the_cli(tmp_path):
    out = tmp_path / "demo"
    run_demo_cli(out, "nnUNetTrainerMaCo_1epoch")
    summary = json.loads((out / "predictions" / "nnUNetTrainerMaCo_1epoch_fold0" / "summary_dense.json").read_text())
    assert summary["n_cases"] == 2 and np.isfinite(summary["mean"]["Dice"])
    fold = next((out / "nnUNet_results").glob("*/nnUNetTrainerMaCo_1epoch__nnUNetPlans__2d/fold_0"))
    log = next(fold.glob("training_log_*.txt")).read_text()
    for term in ("partial_masked", "context_consistency", "enhanced_prediction", "cpl"):
        assert term in log
    shutil.rmtree(out / "nnUNet_preprocessed", ignore_errors=True)
