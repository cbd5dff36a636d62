"""Patient-grouped cross-validation splits in nnU-Net's ``splits_final.json`` format.

Not ``sklearn.model_selection.GroupKFold``: the folds are user-visible (written into
``splits_final.json`` of every converted dataset, hence into every reported fold result) and
GroupKFold deals different ones. Without shuffling it balances fold sizes greedily by cases per
patient, with ``shuffle=True`` it cuts the permuted patients into contiguous blocks; here the
permuted patients are dealt round-robin. Switching would silently re-split existing datasets on
their next conversion (``tests/test_splits.py`` pins the folds).
"""
from __future__ import annotations

import re

import numpy as np

from nnunet_scribble.errors import UserFacingError


def patient_folds(case_patients: dict[str, str], n_folds: int = 5, seed: int = 12345) -> list[dict]:
    """Split cases into folds so that all cases of one patient land in the same fold.

    Patients are shuffled with ``seed`` and dealt round-robin into ``min(n_folds, #patients)`` folds.
    Returns ``[{"train": [...], "val": [...]}, ...]``; empty when there are fewer than two patients.
    """
    patients = sorted(set(case_patients.values()))
    n = min(n_folds, len(patients))
    if n < 2:
        return []
    order = np.random.RandomState(seed).permutation(len(patients))
    fold_of = {patients[j]: i % n for i, j in enumerate(order)}
    cases = sorted(case_patients)
    return [{"train": [c for c in cases if fold_of[case_patients[c]] != f],
             "val": [c for c in cases if fold_of[case_patients[c]] == f]} for f in range(n)]


def expand_patients(tokens: list[str], prefix: str = "patient", width: int = 3) -> set[str]:
    """'71-85', '7', 'patient007' -> {'patient071', ..., 'patient007'}."""
    out = set()
    for token in tokens:
        for part in filter(None, re.split(r"[,\s]+", token)):
            m = re.fullmatch(rf"(?:{prefix})?(\d+)(?:-(?:{prefix})?(\d+))?", part)
            if not m:
                raise UserFacingError(f"cannot read patient {part!r}: use numbers, ranges (71-85) or {prefix}NNN")
            first, last = int(m.group(1)), int(m.group(2) or m.group(1))
            out.update(f"{prefix}{i:0{width}d}" for i in range(first, last + 1))
    return out


def patient_of(case_id: str, pattern: str | None) -> str:
    """Patient id of a case: the first group (or the whole match) of ``pattern``; the case itself if none."""
    if not pattern:
        return case_id
    m = re.search(pattern, case_id)
    if not m:
        return case_id
    return m.group(1) if m.groups() else m.group(0)
