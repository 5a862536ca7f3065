"""Writing images as researchers receive them: DICOM series, and example folders of cases.

:func:`write_dicom_series` writes a 3D image as a DICOM series; :func:`write_example_folder`
writes cases of a cohort as a PI-CAI-style download (DICOM T2W, DWI/ADC on a coarser grid,
ISUP-valued lesion masks, a table without labels) for the tests and the book's walk-through.

Reading needs nothing from here: :func:`radiolens.data.image_io.read_image` (and every reader
of :mod:`radiolens.data.image_io`) reads a folder holding one DICOM series.
"""

from __future__ import annotations

import locale
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from radiolens.data.image_io import simpleitk, write_image

__all__ = ["write_dicom_series", "write_example_folder"]

# radiolens's own UID root for generated series ("2.25." + a large integer is the UID form
# that needs no registered organisation root, ISO/IEC 9834-8)
_UID_PREFIX = "2.25."


def _uid(rng: np.random.Generator) -> str:
    return _UID_PREFIX + str(int.from_bytes(rng.bytes(12), "big"))


def write_dicom_series(
    image,
    folder: str | os.PathLike,
    modality: str = "MR",
    description: str = "radiolens",
    seed: int = 0,
) -> Path:
    """Write a 3D ``SimpleITK.Image`` as one DICOM series (one file per slice).

    The voxels are stored as 16-bit integers (rounded and clipped), as most MR series are;
    spacing, origin and direction go into the slices' position and orientation tags, so
    :func:`radiolens.data.image_io.read_image` gives the same grid back. The folder is written
    under a temporary name and renamed at the end: a failure leaves nothing behind.

    Parameters
    ----------
    image
        A 3D ``SimpleITK.Image``.
    folder
        The series folder to create (must not exist yet).
    modality, description
        DICOM Modality (0008,0060) and Series Description (0008,103E).
    seed
        Seed of the generated study/series UIDs (the same seed gives the same UIDs).

    Returns
    -------
    pathlib.Path
        ``folder``.
    """
    itk = simpleitk()
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists")
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    values = itk.GetArrayFromImage(image).astype(np.float64)
    # integers are stored as they are; other values (a normalised T2W, an ADC map in mm2/s)
    # as 16-bit integers with a rescale slope, which readers apply on load
    integer = np.all(values == np.round(values)) and np.abs(values).max(initial=0) <= 32767
    slope = 1.0 if integer else max(float(np.abs(values).max(initial=0)), 1e-12) / 30000.0
    stored = np.clip(np.round(values / slope), -32768, 32767)
    # GDCM turns float slices back into 16-bit integers with the slope below (an int16 image
    # would have to carry an integer slope)
    volume = itk.GetImageFromArray((stored * slope).astype(np.float32) if not integer else stored.astype(np.int16))
    volume.CopyInformation(image)
    rng = np.random.default_rng(seed)
    study, series = _uid(rng), _uid(rng)
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[0:7:3], *direction[1:8:3]))
    date, clock = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    # GDCM switches the process's C locale to "C" to format the rescale slope and leaves it
    # there, which turns Python's default text encoding into ASCII: put it back afterwards
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        writer = itk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(volume.GetDepth()):
            piece = volume[:, :, k]
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            tags = {
                "0008|0060": modality, "0008|103e": description, "0008|0020": date, "0008|0030": clock,
                "0020|000d": study, "0020|000e": series, "0020|0011": "1", "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.6f}" for v in position), "0020|0037": orientation,
                "0018|0050": f"{image.GetSpacing()[2]:.6f}", "0008|0018": f"{series}.{k + 1}",
                "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
                "0028|1052": "0", "0028|1053": f"{slope:.10g}",
                "0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1",
            }
            for tag, value in tags.items():
                piece.SetMetaData(tag, value)
            writer.SetFileName(str(tmp / f"slice_{k:04d}.dcm"))
            writer.Execute(piece)
        os.replace(tmp, folder)
    finally:
        if locale.setlocale(locale.LC_ALL) != saved_locale:
            locale.setlocale(locale.LC_ALL, saved_locale)
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _coarser(image, factor: int):
    """The image on an in-plane grid ``factor`` times coarser (same field of view), as a
    scanner stores DWI and ADC next to a finer T2W."""
    itk = simpleitk()
    size = [max(2, s // factor) for s in image.GetSize()[:2]] + [image.GetSize()[2]]
    spacing = [sp * image.GetSize()[i] / size[i] for i, sp in enumerate(image.GetSpacing())]
    # voxel centres of the coarse grid: the same field of view, its first centre half a coarse
    # voxel in from the edge
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    edge = np.asarray(image.GetOrigin()) - direction @ (0.5 * np.asarray(image.GetSpacing()))
    origin = edge + direction @ (0.5 * np.asarray(spacing))
    return itk.Resample(image, size, itk.Transform(), itk.sitkLinear, [float(v) for v in origin],
                        [float(v) for v in spacing], image.GetDirection(), 0.0, itk.sitkFloat32)


def write_example_folder(
    cohort,
    folder: str | os.PathLike,
    case_ids=None,
    dicom: tuple[str, ...] = ("T2W",),
    coarse: tuple[str, ...] = ("DWI", "ADC"),
    lesion_grade: int = 3,
    labels: bool = False,
) -> Path:
    """Write cases of a cohort the way a researcher's download holds them, plus a table.

    Used by the tests and the book's walk-through to exercise :func:`cohort_from_table` on
    real formats: per case a folder with the ``dicom`` modalities as DICOM series, the others
    as NIfTI, the ``coarse`` modalities on an in-plane grid twice as coarse as T2W (as DWI and
    ADC are in real mpMRI), the gland mask, and the lesion mask valued ``lesion_grade`` inside
    the lesion (an ISUP grade, as PI-CAI's expert labels). The table ``cases.csv`` uses
    PI-CAI's column names (``study_id``, ``t2w``, ``hbv``, ``adc``, ``prostate``,
    ``lesion_label``) and, unless ``labels``, holds no label at all.

    Parameters
    ----------
    cohort
        A :class:`radiolens.data.Cohort` (e.g. the built-in synthetic one).
    folder
        Where to write (created).
    case_ids
        The cases to write (default: all).
    dicom, coarse
        Modalities written as DICOM series / on the coarser grid.
    lesion_grade
        Voxel value of the lesion in the lesion masks.
    labels
        Also write the ``pirads`` score column.

    Returns
    -------
    pathlib.Path
        The table ``<folder>/cases.csv``; paths in it are relative to ``folder``.
    """
    import pandas as pd

    itk = simpleitk()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {"T2W": "t2w", "DWI": "hbv", "ADC": "adc", "gland": "prostate", "lesion": "lesion_label"}
    rows = []
    for n, case_id in enumerate(cohort.case_ids if case_ids is None else case_ids):
        case_dir = folder / str(case_id)
        row = {"study_id": str(case_id)}
        for key, column in names.items():
            if not cohort.has(case_id, key):
                row[column] = ""
                continue
            image = cohort.read_image(case_id, key)
            if key == "lesion":
                image = itk.Cast(image, itk.sitkUInt8) * int(lesion_grade)
            elif key in coarse:
                image = _coarser(image, 2)
            if key in dicom:
                target = write_dicom_series(image, case_dir / column, description=key, seed=n)
            else:
                target = write_image(image, case_dir / f"{column}.nii.gz")
            row[column] = target.relative_to(folder).as_posix()
        if labels:
            group = cohort.manifest.at[case_id, "pirads_group"]
            row["pirads"] = "" if pd.isna(group) else int(group) + 2
        rows.append(row)
    table = folder / "cases.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table
