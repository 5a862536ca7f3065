"""PyRadiomics feature extraction: exact, parallel, cached and resumable.

The lens (:mod:`radiolens.lens`) speaks in PyRadiomics features. This module computes them for
a cohort, one *work unit* at a time: a unit is one ``(case_id, modality, roi)`` triple, i.e.
one image file and one mask file. Units are

* **exact**: each unit calls :class:`radiomics.featureextractor.RadiomicsFeatureExtractor`
  with the settings you give, unchanged, so the values are bit-identical to calling
  PyRadiomics yourself. One caveat, measured: PyRadiomics' values depend in the last bits
  (~1e-13 relative) on how many threads ITK uses, because multi-threaded reductions (the
  image statistics behind normalisation) add in a different order. radiolens therefore always
  runs PyRadiomics with one ITK thread - as PyRadiomics' own batch command line does - so a
  value is the same whatever ``n_jobs``, backend or machine computed it (and the cache never
  mixes values computed under different thread counts);
* **parallel**: units run in ``n_jobs`` processes (joblib/loky) or on a ``dask.distributed``
  cluster, with BLAS/ITK threads limited to one per worker so two processes use two cores;
* **cached**: every finished unit is stored at once, by the worker that computed it, in the
  content-addressed :class:`radiolens.cache.ArtifactCache` (namespace ``"radiomics"``) under a
  key made of the SHA-256 of the image bytes, the mask bytes, the settings, the ROI label, the
  PyRadiomics version and :data:`EXTRACTION_VERSION`; a second call only reads the cache;
* **resumable**: entries are written atomically (temporary name + rename, checksummed
  sidecar written last), so a run killed at any moment - a worker or the parent, even with
  ``SIGKILL`` - keeps every finished unit, never duplicates one and never leaves a half-written
  entry; a truncated or corrupted entry fails its checksum and is recomputed.

Bad input never crashes a whole run and is never dropped silently: a unit that cannot be
computed becomes a row of :attr:`RadiomicsResult.failures` (and a NaN row in the features); a
case without a lesion becomes an explicit *missing* unit (NaN row, ``status == "missing"``).

Examples
--------
>>> from radiolens.radiomics import extract, default_settings       # doctest: +SKIP
>>> R = extract(cohort, rois=("gland",), n_jobs=2)                   # doctest: +SKIP
>>> R.columns[0]                                                     # doctest: +SKIP
'T2W__original_firstorder_10Percentile'
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiolens.cache import ArtifactCache, default_cache_dir, hash_file, hash_json

__all__ = [
    "EXTRACTION_VERSION",
    "EmptyROIError",
    "GeometryMismatchError",
    "InvalidImageError",
    "RadiomicsResult",
    "WorkUnit",
    "default_settings",
    "extract",
    "extract_detailed",
    "extract_units",
    "load_settings",
    "make_units",
    "radiomics_version",
]

logger = logging.getLogger(__name__)

#: Version of radiolens' extraction code; part of every cache key. Bump it whenever a change
#: here alters the stored values (not for refactors that leave them bit-identical).
EXTRACTION_VERSION = "1"

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


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
class GeometryMismatchError(ValueError):
    """Image and mask do not share one voxel grid (size, spacing, origin or direction)."""


class EmptyROIError(ValueError):
    """The mask has no voxel with the ROI's label."""


class InvalidImageError(ValueError):
    """The image cannot give meaningful features (NaN/inf voxels, constant intensities)."""


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
def radiomics_version() -> str:
    """The installed PyRadiomics version (``radiomics.__version__``); part of every cache key."""
    import radiomics

    return str(radiomics.__version__)


