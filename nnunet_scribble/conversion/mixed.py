"""Mixed-label datasets: which training cases keep dense labels, which keep scribbles, which are unlabeled.

A selection (``SPEC``) names patients, never parts of one: all cases of a patient get the same kind. It is

- a list of patient ids or case ids, separated by commas or spaces (a case id stands for its patient and
  is refused when that patient has other cases); numbers and ranges (``1-3,7``) stand for the patients
  whose ids are one prefix plus a number (``patient001``, ``demo_007``);
- ``random:N``: N patients drawn with the seed from those no list named;
- ``rest``: every patient not chosen otherwise; ``none``: no patient.

Ids, ``random:N`` and ``rest`` may be combined (``3 random:2``: patient 3 and two drawn ones).

Lists are resolved first, then the ``random:N`` draws (in the order dense, scribbled, unlabeled), then
``rest``; patients chosen by nothing get the command's default kind. The summary (:func:`summary`) counts
the kinds overall and in each fold's training and validation part; it is stored as :data:`SUMMARY_FILE`
in the dataset folder.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from nnunet_scribble.errors import UserFacingError

KINDS = ("dense", "scribbled", "unlabeled")
SUMMARY_FILE = "mixed_labels.json"
ALLOW_FLAG = "--allow-unlabeled-folds"
# case ids written by the ACDC and WSL4MIS converters: the two frames of a patient are one patient
ACDC_CASES = r"^(patient\d+)_frame\d+$"


def default_patient_pattern(case_ids) -> str | None:
    """The ACDC grouping when every case id has the form patientNNN_frameNN, else None (each case alone)."""
    case_ids = list(case_ids)
    return ACDC_CASES if case_ids and all(re.fullmatch(ACDC_CASES, c) for c in case_ids) else None


def _numbering(patients: set[str]) -> dict[int, str] | None:
    """{number: patient} when all patient ids are one prefix plus a number, else None."""
    matches = [re.fullmatch(r"(.*?)(\d+)", p) for p in sorted(patients)]
    if not matches or not all(matches) or len({m[1] for m in matches}) != 1:
        return None
    numbers = {int(m[2]): m[0] for m in matches}
    return numbers if len(numbers) == len(matches) else None


def _resolve_ids(tokens: list[str], option: str, case_patients: dict[str, str], test_ids: set[str]) -> set[str]:
    patients = set(case_patients.values())
    cases_of = Counter(case_patients.values())
    numbered = _numbering(patients)
    chosen = set()
    for token in tokens:
        if token in patients:
            chosen.add(token)
        elif token in case_patients:
            patient = case_patients[token]
            if cases_of[patient] > 1:
                raise UserFacingError(f"{option}: case {token} belongs to patient {patient}, which has "
                                      f"{cases_of[patient]} training cases; all cases of a patient get one kind, "
                                      f"so name the patient ({patient})")
            chosen.add(patient)
        elif token in test_ids:
            raise UserFacingError(f"{option}: {token} is a test case or patient (imagesTs); only training cases can be "
                                  f"chosen")
        elif re.fullmatch(r"\d+(-\d+)?", token):
            if numbered is None:
                raise UserFacingError(f"{option}: {token!r} is a number, but the patient ids are not one prefix "
                                      f"plus a number (e.g. {sorted(patients)[0]}); give the ids themselves")
            first, _, last = token.partition("-")
            wanted = range(int(first), int(last or first) + 1)
            missing = [n for n in wanted if n not in numbered]
            if missing:
                raise UserFacingError(f"{option}: no training patient numbered {missing[0]} ({token!r}); the "
                                      f"numbers go from {min(numbered)} to {max(numbered)}")
            chosen.update(numbered[n] for n in wanted)
        elif token.startswith("random"):
            raise UserFacingError(f"{option}: cannot read {token!r}; write random:N with a whole number N")
        else:
            raise UserFacingError(f"{option}: {token!r} is neither a training patient nor a training case "
                                  f"(patients are e.g. {shown(patients)}); give ids, numbers or ranges (1-3), "
                                  f"random:N, rest or none")
    return chosen


def choose_kinds(case_patients: dict[str, str], specs: dict[str, tuple[str, str | None]], default: str,
                 seed: int = 0, test_ids=()) -> dict[str, str]:
    """{case: kind} for the training cases. ``specs``: kind -> (option name, SPEC or None)."""
    test_ids = set(test_ids)
    patients = sorted(set(case_patients.values()))
    kind_of: dict[str, str] = {}
    draws, rest = [], []
    for kind in KINDS:
        option, text = specs.get(kind, ("", None))
        tokens = [t for t in re.split(r"[,\s]+", text or "") if t]
        if tokens == ["none"]:
            continue
        if "rest" in tokens:
            rest.append((kind, option))
        counts = [re.fullmatch(r"random:(\d+)", t) for t in tokens]
        draws += [(kind, option, int(m[1])) for m in counts if m]
        ids = [t for t, m in zip(tokens, counts) if not m and t != "rest"]
        for patient in _resolve_ids(ids, option, case_patients, test_ids):
            if patient in kind_of:
                raise UserFacingError(f"patient {patient} is chosen both as {kind_of[patient]} and as {kind} "
                                      f"({option}); choose each patient once")
            kind_of[patient] = kind
    if len(rest) > 1:
        raise UserFacingError(f"'rest' is given to both {rest[0][1]} and {rest[1][1]}; give it to one of them")
    rng = np.random.default_rng(seed)
    for kind, option, n in draws:
        free = [p for p in patients if p not in kind_of]
        if n > len(free):
            raise UserFacingError(f"{option} random:{n}: only {len(free)} training patient(s) are left to draw from "
                                  f"({len(patients)} in all)")
        kind_of.update((str(p), kind) for p in rng.permutation(free)[:n])
    fill = rest[0][0] if rest else default
    return {case: kind_of.get(patient, fill) for case, patient in sorted(case_patients.items())}


def shown(ids, n: int = 3) -> str:
    """'a, b, c and 4 more'."""
    ids = sorted(ids)
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _count(kinds) -> dict[str, int]:
    counts = Counter(kinds)
    return {kind: counts[kind] for kind in KINDS}


def summary(kinds: dict[str, str], splits: list[dict], n_test: int = 0) -> dict:
    """Counts of each kind overall and per fold (train / val part); the per-case kinds; the test-case count."""
    return {"training_cases": _count(kinds.values()),
            "folds": [{"fold": i, "train": _count(kinds[c] for c in f["train"]),
                       "val": _count(kinds[c] for c in f["val"])} for i, f in enumerate(splits)],
            "test_cases": n_test,
            "cases": dict(sorted(kinds.items()))}


def _labeled(counts: dict[str, int]) -> int:
    return counts["dense"] + counts["scribbled"]


def fold_problems(result: dict, allow_unlabeled_folds: bool) -> tuple[list[str], list[str]]:
    """(problems, warnings): no labeled training case at all is a problem; a fold whose training part has none
    is a problem too, or a warning with ``allow_unlabeled_folds``."""
    if _labeled(result["training_cases"]) == 0:
        return ["no training case is dense or scribbled: choose some with the dense / scribbled selection"], []
    messages = []
    for fold in result["folds"]:
        if _labeled(fold["train"]) == 0:
            n = sum(fold["train"].values())
            messages.append(f"fold {fold['fold']}: its training part ({n} cases) holds no dense or scribbled case, "
                            f"so nnU-Net would train fold {fold['fold']} on unlabeled cases only (all its labeled "
                            f"patients are in its validation part). Choose more labeled patients, spread over the "
                            f"folds, or pass {ALLOW_FLAG} to write the dataset anyway and not train that fold")
    return ([], messages) if allow_unlabeled_folds else (messages, [])


def describe(result: dict) -> list[str]:
    """Printable lines of a :func:`summary`."""
    def line(counts):
        return ", ".join(f"{counts[k]} {k}" for k in KINDS)

    total = sum(result["training_cases"].values())
    lines = [f"mixed labels: {total} training cases: {line(result['training_cases'])}; "
             f"{result['test_cases']} test cases"]
    lines += [f"  fold {f['fold']}: train {line(f['train'])} | val {line(f['val'])}" for f in result["folds"]]
    if not result["folds"]:
        lines.append("  no folds (fewer than two patients): train with fold 'all'")
    return lines
