"""Work units: one ``(case, modality, ROI)`` extraction each, run and stored by a worker.

A unit is one image file and one mask file. :func:`make_units` lists a cohort's units;
:func:`_run_unit` (what a worker process runs) checks the pair, calls PyRadiomics and stores the
result in the cache *before* returning, so a dying parent loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from radiolens._utils import jsonable
from radiolens.cache import ArtifactCache
from radiolens.data.image_io import read_image, simpleitk
from radiolens.errors import InputFileError
from radiolens.naming import MODALITIES
from radiolens.radiomics.settings import _extractor_for, _quiet_radiomics, radiomics_version

__all__ = ["ABSENT_OK_ROIS", "EmptyROIError", "GeometryMismatchError", "InvalidImageError", "WorkUnit", "make_units"]

logger = logging.getLogger(__name__)

#: Cache namespace used in :class:`~radiolens.cache.ArtifactCache`.
CACHE_NAMESPACE = "radiomics"

#: ROIs that may legitimately be absent: an empty mask means "no finding", not an error.
ABSENT_OK_ROIS: tuple[str, ...] = ("lesion",)

_THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)


class GeometryMismatchError(InputFileError):
    """Image and mask do not share one voxel grid (size, spacing, origin or direction)."""


class EmptyROIError(InputFileError):
    """The mask has no voxel with the ROI's label."""


class InvalidImageError(InputFileError):
    """The image cannot give meaningful features (NaN/inf voxels, constant intensities)."""


@dataclass(frozen=True)
class WorkUnit:
    """One extraction: one image, one mask, one label.

    Parameters
    ----------
    case_id, modality, roi
        Where the result goes: row ``case_id`` (and ``roi``), columns ``"{modality}__..."``.
        ``roi`` may be ``"key"`` or ``"key:label"`` (e.g. ``"zones:2"``).
    image, mask
        File paths; ``None`` when the cohort has no such file (the unit is then *missing*).
    label
        Label value of the ROI in the mask; ``None`` uses the settings' ``label``.
    """

    case_id: str
    modality: str
    roi: str
    image: str | None
    mask: str | None
    label: int | None = None

    def describe(self) -> str:
        return f"case {self.case_id!r} {self.modality}/{self.roi}"


def _parse_roi(roi: str) -> tuple[str, int | None]:
    key, sep, label = str(roi).partition(":")
    if not sep:
        return key, None
    try:
        return key, int(label)
    except ValueError:
        raise ValueError(f"ROI {roi!r}: the part after ':' must be an integer label (e.g. 'zones:2')") from None


def make_units(cohort, rois: Sequence[str] = ("gland",), modalities: Sequence[str] = MODALITIES) -> list[WorkUnit]:
    """List the work units of a cohort, case by case (``case x roi x modality``).

    Parameters
    ----------
    cohort
        Anything with ``case_ids`` and ``path(case_id, key) -> Path | None``
        (a :class:`radiolens.data.Cohort`).
    rois, modalities
        Mask keys (optionally ``"key:label"``) and image keys of the cohort.
    """
    parsed = [(roi, *_parse_roi(roi)) for roi in rois]
    units = []
    for case_id in cohort.case_ids:
        for roi, mask_key, label in parsed:
            mask = cohort.path(case_id, mask_key)
            for modality in modalities:
                image = cohort.path(case_id, modality)
                units.append(
                    WorkUnit(
                        case_id=str(case_id),
                        modality=modality,
                        roi=roi,
                        image=None if image is None else str(image),
                        mask=None if mask is None else str(mask),
                        label=label,
                    )
                )
    return units


# --------------------------------------------------------------------------------------------
# one unit (runs in a worker)
# --------------------------------------------------------------------------------------------
def _limit_threads() -> None:
    """One thread per worker process: n processes should use n cores, not n x N threads."""
    for var in _THREAD_ENV_VARS:
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
    except ImportError:  # threadpoolctl ships with scikit-learn; the env vars still apply
        pass
    sitk = simpleitk()

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _geometry_difference(image, mask, tolerance: float) -> str | None:
    if image.GetSize() != mask.GetSize():
        return f"size {image.GetSize()} vs {mask.GetSize()}"
    scale = max(min(image.GetSpacing()), 1e-12)
    for name in ("GetSpacing", "GetOrigin"):
        a, b = np.asarray(getattr(image, name)()), np.asarray(getattr(mask, name)())
        if np.max(np.abs(a - b)) > tolerance * scale:
            return f"{name[3:].lower()} {tuple(a.tolist())} vs {tuple(b.tolist())}"
    a, b = np.asarray(image.GetDirection()), np.asarray(mask.GetDirection())
    if np.max(np.abs(a - b)) > tolerance:
        return f"direction {tuple(a.tolist())} vs {tuple(b.tolist())}"
    return None


@contextlib.contextmanager
def _single_itk_thread() -> Iterator[None]:
    """One ITK thread while PyRadiomics runs (bit-reproducible values), then restore."""
    sitk = simpleitk()

    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)


def _extract_one(unit: WorkUnit, params: dict, params_hash: str, resample_mask: bool) -> dict:
    """Run PyRadiomics on one unit after checks that turn vague failures into clear errors."""
    with _single_itk_thread():
        return _extract_one_checked(unit, params, params_hash, resample_mask)