def default_settings() -> dict[str, Any]:
    """PyRadiomics settings used by the paper, with explicit choices for MRI.

    The paper (Wang et al., MIDL 2026) extracts first-order, GLCM, GLSZM, GLRLM, NGTDM and
    GLDM features (no shape) from the Original image and its eight Wavelet decompositions. It
    does not state the pre-processing settings; radiolens chooses them as follows.

    ``normalize: True``, ``normalizeScale: 100``
        MRI intensities (T2W, DWI) have no physical unit and vary between scanners and
        sessions. PyRadiomics' normalisation z-scores the *whole* image (before cropping) and
        multiplies by 100, so first-order features (mean, energy, percentiles) become
        comparable across cases. ADC is quantitative, but one setting for all modalities
        keeps the three blocks of features on the same footing; use your own settings per
        call if you want raw ADC.
    ``binCount: 32`` (instead of PyRadiomics' default ``binWidth: 25``)
        Texture matrices need discretised grey levels. A fixed bin *width* only makes sense
        when intensities have a fixed scale; here the eight wavelet sub-bands have ranges that
        differ by orders of magnitude (the high-pass bands sit around 0), so one width gives a
        handful of bins in some bands and hundreds in others. A fixed bin *count* gives every
        image type the same 32 grey levels, a common, reproducible choice for MRI texture and
        about 5x faster than ``binWidth: 5`` on a 130k-voxel ROI. (PyRadiomics logs a warning
        recommending bin width; radiolens silences it during extraction.)
    ``resampledPixelSpacing: None``
        Resampling belongs to the data stage (``radiolens.data.preprocess``, which resamples
        real studies to the paper's 0.5 x 0.5 x 1.0 mm grid; the built-in synthetic cohort is
        generated directly on its own 0.8 x 0.8 x 2.0 mm grid), so extraction does not
        interpolate again (a second B-spline pass would blur texture). Set
        ``[0.5, 0.5, 1.0]`` here if your images are not resampled beforehand.
    ``preCrop: True`` (with ``padDistance: 5``)
        Crop image and mask to the ROI's bounding box plus 5 voxels *before* the wavelet
        filters run; the filters then work on a small box instead of the whole field of view,
        which makes extraction many times faster and only changes wavelet values within the
        filter support of the box edge.
    ``label: 1``
        Masks store the ROI as label 1. Pass a ROI as ``"zones:2"`` to pick another label.
    ``additionalInfo: True``
        PyRadiomics' ``diagnostics_*`` entries (versions, hashes, ROI size) are kept, in
        :attr:`RadiomicsResult.diagnostics`, never among the features.

    Returns
    -------
    dict
        A PyRadiomics parameter dictionary (``setting``, ``imageType``, ``featureClass``);
        a fresh copy each call, safe to modify.
    """
    return {
        "setting": {
            "normalize": True,
            "normalizeScale": 100,
            "binCount": 32,
            "resampledPixelSpacing": None,
            "preCrop": True,
            "padDistance": 5,
            "label": 1,
            "additionalInfo": True,
        },
        "imageType": {"Original": {}, "Wavelet": {}},
        # An empty list enables every feature of the class.
        "featureClass": {name: [] for name in ("firstorder", "glcm", "glszm", "glrlm", "ngtdm", "gldm")},
    }


def load_settings(settings: dict | str | os.PathLike | None = None) -> dict[str, Any]:
    """Resolve settings to a validated PyRadiomics parameter dictionary.

    Parameters
    ----------
    settings
        ``None`` (the paper's :func:`default_settings`), a parameter dictionary, or the path
        of a PyRadiomics parameter file (``.yaml``/``.yml``/``.json``).

    Returns
    -------
    dict
        A deep copy, validated by PyRadiomics' own schema.

    Raises
    ------
    ValueError
        When PyRadiomics rejects the settings (the message names the offending key).
    FileNotFoundError
        When a parameter file does not exist.
    """
    if settings is None:
        params = default_settings()
    elif isinstance(settings, dict):
        params = copy.deepcopy(settings)
    else:
        path = Path(settings)
        if not path.is_file():
            raise FileNotFoundError(f"PyRadiomics parameter file {path} does not exist")
        import yaml

        params = yaml.safe_load(path.read_text()) or {}
        if not isinstance(params, dict):
            raise ValueError(f"PyRadiomics parameter file {path} does not hold a mapping")
    unknown = set(params) - {"setting", "imageType", "featureClass", "voxelSetting"}
    if unknown:
        raise ValueError(
            f"PyRadiomics settings have unknown top-level keys {sorted(unknown)}; expected "
            "'setting', 'imageType' and 'featureClass'"
        )
    try:
        _make_extractor(params)
    except Exception as err:
        raise ValueError(f"PyRadiomics rejected the settings: {err}") from err
    return params


