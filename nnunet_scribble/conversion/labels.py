"""Label value maps: which input value means which class, and which one means 'unlabeled'.

Output classes are numbered 0..K-1 in the order given (0 = background); the nnU-Net ``ignore`` label
is K. Scribble files and dense files may use different codes (MyoPS scribbles use 0 for unlabeled and
3000 for background, its dense labels use 0 for background), so each has its own value list.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnunet_scribble.errors import UserFacingError


@dataclass(frozen=True)
class LabelSpec:
    classes: tuple[str, ...]           # output class names; class i is written as value i
    scribble_values: tuple[int, ...]   # input value of class i in scribble files
    unlabeled: int                     # input value meaning 'not annotated' in scribble files
    dense_values: tuple[int, ...] | None = None  # input value of class i in dense files (default: scribble_values)
    description: str = ""

    def __post_init__(self):
        problems = []
        k = len(self.classes)
        if k < 2:
            problems.append("at least two classes are needed (background and one foreground class)")
        if self.classes and self.classes[0] != "background":
            problems.append(f"the first class must be called 'background' (nnU-Net requires it), got "
                            f"{self.classes[0]!r}")
        if len(set(self.classes)) != k or "ignore" in self.classes:
            problems.append(f"class names must be unique and not 'ignore': {list(self.classes)}")
        for what, values in (("scribble values", self.scribble_values), ("dense values", self.dense)):
            if len(values) != k:
                problems.append(f"{len(values)} {what} {list(values)} for {k} classes {list(self.classes)}")
            if len(set(values)) != len(values):
                problems.append(f"{what} repeat a value: {list(values)}")
        if self.unlabeled in self.scribble_values:
            problems.append(f"the unlabeled value {self.unlabeled} is also a class value {list(self.scribble_values)}")
        if problems:
            raise UserFacingError("invalid label map: " + "; ".join(problems))

    @property
    def dense(self) -> tuple[int, ...]:
        return self.scribble_values if self.dense_values is None else self.dense_values

    @property
    def ignore(self) -> int:
        return len(self.classes)

    def dataset_labels(self, with_ignore: bool = True) -> dict[str, int]:
        labels = {name: i for i, name in enumerate(self.classes)}
        if with_ignore:
            labels["ignore"] = self.ignore
        return labels

    def map_scribble(self, array: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """Scribble file values -> 0..K-1 and ignore=K; returns (mapped, None) or (None, problem)."""
        table = dict(zip(self.scribble_values, range(len(self.classes))))
        table[self.unlabeled] = self.ignore
        return map_values(array, table)

    def map_dense(self, array: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """Dense file values -> 0..K-1; returns (mapped, None) or (None, problem)."""
        return map_values(array, dict(zip(self.dense, range(len(self.classes)))))


def map_values(array: np.ndarray, table: dict[int, int]) -> tuple[np.ndarray | None, str | None]:
    """Apply ``table`` (input value -> output value) to an integer-valued label array."""
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        return None, f"wrong data type {array.dtype} for a label map (needs integer values)"
    out_dtype = np.uint8 if max(table.values()) < 256 else np.uint16
    if array.dtype in (np.uint8, np.uint16, np.int8, np.int16) and array.size:
        return _map_small_integers(array, table, out_dtype)
    values = np.unique(array)
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values) & (values == np.round(values))):
        bad = values[~(np.isfinite(values) & (values == np.round(values)))]
        return None, (f"wrong data type: label map of type {array.dtype} holds non-integer values "
                      f"(e.g. {bad[:3].tolist()})")
    unknown = [v for v in values.astype(np.int64).tolist() if v not in table]
    if unknown:
        return None, f"unknown label values {unknown} (expected {sorted(table)})"
    keys = np.array(sorted(table), dtype=np.int64)
    out_values = np.array([table[k] for k in keys.tolist()])
    mapped = out_values.astype(out_dtype)[np.searchsorted(keys, array.astype(np.int64))]
    return mapped, None


def _map_small_integers(array: np.ndarray, table: dict[int, int], out_dtype) -> tuple[np.ndarray | None, str | None]:
    """Lookup-table version of :func:`map_values` for 8/16-bit label maps (the usual case; much faster)."""
    offset = int(np.iinfo(array.dtype).min)  # 0 for unsigned types
    index = array.astype(np.int64) - offset if offset else array
    present = np.flatnonzero(np.bincount(index.ravel())) + offset
    unknown = [v for v in present.tolist() if v not in table]
    if unknown:
        return None, f"unknown label values {unknown} (expected {sorted(table)})"
    lut = np.zeros(int(present.max()) - offset + 1, dtype=out_dtype)
    for key, value in table.items():
        if 0 <= key - offset < len(lut):
            lut[key - offset] = value
    return lut[index], None


def _spec(classes, scribble, unlabeled, dense=None, description=""):
    return LabelSpec(tuple(classes), tuple(scribble), unlabeled, None if dense is None else tuple(dense), description)


CARDIAC = ("background", "RV", "Myo", "LV")

PRESETS: dict[str, LabelSpec] = {
    "acdc": _spec(CARDIAC, (0, 1, 2, 3), 4, description=(
        "ACDC (Valvano et al.), WSL4MIS and MSCMR (CycleMix) scribbles: 0 background, 1 RV, 2 Myo, 3 LV, "
        "4 unlabeled; dense labels 0-3.")),
    "chaos": _spec(("background", "liver", "right_kidney", "left_kidney", "spleen"), (5, 1, 2, 3, 4), 0,
                   dense=(0, 1, 2, 3, 4), description=(
        "CHAOS MR scribbles of Yang et al. 2024 (PacingPseudo, *_scb.nii.gz): 0 unlabeled, 1 liver, "
        "2 right kidney, 3 left kidney, 4 spleen, 5 background; dense labels 0-4 (the CHAOS PNG masks "
        "63/126/189/252 divided by 63).")),
    "myops": _spec(("background", "myocardium", "LV", "RV", "edema", "scar"), (3000, 200, 500, 600, 1220, 2221), 0,
                   dense=(0, 200, 500, 600, 1220, 2221), description=(
        "MyoPS scribbles: 0 unlabeled, 3000 background, 200 normal myocardium, 500 LV blood pool, "
        "600 RV blood pool, 1220 edema, 2221 scar; dense labels use the MyoPS codes with 0 background.")),
    "nci-isbi": _spec(("background", "CG", "PZ"), (0, 1, 2), 3, description=(
        "NCI-ISBI 2013 prostate scribbles (Luo et al. 2022, WSL4MIS convention): 0 background, "
        "1 central gland, 2 peripheral zone, 3 (the highest value) unlabeled; dense labels 0-2.")),
}


def custom_spec(classes: list[str], scribble_values: list[int] | None, unlabeled: str,
                dense_values: list[int] | None = None) -> LabelSpec:
    """Build a spec from CLI values; ``unlabeled`` is an integer or 'max' (one above the highest class value)."""
    values = list(range(len(classes))) if scribble_values is None else scribble_values
    if unlabeled == "max":
        unlabeled_value = max(values) + 1
    else:
        try:
            unlabeled_value = int(unlabeled)
        except ValueError:
            raise UserFacingError(f"--unlabeled must be an integer or 'max', got {unlabeled!r}") from None
    return _spec(classes, values, unlabeled_value, dense_values)
