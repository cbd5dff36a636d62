"""nnU-Net's crop marks (-1 in a preprocessed scribble map: background on zero-intensity voxels) are
background for the trainers and the SAM stages, while patch padding (-1 after loading) stays ``ignore``;
and the trainer warns about scribbled cases without background scribbles."""
import blosc2
import conftest
import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

from nnunet_scribble.crop_marks import (CropMarksAsBackgroundView, crop_marks_as_background,
                                        with_crop_marks_as_background)
from nnunet_scribble.training.pce import nnUNetTrainerPCE_2epochs

IGNORE = 4


def test_crop_marks_read_as_background_and_the_view_slices_lazily():
    seg = np.array([[[-1, 0, 1], [4, -1, 2]]], dtype=np.int8)
    assert crop_marks_as_background(seg).tolist() == [[[0, 0, 1], [4, 0, 2]]]
    assert seg[0, 0, 0] == -1                                      # the input is not changed
    view = CropMarksAsBackgroundView(blosc2.asarray(seg))
    assert view.shape == (1, 2, 3) and view.ndim == 3
    assert view[:, 1, :2].tolist() == [[4, 0]]
    assert np.asarray(view).tolist() == [[[0, 0, 1], [4, 0, 2]]]
    assert with_crop_marks_as_background(nnUNetDatasetBlosc2).__mro__[2] is nnUNetDatasetBlosc2
    assert issubclass(with_crop_marks_as_background(nnUNetDatasetNumpy), nnUNetDatasetNumpy)
    wrapped = with_crop_marks_as_background(nnUNetDatasetBlosc2)
    assert with_crop_marks_as_background(wrapped) is wrapped


def _rewrite_segs(folder, change):
    """Apply ``change(case, seg) -> seg`` to every preprocessed ``<case>_seg.b2nd`` in ``folder``."""
    for seg_file in sorted(folder.glob("*_seg.b2nd")):
        case = seg_file.name[: -len("_seg.b2nd")]
        old = blosc2.open(str(seg_file), mode="r")[:]
        seg_file.unlink()
        blosc2.asarray(np.ascontiguousarray(change(case, old).astype(old.dtype)), urlpath=str(seg_file))


def test_background_scribbles_on_zero_voxels_train_as_background(tiny_copy):
    root, name = tiny_copy
    folder = root / "nnUNet_preprocessed" / name / "nnUNetPlans_2d"
    # every background scribble becomes a crop mark, as if it lay on zero-intensity voxels
    _rewrite_segs(folder, lambda case, seg: np.where(seg == 0, -1, seg))
    trainer = conftest.make_trainer(root, name, nnUNetTrainerPCE_2epochs)
    trainer.initialize()
    dl_tr, dl_val = trainer.get_dataloaders()
    for batch in (next(dl_tr), next(dl_val)):
        target = batch["target"][0]
        assert (target == 0).any(), "background scribbles on zero voxels were dropped"
        assert not (target < 0).any()
    # the padding value after loading still becomes ignore
    kwargs = dict(is_cascaded=False, foreground_labels=[1, 2, 3], regions=None, ignore_label=IGNORE)
    padded = trainer.get_validation_transforms(None, **kwargs)(image=torch.zeros(1, 4, 4),
                                                               segmentation=torch.full((1, 4, 4), -1, dtype=torch.int16))
    assert (padded["segmentation"] == IGNORE).all()


def test_sam_stages_read_crop_marks_as_background(tiny_copy):
    from nnunet_scribble.sam.data import PreprocessedDataset

    root, name = tiny_copy
    folder = root / "nnUNet_preprocessed" / name / "nnUNetPlans_2d"
    ds = PreprocessedDataset(name, "2d")
    case = ds.identifiers[0]
    before = ds.load_case(case).scribbles.copy()
    fingerprint = ds.scribble_fingerprint(case)
    _rewrite_segs(folder, lambda c, seg: np.where(seg == 0, -1, seg) if c == case else seg)
    assert (blosc2.open(str(folder / f"{case}_seg.b2nd"), mode="r")[:] == -1).any()
    assert np.array_equal(ds.load_case(case).scribbles, before)
    assert ds.scribble_fingerprint(case) == fingerprint


def test_the_trainer_warns_about_scribbled_cases_without_background(tiny_copy):
    root, name = tiny_copy
    folder = root / "nnUNet_preprocessed" / name / "nnUNetPlans_2d"
    trainer = conftest.make_trainer(root, name, nnUNetTrainerPCE_2epochs)
    trainer.initialize()
    tr_keys, _ = trainer.do_split()
    assert trainer.warn_about_missing_background() == []
    no_bg, crop_bg = tr_keys[0], tr_keys[1]
    _rewrite_segs(folder, lambda case, seg: (np.where(seg == 0, IGNORE, seg) if case == no_bg else
                                             np.where(seg == 0, -1, seg) if case == crop_bg else seg))
    trainer = conftest.make_trainer(root, name, nnUNetTrainerPCE_2epochs)
    trainer.initialize()
    assert trainer.warn_about_missing_background() == [no_bg]   # crop marks count as background
    log = open(trainer.log_file).read()
    assert f"WARNING: 1 of {len(tr_keys)} training cases have scribbles but no background scribble (e.g. {no_bg})" in log
