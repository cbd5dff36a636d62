"""Merging per-class SAM masks into one pseudo-label."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_scribble.sam.cache import scale_slices
from nnunet_scribble.sam.data import CaseSlices
from nnunet_scribble.sam.merge import apply_scribbles, merge_class_masks, priority_by_area
from nnunet_scribble.sam.pseudolabels import dice_per_case, pseudo_label_case, summarise_dice


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (np.hypot(yy - cy, xx - cx) <= r).astype(np.float32)


def test_overlaps_go_to_the_higher_priority_class():
    shape = (40, 40)
    myo_filled = _disk(shape, 20, 20, 12)          # a box-prompted ring class often comes back filled
    lv = _disk(shape, 20, 20, 7)
    rv = _disk(shape, 20, 5, 6)                    # overlaps the ring's left edge
    probs = np.stack([rv * 0.9, myo_filled * 0.8, lv * 0.95])
    label = merge_class_masks([1, 2, 3], probs, priority=[3, 1, 2])
    assert (label[lv > 0] == 3).all()                                   # LV beats Myo inside
    assert (label[(rv > 0)] == 1).all()                                 # RV beats Myo on the overlap
    ring = (myo_filled > 0) & (lv == 0) & (rv == 0)
    assert (label[ring] == 2).all()
    assert (label[(myo_filled == 0) & (rv == 0)] == 0).all()            # unclaimed -> background
    # the other order: Myo first swallows the LV
    assert (merge_class_masks([1, 2, 3], probs, priority=[2, 3, 1])[lv > 0] == 2).all()


def test_threshold_and_missing_priority():
    probs = np.array([[[0.2, 0.6]], [[0.7, 0.4]]], np.float32)
    assert merge_class_masks([1, 2], probs, [1, 2]).tolist() == [[2, 1]]
    assert merge_class_masks([1, 2], probs, [1, 2], threshold=0.65).tolist() == [[2, 0]]
    with pytest.raises(ValueError):
        merge_class_masks([1, 2], probs, [1])


def test_scribbles_override_and_priority_by_area():
    label = np.array([[1, 1, 2, 0]], np.int16)
    scribble = np.array([[0, 4, 3, -1]], np.int16)                     # 4 = ignore, -1 = outside crop
    assert apply_scribbles(label, scribble, 4).tolist() == [[0, 1, 3, 0]]
    assert priority_by_area({1: 300.0, 2: 500.0, 3: 120.0}, [1, 2, 3]) == [3, 1, 2]
    assert priority_by_area({2: 10.0}, [1, 2, 3]) == [2, 1, 3]


def test_pseudo_label_case_fills_unprompted_slices():
    """Slices with only background scribbles -> background; without any scribble -> ignore."""
    scrib = np.full((3, 8, 8), 4, np.int16)
    scrib[1, 0, 0] = 0
    scrib[2, 1, 1] = 2
    cs = CaseSlices("c", np.zeros((3, 8, 8), np.float32), scrib, (3, 8, 8), {})
    pl = pseudo_label_case(cs, [], None, None, None, [1, 2, 3], num_classes=4, ignore_label=4)
    assert (pl[0] == 4).all() and (pl[1] == 0).all()
    assert pl[2, 1, 1] == 2 and (pl[2].sum() == 2)


def test_dice_summary_and_scaling():
    pl = np.array([[1, 1, 0, 2]])
    gt = np.array([[1, 0, 0, 3]])
    d = dice_per_case(pl, gt, [1, 2, 3])
    assert d[1] == pytest.approx(2 / 3) and d[2] == 0.0 and d[3] == 0.0
    s = summarise_dice({"a": d, "b": {1: 1.0}}, {1: "RV", 2: "Myo", 3: "LV"})
    assert s["per_class"]["RV"] == pytest.approx((2 / 3 + 1) / 2) and s["cases"] == 2
    img = np.stack([np.arange(100, dtype=np.float32).reshape(10, 10), np.full((10, 10), 3, np.float32)])
    out = scale_slices(img)
    assert out.min() == 0 and out.max() == 1 and (out[1] == 0).all()
