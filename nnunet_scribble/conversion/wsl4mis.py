"""WSL4MIS h5 volumes (``patientXXX_frameYY.h5`` with keys image, label, scribble) -> nnU-Net raw dataset.

The h5 files store arrays only (z, y, x, the same voxel order as SimpleITK reads the ACDC NIfTI files),
no geometry: the voxel spacing comes from the user (``spacing`` in array order z, y, x, in mm), origin 0
and identity direction. Without one, :data:`DEFAULT_SPACING` is used with a warning: ACDC's typical
spacing (the format only exists for ACDC; median over the 170 volumes 10 x 1.48 x 1.48 mm), so that
nnU-Net plans an anisotropic 3d_fullres like for ACDC and HD95 comes out roughly in mm. Every case gets the
same spacing, so nnU-Net does not resample in-plane (as WSL4MIS, which ignores spacing). Images are the
WSL4MIS [0, 1]-scaled intensities. Scribbles follow the ACDC convention (0 bg, 1 RV, 2 Myo, 3 LV,
4 unlabeled). With the official ACDC NIfTI files at hand, ``convert acdc`` gives the same scribbles with
the real geometry and raw intensities.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_scribble.conversion.dataset import Case, ConversionWarning, Settings, Target, write_dataset
from nnunet_scribble.conversion.labels import PRESETS
from nnunet_scribble.conversion.splits import patient_of
from nnunet_scribble.volume import Volume
from nnunet_scribble.errors import UserFacingError

DEFAULT_SPACING = (10.0, 1.5, 1.5)  # z, y, x in mm: ACDC's typical spacing


def _h5py():
    try:
        import h5py
    except ImportError:
        raise UserFacingError('reading WSL4MIS .h5 files needs h5py, an optional part of nnunet-scribble: '
                              'pip install "nnunet-scribble[wsl4mis]" (or pip install h5py)') from None
    return h5py


@dataclass(frozen=True)
class H5Array:
    """One array of an h5 file, loaded as a Volume with the given spacing (z, y, x)."""
    path: Path
    key: str
    spacing: tuple[float, ...]

    def load(self) -> Volume:
        with _h5py().File(self.path, "r") as f:
            array = np.asarray(f[self.key])
        spacing = tuple(self.spacing[-array.ndim:][::-1])  # SimpleITK order x, y(, z)
        return Volume(array, spacing, (0.0,) * array.ndim, tuple(np.eye(array.ndim).ravel()), f"{self.path}[{self.key}]")

    def __str__(self) -> str:
        return f"{self.path}[{self.key}]"


def collect_cases(h5_dir: Path, spacing: tuple[float, ...], test_patients: set[str] = frozenset(),
                  patient_pattern: str = r"(patient\d+)") -> tuple[list[Case], list[str]]:
    h5py = _h5py()
    h5_dir = Path(h5_dir)
    files = sorted(h5_dir.glob("*.h5"))
    if not files:
        raise UserFacingError(f"no .h5 files in {h5_dir}")
    if any("_slice_" in f.name for f in files):
        raise UserFacingError(f"{h5_dir} holds 2D slice files (*_slice_N.h5); give the volume folder "
                              f"(ACDC_training_volumes) instead")
    cases, problems = [], []
    with_label = []
    for f in files:
        case_id = f.stem
        patient = patient_of(case_id, patient_pattern)
        test = patient in test_patients
        try:
            with h5py.File(f, "r") as h:
                keys = set(h.keys())
        except OSError as e:
            problems.append(f"{f}: cannot read ({e})")
            continue
        missing = [k for k in ("image", "label" if test else "scribble") if k not in keys]
        if missing:
            problems.append(f"{f}: no {' or '.join(missing)} array (found {sorted(keys)})")
            continue
        with_label.append("label" in keys)
        arrays = {key: H5Array(f, key, tuple(spacing)) for key in keys}
        cases.append(Case(case_id, patient, [arrays.get("image")], None if test else arrays.get("scribble"),
                          arrays.get("label"), test))
    if any(with_label) and not all(with_label):
        problems += [f"{c.images[0].path}: no 'label' array while other files have one" for c in cases if c.dense is None]
    problems += [f"test patient {p}: no file in {h5_dir}" for p in sorted(set(test_patients) - {c.patient for c in cases})]
    return cases, problems


def convert(h5_dir: Path, target: Target, spacing: tuple[float, ...] | None = None,
            test_patients: set[str] = frozenset(), num_processes: int | None = None, split_seed: int = 12345) -> Path:
    if spacing is None:
        spacing = DEFAULT_SPACING
        warnings.warn(f"{h5_dir}: WSL4MIS h5 files store no voxel spacing; using ACDC's typical {spacing} mm "
                      f"(z, y, x) for every case. Pass --spacing Z Y X to set it", ConversionWarning, stacklevel=2)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise UserFacingError(f"--spacing needs three positive numbers (z y x), got {spacing}")
    cases, problems = collect_cases(h5_dir, tuple(float(s) for s in spacing), set(test_patients))
    return write_dataset(
        cases, target, Settings(PRESETS["acdc"]), channel_names={0: "MRI"}, problems=problems,
        num_processes=num_processes, split_seed=split_seed, inputs=[h5_dir],
        description=f"WSL4MIS h5 volumes (intensities scaled to [0, 1]); spacing {tuple(spacing)} mm (z, y, x) "
                    f"given at conversion, not stored in the source",
        license="research use only, see the ACDC challenge terms",
        reference="Luo et al., MICCAI 2022 (WSL4MIS); ACDC: Bernard et al. 2018; scribbles: Valvano et al. 2021")
