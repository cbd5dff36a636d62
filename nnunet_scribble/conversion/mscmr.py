"""MSCMR (MS-CMRSeg 2019 LGE) in the CycleMix layout -> nnU-Net raw dataset.

Input::

    ROOT/train/images/subjectN_DE.nii.gz    ROOT/train/labels/subjectN_DE_scribble.nii.gz   -> imagesTr/labelsTr
    ROOT/val/images/subjectN_DE.nii.gz      ROOT/val/labels/subjectN_DE_manual.nii.gz       -> imagesTs/labelsTs
    ROOT/TestSet/images/...                 ROOT/TestSet/labels/..._manual.nii.gz           -> imagesTs/labelsTs

Training subjects have scribbles only (no labelsTr_dense). Known upstream header fault:
``TestSet/labels/subject43_DE_manual.nii.gz`` has an identity-like affine on its (oblique) image's
voxel grid. Label headers that differ from their image only in origin/direction are therefore
repaired by default (copying the image header), each with a warning naming the file.
"""
from __future__ import annotations

from pathlib import Path

from nnunet_scribble.conversion.dataset import Case, Settings, Target, write_dataset
from nnunet_scribble.conversion.labels import PRESETS
from nnunet_scribble.errors import UserFacingError

SPLITS = {"train": ("_scribble", False), "val": ("_manual", True), "TestSet": ("_manual", True)}


def collect_cases(root: Path) -> tuple[list[Case], list[str]]:
    root = Path(root)
    if not (root / "train" / "images").is_dir():
        raise UserFacingError(f"{root} is not the CycleMix MSCMR layout (no train/images folder)")
    cases, problems = [], []
    for split, (suffix, test) in SPLITS.items():
        images_dir, labels_dir = root / split / "images", root / split / "labels"
        if not images_dir.is_dir():
            continue
        labels = {p.name[: -len(f"{suffix}.nii.gz")]: p for p in labels_dir.glob(f"*{suffix}.nii.gz")}
        for image in sorted(images_dir.glob("*.nii.gz")):
            case_id = image.name[: -len(".nii.gz")]
            label = labels.pop(case_id, None)
            if label is None:
                problems.append(f"{image}: no label {case_id}{suffix}.nii.gz in {labels_dir}")
            patient = case_id.split("_")[0]
            cases.append(Case(case_id, patient, [image], None if test else label, label if test else None, test))
        problems += [f"{p}: label without image {c}.nii.gz in {images_dir}" for c, p in sorted(labels.items())]
    return cases, problems


def convert(root: Path, target: Target, num_processes: int | None = None, repair_geometry: bool = True,
            split_seed: int = 12345) -> Path:
    cases, problems = collect_cases(root)
    return write_dataset(
        cases, target, Settings(PRESETS["acdc"], repair_geometry=repair_geometry), channel_names={0: "LGE"},
        problems=problems, num_processes=num_processes, split_seed=split_seed, inputs=[root],
        description="MS-CMRSeg 2019 LGE MRI with CycleMix scribbles; train = scribbles only, "
                    "val and TestSet = dense ground truth in imagesTs/labelsTs",
        license="research use only, see the MS-CMRSeg challenge terms",
        reference="Zhuang, TPAMI 2019 (MS-CMRSeg); Zhang & Zhuang, CVPR 2022 (CycleMix scribbles)")
