"""Your own data: a table of image and mask files (and labels) turned into a cohort.

:func:`cohort_from_table` reads a CSV/Parquet table (or a DataFrame) with one row per case,
understands common column names (:data:`COLUMN_ALIASES`), resolves relative paths, converts
PI-RADS scores to the contract's groups, assigns splits when the table has none, optionally
resamples every file of a case onto the grid of its first image, and writes a validated
manifest (:func:`radiolens.data.cohort.write_manifest`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
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
    cohort_error,
    is_missing,
    pirads_group,
    split_cases,
)
from radiolens.data.image_io import (
    DicomSeriesError,
    error_text,
    geometry,
    geometry_mismatch,
    is_dicom_series,
    read_array,
    read_header,
    read_image,
    resample_to_reference,
    simpleitk,
    write_image,
)
from radiolens.errors import EXIT_CODES, UserError
from radiolens.naming import MODALITIES

__all__ = ["COLUMN_ALIASES", "DEFAULT_LESION_RULE", "LesionRuleError", "cohort_from_table", "lesion_rule"]

logger = logging.getLogger(__name__)

#: Accepted alternative column names (matched case-insensitively, spaces read as ``_``) in a
#: user's table, including the names of the PI-CAI marksheet (``study_id``, ``patient_id``,
#: ``prostate_volume``, ``center``; images ``t2w``/``adc``/``hbv``; the expert lesion label)
#: and of ProstateX (``ProxID``; series ``t2_tse_tra``, ``adc``, ``bval``).
COLUMN_ALIASES: dict[str, str] = {
    "case": "case_id", "id": "case_id", "study_id": "case_id", "caseid": "case_id", "proxid": "case_id",
    "study": "case_id",
    "t2": "T2W", "t2w": "T2W", "t2_path": "T2W", "t2_tse_tra": "T2W", "t2w_tra": "T2W", "t2_tra": "T2W",
    "dwi": "DWI", "hbv": "DWI", "high_b": "DWI", "highb": "DWI", "dwi_path": "DWI", "bval": "DWI",
    "calc_bval": "DWI", "hbv_path": "DWI", "b1400": "DWI", "b800": "DWI",
    "adc": "ADC", "adc_path": "ADC", "adc_map": "ADC", "ep2d_diff_tra_adc": "ADC",
    "gland": "gland", "prostate": "gland", "gland_mask": "gland", "whole_gland": "gland",
    "prostate_mask": "gland", "whole_gland_mask": "gland", "gland_path": "gland",
    "zones": "zones", "zone": "zones", "zonal": "zones", "zones_mask": "zones", "zonal_mask": "zones",
    "lesion": "lesion", "lesions": "lesion", "lesion_mask": "lesion", "lesion_label": "lesion",
    "human_expert": "lesion", "lesion_path": "lesion", "cspca_label": "lesion",
    "pirads_group": "pirads_group", "pirads": "pirads", "pi-rads": "pirads", "pirads_score": "pirads",
    "pi_rads": "pirads", "pirads_v2": "pirads", "pi-rads_v2": "pirads",
    "gland_volume_ml": "gland_volume_ml", "prostate_volume": "gland_volume_ml", "gland_volume": "gland_volume_ml",
    "lesion_volume_ml": "lesion_volume_ml",
    "split": "split", "source": "source", "site": "site", "center": "site", "centre": "site",
    "scanner": "scanner", "manufacturer": "scanner",
    "patient_id": "patient_id", "patient": "patient_id",
}

#: The lesion rule when none is given: any non-zero voxel is lesion (PI-CAI's expert labels
#: hold the ISUP grade of each lesion, 0 elsewhere).
DEFAULT_LESION_RULE = "nonzero"


class LesionRuleError(UserError, ValueError):
    """A lesion rule (``cohort.lesion_threshold``) that is neither ``nonzero`` nor a number."""

    exit_code = EXIT_CODES["config"]


def lesion_rule(threshold: str | float | None) -> tuple[str, float | None]:
    """Parse a lesion rule: ``None``/``"nonzero"`` -> voxels != 0; a number t -> voxels >= t.

    Returns
    -------
    (description, t)
        ``("value != 0", None)`` or ``("value >= t", t)``; the description is what the manifest
        records in its ``lesion_rule`` column.
    """
    if threshold is None or (isinstance(threshold, str) and threshold.strip().lower() in ("nonzero", "non-zero", "any")):
        return "value != 0", None
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(threshold, bool) or not np.isfinite(value):
        raise LesionRuleError(
            f"config key 'cohort.lesion_threshold' (lesion_threshold=) must be 'nonzero' (any non-zero voxel is "
            f"lesion) or a number t (voxels >= t are lesion, e.g. 2 for ISUP >= 2), got {threshold!r}"
        )
    return f"value >= {value:g}", value


def _safe_stem(case_id: str) -> str:
    """A file-name stem for a case's derived files: its id's portable characters plus a short
    hash (so ids that differ only in other characters never share a file, and no id can name
    a path outside the cohort folder)."""
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id).strip("._")[:60] or "case"
    return f"{plain}-{hashlib.sha256(case_id.encode()).hexdigest()[:8]}"


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
    resample: bool | None = None,
    fmt: str = "csv",
    progress: bool = False,
    lesion_threshold: str | float | None = DEFAULT_LESION_RULE,
) -> Cohort:
    """Make a cohort from a table of your own image files (or DICOM folders) and labels.

    Parameters
    ----------
    table
        CSV/Parquet path or DataFrame, one row per case. Columns (case-insensitive; common
        aliases such as ``t2``, ``hbv``, ``prostate`` and the PI-CAI and ProstateX names are
        understood, see :data:`COLUMN_ALIASES`):

        * ``case_id`` (required), optionally ``patient_id`` (keeps a patient's studies in one
          split);
        * image paths ``T2W``, ``DWI`` (high b-value), ``ADC`` - at least one;
        * mask paths ``gland``, ``zones`` (1 = peripheral, 2 = transition), ``lesion``;
        * ``pirads_group`` (0..3 for PI-RADS <3, 3, 4, 5) *or* ``pirads`` (the score 1..5);
        * optional ``gland_volume_ml``, ``lesion_volume_ml`` (measured from the masks when
          empty), ``split`` (assigned 7:1:2 when absent: stratified by PI-RADS group when the
          table has any, else by lesion presence when it has lesion masks, else not
          stratified), ``source``, ``site``, ``scanner`` and any extra
          columns (kept).

        Every label is optional: tasks that need a missing label are skipped later, the rest
        of a study runs. A path may be an image file (NIfTI, NRRD, MHA) or a folder holding
        one DICOM series (converted once to NIfTI in ``out_dir``). Relative paths are relative
        to the table's folder (to the working folder for a DataFrame). Empty cells mean
        "missing" and stay missing.
    out_dir
        Where the manifest (and converted, binarised or resampled files) is written. Default:
        ``<radiolens cache>/cohorts/table-<hash of the table and options>``. Your files are
        not copied: the manifest points to them with absolute paths. The folder is built
        under a temporary name and renamed at the end, so a failure leaves nothing behind.
    seed
        Seed of the split when the table has none.
    resample
        What to do with an image or mask whose grid differs from the case's first image (an
        ADC map at DWI resolution, as in every real mpMRI study). ``None`` (default) or
        ``True``: resample it onto that grid (linear for images, nearest neighbour for masks,
        logged per file) into ``out_dir``. ``False``: such a case is an error.
    fmt
        Manifest format, ``"csv"`` or ``"parquet"``.
    progress
        Progress bar for the voxel checks.
    lesion_threshold
        How a lesion mask with label values becomes binary: ``"nonzero"`` (default: any
        non-zero voxel is lesion, e.g. PI-CAI's ISUP-valued ``{0, 3}`` masks) or a number
        t (voxels >= t are lesion, e.g. 2 for clinically significant ISUP >= 2). Masks that
        are already 0/1 are used as they are under ``"nonzero"``. The rule is recorded per
        case in the manifest's ``lesion_rule`` column (and the original file in
        ``lesion_source``).

    Returns
    -------
    Cohort
        Validated exactly like :func:`load_cohort` (with voxel checks).

    Raises
    ------
    CohortError
        Naming the table, case, column or file and the problem.
    radiolens.data.image_io.DicomSeriesError
        A DICOM folder holding no series or several (listed).
    """
    rule_text, rule_value = lesion_rule(lesion_threshold)
    frame, base, source = _read_table(table)
    frame = _canonical_columns(frame, source)
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

    if out_dir is None:
        key = hash_json({"table": frame.astype(str).to_dict(orient="list"), "resample": resample,
                         "lesion": rule_text})[:16]
        out_dir = default_cache_dir() / "cohorts" / f"table-{key}"
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # everything is written into a fresh folder next to out_dir and renamed at the end, so a
    # failure (a bad file in case 97 of 100) leaves neither an empty nor a half-written cohort
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        frame = _convert_dicom(frame, work)
        frame = _binarise_lesions(frame, work, rule_text, rule_value)
        frame = _assign_split(frame, seed, source)
        frame = _resample_rows(frame, work, resample)
        cohort = write_manifest(frame, work, fmt=fmt, check_pixels=True, fill_volumes=True,
                                split_seed=seed, progress=progress)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "cohort")
            os.replace(work, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    # files written above are stored relative to the folder, so they moved with it
    moved = Cohort(out_dir, cohort.manifest, out_dir / cohort.manifest_path.name)
    moved._geometry = getattr(cohort, "_geometry", None)
    return moved


def _read_table(table) -> tuple[pd.DataFrame, Path, str]:
    if isinstance(table, pd.DataFrame):
        return table.copy(), Path.cwd(), "table"
    path = Path(table).expanduser()
    if not path.is_file():
        raise CohortError(
            f"table {str(path)!r} does not exist (or is not a file): give the path of a CSV or Parquet "
            "file with one row per case", path=path,
        )
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # any parser error: name the file
        raise CohortError(f"table {str(path)!r} cannot be read as CSV/Parquet: {err}", path=path) from err
    return frame, path.resolve().parent, repr(str(path))


def _canonical_columns(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    if frame.index.name is not None and frame.index.name.lower() in ("case_id", "case", "id"):
        frame = frame.reset_index()
    # the first column that means a contract column gets its name; a column already named
    # so wins, and later synonyms stay as extra columns (kept, never silently merged)
    rename, taken = {}, {str(c) for c in frame.columns}
    for col in frame.columns:
        canon = COLUMN_ALIASES.get(str(col).strip().lower().replace(" ", "_"))
        if canon and canon != col and canon not in taken:
            rename[col] = canon
            taken.add(canon)
    frame = frame.rename(columns=rename)
    if "case_id" not in frame.columns:
        raise CohortError(
            f"table {source} has no case_id column (columns: {list(frame.columns)}); name the column that "
            "identifies each case 'case_id' (or study_id, ProxID, ...)", key="case_id",
        )
    if not any(k in frame.columns for k in MODALITIES):
        raise CohortError(
            f"table {source} has none of the image columns {list(MODALITIES)} (columns: {list(frame.columns)}); "
            "add at least one, e.g. a T2W column of file paths or DICOM folders", key="T2W",
        )
    if frame.empty:
        raise CohortError(f"table {source} has no rows: add one row per case")
    return frame


def _assign_split(frame: pd.DataFrame, seed: int, source: str) -> pd.DataFrame:
    """The 7:1:2 split when the table has none, stratified by what the table has: PI-RADS groups
    when any case has one, else whether a case's lesion mask holds a lesion, else nothing."""
    has_lesion = frame.pop("_has_lesion") if "_has_lesion" in frame.columns else None
    if "split" in frame.columns and not frame["split"].map(is_missing).all():
        return frame
    ids = frame.assign(case_id=frame["case_id"].astype(str))
    if "pirads_group" in frame.columns and not frame["pirads_group"].map(is_missing).all():
        stratify = "pirads_group"
    elif has_lesion is not None and has_lesion.notna().any():
        ids["_has_lesion"], stratify = has_lesion.to_numpy(), "_has_lesion"
        logger.info("table %s has no PI-RADS labels: the split is stratified by lesion presence", source)
    else:
        stratify = None
        logger.info("table %s has no PI-RADS labels or lesion masks: the split is not stratified", source)
    frame["split"] = split_cases(ids, seed=seed, stratify=stratify).to_numpy()
    return frame


