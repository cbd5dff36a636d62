"""nnUNetTrainerSAMSP: the loss (hand values), the SAM stages run from the trainer, the real CLI end to end."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import make_trainer, run_demo_cli
from nnunet_scribble.losses.dmpls import soft_dice_loss
from nnunet_scribble.sam.backends import ENV_BACKEND, ENV_CHECKPOINT
from nnunet_scribble.sam.testing import write_tiny_sam
from nnunet_scribble.training.samsp import READY_FILE, nnUNetTrainerSAMSP

IGNORE = 4


def one_hot_logits(classes, n=4):
    """(1, n, 1, len(classes)) logits whose softmax is (numerically) one-hot."""
    return 50.0 * torch.nn.functional.one_hot(torch.tensor(classes), n).T.float()[None, :, None, :]


def test_sam_dice_terms_hand_values(nnunet_paths):
    """PL_SAM = [0, 1, ignore, 2]; both decoders predict [0, 1, 3, 1] (one-hot).

    Per class over the non-ignored voxels (pred, label, overlap): bg (1,1,1) -> loss 0; class 1 (2,1,1) ->
    1 - 2/3; class 2 (0,1,0) -> 1; class 3 (0,0,0; its only prediction is ignored) -> 0. Mean 1/3, times
    w_sam * 0.5 = 1/6 per decoder.
    """
    trainer = make_trainer(*nnunet_paths, nnUNetTrainerSAMSP)
    trainer.initialize()
    logits = one_hot_logits([0, 1, 3, 1])
    trainer.dual_forward = lambda data: ([logits, logits[..., :2]], [logits.clone(), logits[..., :2]])
    scribbles = [torch.full((1, 1, 1, 4), IGNORE), torch.full((1, 1, 1, 2), IGNORE)]
    extras = [torch.tensor([0, 1, IGNORE, 2]).view(1, 1, 1, 4), torch.zeros(1, 1, 1, 2)]
    trainer.loss.weight_factors = (2 / 3, 1 / 3)
    terms = trainer.compute_loss_terms(None, scribbles, extras)
    assert set(terms) == {"partial_main", "partial_aux", "pl_dice_main", "pl_dice_aux", "sam_dice_main",
                          "sam_dice_aux"}
    assert terms["sam_dice_main"].item() == pytest.approx(1 / 6, abs=1e-4)
    assert terms["sam_dice_aux"].item() == pytest.approx(1 / 6, abs=1e-4)

    # the weight scales the term; what the ignored voxel predicts does not matter
    trainer.sam_pl_weight = 2.0
    other = one_hot_logits([0, 1, 2, 1])
    trainer.dual_forward = lambda data: ([other, other[..., :2]], [other, other[..., :2]])
    terms = trainer.compute_loss_terms(None, scribbles, extras)
    # the ignored voxel now predicts class 2 instead of 3: same per-class sums, same value, doubled weight
    assert terms["sam_dice_main"].item() == pytest.approx(2 * 0.5 / 3, abs=1e-4)


def test_sam_dice_ignores_pseudolabel_ignore_and_needs_the_extra_channel(nnunet_paths):
    trainer = make_trainer(*nnunet_paths, nnUNetTrainerSAMSP)
    trainer.initialize()
    torch.manual_seed(0)
    main = [torch.randn(2, 4, 8, 8)]
    aux = [torch.randn(2, 4, 8, 8)]
    trainer.dual_forward = lambda data: (main, aux)
    trainer.loss.weight_factors = (1.0,)
    scribbles = [torch.randint(0, 5, (2, 1, 8, 8))]
    pl = torch.randint(0, 4, (2, 1, 8, 8))
    pl[:, :, :4] = IGNORE
    terms = trainer.compute_loss_terms(None, scribbles, [pl])
    expected = 0.5 * soft_dice_loss(main[0].softmax(1), pl, ignore_index=IGNORE).item()
    assert terms["sam_dice_main"].item() == pytest.approx(expected, rel=1e-6)
    # changing the predictions where PL_SAM is ignore leaves the SAM term unchanged
    main[0][:, :, :4] = torch.randn(2, 4, 4, 8)
    assert trainer.compute_loss_terms(None, scribbles, [pl])["sam_dice_main"].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(RuntimeError, match="extra_seg_folder"):
        trainer.compute_loss_terms(None, scribbles, [torch.zeros(2, 0, 8, 8)])


def test_sam_settings_come_from_class_then_environment_then_defaults(nnunet_paths, monkeypatch):
    from nnunet_scribble.errors import UserFacingError
    from nnunet_scribble.sam.pseudolabels import ENV_EPOCHS, ENV_ROUNDS

    monkeypatch.delenv(ENV_ROUNDS, raising=False)
    monkeypatch.delenv(ENV_EPOCHS, raising=False)
    trainer = make_trainer(*nnunet_paths, nnUNetTrainerSAMSP)
    config = trainer.stage_b_config()
    assert (config.rounds, config.finetune.epochs) == (2, 30)            # the paper's / the command's defaults
    monkeypatch.setenv(ENV_ROUNDS, "0")
    monkeypatch.setenv(ENV_EPOCHS, " 3 ")
    config = trainer.stage_b_config()
    assert (config.rounds, config.finetune.epochs) == (0, 3)
    trainer.sam_rounds = 1                                                 # a subclass's setting wins
    assert trainer.stage_b_config().rounds == 1
    monkeypatch.setenv(ENV_EPOCHS, "many")
    with pytest.raises(UserFacingError, match=f"{ENV_EPOCHS}='many' is not a non-negative integer"):
        trainer.stage_b_config()


class SAMSPQuick(nnUNetTrainerSAMSP):
    sam_rounds = 1
    sam_finetune_epochs = 2


@pytest.fixture
def tiny_sam_copy(tiny_copy, tmp_path, monkeypatch, one_torch_thread):
    """The writable tiny dataset with the tiny SAM chosen through the environment (as a user would)."""
    monkeypatch.setenv(ENV_BACKEND, "vit_b")
    monkeypatch.setenv(ENV_CHECKPOINT, write_tiny_sam(str(tmp_path / "tiny_vit_b.pth")))
    return tiny_copy


def test_training_start_runs_the_sam_stages_once_and_trains_on_their_pseudolabels(tiny_sam_copy):
    root, name = tiny_sam_copy
    trainer = make_trainer(root, name, SAMSPQuick)
    trainer.on_train_start()
    folder = trainer.extra_seg_folder
    assert folder.endswith(os.path.join("fold_0", "round_1")) and "sam_pseudolabels" in folder
    splits = json.load(open(root / "nnUNet_preprocessed" / name / "splits_final.json"))
    assert sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".b2nd")) == sorted(splits[0]["train"])
    ready = json.load(open(os.path.join(trainer.output_folder, READY_FILE)))
    assert ready["folder"] == folder and 0 <= ready["pseudo_label_dice"] <= 1   # dense labels exist
    log = open(trainer.log_file).read()
    assert "stage A: encoding" in log and "pseudo-label Dice vs dense labels" in log

    batch = next(trainer.dataloader_train)
    assert all(t.shape[1] == 2 for t in batch["target"])          # scribbles + SAM pseudo-label
    scribble, pl = batch["target"][0][:, 0], batch["target"][0][:, 1]
    labelled = scribble != IGNORE
    assert torch.equal(pl[labelled], scribble[labelled])         # stage B keeps the scribbles in the PL
    trainer.on_train_epoch_start()
    out = trainer.train_step(batch)
    terms = {k[len("train_term_"):]: float(v) for k, v in out.items() if k.startswith("train_term_")}
    assert {"sam_dice_main", "sam_dice_aux"} <= set(terms) and len(terms) == 6
    assert sum(terms.values()) == pytest.approx(float(out["loss"]), rel=1e-5)
    assert all(np.isfinite(v) and v > 0 for v in terms.values())
    trainer.on_train_end()

    # a second run (e.g. another trainer variant on the same fold) reuses every stage output
    pl_file = os.path.join(folder, sorted(os.listdir(folder))[0])
    mtime = os.stat(pl_file).st_mtime_ns
    again = make_trainer(root, name, SAMSPQuick)
    assert again.ensure_sam_pseudolabels() == folder
    log = open(again.log_file).read()
    assert "stage A: encoding" not in log and "round 1: pseudo-labels already complete" in log
    assert os.stat(pl_file).st_mtime_ns == mtime


def test_found_through_ext_trainer_path(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_scribble.ext_trainers import TRAINERS_PATH
    from nnunet_scribble.training import samsp
    monkeypatch.setenv("nnUNet_extTrainer", TRAINERS_PATH)
    for name in ("nnUNetTrainerSAMSP", "nnUNetTrainerSAMSP_5epochs", "nnUNetTrainerSAMSP_3000it"):
        assert recursive_find_trainer_class_by_name(name) is getattr(samsp, name)


@pytest.mark.slow
def test_demo_end_to_end_samsp_with_litemedsam(tmp_path):
    """The default backend (the real LiteMedSAM checkpoint), stages A+B, DMPLS+SAM training, stock predict."""
    from nnunet_scribble.demo.run import DATASET_NAME
    trainer = "nnUNetTrainerSAMSP_1epoch"
    out = tmp_path / "demo"
    run_demo_cli(out, trainer, unset_env=(ENV_BACKEND, ENV_CHECKPOINT))
    summary = json.loads((out / "predictions" / f"{trainer}_fold0" / "summary_dense.json").read_text())
    assert summary["n_cases"] == 2 and np.isfinite(summary["mean"]["Dice"])
    fold = out / "nnUNet_results" / DATASET_NAME / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    ready = json.loads((fold / READY_FILE).read_text())
    assert "litemedsam-" in ready["folder"] and ready["pseudo_label_dice"] > 0.3
    log = next(fold.glob("training_log_*.txt")).read_text()
    for term in ("partial_main", "pl_dice_aux", "sam_dice_main", "sam_dice_aux"):
        assert term in log
    overlays = list(
        (out / "nnUNet_preprocessed" / DATASET_NAME / "sam_pseudolabels").glob("*/litemedsam-*/fold_0/overlays/*/*.png"))
    assert overlays
