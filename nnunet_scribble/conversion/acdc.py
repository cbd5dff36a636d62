"""ACDC (official layout) + Valvano et al. scribbles -> nnU-Net raw dataset.

Input::

    ACDC_ROOT/training/patientXXX/patientXXX_frameYY.nii.gz      image
    ACDC_ROOT/training/patientXXX/patientXXX_frameYY_gt.nii.gz   dense ground truth
    SCRIBBLE_DIR/patientXXX_frameYY_scribble.nii.gz              scribbles (0 bg, 1 RV, 2 Myo, 3 LV, 4 unlabeled)

4D files and Info.cfg are ignored. Training patients: images + scribbles (labelsTr) + GT (labelsTr_dense).
``test_patients``: images + GT in imagesTs/labelsTs (their scribbles, if any, are not used). Patients of
the official test folder ``ACDC_ROOT/testing/`` (101-150 upstream; no scribbles exist for them) go to
imagesTs/labelsTs as well when that folder is present.

Mixed labels: ``dense_patients`` get their GT as labelsTr, ``unlabeled_patients`` get ``ignore`` everywhere
(selections in the :mod:`.mixed` syntax; no scribble files are needed for them); the other training
patients keep their scribbles.
"""
from __future__ import annotations

import re
from pathlib import Path

from nnunet_scribble.conversion import mixed as mix
from nnunet_scribble.conversion.dataset import Case, Settings, Target, write_dataset
from nnunet_scribble.conversion.labels import PRESETS
from nnunet_scribble.errors import UserFacingError

CASE_PATTERN = re.compile(r"(patient\d{3})_frame\d{2}")


def case_folders(root: Path) -> list[tuple[Path, bool]]:
    """[(folder with patientXXX/ subfolders, is the official test folder)], training first."""
    root = Path(root)
    folder = root / "training" if (root / "training").is_dir() else root
    if not any(folder.glob("patient*/patient*_frame??.nii.gz")):
        raise UserFacingError(f"no ACDC images patientXXX/patientXXX_frameYY.nii.gz found in {folder}; "
                              f"give the ACDC folder that contains 'training/'")
    testing = root / "testing"
    official_test = folder != root and any(testing.glob("patient*/patient*_frame??.nii.gz"))
    return [(folder, False)] + ([(testing, True)] if official_test else [])


def collect_cases(root: Path, scribble_dir: Path, test_patients: set[str] = frozenset(),
                  kinds_for=None) -> tuple[list[Case], list[str]]:
    """Pair images, GT and scribbles; returns (cases, problems found while pairing). ``kinds_for({case: patient})``
    gives the kind of each training case (default: all scribbled); only scribbled cases need a scribble file."""
    folders = case_folders(root)
    scribble_dir = Path(scribble_dir)
    if not scribble_dir.is_dir():
        raise UserFacingError(f"scribble folder {scribble_dir} does not exist")
    scribbles = {p.name[: -len("_scribble.nii.gz")]: p for p in scribble_dir.glob("*_scribble.nii.gz")}
    cases, problems, seen_patients, official_test, no_scribble = [], [], set(), set(), {}
    for folder, is_test_folder in folders:
        for image in sorted(folder.glob("patient*/patient*_frame??.nii.gz")):
            case_id = image.name[: -len(".nii.gz")]
            patient = CASE_PATTERN.fullmatch(case_id).group(1)
            seen_patients.add(patient)
            if is_test_folder:
                official_test.add(patient)
            test = is_test_folder or patient in test_patients
            gt = image.with_name(f"{case_id}_gt.nii.gz")
            scribble = scribbles.pop(case_id, None)
            if not gt.is_file():
                problems.append(f"{image}: no ground truth {gt.name} beside it")
            if scribble is None and not test:
                no_scribble[case_id] = f"{image}: no scribble {case_id}_scribble.nii.gz in {scribble_dir}"
            cases.append(Case(case_id, patient, [image], None if test else scribble,
                              gt if gt.is_file() else None, test))
    for case_id, path in sorted(scribbles.items()):
        m = CASE_PATTERN.fullmatch(case_id)
        if not (m and (m.group(1) in test_patients or m.group(1) in official_test)):
            problems.append(f"{path}: scribble without image {case_id}.nii.gz in {folders[0][0]}")
    problems += [f"test patient {p}: not found in {folders[0][0]}" for p in sorted(set(test_patients) - seen_patients)]
    train = [c for c in cases if not c.test]
    kinds = kinds_for({c.case_id: c.patient for c in train}) if kinds_for else {}
    for case in train:
        case.kind = kinds.get(case.case_id, "scribbled")
        if case.kind != "scribbled":
            case.scribble = None  # labelsTr is the GT or ignore everywhere
        elif case.case_id in no_scribble:
            problems.append(no_scribble[case.case_id])
    return cases, problems


def convert(root: Path, scribble_dir: Path, target: Target, test_patients: set[str] = frozenset(),
            num_processes: int | None = None, repair_geometry: bool = False, split_seed: int = 12345,
            dense_patients: str | None = None, unlabeled_patients: str | None = None, seed: int = 0,
            allow_unlabeled_folds: bool = False) -> Path:
    test_patients = set(test_patients)
    specs = {"dense": ("--dense-patients", dense_patients), "unlabeled": ("--unlabeled-patients", unlabeled_patients)}
    mixed = dense_patients is not None or unlabeled_patients is not None
    kinds_for = (lambda case_patients: mix.choose_kinds(case_patients, specs, "scribbled", seed, test_patients)
                 ) if mixed else None
    cases, problems = collect_cases(root, scribble_dir, test_patients, kinds_for)
    return write_dataset(
        cases, target, Settings(PRESETS["acdc"], repair_geometry=repair_geometry), channel_names={0: "cineMRI"},
        problems=problems, num_processes=num_processes, split_seed=split_seed, inputs=[root, scribble_dir],
        mixed=mixed, allow_unlabeled_folds=allow_unlabeled_folds,
        description="ACDC cine-MRI with Valvano et al. scribbles; labelsTr = scribbles, labelsTr_dense = ground truth"
                    + (f" (mixed labels: some labelsTr hold the ground truth or ignore everywhere, see "
                       f"{mix.SUMMARY_FILE})" if mixed else ""),
        reference="Bernard et al., IEEE TMI 2018 (ACDC); Valvano, Leo, Tsaftaris, IEEE TMI 2021 (scribbles)",
        license="research use only, see the ACDC challenge terms")
