"""`nnunet-scribble sam-pseudolabels` on the tiny dataset with the tiny SAM (stages A and B end to end)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nnunet_scribble.cli import main
from nnunet_scribble.sam.backends import ENV_BACKEND, ENV_CHECKPOINT
from nnunet_scribble.sam.pseudolabels import ENV_EPOCHS
from nnunet_scribble.sam.testing import write_tiny_sam


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cli_writes_pseudolabels_for_the_training_cases_only(tiny_copy, capsys, monkeypatch):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    root, name = tiny_copy
    ckpt = write_tiny_sam(str(root / "tiny_vit_b.pth"))
    argv = ["sam-pseudolabels", "-d", "990", "-c", "2d", "-f", "0", "--backend", "vit_b", "--checkpoint", ckpt,
            "--rounds", "1", "--epochs", "2", "--overlays", "2", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    pre = root / "nnUNet_preprocessed" / name
    splits = json.load(open(pre / "splits_final.json"))         # written as nnU-Net would
    train, val = sorted(splits[0]["train"]), sorted(splits[0]["val"])
    assert train and val and not set(train) & set(val)
    folds = list((pre / "sam_pseudolabels" / "nnUNetPlans_2d").glob("vit_b-*/fold_0"))
    assert len(folds) == 1
    fold = folds[0]
    assert f"pseudo-labels: {fold / 'round_1'}" in out
    assert "| round | RV | Myo | LV | mean |" in out

    # pseudo-labels: exactly the training cases, every round, readable as nnU-Net's previous-stage segs
    for r in (0, 1):
        assert sorted(p.name[:-5] for p in (fold / f"round_{r}").glob("*.b2nd")) == train
    ds = nnUNetDatasetBlosc2(str(pre / "nnUNetPlans_2d"), train, folder_with_segs_from_previous_stage=str(fold / "round_1"))
    data, seg, seg_prev, _ = ds.load_case(train[0])
    pl = np.asarray(seg_prev[:])
    assert pl.shape == data.shape[1:] and set(np.unique(pl)) <= {0, 1, 2, 3}
    scrib = np.asarray(seg[0])
    labeled = (scrib >= 0) & (scrib < 4)
    assert (pl[labeled] == scrib[labeled]).all()                        # scribbles are kept

    # validation cases were never encoded, prompted or labelled
    cache_manifest = json.load(open(next((pre / "sam_embeddings" / "nnUNetPlans_2d").glob("vit_b-*/manifest.json"))))
    assert sorted(cache_manifest["cases"]) == train
    manifest = json.load(open(fold / "stage_b.json"))
    assert manifest["identity"]["train_cases"] == train
    assert manifest["identity"]["prompts"]["mode"] == "points"        # the official SAM default
    assert len(manifest["finetune"]["1"]["epoch_losses"]) == 2

    # Dice against labelsTr_dense per round, overlays, decoder weights
    dice = json.load(open(fold / "dice.json"))
    assert set(dice["rounds"]) == {"0", "1"}
    assert set(dice["rounds"]["0"]["per_class"]) == {"RV", "Myo", "LV"}
    assert sorted(dice["rounds"]["1"]["per_case"]) == train
    assert sorted(dice["merge_priority"]) == [1, 2, 3]
    assert len(list((fold / "overlays" / "round_1").glob("*.png"))) == 2
    assert (fold / "decoder_round_1.pth").is_file() and not list(fold.glob("*.state.pth"))

    # rerun through the environment variables: everything is resumed, one more round is added
    monkeypatch.setenv(ENV_BACKEND, "vit_b")
    monkeypatch.setenv(ENV_CHECKPOINT, ckpt)
    mtime = os.stat(fold / "round_1" / f"{train[0]}.b2nd").st_mtime_ns
    assert main(["sam-pseudolabels", "-d", name, "-f", "0", "--rounds", "2", "--epochs", "2", "--overlays", "2",
                 "--device", "cpu"]) == 0
    log = capsys.readouterr().out
    assert "stage A: encoding" not in log
    assert "round 0: pseudo-labels already complete" in log and "round 1: pseudo-labels already complete" in log
    assert "fine-tuning the mask decoder on round 1" in log and "fine-tuning the mask decoder on round 0" not in log
    assert os.stat(fold / "round_1" / f"{train[0]}.b2nd").st_mtime_ns == mtime
    assert sorted(p.name[:-5] for p in (fold / "round_2").glob("*.b2nd")) == train

    # changed prompt settings start the fold over
    assert main(argv + ["--points", "3"]) == 0
    assert "starting this fold over" in capsys.readouterr().out
    assert not (fold / "round_2").exists()


def test_cli_errors(tiny_copy, capsys, monkeypatch):
    root, name = tiny_copy
    ckpt = write_tiny_sam(str(root / "tiny_vit_b.pth"))
    base = ["sam-pseudolabels", "-d", name, "-f", "0", "--backend", "vit_b", "--checkpoint", ckpt, "--device", "cpu",
            "--rounds", "0"]
    # no checkpoint for an official SAM
    assert main(["sam-pseudolabels", "-d", name, "-f", "0", "--backend", "vit_l"]) == 2
    assert f"--checkpoint FILE or set {ENV_CHECKPOINT}" in capsys.readouterr().err

    # fine-tuning epochs default to the environment variable the trainer also reads
    monkeypatch.setenv(ENV_EPOCHS, "-1")
    assert main(base) == 2
    assert f"{ENV_EPOCHS}='-1' is not a non-negative integer" in capsys.readouterr().err
    monkeypatch.delenv(ENV_EPOCHS)

    # a training set without foreground scribbles
    import blosc2

    pre = root / "nnUNet_preprocessed" / name / "nnUNetPlans_2d"
    saved = {}
    for path in pre.glob("*_seg.b2nd"):
        seg = blosc2.open(urlpath=str(path), mode="r")[:]
        saved[path] = seg
        empty = np.where((seg > 0) & (seg < 4), 4, seg).astype(seg.dtype)
        os.remove(path)
        blosc2.asarray(np.ascontiguousarray(empty), urlpath=str(path))
    assert main(base) == 2
    assert "have no foreground scribbles" in capsys.readouterr().err

    # a dataset without an ignore label (dense labels)
    dj = root / "nnUNet_preprocessed" / name / "dataset.json"
    d = json.load(open(dj))
    del d["labels"]["ignore"]
    json.dump(d, open(dj, "w"))
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "has no 'ignore' label" in err and "dataset.json" in err


def test_fold_outside_the_split_file_is_refused_unless_asked(tiny_copy, capsys):
    """`-f 7` on a 5-fold split used to run nnU-Net's random 80:20 fallback split silently."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from conftest import make_trainer
    from nnunet_scribble.sam.data import PreprocessedDataset

    root, name = tiny_copy
    ckpt = write_tiny_sam(str(root / "tiny_vit_b.pth"))
    base = ["sam-pseudolabels", "-d", name, "--backend", "vit_b", "--checkpoint", ckpt, "--device", "cpu",
            "--rounds", "0", "--overlays", "0"]
    for fold in ("7", "5", "-1"):
        assert main(base + ["-f", fold]) == 2
        err = capsys.readouterr().err
        assert f"fold {fold} is not in" in err and "splits_final.json" in err, err
        assert "0, 1, 2, 3, 4" in err and "--random-split" in err, err
    assert not (root / "nnUNet_preprocessed" / name / "sam_pseudolabels").exists()      # nothing was done

    # asked for: exactly the split nnU-Net's trainer uses for such a fold
    ds = PreprocessedDataset(name, "2d")
    trainer = make_trainer(root, name, nnUNetTrainer, fold=7)
    tr, val = trainer.do_split()
    assert ds.fold_split(7, random_split=True) == (sorted(tr), sorted(val))
    tr, val = make_trainer(root, name, nnUNetTrainer, fold=2).do_split()
    assert ds.fold_split(2) == (sorted(tr), sorted(val))
