"""Reading and writing images and label maps (NIfTI and friends via SimpleITK, PNG via scikit-image).

A :class:`Volume` is a numpy array in SimpleITK order ((z,) y, x) plus its geometry; PNG files carry no
geometry (``spacing is None``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

PNG_ENDINGS = (".png",)
NIFTI_ENDING = ".nii.gz"


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple | None = None  # SimpleITK order (x, y[, z]); None for PNG
    origin: tuple | None = None
    direction: tuple | None = None
    source: str = ""
    rgb: bool = False  # PNG colour image: last axis holds the channels

    @property
    def spatial_shape(self) -> tuple:
        return self.array.shape[:-1] if self.rgb else self.array.shape

    @property
    def has_geometry(self) -> bool:
        return self.spacing is not None

    def with_geometry_of(self, other: "Volume") -> "Volume":
        return replace(self, spacing=other.spacing, origin=other.origin, direction=other.direction)


def file_ending(path: str | Path) -> str:
    """``.nii.gz`` for gzipped files, otherwise the last suffix, lower case."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def strip_ending(name: str) -> str:
    ending = file_ending(name)
    return name[: len(name) - len(ending)] if ending else name


def quiet_itk() -> None:
    """Silence ITK's console warnings (e.g. ACDC's harmless 'unexpected scales in sform')."""
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)


def read(path: str | Path) -> Volume:
    path = str(path)
    if file_ending(path) in PNG_ENDINGS:
        from PIL import Image

        with Image.open(path) as image:  # palette PNGs give their indices, as label maps need
            array = np.asarray(image)
        return Volume(array, source=path, rgb=array.ndim == 3)
    from nnunet_scribble.image_io import read_image

    image = read_image(path)  # truncated/corrupt files and NaN voxels (read as 0 by SimpleITK) are errors
    import SimpleITK as sitk

    return Volume(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection(),
                  source=path)


def write(volume: Volume, path: str | Path) -> None:
    """Write ``volume`` with its geometry; PNG when ``path`` ends with .png (2D only)."""
    path = str(path)
    if file_ending(path) in PNG_ENDINGS:
        from skimage import io

        io.imsave(path, volume.array, check_contrast=False)
        return
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume.array, isVector=False)
    if volume.has_geometry:
        image.SetSpacing(volume.spacing)
        image.SetOrigin(volume.origin)
        image.SetDirection(volume.direction)
    sitk.WriteImage(image, path, useCompression=True)


def geometry_difference(a: Volume, b: Volume, tol: float = 1e-3) -> list[str]:
    """Names of the geometry fields ('shape', 'spacing', 'origin', 'direction') in which a and b differ."""
    if a.spatial_shape != b.spatial_shape:
        return ["shape"]
    if not (a.has_geometry and b.has_geometry):
        return []
    out = []
    if not np.allclose(a.spacing, b.spacing, rtol=tol, atol=tol):
        out.append("spacing")
    if not np.allclose(a.origin, b.origin, rtol=0, atol=tol * max(1.0, float(np.max(np.abs(a.origin))))):
        out.append("origin")
    if not np.allclose(a.direction, b.direction, rtol=0, atol=tol):
        out.append("direction")
    return out
