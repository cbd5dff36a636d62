"""Patient-grouped folds: pinned (they are user-visible in splits_final.json) and not GroupKFold's."""
from __future__ import annotations

import pytest

from nnunet_scribble.conversion.splits import patient_folds

ACDC_LIKE = {"patient001_frame01": "patient001", "patient001_frame12": "patient001",
             "patient002_frame01": "patient002", "patient003_frame01": "patient003",
             "patient003_frame15": "patient003", "patient004_frame01": "patient004",
             "patient005_frame01": "patient005", "patient006_frame01": "patient006",
             "patient007_frame01": "patient007"}


def test_folds_are_pinned():
    """The folds of existing datasets must not change with the implementation."""
    assert [f["val"] for f in patient_folds(ACDC_LIKE, 3)] == [
        ["patient001_frame01", "patient001_frame12", "patient003_frame01", "patient003_frame15", "patient007_frame01"],
        ["patient002_frame01", "patient004_frame01"],
        ["patient005_frame01", "patient006_frame01"]]
    one_each = {f"case{i:02d}": f"p{i:02d}" for i in range(10)}
    assert [f["val"] for f in patient_folds(one_each, 5, seed=7)] == [
        ["case08", "case09"], ["case05", "case07"], ["case00", "case03"], ["case02", "case06"], ["case01", "case04"]]
    for fold in patient_folds(ACDC_LIKE, 3):
        assert sorted(fold["train"] + fold["val"]) == sorted(ACDC_LIKE)


def test_group_kfold_would_deal_other_folds():
    """Why the module does not use GroupKFold (see its docstring): neither of its modes gives these folds."""
    model_selection = pytest.importorskip("sklearn.model_selection")
    cases = {f"c{i:02d}": f"p{i // 2:02d}" for i in range(20)}
    ours = sorted(sorted(f["val"]) for f in patient_folds(cases, 5, seed=12345))
    ids = sorted(cases)
    for kwargs in ({}, {"shuffle": True, "random_state": 12345}):
        splitter = model_selection.GroupKFold(5, **kwargs)
        theirs = sorted(sorted(ids[i] for i in val) for _, val in splitter.split(ids, groups=[cases[c] for c in ids]))
        assert theirs != ours