def _convert_dicom(frame: pd.DataFrame, work: Path) -> pd.DataFrame:
    """DICOM series folders -> NIfTI files in the cohort folder (read once; later steps,
    hashing and radiomics included, see ordinary files)."""
    frame = frame.copy()
    for row in frame.index:
        case_id = str(frame.at[row, "case_id"])
        for key in FILE_KEYS:
            value = frame.at[row, key]
            if is_missing(value) or not is_dicom_series(value):
                continue
            try:
                image = read_image(value)
            except DicomSeriesError as err:
                raise cohort_error(case_id, key, value, str(err)) from err
            except RuntimeError as err:
                raise cohort_error(case_id, key, value, f"cannot read the DICOM series: {error_text(err)}") from err
            target = work / "converted" / f"{_safe_stem(case_id)}_{key}.nii.gz"
            write_image(image, target)
            logger.info("case %r: %s DICOM series %s converted to %s", case_id, key, value, target.name)
            frame.at[row, key] = str(target)
    return frame


def _binarise_lesions(frame: pd.DataFrame, work: Path, rule_text: str, rule_value: float | None) -> pd.DataFrame:
    """Lesion masks with label values (e.g. ISUP grades) -> 0/1 masks by the rule, written to
    the cohort folder; the rule and the original file are recorded per case."""
    frame = frame.copy()
    frame["lesion_rule"] = None
    frame["lesion_source"] = None
    frame["_has_lesion"] = None  # for the split (popped before the manifest is written)
    for row in frame.index:
        value = frame.at[row, "lesion"]
        if is_missing(value):
            continue
        case_id, path = str(frame.at[row, "case_id"]), Path(value)
        if not path.exists():
            continue  # reported with every other missing file by the manifest check
        try:
            array = read_array(path)
        except Exception as err:  # truncated or damaged voxel data
            raise cohort_error(case_id, "lesion", path, f"cannot read the lesion mask: {error_text(err)}") from err
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise cohort_error(case_id, "lesion", path, "lesion mask is not integer-valued (a probability map?); "
                               "threshold it into a label mask first")
        frame.at[row, "lesion_rule"] = rule_text
        values = set(np.unique(array).tolist())
        binary = (array != 0) if rule_value is None else (array >= rule_value)
        frame.at[row, "_has_lesion"] = bool(binary.any())
        if rule_value is None and values <= {0, 1}:
            continue  # already binary: used as it is
        image = read_image(path)
        out = simpleitk().GetImageFromArray(binary.astype(np.uint8))
        out.CopyInformation(image)
        target = work / "lesion" / f"{_safe_stem(case_id)}_lesion.nii.gz"
        write_image(out, target)
        logger.info("case %r: lesion mask with values %s made binary by the rule %s", case_id,
                    sorted(values)[:6], rule_text)
        frame.at[row, "lesion_source"] = str(path)
        frame.at[row, "lesion"] = str(target)
    return frame