def _make_extractor(params: dict):
    from radiomics import featureextractor

    with _quiet_radiomics():
        # PyRadiomics mutates nothing in the dict, but give it its own copy to be sure.
        return featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(params))


_EXTRACTORS: dict[str, Any] = {}


def _extractor_for(params: dict, params_hash: str):
    """One extractor per process and settings (building one validates a schema: ~10 ms)."""
    if params_hash not in _EXTRACTORS:
        _EXTRACTORS.clear()
        _EXTRACTORS[params_hash] = _make_extractor(params)
    return _EXTRACTORS[params_hash]


@contextlib.contextmanager
def _quiet_radiomics() -> Iterator[None]:
    """Silence PyRadiomics' per-case chatter (bin-count advice, GLCM symmetry notes)."""
    rlog = logging.getLogger("radiomics")
    old = rlog.level
    rlog.setLevel(logging.ERROR)
    try:
        yield
    finally:
        rlog.setLevel(old)


# --------------------------------------------------------------------------------------------
# work units
# --------------------------------------------------------------------------------------------
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


def make_units(cohort, rois: Sequence[str] = ("gland",), modalities: Sequence[str] = ("T2W", "DWI", "ADC")) -> list[WorkUnit]:
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
    import SimpleITK as sitk

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
    import SimpleITK as sitk

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
    import SimpleITK as sitk

    where = unit.describe()
    image = sitk.ReadImage(unit.image)
    mask = sitk.ReadImage(unit.mask)
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
            diagnostics.append([key, _jsonable(value)])
            continue
        number = float(value)
        if not math.isfinite(number):
            nonfinite.append(key)
            number = None  # NaN in the table; inf would break min-max scaling downstream
        features.append([key, number])
    return {"status": "ok", "message": None, "features": features, "diagnostics": diagnostics, "nonfinite": nonfinite, "n_voxels": n_roi}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _jsonable(value.item())
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
    import SimpleITK as sitk

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


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------
@dataclass
class RadiomicsResult:
    """Everything an extraction produced.

    Attributes
    ----------
    features
        Case x feature table (``(case_id, roi)`` MultiIndex when several ROIs), columns
        ``"{modality}__{pyradiomics key}"``; every requested case has a row, NaN where a unit
        is missing or failed.
    diagnostics
        Same index, columns ``"{modality}__diagnostics_..."``: PyRadiomics' provenance entries.
    units
        One row per work unit: ``case_id, modality, roi, status`` (``computed``, ``cached``,
        ``missing``, ``failed``), ``seconds`` and ``cpu_seconds`` (0 when cached), ``n_voxels``
        (ROI size), ``error_type``, ``message``,
        ``cache_key``, ``image``, ``mask``.
    failures
        ``case_id, modality, roi, error_type, message`` for failed units and for units with
        NaN/inf feature values (``error_type == "NonFiniteFeature"``).
    provenance
        PyRadiomics version, radiolens extraction version, settings and their hash, backend,
        timings.
    """

    features: pd.DataFrame
    diagnostics: pd.DataFrame
    units: pd.DataFrame
    failures: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> pd.DataFrame:
        """Units with ``status == "missing"`` (no image, no mask, or no lesion)."""
        return self.units[self.units["status"] == "missing"].reset_index(drop=True)


_FAILURE_COLUMNS = ["case_id", "modality", "roi", "error_type", "message"]
_UNIT_COLUMNS = ["case_id", "modality", "roi", "status", "seconds", "cpu_seconds", "n_voxels", "error_type", "message", "cache_key", "image", "mask"]


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------
def extract(
    cohort,
    rois: Sequence[str] = ("gland",),
    modalities: Sequence[str] = ("T2W", "DWI", "ADC"),
    settings: dict | str | os.PathLike | None = None,
    n_jobs: int = 1,
    backend: str = "joblib",
    cache_dir: str | os.PathLike | None = None,
    resample_mask: bool = False,
    progress: bool = True,
    client=None,
) -> pd.DataFrame:
    """Radiomic features of a cohort, one row per case (and ROI).

    Same parameters as :func:`extract_detailed`, which also returns diagnostics, per-unit
    status and failures. Failed units are summarised in a logged warning; their rows are NaN.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``case_id`` (a ``(case_id, roi)`` MultiIndex when several ROIs), columns
        ``"{modality}__{pyradiomics key}"`` (see :func:`radiolens.naming.parse_column`).
    """
    return extract_detailed(
        cohort,
        rois=rois,
        modalities=modalities,
        settings=settings,
        n_jobs=n_jobs,
        backend=backend,
        cache_dir=cache_dir,
        resample_mask=resample_mask,
        progress=progress,
        client=client,
    ).features


