"""Extraction of a whole cohort - units in parallel (joblib or dask), cached, assembled into
tables - and :func:`clean`, which makes the table the lens reads."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from radiolens._utils import progress_bar
from radiolens.cache import STEP_VERSIONS, ArtifactCache, default_cache_dir, hash_file, hash_json, step_key
from radiolens.naming import MODALITIES
from radiolens.radiomics.settings import load_settings, radiomics_version
from radiolens.radiomics.units import (
    ABSENT_OK_ROIS,
    CACHE_NAMESPACE,
    WorkUnit,
    _load,
    _message,
    _run_unit,
    _store,
    make_units,
)

__all__ = ["RadiomicsResult", "clean", "extract", "extract_detailed", "extract_units"]

logger = logging.getLogger(__name__)


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


def extract(
    cohort,
    rois: Sequence[str] = ("gland",),
    modalities: Sequence[str] = MODALITIES,
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
    modalities: Sequence[str] = MODALITIES,
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

        cohort = load_cohort(cohort, cache_dir=None if cache_dir is False else cache_dir)
    units = make_units(cohort, rois=rois, modalities=modalities)
    if cache_dir is None:  # the cohort's cache: one cache root for the whole study
        cache_dir = getattr(cohort, "cache_dir", None)
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
        "extraction_version": STEP_VERSIONS["radiomics"],
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
    return step_key(
        "radiomics",
        {
            "image": file_hashes[unit.image],
            "mask": file_hashes[unit.mask],
            "label": label,
            "settings": params_hash,
            "resample_mask": bool(resample_mask),
            "radiomics": version,
            # roi decides whether an empty mask is "missing" or "failed"
            "absent_ok": unit.roi.partition(":")[0] in ABSENT_OK_ROIS,
        },
        length=64,
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
# the lens-ready table
# --------------------------------------------------------------------------------------------
def clean(features: pd.DataFrame) -> pd.DataFrame:
    """Make a radiomics table the lens can read: every case complete, every feature defined.

    Three rules, in this order:

    1. infinite values become NaN (PyRadiomics returns inf for a few statistics of degenerate
       ROIs; min-max scaling cannot take them);
    2. a case with a whole modality missing (no such image or no ROI - e.g. no lesion -, or a
       failed work unit) is dropped: it cannot be compared on every modality;
    3. a feature still undefined (NaN) for some of the remaining cases is dropped, not those
       cases: one PyRadiomics statistic should not remove patients.

    Parameters
    ----------
    features
        Cases x ``"{modality}__{pyradiomics key}"`` columns, as :func:`extract` returns them
        for one ROI.

    Returns
    -------
    pandas.DataFrame
        The kept cases and features, in their order. What was dropped is logged (a warning for
        dropped features); compare the index and columns with the input to list it.
    """
    values = features.replace([np.inf, -np.inf], np.nan)
    modality = values.columns.str.split("__").str[0]  # "{modality}__{pyradiomics key}"
    missing = values.isna().T.groupby(modality).all().any(axis=0)
    if missing.any():
        logger.info("radiomics: %d case(s) with a whole modality missing dropped: %s",
                    int(missing.sum()), list(missing.index[missing][:10]))
    values = values.loc[~missing.to_numpy()]
    partial = values.columns[values.isna().any()]
    if len(partial):
        logger.warning("radiomics: %d feature(s) undefined for some cases dropped: %s", len(partial), list(partial[:5]))
        values = values.drop(columns=partial)
    return values



# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------
def _run_joblib(jobs, *, params, params_hash, resample_mask, cache_root, n_jobs, progress, client=None, max_restarts: int = 2) -> dict[int, dict]:
    """Run units in-process (``n_jobs == 1``) or in loky worker processes.

    A worker that dies (SIGKILL, out of memory) aborts joblib's pool; the units it had not
    returned are looked up in the cache (a finished unit was stored by its worker) and the
    rest is retried in a fresh pool, at most ``max_restarts`` times, then recorded as failed.
    """
    results: dict[int, dict] = {}
    with progress_bar(total=len(jobs), desc="radiomics", unit="unit", progress=progress, leave=True, dynamic_ncols=True) as bar:
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
        with progress_bar(total=len(jobs), desc="radiomics", unit="unit", progress=progress, leave=True, dynamic_ncols=True) as bar:
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
