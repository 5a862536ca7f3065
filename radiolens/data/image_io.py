"""Reading, writing and resampling 3D images: the one SimpleITK layer of radiolens.

Every module that touches an image file goes through here: the cohort contract (headers,
voxels, geometry checks), your own tables (resampling onto the first image's grid),
preprocessing, the public data sets and the synthetic generator. Arrays are in (z, y, x)
order; spacing, origin and direction in SimpleITK's (x, y, z) order. Wherever a file path is
read, a folder holding one DICOM series is read too (SimpleITK's series reader, slices ordered
by position); a folder with several series is a :class:`DicomSeriesError` listing them.

Geometry tolerances (real headers carry float32 rounding): spacing :data:`SPACING_RTOL`
relative, origin :data:`ORIGIN_VOXEL_FRACTION` of the smallest voxel side, direction cosines
:data:`DIRECTION_ATOL` absolute.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radiolens._utils import optional_import
from radiolens.errors import EXIT_CODES, UserError

__all__ = [
    "DIRECTION_ATOL",
    "DicomSeriesError",
    "IMAGE_SUFFIXES",
    "ORIGIN_VOXEL_FRACTION",
    "SPACING_RTOL",
    "error_text",
    "geometry",
    "geometry_mismatch",
    "is_dicom_series",
    "read_array",
    "read_header",
    "read_image",
    "resample_to_reference",
    "same_grid",
    "simpleitk",
    "volume_ml",
    "write_image",
]

SPACING_RTOL = 1e-3
ORIGIN_VOXEL_FRACTION = 0.05
DIRECTION_ATOL = 1e-3
#: File formats radiolens reads and writes (the format follows the extension).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def simpleitk():
    """SimpleITK, imported on first use (a core dependency, but slow to import)."""
    return optional_import("SimpleITK", "reading and writing images")


def error_text(err: Exception) -> str:
    """The informative last line of an ITK error (its first lines are C++ source locations)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix or ".nii.gz"


def write_image(
    image: np.ndarray | Any,
    path: str | os.PathLike,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    compress: bool = True,
) -> Path:
    """Write a 3D image atomically (temporary name in the same folder, then rename).

    Parameters
    ----------
    image
        A NumPy array in (z, y, x) order, or a ``SimpleITK.Image`` (geometry kept unless
        overridden).
    path
        Destination; the format follows the extension (``.nii.gz``, ``.nrrd``, ``.mha``, ...).
    spacing, origin
        (x, y, z) in mm. Default (1, 1, 1) / (0, 0, 0) for arrays.
    direction
        9 direction cosines, row-major. Default identity for arrays.
    compress
        Compress the pixel data where the format supports it.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    itk = simpleitk()
    path = Path(path)
    if isinstance(image, np.ndarray):
        if image.ndim != 3:
            raise ValueError(f"{path}: expected a 3D (z, y, x) array, got shape {image.shape}")
        img = itk.GetImageFromArray(image)
    else:
        img = image
    if spacing is not None:
        img.SetSpacing([float(s) for s in spacing])
    if origin is not None:
        img.SetOrigin([float(o) for o in origin])
    if direction is not None:
        img.SetDirection([float(d) for d in direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    # SimpleITK picks the writer from the extension, so the temporary name keeps it.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_suffix(path), dir=path.parent)
    os.close(fd)
    try:
        itk.WriteImage(img, tmp_name, compress)
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes it private; data is shared
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


class DicomSeriesError(UserError, ValueError):
    """A DICOM folder that does not hold exactly one readable image series."""

    exit_code = EXIT_CODES["input file"]


def is_dicom_series(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder (a DICOM series is read from its folder, not a file)."""
    return Path(path).is_dir()


def _dicom_series_files(folder: Path) -> list[str]:
    """The slice files of the one DICOM series in ``folder``, in slice order.

    Raises
    ------
    DicomSeriesError
        No series, or several (listed with their slice counts, so the user can split them).
    """
    itk = simpleitk()
    reader = itk.ImageSeriesReader
    # GDCM prints a C++ warning for a folder without series; the error below says it better
    shown = itk.ProcessObject.GetGlobalWarningDisplay()
    itk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        series = list(reader.GetGDCMSeriesIDs(str(folder)))
    finally:
        itk.ProcessObject.SetGlobalWarningDisplay(shown)
    if not series:
        raise DicomSeriesError(
            f"folder {str(folder)!r} holds no DICOM series: point the table at a DICOM series folder "
            f"or at an image file ({', '.join(IMAGE_SUFFIXES)})"
        )
    if len(series) > 1:
        listed = ", ".join(f"{uid} ({len(reader.GetGDCMSeriesFileNames(str(folder), uid))} files)" for uid in series)
        raise DicomSeriesError(
            f"folder {str(folder)!r} holds {len(series)} DICOM series ({listed}); radiolens reads one "
            "series per folder: move each series into a folder of its own and point the table at it"
        )
    return list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))