def extract_detailed(
    cohort,
    rois: Sequence[str] = ("gland",),
    modalities: Sequence[str] = ("T2W", "DWI", "ADC"),
    settings: dict | str | os.PathLike | None = None,
    n_jobs: int = 1,
    backend: str = "joblib",
    cache_dir: str | os.PathLike | None = None,
    resample_mask: bool = False,
    progress: bool = True,
    client=None,
) -> RadiomicsResult:
    """Extract PyRadiomics features for every ``(case, modality, roi)`` of a cohort.

    Parameters
    ----------
    cohort
        A :class:`radiolens.data.Cohort` (or anything with ``case_ids`` and
        ``path(case_id, key)``), or the path of a cohort folder/manifest.
    rois
        Mask keys: ``"gland"``, ``"lesion"``, ``"zones"``; ``"key:label"`` picks a label
        (``"zones:2"`` = transition zone). A case without a lesion gets a NaN row and a
        ``"missing"`` unit, never zeros.
    modalities
        Image keys of the cohort.
    settings
        PyRadiomics parameters: a dict or a parameter-file path; ``None`` = the paper's
        :func:`default_settings`.
    n_jobs
        Worker processes (``-1`` = all cores). ``1`` runs in this process.
    backend
        ``"joblib"`` (local processes) or ``"dask"`` (``dask.distributed``; needs the
        ``radiolens[dask]`` extra).
    cache_dir
        Cache root (default :func:`radiolens.cache.default_cache_dir`); ``False`` disables
        the cache.
    resample_mask
        Resample a mask whose grid differs from the image's onto the image grid (nearest
        neighbour) instead of recording a :class:`GeometryMismatchError`.
    progress
        Show a ``tqdm`` progress bar with an ETA.
    client
        A ``dask.distributed.Client`` to use with ``backend="dask"``; by default a local
        cluster of ``n_jobs`` single-threaded worker processes is started and closed (in a
        script, call it under ``if __name__ == "__main__":``, as for any process pool). On
        a real cluster, ``cache_dir`` should be a folder every worker can write: workers
        store each finished unit themselves, so a dying client loses nothing; if it is not
        shared, the client stores the results it receives.

    Returns
    -------
    RadiomicsResult
    """
    if isinstance(cohort, (str, os.PathLike)):
        from radiolens.data import load_cohort

        cohort = load_cohort(cohort)
    units = make_units(cohort, rois=rois, modalities=modalities)
    result = extract_units(
        units,
        settings=settings,
        n_jobs=n_jobs,
        backend=backend,
        cache_dir=cache_dir,
        resample_mask=resample_mask,
        progress=progress,
        client=client,
        case_ids=[str(c) for c in cohort.case_ids],
        rois=list(rois),
        modalities=list(modalities),
    )
    # No cohort.fingerprint here: it hashes every file again; the unit keys already hold the
    # content hashes of exactly the files used (result.units.cache_key).
    return result