def _resample_rows(frame: pd.DataFrame, out_dir: Path, resample: bool | None) -> pd.DataFrame:
    """Put every file of a case on the grid of its first image (files written to out_dir)."""
    frame = frame.copy()
    for row in frame.index:
        case_id = str(frame.at[row, "case_id"])
        present = [k for k in FILE_KEYS if not is_missing(frame.at[row, k])]
        ref_key = next((k for k in MODALITIES if k in present), None)
        if ref_key is None:
            continue
        ref_path = Path(frame.at[row, ref_key])
        if not ref_path.exists():
            continue  # reported by the manifest check
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
            if not path.exists():
                continue
            try:
                geo = geometry(read_header(path))
            except RuntimeError as err:
                raise cohort_error(case_id, key, path, f"cannot read image header: {error_text(err)}") from err
            mismatch = geometry_mismatch(ref_geo, geo)
            if mismatch is None:
                continue
            if resample is False:
                raise cohort_error(
                    case_id, key, path,
                    f"grid differs from the case's {ref_key} ({mismatch}); set cohort.resample: true in the "
                    "config (or resample=True) to resample it onto the first image's grid",
                )
            if reference is None:
                reference = read_image(ref_path)
            moved = resample_to_reference(read_image(path), reference, is_mask=key in MASK_KEYS)
            target = out_dir / "resampled" / f"{_safe_stem(case_id)}_{key}.nii.gz"
            write_image(moved, target)
            logger.info("case %r: %s resampled onto the %s grid (%s)", case_id, key, ref_key, mismatch)
            frame.at[row, key] = str(target)
    return frame