def _read_dicom_series(folder: Path):
    """A DICOM series folder as one 3D ``SimpleITK.Image`` (geometry from the slices)."""
    reader = simpleitk().ImageSeriesReader()
    reader.SetFileNames(_dicom_series_files(folder))
    return reader.Execute()


class _ImageHeader:
    """The header methods of an ``ImageFileReader``, answered by an image already read (a
    DICOM series has no header-only read)."""

    def __init__(self, image) -> None:
        self._image = image

    def __getattr__(self, name: str):
        return getattr(self._image, name)

    def GetNumberOfComponents(self) -> int:  # noqa: N802 - SimpleITK's name
        return self._image.GetNumberOfComponentsPerPixel()


def read_header(path: str | os.PathLike):
    """A ``SimpleITK.ImageFileReader`` that has read ``path``'s header only (no voxels).

    A folder is read as a DICOM series (every slice; an object with the same methods)."""
    if is_dicom_series(path):
        return _ImageHeader(_read_dicom_series(Path(path)))
    reader = simpleitk().ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def read_image(path: str | os.PathLike):
    """The whole image as a ``SimpleITK.Image``; a folder is read as one DICOM series."""
    if is_dicom_series(path):
        return _read_dicom_series(Path(path))
    return simpleitk().ReadImage(str(path))


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def read_array(path: str | os.PathLike) -> np.ndarray:
    """Voxels in (z, y, x) order, exactly as stored (scaling applied).

    NIfTI files are read with nibabel because ITK's NIfTI reader silently turns NaN voxels
    into 0, which would hide them from the checks. The voxel order of both libraries is the
    file's, so transposing nibabel's (i, j, k) array gives SimpleITK's (k, j, i) one.
    """
    path = Path(path)
    if _is_nifti(path):
        nib = optional_import("nibabel", "reading NIfTI voxels")
        array = np.asarray(nib.load(str(path)).dataobj)
        return array.transpose(tuple(range(array.ndim))[::-1])
    itk = simpleitk()
    return itk.GetArrayFromImage(read_image(path))


def geometry(obj) -> dict[str, tuple]:
    """``size``, ``spacing``, ``origin`` and ``direction`` of an image or a header reader."""
    return {
        "size": tuple(int(s) for s in obj.GetSize()),
        "spacing": tuple(float(s) for s in obj.GetSpacing()),
        "origin": tuple(float(s) for s in obj.GetOrigin()),
        "direction": tuple(float(s) for s in obj.GetDirection()),
    }


def geometry_mismatch(ref: dict, other: dict) -> str | None:
    """How ``other``'s :func:`geometry` differs from ``ref``'s beyond the tolerances, or None."""
    if ref["size"] != other["size"]:
        return f"size {other['size']} differs from {ref['size']}"
    rs, os_ = np.asarray(ref["spacing"]), np.asarray(other["spacing"])
    if np.any(np.abs(rs - os_) > SPACING_RTOL * rs):
        return f"spacing {tuple(np.round(os_, 4))} differs from {tuple(np.round(rs, 4))}"
    if np.any(np.abs(np.subtract(ref["origin"], other["origin"])) > ORIGIN_VOXEL_FRACTION * rs.min()):
        return (
            f"origin {tuple(np.round(other['origin'], 3))} differs from "
            f"{tuple(np.round(ref['origin'], 3))}"
        )
    if np.any(np.abs(np.subtract(ref["direction"], other["direction"])) > DIRECTION_ATOL):
        return "direction cosines differ"
    return None


def same_grid(image, reference) -> bool:
    """Whether two images (or headers) share one voxel grid within the tolerances."""
    return geometry_mismatch(geometry(reference), geometry(image)) is None


def resample_to_reference(image, reference, is_mask: bool = False, default_value: float = 0.0):
    """Resample a ``SimpleITK.Image`` onto another image's grid (size, spacing, origin,
    direction), e.g. an ADC map onto its T2W.

    Parameters
    ----------
    image, reference
        ``SimpleITK.Image`` objects.
    is_mask
        Nearest-neighbour interpolation (labels stay labels) instead of linear.
    default_value
        Value of voxels that fall outside ``image``.

    Returns
    -------
    SimpleITK.Image
        Float32 for images, the input pixel type for masks.
    """
    itk = simpleitk()
    interpolator = itk.sitkNearestNeighbor if is_mask else itk.sitkLinear
    if not is_mask:
        image = itk.Cast(image, itk.sitkFloat32)
    return itk.Resample(image, reference, itk.Transform(), interpolator, float(default_value), image.GetPixelID())


def volume_ml(mask, spacing: Sequence[float] | None = None) -> float:
    """Volume of a mask's non-zero voxels in millilitres.

    Parameters
    ----------
    mask
        A (z, y, x) array with ``spacing`` (x, y, z) mm, or a ``SimpleITK.Image`` (its own
        spacing).
    """
    if spacing is None:
        spacing = mask.GetSpacing()
        mask = simpleitk().GetArrayViewFromImage(mask)
    return float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0
