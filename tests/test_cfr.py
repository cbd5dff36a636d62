"""CFR's SAM stages (nnunet_scribble.sam.cfr) on the tiny mixed dataset with the tiny random SAM: fold
isolation, what is saved, reuse on a second run, resume after a kill; the trainer's pseudo-label term."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from nnunet_scribble.sam.cfr import CFRConfig, run_cfr_pseudolabels
from nnunet_scribble.sam.data import PreprocessedDataset


@pytest.fixture
def mixed_copy(tiny_mixed_dataset, tmp_path, monkeypatch):
    from nnunet_scribble.sam.testing import patch_tiny_spec, write_tiny_sam

    root, name = tiny_mixed_dataset
    for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(root / sub, tmp_path / sub)
        monkeypatch.setenv(sub, str(tmp_path / sub))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "nnUNet_results"))
    patch_tiny_spec(monkeypatch, "vit_b")
    torch.set_num_threads(1)
    return name, write_tiny_sam(str(tmp_path / "tiny_vit_b.pth"))


def _run(name, sam, config, log=None):
    return run_cfr_pseudolabels(name, "2d", 0, backend="vit_b", checkpoint=sam, config=config, device="cpu",
                                progress=False, echo=(log.append if log is not None else lambda m: None))


def test_stages_label_the_training_cases_of_the_fold_only_and_save_only_trainable_weights(mixed_copy, monkeypatch):
    name, sam = mixed_copy
    read = []
    original = PreprocessedDataset.load_case
    monkeypatch.setattr(PreprocessedDataset, "load_case", lambda self, case, *a: read.append(case) or original(self, case, *a))
    result = _run(name, sam, CFRConfig(iterations=3, checkpoint_every=1, overlays=1))
    assert result.val_cases and not set(read) & set(result.val_cases)          # validation cases are never read
    written = sorted(f.rsplit(".", 1)[0] for f in os.listdir(result.folder) if not f.startswith("."))
    assert written == sorted(result.train_cases)
    ds = PreprocessedDataset(name, "2d")
    for case in result.train_cases:
        pl = ds.read_label_map(result.folder, case)
        assert pl.shape == ds.load_case(case).scribbles.shape and set(pl.ravel().tolist()) <= set(ds.classes)
    adapter = torch.load(os.path.join(result.run_folder, "adapter.pth"), weights_only=True)
    frozen = [k for k in adapter if k.startswith("image_encoder") and "lora" not in k]
    assert adapter and not frozen                               # LoRA, prompt encoder, decoder only
    assert result.dice and result.dice["cases"] > 0             # the demo has labelsTr_dense
    assert os.listdir(os.path.join(result.run_folder, "overlays"))


def test_a_second_run_reuses_everything_and_a_killed_fine_tuning_resumes(mixed_copy, monkeypatch):
    name, sam = mixed_copy
    config = CFRConfig(iterations=4, checkpoint_every=1, overlays=0)
    calls = {"n": 0}
    step = torch.optim.AdamW.step

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        _run(name, sam, config)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    log = []
    result = _run(name, sam, config, log)
    assert any("resumed at iteration 2 of 4" in m for m in log)
    stamps = {f: os.stat(os.path.join(result.folder, f)).st_mtime_ns for f in os.listdir(result.folder)}
    log = []
    again = _run(name, sam, config, log)
    assert again.folder == result.folder and any("fine-tuned SAM reused" in m for m in log)
    assert {f: os.stat(os.path.join(again.folder, f)).st_mtime_ns for f in os.listdir(again.folder)} == stamps


def test_a_fold_without_labeled_training_cases_is_refused(mixed_copy, monkeypatch):
    from nnunet_scribble.errors import UserFacingError

    name, sam = mixed_copy
    monkeypatch.setattr(PreprocessedDataset, "fold_split",
                        lambda self, fold, **k: (["demo_004", "demo_005"], ["demo_000"]))
    with pytest.raises(UserFacingError, match="fold 0 of .*none of its 2 training cases has a label"):
        _run(name, sam, CFRConfig(iterations=1))


def test_pseudo_label_term_acts_on_unlabeled_voxels_only():
    from nnunet_scribble.training.cfr import nnUNetTrainerCFR

    class Stub:   # the trainer's loss plumbing without an nnU-Net set-up
        cfr_pl_weight = 1.0
        label_manager = type("LM", (), {"ignore_label": 3})()

        def mean_teacher_terms(self, data, scribbles):
            return {}, self.out

    stub = Stub()
    stub.out = torch.randn(1, 3, 2, 2, requires_grad=True)
    scribbles = torch.tensor([[[[0, 3], [3, 1]]]])       # two labeled voxels, two unlabeled
    pl = torch.tensor([[[[2, 2], [1, 1]]]])
    loss = nnUNetTrainerCFR.compute_loss_terms(stub, None, scribbles, pl)["pseudo_label"]
    from nnunet_scribble.losses.cfr import ce_dice_loss
    expected = ce_dice_loss(stub.out, torch.tensor([[[3, 2], [1, 3]]]), ignore_index=3)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert float(stub.out.grad[0, :, 0, 0].abs().sum()) == 0 and float(stub.out.grad[0, :, 1, 1].abs().sum()) == 0


def test_case_grids_tile_the_slices_and_padding_is_ignore(mixed_copy):
    from nnunet_scribble.sam.cfr import load_case_grids
    from nnunet_scribble.sam.grid import from_grids

    name, _ = mixed_copy
    ds = PreprocessedDataset(name, "2d")
    cs = ds.load_case("demo_002")                          # a scribbled case
    h, w = cs.image.shape[1:]
    cg = load_case_grids(ds, "demo_002", 2 * max(h, w) + 1)
    assert (cg.grid.rows, cg.grid.cols) == (2, 2) and cg.kind == "scribbled"
    assert cg.images01.shape == (-(-len(cs.image) // 4), 2 * h, 2 * w)
    assert (from_grids(cg.labels, cg.grid, cg.depth) == cs.scribbles).all()
    pad = len(cg.images01) * 4 - len(cs.image)
    if pad:                                               # the tiles after the last slice: ignore, zero image
        assert (cg.labels[-1, h:, w:] == ds.ignore_label).all() and not cg.images01[-1, h:, w:].any()
    single = load_case_grids(ds, "demo_002", 2 * max(h, w) + 1, concatenate=False)
    assert (single.grid.rows, single.grid.cols) == (1, 1) and single.images01.shape == cs.image.shape


def test_input_size_is_refused_for_official_sam(mixed_copy):
    from nnunet_scribble.errors import UserFacingError

    name, sam = mixed_copy
    with pytest.raises(UserFacingError, match="only LiteMedSAM can be built for another input size"):
        _run(name, sam, CFRConfig(iterations=1, input_size=128))