def _extract_one_checked(unit: WorkUnit, params: dict, params_hash: str, resample_mask: bool) -> dict:
    sitk = simpleitk()

    where = unit.describe()
    # the checked reader: a truncated file is an error here, never a zero-filled image
    image = read_image(unit.image)
    mask = read_image(unit.mask)
    setting = params.get("setting") or {}
    label = unit.label if unit.label is not None else int(setting.get("label", 1))

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidImageError(f"{where}: image {unit.image} has {image.GetNumberOfComponentsPerPixel()} components; expected a scalar image")
    tolerance = float(setting.get("geometryTolerance") or 1e-5)
    difference = _geometry_difference(image, mask, tolerance)
    if difference is not None:
        if not resample_mask:
            raise GeometryMismatchError(
                f"{where}: image {unit.image} and mask {unit.mask} are on different voxel grids "
                f"({difference}); fix the data or pass resample_mask=True to resample the mask "
                "onto the image grid (nearest neighbour)"
            )
        mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())

    pixels = sitk.GetArrayViewFromImage(image)
    n_bad = int(np.size(pixels) - np.count_nonzero(np.isfinite(pixels)))
    if n_bad:
        raise InvalidImageError(f"{where}: image {unit.image} has {n_bad} NaN/inf voxels; PyRadiomics needs finite intensities")
    if setting.get("normalize") and float(np.min(pixels)) == float(np.max(pixels)):
        raise InvalidImageError(
            f"{where}: image {unit.image} is constant ({float(np.min(pixels))}); normalisation divides "
            "by its standard deviation (0), so no feature is defined"
        )
    n_roi = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask) == label))
    if n_roi == 0:
        message = f"mask {unit.mask} has no voxel with label {label}"
        if unit.roi.partition(":")[0] in ABSENT_OK_ROIS:
            # No lesion is a finding, not an error: an explicit missing marker, never zeros.
            return {"status": "missing", "message": f"no {unit.roi}: {message}", "features": [], "diagnostics": [], "nonfinite": []}
        raise EmptyROIError(f"{where}: {message}")

    extractor = _extractor_for(params, params_hash)
    with _quiet_radiomics():
        output = extractor.execute(image, mask, label=label)

    # [name, value] pairs, not dicts: the cache writes JSON with sorted keys, and columns must
    # come out in PyRadiomics' order whether a unit was computed or read from the cache.
    features: list[list] = []
    diagnostics: list[list] = []
    nonfinite: list[str] = []
    for key, value in output.items():
        if key.startswith("diagnostics_"):
            diagnostics.append([key, _diagnostic(value)])
            continue
        number = float(value)
        if not math.isfinite(number):
            nonfinite.append(key)
            number = None  # NaN in the table; inf would break min-max scaling downstream
        features.append([key, number])
    return {"status": "ok", "message": None, "features": features, "diagnostics": diagnostics, "nonfinite": nonfinite, "n_voxels": n_roi}


def _diagnostic(value: Any) -> Any:
    """A PyRadiomics diagnostics entry as a JSON scalar: numbers and text as they are, other
    values (tuples, dicts of settings) as their text."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return jsonable(value)
    return str(value)


def _run_unit(
    unit: WorkUnit,
    key: str,
    params: dict,
    params_hash: str,
    resample_mask: bool,
    cache_root: str | None,
    limit_threads: bool,
) -> dict:
    """Compute one unit and store it in the cache *before* returning (so a dying parent loses
    nothing). Never raises for bad input: an exception becomes a ``"failed"`` record."""
    if limit_threads:
        _limit_threads()
    start, cpu = time.perf_counter(), time.process_time()
    try:
        record = _extract_one(unit, params, params_hash, resample_mask)
    except Exception as err:  # one bad unit must not crash the run: record it
        return {"status": "failed", "error_type": type(err).__name__, "message": _message(unit, err), "seconds": time.perf_counter() - start}
    record["radiomics_version"] = radiomics_version()
    # Timings and the worker's identity differ between two computations of the same unit, so
    # they go into the entry's metadata, not its payload: the payload is then byte-identical
    # whoever computes it, and two processes racing to store one unit cannot pair one's
    # payload with the other's checksum.
    sitk = simpleitk()

    run = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "worker": {"pid": os.getpid(), "itk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()},
    }
    if limit_threads:
        from threadpoolctl import threadpool_info

        run["worker"]["blas_threads"] = sorted({int(p.get("num_threads", 0)) for p in threadpool_info()})
    if cache_root is not None:
        _store(cache_root, key, unit, record, run)
    return {**record, **run}


def _message(unit: WorkUnit, err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text if text.startswith(unit.describe()) else f"{unit.describe()}: {text}"


_RUN_KEYS = ("seconds", "cpu_seconds", "worker")


def _store(cache_root: str, key: str, unit: WorkUnit, record: dict, run: dict | None = None) -> None:
    payload = {k: v for k, v in record.items() if k not in _RUN_KEYS}
    meta = {"case_id": unit.case_id, "modality": unit.modality, "roi": unit.roi, "image": unit.image, "mask": unit.mask}
    meta.update(run or {k: record[k] for k in _RUN_KEYS if k in record})
    ArtifactCache(cache_root, CACHE_NAMESPACE).put_json(key, payload, meta=meta)


def _load(cache: ArtifactCache, key: str) -> dict | None:
    record = cache.get_json(key)
    if not isinstance(record, dict) or record.get("status") not in ("ok", "missing") or not isinstance(record.get("features"), list):
        return None
    return record


