"""Checked reading of user files: truncated or corrupt files and NaN/Inf voxels are errors that name the file."""
import gzip
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_scribble import image_io
from nnunet_scribble import volume as vol
from nnunet_scribble.errors import UserFacingError


def write(arr, path, **kw):
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), **kw)
    return path


def labels(shape=(6, 32, 32)):
    return (np.random.default_rng(0).random(shape) * 3).astype(np.uint8)


def truncate(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("name", ["lab.nii.gz", "lab.nii"])
def test_truncated_nifti_is_an_error_naming_the_file(tmp_path, name):
    path = truncate(write(labels(), tmp_path / name))
    # SimpleITK alone reads it and zero-fills the missing voxels
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).shape == (6, 32, 32)
    with pytest.raises(UserFacingError, match="truncated or corrupt") as e:
        vol.read(path)
    assert str(path) in str(e.value) and "re-export" in str(e.value)


def test_gzip_crc_mismatch_is_detected(tmp_path):
    path = write(labels(), tmp_path / "lab.nii.gz")
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # first byte of the gzip trailer's CRC32
    path.write_bytes(bytes(data))
    with pytest.raises(UserFacingError, match="truncated or corrupt"):
        image_io.check_file(path)


def test_intact_gzip_of_a_short_nifti_is_detected(tmp_path):
    """The gzip stream is fine, but it holds fewer voxel bytes than the header promises."""
    short = truncate(write(labels(), tmp_path / "lab.nii"), 0.7)
    with open(short, "rb") as src, gzip.open(tmp_path / "short.nii.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    with pytest.raises(UserFacingError, match="header promises"):
        image_io.check_file(tmp_path / "short.nii.gz")


@pytest.mark.parametrize("name", ["lab.mha", "lab.nrrd"])
def test_truncated_files_of_other_formats_are_user_errors(tmp_path, name):
    path = truncate(write(labels(), tmp_path / name, useCompression=True))
    with pytest.raises(UserFacingError) as e:
        image_io.read_image(path)
    assert str(path) in str(e.value)


def test_truncated_bmp_is_detected(tmp_path):
    path = truncate(write(labels((32, 32)), tmp_path / "lab.bmp"), 0.6)
    with pytest.raises(UserFacingError, match="truncated or corrupt"):
        image_io.check_file(path)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_in_float_nifti_are_detected(tmp_path, dtype, monkeypatch):
    monkeypatch.setattr(image_io, "CHUNK_BYTES", 1001)  # voxels straddle chunk boundaries
    arr = np.random.default_rng(1).random((5, 20, 24)).astype(dtype)
    arr[4, 19, 22] = np.nan
    arr[2, 3, 4] = -np.inf
    path = write(arr, tmp_path / "img.nii.gz")
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # SimpleITK reads them as 0
    with pytest.raises(UserFacingError, match="2 NaN or infinite") as e:
        vol.read(path)
    assert str(path) in str(e.value)
    image_io.check_file(path, finite=False)  # integrity only
    arr[4, 19, 22] = arr[2, 3, 4] = 0.5
    assert np.array_equal(vol.read(write(arr, tmp_path / "ok.nii.gz")).array, arr)


def test_intact_files_pass(tmp_path):
    for name in ("a.nii.gz", "a.nii", "a.mha", "a.nrrd"):
        image_io.check_file(write(labels(), tmp_path / name))
    image_io.check_file(write(labels((32, 32)), tmp_path / "a.png"))
    image_io.check_file(write(labels((32, 32)), tmp_path / "a.bmp"))
