"""Raw files read during training (MaCo's GC regions, SAM-SP's dense labels) go through the checked reader:
a truncated file is an error naming it, not silently zero-filled supervision."""
import pytest

import conftest
from nnunet_scribble.errors import UserFacingError


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_raw_scribble_stops_maco_gc_regions(tiny_copy, tmp_path):
    from nnunet_scribble.training import maco

    root, name = tiny_copy
    trainer = conftest.make_trainer(root, name, maco.nnUNetTrainerMaCo_2epochs)
    tr_keys, _ = trainer.do_split()
    trainer.preprocessed_dataset_folder = str(tmp_path / "fresh" / "nnUNetPlans_2d")  # no GC cache there
    scribble = truncate(root / "nnUNet_raw" / name / "labelsTr" / f"{tr_keys[0]}.nii.gz")
    with pytest.raises(UserFacingError, match="truncated or corrupt") as e:
        maco.build_gc_maps(trainer, tr_keys, 4.0, True)
    assert str(scribble) in str(e.value)


def test_truncated_dense_label_stops_sam_evaluation(tiny_copy):
    from nnunet_scribble.sam.data import PreprocessedDataset

    root, name = tiny_copy
    ds = PreprocessedDataset(name, "2d")
    case = ds.identifiers[0]
    cs = ds.load_case(case)
    assert ds.dense_labels(case, cs.properties, cs.spatial_shape) is not None
    dense = truncate(root / "nnUNet_raw" / name / "labelsTr_dense" / f"{case}.nii.gz")
    with pytest.raises(UserFacingError, match="truncated or corrupt") as e:
        ds.dense_labels(case, cs.properties, cs.spatial_shape)
    assert str(dense) in str(e.value)