def extract_units(
    units: Iterable[WorkUnit],
    settings: dict | str | os.PathLike | None = None,
    n_jobs: int = 1,
    backend: str = "joblib",
    cache_dir: str | os.PathLike | None | bool = None,
    resample_mask: bool = False,
    progress: bool = True,
    client=None,
    case_ids: Sequence[str] | None = None,
    rois: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
) -> RadiomicsResult:
    """Extract features for explicit work units (the engine behind :func:`extract_detailed`).

    Parameters
    ----------
    units
        The :class:`WorkUnit` objects.
    case_ids, rois, modalities
        Row/column order of the tables (and rows for cases with no unit); by default the order
        in which they first appear in ``units``.

    Other parameters are those of :func:`extract_detailed`.
    """
    units = list(units)
    if backend not in ("joblib", "dask"):
        raise ValueError(f"backend must be 'joblib' or 'dask', not {backend!r}")
    started = time.perf_counter()
    params = load_settings(settings)
    params_hash = hash_json(params)
    version = radiomics_version()
    cache = None if cache_dir is False else ArtifactCache(default_cache_dir(cache_dir), CACHE_NAMESPACE)
    cache_root = None if cache is None else str(cache.root)

    records: dict[int, dict] = {}
    keys: dict[int, str] = {}
    pending: list[int] = []
    file_hashes: dict[str, str] = {}
    for i, unit in enumerate(units):
        if unit.image is None or unit.mask is None:
            what = "image" if unit.image is None else "mask"
            records[i] = {"status": "missing", "message": f"{unit.describe()}: the cohort has no {what} file", "features": [], "diagnostics": [], "nonfinite": []}
            continue
        try:
            keys[i] = _unit_key(unit, params_hash, version, resample_mask, params, file_hashes)
        except OSError as err:
            records[i] = {"status": "failed", "error_type": type(err).__name__, "message": _message(unit, err), "seconds": 0.0}
            continue
        found = None if cache is None else _load(cache, keys[i])
        if found is not None:
            found["status"] = "cached" if found["status"] == "ok" else found["status"]
            records[i] = found
        else:
            pending.append(i)

    n_cached = len(units) - len(pending)
    if pending:
        logger.info("radiomics: %d of %d units to compute (%d from cache/missing)", len(pending), len(units), n_cached)
        runner = _run_dask if backend == "dask" else _run_joblib
        computed = runner(
            [(i, units[i], keys[i]) for i in pending],
            params=params,
            params_hash=params_hash,
            resample_mask=resample_mask,
            cache_root=cache_root,
            n_jobs=n_jobs,
            progress=progress,
            client=client,
        )
        for i, record in computed.items():
            if record.get("status") == "ok":
                record["status"] = "computed"
            records[i] = record

    result = _assemble(units, records, keys, case_ids, rois, modalities)
    result.provenance = {
        "radiomics_version": version,
        "extraction_version": EXTRACTION_VERSION,
        "settings": params,
        "settings_hash": params_hash,
        "resample_mask": resample_mask,
        "backend": backend if pending else "cache",
        "n_jobs": n_jobs,
        "n_units": len(units),
        "n_computed": int((result.units["status"] == "computed").sum()),
        "n_cached": int((result.units["status"] == "cached").sum()),
        "n_failed": int((result.units["status"] == "failed").sum()),
        "n_missing": int((result.units["status"] == "missing").sum()),
        "cache_dir": cache_root,
        "seconds": time.perf_counter() - started,
    }
    _warn_about(result)
    return result


def _unit_key(unit: WorkUnit, params_hash: str, version: str, resample_mask: bool, params: dict, file_hashes: dict) -> str:
    for path in (unit.image, unit.mask):
        if path not in file_hashes:
            file_hashes[path] = hash_file(path)
    label = unit.label if unit.label is not None else int((params.get("setting") or {}).get("label", 1))
    return hash_json(
        {
            "image": file_hashes[unit.image],
            "mask": file_hashes[unit.mask],
            "label": label,
            "settings": params_hash,
            "resample_mask": bool(resample_mask),
            "radiomics": version,
            "extraction": EXTRACTION_VERSION,
            # roi decides whether an empty mask is "missing" or "failed"
            "absent_ok": unit.roi.partition(":")[0] in ABSENT_OK_ROIS,
        }
    )


def _warn_about(result: RadiomicsResult) -> None:
    failures = result.failures
    if len(failures):
        counts = Counter(failures["error_type"])
        summary = ", ".join(f"{name} x{n}" for name, n in counts.most_common())
        first = failures.iloc[0]
        logger.warning(
            "radiomics: %d of %d work units had problems (%s); their features are NaN. First: %s. "
            "See extract_detailed(...).failures for the full table.",
            len(failures),
            len(result.units),
            summary,
            first["message"],
        )
    n_missing = len(result.missing)
    if n_missing:
        logger.info("radiomics: %d work units missing (no image/mask, or no lesion); their rows are NaN", n_missing)


