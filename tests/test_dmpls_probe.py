"""benchmarks/dmpls_probe.py: probe set selection and false-positive volumes (hand values)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
dmpls_probe = pytest.importorskip("dmpls_probe")


def test_false_positive_volumes_split_near_and_far():
    ref = np.zeros((2, 40, 40), np.uint8)
    ref[0, 10:14, 10:14] = 3                    # 16 LV voxels, slice 0 only
    pred = np.zeros_like(ref)
    pred[0, 10:14, 10:15] = 3                   # 4 boundary false positives, next to the LV
    pred[0, 35:37, 35:37] = 3                   # 4 far ones: > 20 mm (spacing 1 mm) from the LV
    pred[1, 0:2, 0:3] = 3                       # 6 on a slice without foreground: far
    out = dmpls_probe.false_positive_volumes(pred, ref, (10.0, 1.0, 1.0), [1, 3])
    ml = 10.0 / 1000.0                          # one voxel: 10 mm^3
    assert out[3] == pytest.approx((14 * ml, 10 * ml, 16 * ml))
    assert out[1] == (0.0, 0.0, 0.0)


def test_far_uses_the_in_plane_spacing():
    ref = np.zeros((1, 40, 40), np.uint8)
    ref[0, 0, 0] = 1
    pred = np.zeros_like(ref)
    pred[0, 0, 15] = 2                          # 15 voxels away: 30 mm at 2 mm spacing -> far
    pred[0, 0, 5] = 2                           # 10 mm -> near
    out = dmpls_probe.false_positive_volumes(pred, ref, (5.0, 2.0, 2.0), [2])
    assert out[2] == pytest.approx((2 * 0.02, 0.02, 0.0))


def test_probe_cases_are_training_patients_only(tmp_path):
    images = tmp_path / "imagesTr"
    images.mkdir()
    for i in range(1, 71):
        for frame in ("01", "12"):
            (images / f"patient{i:03d}_frame{frame}_0000.nii.gz").touch()
    cases = dmpls_probe.probe_cases(tmp_path)
    assert len(cases) == 28 and cases[0] == "patient005_frame01" and cases[-1] == "patient070_frame12"
    (images / "patient070_frame12_0000.nii.gz").unlink()
    with pytest.raises(SystemExit, match="expected 28"):
        dmpls_probe.probe_cases(tmp_path)
