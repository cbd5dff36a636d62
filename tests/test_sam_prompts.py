"""Prompt sampling from synthetic scribbles (no SAM needed)."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_scribble.sam.prompts import (PromptRules, farthest_point_sampling, negative_candidates, scribble_box,
                                         skeleton_pixels, slice_prompts)

IGNORE = 4


def _stroke(img, r0, c0, r1, c1, value, width=3):
    n = max(abs(r1 - r0), abs(c1 - c0)) * 2 + 2
    for r, c in zip(np.linspace(r0, r1, n).round().astype(int), np.linspace(c0, c1, n).round().astype(int)):
        img[max(0, r - width // 2):r + width // 2 + 1, max(0, c - width // 2):c + width // 2 + 1] = value


@pytest.fixture
def scribble():
    """100x120 slice: background loop, RV stroke (1), Myo arc (2) around an LV stroke (3)."""
    s = np.full((100, 120), IGNORE, np.int16)
    yy, xx = np.mgrid[:100, :120]
    d = np.hypot(yy - 50, xx - 70)
    s[(d > 38) & (d < 40.5)] = 0                                    # background loop
    s[(np.abs(d - 18) < 1.2) & (xx > 60)] = 2                       # myocardium arc
    _stroke(s, 45, 64, 55, 76, 3)                                   # LV stroke inside
    _stroke(s, 35, 40, 65, 42, 1)                                   # RV stroke left of the ring
    return s


def test_positive_points_lie_on_the_scribble_and_are_capped(scribble):
    rules = PromptRules(mode="points", n_pos=10, n_neg=5)
    prompts = slice_prompts(scribble, [1, 2, 3], 4, rules)
    assert [p.cls for p in prompts] == [1, 2, 3]
    for p in prompts:
        pos = p.points[p.labels == 1]
        skeleton = skeleton_pixels(scribble == p.cls)
        assert len(pos) == min(10, len(skeleton))
        rows, cols = pos[:, 1].astype(int), pos[:, 0].astype(int)     # (x, y) -> (row, col)
        assert (scribble[rows, cols] == p.cls).all()
        assert len({tuple(q) for q in pos}) == len(pos)                # no duplicates
        assert p.box is None


def test_negative_points_lie_on_other_classes_scribbles(scribble):
    rules = PromptRules(mode="box+points", n_pos=10, n_neg=5)
    for p in slice_prompts(scribble, [1, 2, 3], 4, rules):
        neg = p.points[p.labels == 0]
        assert 1 <= len(neg) <= 5
        values = scribble[neg[:, 1].astype(int), neg[:, 0].astype(int)]
        assert ((values != p.cls) & (values >= 0) & (values < 4)).all()
    # the LV's neighbourhood (its box) contains the myocardium scribble, not the far-away RV stroke
    lv = [p for p in slice_prompts(scribble, [3], 4, rules)][0]
    neg = lv.points[lv.labels == 0]
    assert set(scribble[neg[:, 1].astype(int), neg[:, 0].astype(int)].tolist()) <= {0, 2}


def test_negatives_fall_back_to_the_nearest_class_outside_the_box():
    s = np.full((60, 60), IGNORE, np.int16)
    s[10:13, 10:20] = 1
    s[25:28, 10:20] = 0           # 13 px below class 1: outside its box, nearest
    s[45:48, 40:50] = 2           # farther away
    box = scribble_box(s == 1, PromptRules(box_margin=0.0, box_min_margin=2))
    cand = negative_candidates(s, 1, [0, 1, 2], box, n_neg=3)
    assert len(cand) and set(s[cand[:, 0], cand[:, 1]].tolist()) == {0}
    s[s == 0] = IGNORE
    cand = negative_candidates(s, 1, [0, 1, 2], box, n_neg=3)
    assert 0 < len(cand) <= 12 and set(s[cand[:, 0], cand[:, 1]].tolist()) == {2}


def test_boxes_contain_the_scribble_with_margin(scribble):
    rules = PromptRules(mode="box", box_margin=0.1, box_min_margin=5)
    prompts = slice_prompts(scribble, [1, 2, 3], 4, rules)
    for p in prompts:
        rows, cols = np.nonzero(scribble == p.cls)
        x0, y0, x1, y1 = p.box
        assert x0 <= cols.min() - 5 or x0 == 0
        assert y0 <= rows.min() - 5 or y0 == 0
        assert x1 >= cols.max() + 5 or x1 == scribble.shape[1] - 1
        assert y1 >= rows.max() + 5 or y1 == scribble.shape[0] - 1
        assert 0 <= x0 < x1 <= scribble.shape[1] - 1 and 0 <= y0 < y1 <= scribble.shape[0] - 1
        assert len(p.points) == 0


def test_box_margin_scales_with_extent_and_is_clipped():
    s = np.full((50, 200), IGNORE, np.int16)
    s[20:23, 10:190] = 1                                    # 180 px long, 3 px tall
    x0, y0, x1, y1 = scribble_box(s == 1, PromptRules(box_margin=0.1, box_min_margin=5))
    assert (x0, x1) == (0.0, 199.0)                         # 18 px margin, clipped to the slice
    assert (y0, y1) == (15.0, 27.0)                         # min margin 5 px


def test_classes_without_scribble_get_no_prompt_and_rules_validate(scribble):
    s = scribble.copy()
    s[s == 1] = IGNORE
    assert [p.cls for p in slice_prompts(s, [1, 2, 3], 4, PromptRules(mode="box"))] == [2, 3]
    assert slice_prompts(np.full((20, 20), IGNORE, np.int16), [1, 2, 3], 4, PromptRules(mode="box")) == []
    with pytest.raises(ValueError):
        PromptRules(mode="scribble")


def test_farthest_point_sampling_spreads_along_a_line():
    line = np.stack([np.zeros(101, int), np.arange(101)], 1)
    idx = farthest_point_sampling(line, 3)
    assert sorted(line[idx, 1].tolist()) == [0, 50, 100]
    assert len(farthest_point_sampling(line[:2], 10)) == 2
    assert len(farthest_point_sampling(line[:0], 10)) == 0
