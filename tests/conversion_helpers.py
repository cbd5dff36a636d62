"""Synthetic inputs and small runners for the conversion and simulation tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPACING = (1.25, 1.5, 5.0)                      # SimpleITK order x, y, z
ORIGIN = (-10.0, 20.0, 3.0)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not available")
    return path


def dense_volume(seed: int, shape=(4, 40, 36)) -> np.ndarray:
    """Cardiac-like toy labels per slice: 0 background, 1 'RV' blob, 2 'Myo' ring around 3 'LV' disc."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    yy, xx = np.mgrid[:y, :x]
    out = np.zeros(shape, dtype=np.uint8)
    for k in range(z):
        cy, cx = y // 2 + rng.integers(-2, 3), x // 2 + rng.integers(-2, 3)
        r = np.hypot(yy - cy, xx - cx)
        out[k][np.hypot(yy - cy, xx - (cx - 11)) < 5] = 1
        out[k][r < 9] = 2
        out[k][r < 5] = 3
    return out


def scribbles_from(dense: np.ndarray, unlabeled: int = 4, values=(0, 1, 2, 3)) -> np.ndarray:
    """Hand-checkable 'scribbles': the dense label on every 3rd row, mapped through ``values``; else unlabeled."""
    out = np.full(dense.shape, unlabeled, dtype=np.uint16)
    rows = np.zeros(dense.shape, dtype=bool)
    rows[..., ::3, :] = True
    for cls, value in enumerate(values):
        out[rows & (dense == cls)] = value
    return out


