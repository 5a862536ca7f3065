"""Your own data: a table of image and mask files (and labels) turned into a cohort.

:func:`cohort_from_table` reads a CSV/Parquet table (or a DataFrame) with one row per case,
understands common column names (:data:`COLUMN_ALIASES`), resolves relative paths, converts
PI-RADS scores to the contract's groups, assigns splits when the table has none, optionally
resamples every file of a case onto the grid of its first image, and writes a validated
manifest (:func:`radiolens.data.cohort.write_manifest`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiolens.cache import default_cache_dir, hash_json
from radiolens.data.cohort import Cohort, write_manifest
from radiolens.data.contract import (
    FILE_KEYS,
    MASK_KEYS,
    CohortError,
    check_case_ids,
    cohort_error,
    inside,
    is_missing,
    pirads_group,
    split_cases,
)
from radiolens.data.image_io import (
    error_text,
    geometry,
    geometry_mismatch,
    read_header,
    read_image,
    resample_to_reference,
    write_image,
)
from radiolens.naming import MODALITIES

__all__ = ["COLUMN_ALIASES", "cohort_from_table"]

logger = logging.getLogger(__name__)

#: Accepted alternative column names (case-insensitive) in a user's table.
COLUMN_ALIASES: dict[str, str] = {
    "case": "case_id", "id": "case_id", "study_id": "case_id", "caseid": "case_id",
    "t2": "T2W", "t2w": "T2W", "t2_path": "T2W",
    "dwi": "DWI", "hbv": "DWI", "high_b": "DWI", "highb": "DWI", "dwi_path": "DWI",
    "adc": "ADC", "adc_path": "ADC",
    "gland": "gland", "prostate": "gland", "gland_mask": "gland", "whole_gland": "gland",
    "zones": "zones", "zone": "zones", "zonal": "zones", "zones_mask": "zones",
    "lesion": "lesion", "lesions": "lesion", "lesion_mask": "lesion",
    "pirads_group": "pirads_group", "pirads": "pirads", "pi-rads": "pirads", "pirads_score": "pirads",
    "gland_volume_ml": "gland_volume_ml", "lesion_volume_ml": "lesion_volume_ml",
    "split": "split", "source": "source", "site": "site", "scanner": "scanner",
    "patient_id": "patient_id", "patient": "patient_id",
}


def _pirads_score_to_group(value: Any, case_id: str) -> Any:
    """A table's PI-RADS score cell (1..5 or empty) -> the contract's group (or NA)."""
    if is_missing(value):
        return pd.NA
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = np.nan
    if not (np.isfinite(score) and score == int(score) and 1 <= score <= 5):
        raise CohortError(
            f"case {case_id!r}, column 'pirads': unknown PI-RADS score {value!r}: expected 1..5 or empty",
            case_id, "pirads",
        )
    return pirads_group(int(score))


def cohort_from_table(
    table: str | os.PathLike | pd.DataFrame,
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    resample: bool = False,
    fmt: str = "csv",
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Cohort:
    """Make a cohort from a table of your own NIfTI / NRRD / MHA files and labels.

    Parameters
    ----------
    table
        CSV/Parquet path or DataFrame, one row per case. Columns (case-insensitive; common
        aliases such as ``t2``, ``hbv``, ``prostate`` are understood, see
        :data:`COLUMN_ALIASES`):

        * ``case_id`` (required), optionally ``patient_id`` (keeps a patient's studies in one
          split);
        * image paths ``T2W``, ``DWI`` (high b-value), ``ADC`` - at least one;
        * mask paths ``gland``, ``zones`` (1 = peripheral, 2 = transition), ``lesion``;
        * ``pirads_group`` (0..3 for PI-RADS <3, 3, 4, 5) *or* ``pirads`` (the score 1..5);
        * optional ``gland_volume_ml``, ``lesion_volume_ml`` (measured from the masks when
          empty), ``split`` (assigned 7:1:2, stratified by PI-RADS group, when absent),
          ``source``, ``site``, ``scanner`` and any extra columns (kept).

        Relative paths are relative to the table's folder (to the working folder for a
        DataFrame). Empty cells mean "missing" and stay missing.
    out_dir
        Where the manifest (and, with ``resample``, resampled files) is written. Default:
        ``<radiolens cache>/cohorts/table-<hash of the table>``. Your files are not copied:
        the manifest points to them with absolute paths.
    seed
        Seed of the split when the table has none.
    resample
        Images or masks whose grid differs from the case's first image (e.g. an ADC map at
        DWI resolution) are resampled onto it (linear for images, nearest neighbour for
        masks) and written into ``out_dir``. Without it such a case is an error, as in
        :func:`load_cohort`.
    fmt
        Manifest format, ``"csv"`` or ``"parquet"``.
    progress
        Progress bar for the voxel checks.
    cache_dir
        The radiolens cache (default :func:`radiolens.cache.default_cache_dir`): the default
        ``out_dir`` and the record of passed voxel checks live there.

    Returns
    -------
    Cohort
        Validated exactly like :func:`load_cohort` (with voxel checks).
    """
    if isinstance(table, pd.DataFrame):
        frame, base, source = table.copy(), Path.cwd(), "table"
    else:
        path = Path(table).expanduser()
        if not path.exists():
            raise CohortError(f"table {str(path)!r} does not exist", path=path)
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        base, source = path.resolve().parent, repr(str(path))
    if frame.index.name is not None and frame.index.name.lower() in ("case_id", "case", "id"):
        frame = frame.reset_index()
    rename = {}
    for col in frame.columns:
        canon = COLUMN_ALIASES.get(str(col).strip().lower())
        if canon and canon not in rename.values():
            rename[col] = canon
    frame = frame.rename(columns=rename)
    if "case_id" not in frame.columns:
        raise CohortError(f"table {source} has no case_id column (columns: {list(frame.columns)})")
    # ids name output files (resampled images): unsafe ones stop before anything is written
    frame["case_id"] = check_case_ids(
        [c if is_missing(c) else str(c).strip() for c in frame["case_id"]],
        [f"row {i + 2} of {source}" for i in range(len(frame))],
    )
    if not any(k in frame.columns for k in MODALITIES):
        raise CohortError(f"table {source} has none of the image columns {list(MODALITIES)}")
    if "pirads" in frame.columns:
        scores = [
            _pirads_score_to_group(v, str(c)) for c, v in zip(frame["case_id"], frame["pirads"])
        ]
        if "pirads_group" in frame.columns:
            given = frame["pirads_group"]
            frame["pirads_group"] = [s if is_missing(g) else g for s, g in zip(scores, given)]
        else:
            frame["pirads_group"] = scores
        frame = frame.drop(columns="pirads")
    for key in FILE_KEYS:
        if key not in frame.columns:
            frame[key] = None
        else:
            frame[key] = [
                None if is_missing(v) else str((base / Path(str(v).strip()).expanduser()).resolve())
                for v in frame[key]
            ]
    if "split" not in frame.columns or frame["split"].map(is_missing).all():
        frame["split"] = split_cases(frame.assign(case_id=frame["case_id"].astype(str)), seed=seed).to_numpy()

    if out_dir is None:
        key = hash_json({"table": frame.astype(str).to_dict(orient="list"), "resample": resample})[:16]
        out_dir = default_cache_dir(cache_dir) / "cohorts" / f"table-{key}"
    out_dir = Path(out_dir).expanduser().resolve()

    if resample:
        frame = _resample_rows(frame, out_dir)
    return write_manifest(frame, out_dir, fmt=fmt, check_pixels=True, fill_volumes=True,
                          split_seed=seed, progress=progress, cache_dir=cache_dir)


def _resample_rows(frame: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Put every file of a case on the grid of its first image (files written to out_dir)."""
    frame = frame.copy()
    for row in frame.index:
        case_id = str(frame.at[row, "case_id"])
        present = [k for k in FILE_KEYS if not is_missing(frame.at[row, k])]
        ref_key = next((k for k in MODALITIES if k in present), None)
        if ref_key is None:
            continue
        ref_path = Path(frame.at[row, ref_key])
        try:
            ref = read_header(ref_path)
        except RuntimeError as err:
            raise cohort_error(case_id, ref_key, ref_path, f"cannot read image header: {error_text(err)}") from err
        ref_geo = geometry(ref)
        reference = None
        for key in present:
            if key == ref_key:
                continue
            path = Path(frame.at[row, key])
            try:
                geo = geometry(read_header(path))
            except RuntimeError as err:
                raise cohort_error(case_id, key, path, f"cannot read image header: {error_text(err)}") from err
            if geometry_mismatch(ref_geo, geo) is None:
                continue
            if reference is None:
                reference = read_image(ref_path)
            moved = resample_to_reference(read_image(path), reference, is_mask=key in MASK_KEYS)
            target = inside(out_dir / "resampled", f"{case_id}_{key}.nii.gz")
            write_image(moved, target)
            logger.info("case %r: %s resampled onto the %s grid", case_id, key, ref_key)
            frame.at[row, key] = str(target)
    return frame