def _assemble(units, records, keys, case_ids, rois, modalities) -> RadiomicsResult:
    case_ids = list(dict.fromkeys(case_ids if case_ids is not None else [u.case_id for u in units]))
    rois = list(dict.fromkeys(rois if rois is not None else [u.roi for u in units]))
    modalities = list(dict.fromkeys(modalities if modalities is not None else [u.modality for u in units]))
    multi = len(rois) > 1

    def row_key(unit):
        return (unit.case_id, unit.roi) if multi else unit.case_id

    if multi:
        index = pd.MultiIndex.from_product([case_ids, rois], names=["case_id", "roi"])
    else:
        index = pd.Index(case_ids, name="case_id")

    # Column order: modality order, then PyRadiomics' own key order (first unit that has it).
    feature_cols: dict[str, dict[str, None]] = {m: {} for m in modalities}  # ordered sets
    diag_cols: dict[str, dict[str, None]] = {m: {} for m in modalities}
    feature_rows: dict[Any, dict] = {}
    diag_rows: dict[Any, dict] = {}
    unit_rows, failure_rows = [], []
    for i, unit in enumerate(units):
        record = records[i]
        status = record["status"]
        unit_rows.append(
            {
                "case_id": unit.case_id,
                "modality": unit.modality,
                "roi": unit.roi,
                "status": status,
                "seconds": float(record.get("seconds", 0.0)) if status != "cached" else 0.0,
                "cpu_seconds": float(record.get("cpu_seconds", 0.0)) if status != "cached" else 0.0,
                "n_voxels": record.get("n_voxels"),
                "error_type": record.get("error_type"),
                "message": record.get("message"),
                "cache_key": keys.get(i),
                "image": unit.image,
                "mask": unit.mask,
            }
        )
        if status == "failed":
            failure_rows.append({k: unit_rows[-1][k] for k in _FAILURE_COLUMNS})
            continue
        if record.get("nonfinite"):
            bad = record["nonfinite"]
            failure_rows.append(
                {
                    "case_id": unit.case_id,
                    "modality": unit.modality,
                    "roi": unit.roi,
                    "error_type": "NonFiniteFeature",
                    "message": f"{unit.describe()}: PyRadiomics returned NaN/inf for {len(bad)} feature(s), stored as NaN: {', '.join(bad[:10])}"
                    + (" ..." if len(bad) > 10 else ""),
                }
            )
        cols = feature_cols.setdefault(unit.modality, {})
        row = feature_rows.setdefault(row_key(unit), {})
        for name, value in record.get("features", []):
            cols.setdefault(name)
            row[f"{unit.modality}__{name}"] = np.nan if value is None else value
        dcols = diag_cols.setdefault(unit.modality, {})
        drow = diag_rows.setdefault(row_key(unit), {})
        for name, value in record.get("diagnostics", []):
            dcols.setdefault(name)
            drow[f"{unit.modality}__{name}"] = value

    columns = [f"{m}__{name}" for m, names in feature_cols.items() for name in names]
    features = pd.DataFrame.from_dict(feature_rows, orient="index", dtype="float64") if feature_rows else pd.DataFrame()
    features = features.reindex(index=index, columns=columns).astype("float64")
    dcolumns = [f"{m}__{name}" for m, names in diag_cols.items() for name in names]
    diagnostics = pd.DataFrame.from_dict(diag_rows, orient="index", dtype="object") if diag_rows else pd.DataFrame()
    diagnostics = diagnostics.reindex(index=index, columns=dcolumns)
    if multi:
        features.index = index
        diagnostics.index = index
    units_frame = pd.DataFrame(unit_rows, columns=_UNIT_COLUMNS)
    failures = pd.DataFrame(failure_rows, columns=_FAILURE_COLUMNS)
    return RadiomicsResult(features=features, diagnostics=diagnostics, units=units_frame, failures=failures)


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------
def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="radiomics", unit="unit", disable=not enabled, dynamic_ncols=True)