def write_nifti(array: np.ndarray, path: Path, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def image_volume(seed: int, shape=(4, 40, 36), dtype=np.int16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 800, shape).astype(dtype)


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def run_cli(*args) -> int:
    """Run a conversion subcommand in-process, exactly as ``nnunet-scribble`` and dataset_conversion/ do."""
    from nnunet_scribble.conversion.command import run

    return run(args)


# a conversion subcommand in a child process that is killed (SIGKILL: no clean-up, no finally) at a chosen point:
# KILL_AFTER_WRITES before its N-th image/label file (argv[1] = N), KILL_IN_SWAP right after the old output folder
# was renamed aside, before the new one is renamed into place
_KILLED_RUN = """
import os, pathlib, signal, sys
from nnunet_scribble import volume
point, n = sys.argv[1], int(sys.argv[2])
real_write, real_rename, written = volume.write, pathlib.Path.rename, []

def write(*args, **kwargs):
    if point == "writes" and len(written) == n:
        os.kill(os.getpid(), signal.SIGKILL)
    written.append(args[1])
    real_write(*args, **kwargs)

def rename(self, target):
    result = real_rename(self, target)
    if point == "swap" and ".old-" in pathlib.Path(target).name:
        os.kill(os.getpid(), signal.SIGKILL)
    return result

volume.write, pathlib.Path.rename = write, rename
from nnunet_scribble.conversion.command import run
sys.exit(run(sys.argv[3:]))
"""


def run_cli_killed(point: str, n: int, *args) -> subprocess.CompletedProcess:
    """Run a conversion subcommand in a child process killed at ``point`` ('writes': before the ``n``-th file write;
    'swap': inside the folder swap); asserts that the kill happened."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", _KILLED_RUN, point, str(n), *map(str, args)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == -9, (result.returncode, result.stderr[-3000:])
    return result


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results under tmp_path (environment patched)."""
    dirs = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for key, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(key, str(path))
    return dirs


# nnUNetv2_extract_fingerprint's entry point, run with forked instead of spawned workers: the same argument
# parsing, checks and fingerprinting, without two workers per dataset importing torch again (measured here:
# 12 s instead of 16.5 s per dataset)
_FINGERPRINT_WITH_FORKED_WORKERS = """
import multiprocessing, sys
_get_context = multiprocessing.get_context
multiprocessing.get_context = lambda method=None: _get_context("fork")
from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import extract_fingerprint_entry
sys.argv[0] = "nnUNetv2_extract_fingerprint"
extract_fingerprint_entry()
"""


def verify_with_nnunet(dirs: dict, *dataset_ids: int) -> subprocess.CompletedProcess:
    """``nnUNetv2_extract_fingerprint -d IDS --verify_dataset_integrity -np 1`` in a child process."""
    env = dict(os.environ, nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0", nnUNet_compile="f", OMP_NUM_THREADS="1",
               **{k: str(v) for k, v in dirs.items()})
    args = ["-d", *map(str, dataset_ids), "--verify_dataset_integrity", "-np", "1"]
    result = subprocess.run([sys.executable, "-c", _FINGERPRINT_WITH_FORKED_WORKERS, *args],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("verify_dataset_integrity Done") == len(dataset_ids), result.stdout[-3000:]
    return result


def write_h5(path: Path, **arrays) -> Path:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, array in arrays.items():
            f.create_dataset(key, data=array)
    return path


def make_acdc(root: Path, patients=(1, 2, 3, 4, 5, 6), dtypes=(np.int16, np.float32, np.float64, np.uint8)) -> None:
    """Official ACDC layout (2 frames per patient, mixed image dtypes, 4D file and Info.cfg) + scribbles/."""
    for p in patients:
        folder = root / "training" / f"patient{p:03d}"
        for i, frame in enumerate((1, 12)):
            case = f"patient{p:03d}_frame{frame:02d}"
            d = dense_volume(p * 10 + i)
            write_nifti(image_volume(p, dtype=dtypes[(p + i) % len(dtypes)]), folder / f"{case}.nii.gz")
            write_nifti(d, folder / f"{case}_gt.nii.gz")
            write_nifti(scribbles_from(d), root / "scribbles" / f"{case}_scribble.nii.gz")
        write_nifti(image_volume(p)[None].repeat(2, 0).reshape(8, 40, 36), folder / f"patient{p:03d}_4d.nii.gz")
        (folder / "Info.cfg").write_text("ED: 1\nES: 12\n")


def make_wsl4mis(folder: Path, patients=(1, 2, 3)) -> None:
    """WSL4MIS volumes patientXXX_frameYY.h5: image in [0, 1], label (dense), scribble (0-3, 4 unlabeled)."""
    for p in patients:
        for i, frame in enumerate((1, 12)):
            d = dense_volume(p * 10 + i)
            write_h5(folder / f"patient{p:03d}_frame{frame:02d}.h5", image=image_volume(p, dtype=np.float32) / 800,
                     label=d, scribble=scribbles_from(d))


def make_mscmr(root: Path, train=(2, 4, 6), val=(1,), test=(43,), identity_header_for=(43,)) -> None:
    """CycleMix MSCMR layout; the manual label of each subject in ``identity_header_for`` gets an identity-like
    affine (origin 0, flipped axes) on its oblique image's voxel grid, like subject43 upstream."""
    splits = (("train", train, "_scribble"), ("val", val, "_manual"), ("TestSet", test, "_manual"))
    for split, subjects, suffix in splits:
        for n in subjects:
            d = dense_volume(n)
            write_nifti(image_volume(n), root / split / "images" / f"subject{n}_DE.nii.gz")
            label = scribbles_from(d) if suffix == "_scribble" else d.astype(np.int16)
            header = dict(origin=(0, 0, 0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)) if n in identity_header_for else {}
            write_nifti(label, root / split / "labels" / f"subject{n}_DE{suffix}.nii.gz", **header)


def make_folder_3d(root: Path, n_patients=3, values=(0, 1, 2, 3), unlabeled=4, dense_values=(0, 1, 2, 3)) -> dict:
    """patN_visitV cases: images/, scribbles/ (suffix _scr), dense/, test_images/, test_labels/;
    returns the dense arrays (class indices) by case."""
    dense = {}
    for p in range(n_patients):
        for v in range(2):
            case = f"pat{p}_visit{v}"
            d = dense_volume(10 * p + v)
            dense[case] = d
            write_nifti(image_volume(p + v), root / "images" / f"{case}.nii.gz")
            write_nifti(scribbles_from(d, unlabeled, values), root / "scribbles" / f"{case}_scr.nii.gz")
            write_nifti(np.asarray(dense_values, dtype=np.uint16)[d], root / "dense" / f"{case}.nii.gz")
    write_nifti(image_volume(99), root / "test_images" / "tcase.nii.gz")
    write_nifti(np.asarray(dense_values, dtype=np.uint16)[dense_volume(99)], root / "test_labels" / "tcase.nii.gz")
    return dense


def convert_folder_3d(root: Path, dataset_id: int = 5, name: str = "Toy", *extra) -> int:
    return run_cli("convert", "folder", "-i", root / "images", "-s", root / "scribbles", "--scribble-suffix", "_scr",
                   "--dense", root / "dense", "--test-images", root / "test_images", "--test-labels",
                   root / "test_labels", "--patient-pattern", r"^(pat\d+)_", "-d", dataset_id, "-n", name, "-np", 1,
                   *extra)


def make_png_folder(root: Path, names=("a", "b", "c"), unlabeled: int = 255) -> None:
    """2D grey PNG images, scribbles (``unlabeled`` = not annotated) and dense labels in img/, scr/, gt/."""
    from PIL import Image

    for name in names:
        d = dense_volume(ord(name), shape=(1, 40, 36))[0]
        image = ((np.arange(d.size).reshape(d.shape) * 7 + 30 * d) % 200 + 20).astype(np.uint8)
        for folder, array in (("img", image), ("scr", scribbles_from(d, unlabeled).astype(np.uint8)), ("gt", d)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / f"{name}.png")


def symlink_subset(source: Path, target: Path, names, pattern: str = "{}*") -> Path:
    """``target`` holding symlinks to the entries of ``source`` matching ``pattern`` for each name."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        for path in source.glob(pattern.format(name)):
            (target / path.name).symlink_to(path)
    return target


def splits_of(dirs: dict, folder_name: str) -> list[dict]:
    return json.loads((dirs["nnUNet_preprocessed"] / folder_name / "splits_final.json").read_text())


def assert_patient_grouped(splits: list[dict], patient_of) -> None:
    """Every case in exactly one val fold; no patient on both sides of any fold."""
    all_val = [c for f in splits for c in f["val"]]
    assert len(all_val) == len(set(all_val))
    for fold in splits:
        assert set(fold["train"]).isdisjoint(fold["val"])
        assert {patient_of(c) for c in fold["train"]}.isdisjoint({patient_of(c) for c in fold["val"]})