def _run_joblib(jobs, *, params, params_hash, resample_mask, cache_root, n_jobs, progress, client=None, max_restarts: int = 2) -> dict[int, dict]:
    """Run units in-process (``n_jobs == 1``) or in loky worker processes.

    A worker that dies (SIGKILL, out of memory) aborts joblib's pool; the units it had not
    returned are looked up in the cache (a finished unit was stored by its worker) and the
    rest is retried in a fresh pool, at most ``max_restarts`` times, then recorded as failed.
    """
    results: dict[int, dict] = {}
    with _progress_bar(len(jobs), progress) as bar:
        if n_jobs == 1:
            for i, unit, key in jobs:
                results[i] = _run_unit(unit, key, params, params_hash, resample_mask, cache_root, False)
                bar.update(1)
            return results

        from joblib import Parallel, delayed, parallel_config
        from joblib.externals.loky.process_executor import TerminatedWorkerError

        # Largest first (mask file size grows with the ROI): a long unit started last would
        # leave one worker busy while the others idle.
        todo = sorted(jobs, key=_size_hint, reverse=True)
        for attempt in range(max_restarts + 1):
            try:
                with parallel_config(backend="loky", inner_max_num_threads=1):
                    parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="2*n_jobs")
                    tasks = (
                        delayed(_indexed)(i, unit, key, params, params_hash, resample_mask, cache_root)
                        for i, unit, key in todo
                    )
                    for i, record in parallel(tasks):
                        results[i] = record
                        bar.update(1)
                break
            except TerminatedWorkerError as err:
                todo = [job for job in todo if job[0] not in results]
                cache = None if cache_root is None else ArtifactCache(cache_root, CACHE_NAMESPACE)
                still = []
                for i, unit, key in todo:
                    found = None if cache is None else _load(cache, key)
                    if found is not None:  # finished by the dead pool, stored before it died
                        results[i] = found
                        bar.update(1)
                    else:
                        still.append((i, unit, key))
                todo = still
                logger.warning("radiomics: a worker process died (%s); %d units left, restart %d of %d", type(err).__name__, len(todo), attempt + 1, max_restarts)
                if not todo:
                    break
        else:
            for i, unit, _key in todo:
                results[i] = {"status": "failed", "error_type": "WorkerDied", "message": f"{unit.describe()}: worker process died {max_restarts + 1} times; not computed", "seconds": 0.0}
    return results


def _size_hint(job) -> int:
    try:
        return os.path.getsize(job[1].mask) + os.path.getsize(job[1].image) // 64
    except OSError:
        return 0


def _indexed(i, unit, key, params, params_hash, resample_mask, cache_root):
    return i, _run_unit(unit, key, params, params_hash, resample_mask, cache_root, True)


def _run_dask(jobs, *, params, params_hash, resample_mask, cache_root, n_jobs, progress, client=None) -> dict[int, dict]:
    """Run units on a ``dask.distributed`` cluster; workers store finished units themselves
    (shared cache folder), and the parent stores them again if the folder is not shared."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        raise ImportError(
            "backend='dask' needs dask.distributed; install it with: pip install 'radiolens[dask]'"
        ) from err

    own_cluster = None
    if client is None:
        workers = (os.cpu_count() or 1) if n_jobs in (None, -1) else max(1, int(n_jobs))
        own_cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
        client = Client(own_cluster)
    results: dict[int, dict] = {}
    cache = None if cache_root is None else ArtifactCache(cache_root, CACHE_NAMESPACE)
    try:
        futures = {}
        for i, unit, key in jobs:
            future = client.submit(
                _run_unit, unit, key, params, params_hash, resample_mask, cache_root, True, key=f"radiomics-{key}-{i}", pure=False
            )
            futures[future] = (i, unit, key)
        with _progress_bar(len(jobs), progress) as bar:
            for future in as_completed(list(futures)):
                i, unit, key = futures[future]
                try:
                    record = future.result()
                except Exception as err:  # e.g. KilledWorker after repeated worker deaths
                    record = {"status": "failed", "error_type": type(err).__name__, "message": _message(unit, err), "seconds": 0.0}
                if cache is not None and record.get("status") in ("ok", "missing") and not cache.has(key, "json.data"):
                    _store(cache_root, key, unit, record)
                results[i] = record
                bar.update(1)
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()
    return results
