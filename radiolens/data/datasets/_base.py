"""What every public data set shares: where data live, checked downloads, safe archive
extraction, conversion of one case onto the T2W grid, and the atomic build of a cohort.

Each data set (:mod:`~radiolens.data.datasets.msd`, :mod:`~radiolens.data.datasets.picai`,
:mod:`~radiolens.data.datasets.prostate158`) only knows its own layout: it downloads through
:func:`retrieve` / :func:`zenodo_retrieve` and hands a ``convert`` function to
:func:`build_cohort`, which writes, validates and renames the cohort into place. Shared
parameter descriptions are filled into the fetchers' docstrings by :func:`fill_doc`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import uuid
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiolens._utils import optional_import
from radiolens.cache import STEP_VERSIONS, atomic_write_text, default_cache_dir, hash_json
from radiolens.data.cohort import load_cohort, write_manifest
from radiolens.data.contract import MASK_KEYS, CohortError, check_case_id, inside
from radiolens.data.image_io import read_array, resample_to_reference, same_grid, simpleitk, volume_ml, write_image
from radiolens.errors import EXIT_CODES, UserError
from radiolens.naming import MODALITIES

__all__ = [
    "DATA_ENV_VAR",
    "ChecksumError",
    "DownloadError",
    "build_cohort",
    "dataset_folder",
    "fill_doc",
    "resolve_data_dir",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the folder for downloaded data sets.
DATA_ENV_VAR = "RADIOLENS_DATA"

#: Parameter descriptions shared by every fetcher (see :func:`fill_doc`).
DOCS: dict[str, str] = {
    "data_dir": """data_dir
        Folder for data sets (see :func:`resolve_data_dir`).""",
    "seed": """seed
        Seed of the 7:1:2 split.""",
    "force": """force
        Rebuild the cohort even if a valid one exists (downloads are still reused).""",
    "progress": """progress
        Show download and conversion progress.""",
    "cache_dir": """cache_dir
        The radiolens cache (default :func:`radiolens.cache.default_cache_dir`): the default
        ``data_dir`` and the record of passed voxel checks live there.""",
    "returns": """Returns
    -------
    radiolens.data.cohort.Cohort
        The validated cohort in ``<data_dir>/<data set>/cohort`` (made once, then reused).""",
}


def fill_doc(func: Callable) -> Callable:
    """Fill ``%(name)s`` placeholders of a docstring with the shared :data:`DOCS` entries."""
    if func.__doc__:
        func.__doc__ = func.__doc__ % DOCS
    return func


class DownloadError(UserError, RuntimeError):
    """A download failed or its content is not what the data set publishes."""

    exit_code = EXIT_CODES["download"]


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum (nothing is kept)."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Resolve the folder for downloaded data sets.

    Parameters
    ----------
    data_dir
        Explicit folder; wins over everything else.
    cache_dir
        The radiolens cache whose ``datasets`` subfolder is the default.

    Returns
    -------
    pathlib.Path
        ``data_dir`` if given, else ``$RADIOLENS_DATA`` if set, else ``datasets`` in the
        radiolens cache (:func:`radiolens.cache.default_cache_dir` of ``cache_dir``). Created
        if needed.
    """
    if data_dir is not None:
        path = Path(data_dir)
    elif os.environ.get(DATA_ENV_VAR):
        path = Path(os.environ[DATA_ENV_VAR])
    else:
        # one cache root for everything radiolens writes; the subfolder keeps data sets
        # apart from the step artifacts
        path = default_cache_dir(cache_dir) / "datasets"
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pooch():
    return optional_import("pooch", "downloading public data sets")


def _is_hash_error(err: Exception) -> bool:
    text = str(err).lower()
    return "hash" in text and ("match" in text or "mismatch" in text)


def retrieve(url: str, known_hash: str, folder: Path, fname: str, progress: bool) -> Path:
    """Download ``url`` to ``folder/fname`` unless a copy with the right checksum is there.

    pooch downloads to a temporary name and renames only after the checksum matched, so a
    failed download leaves nothing behind.
    """
    if not known_hash:
        raise DownloadError(f"refusing to download {url}: no checksum is known for {fname!r}")
    pooch = _pooch()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = pooch.retrieve(
            url, known_hash=known_hash, fname=fname, path=folder, progressbar=progress
        )
    except ValueError as err:
        if _is_hash_error(err):
            raise ChecksumError(
                f"checksum mismatch for {fname!r} downloaded from {url}: expected {known_hash}. "
                f"The file was discarded; try again, and if it persists the source changed. "
                f"({err})"
            ) from err
        raise
    return Path(path)


def zenodo_retrieve(doi: str, fname: str, folder: Path, progress: bool) -> Path:
    """Download one file of a Zenodo record, checked against the checksum Zenodo declares.

    The declared checksum is kept next to the file (``<fname>.checksum``), so a later call
    verifies the local copy against it without asking Zenodo again (and works offline).
    """
    pooch = _pooch()
    folder.mkdir(parents=True, exist_ok=True)
    local, record = folder / fname, folder / f"{fname}.checksum"
    if local.exists() and record.exists():
        algorithm, _, expected = record.read_text().strip().rpartition(":")
        if pooch.file_hash(str(local), alg=algorithm or "sha256") == expected.lower():
            return local
        logger.warning("%s does not match its recorded checksum; downloading it again", local)
    repo = pooch.create(path=folder, base_url=f"doi:{doi}/", registry=None)
    try:
        repo.load_registry_from_doi()
    except Exception as err:
        raise DownloadError(f"cannot read the file list of Zenodo record doi:{doi}: {err}") from err
    if fname not in repo.registry:
        raise DownloadError(
            f"Zenodo record doi:{doi} has no file {fname!r}; it lists {sorted(repo.registry)}"
        )
    if not repo.registry[fname]:
        raise DownloadError(f"Zenodo record doi:{doi} declares no checksum for {fname!r}")
    try:
        path = Path(repo.fetch(fname, progressbar=progress))
    except ValueError as err:
        if _is_hash_error(err):
            raise ChecksumError(
                f"checksum mismatch for {fname!r} from Zenodo record doi:{doi}: expected "
                f"{repo.registry[fname]} (the checksum Zenodo declares). The file was "
                f"discarded; try again, and if it persists the record changed. ({err})"
            ) from err
        raise
    atomic_write_text(record, repo.registry[fname] + "\n")
    return path


# ============================================================================================
# archives
# ============================================================================================
def _safe_target(root: Path, member: str) -> Path:
    target = (root / member).resolve()
    if root.resolve() not in target.parents and target != root.resolve():
        raise DownloadError(f"archive member {member!r} would be written outside {root}")
    return target


def extract_tar(archive: Path, members: Callable[[str], bool], out: Path) -> list[Path]:
    paths = []
    with tarfile.open(archive) as tar:
        for info in tar:
            if not info.isfile() or not members(info.name):
                continue
            target = _safe_target(out, info.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(info)
            with open(target, "wb") as handle:
                shutil.copyfileobj(source, handle)
            paths.append(target)
    return paths


def extract_zip_members(archive: Path, names: Iterable[str], out: Path) -> dict[str, Path]:
    paths = {}
    with zipfile.ZipFile(archive) as zf:
        for name in names:
            target = _safe_target(out, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as source, open(target, "wb") as handle:
                shutil.copyfileobj(source, handle)
            paths[name] = target
    return paths


def hidden(name: str) -> bool:
    # macOS resource forks ("._x.nii.gz") ship inside the MSD tarballs; they are not images
    return any(part.startswith(".") for part in Path(name).parts)


# ============================================================================================
# conversion of one case
# ============================================================================================
def _onto(image, reference, is_mask: bool):
    """``image`` on ``reference``'s grid: its own voxels if the grids agree, else resampled."""
    itk = simpleitk()
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("expected a single-channel image")
    if same_grid(image, reference):
        out = itk.Image(image)
        out.CopyInformation(reference)  # removes header rounding below the tolerances
        return out
    return resample_to_reference(image, reference, is_mask=is_mask)


def _image_on(image, reference):
    """An image on the reference grid, in the pixel type the data set stored it in.

    Resampling runs in float32; integer sources (ADC in 1e-6 mm^2/s, most T2W) are rounded
    back to their type, which keeps the files as small as the originals (and writing them
    several times faster than float32).
    """
    itk = simpleitk()
    if same_grid(image, reference):
        return _onto(image, reference, is_mask=False)
    resampled = _onto(image, reference, is_mask=False)
    array = itk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        return resampled
    info = np.iinfo(array.dtype)
    values = np.clip(np.rint(itk.GetArrayFromImage(resampled)), info.min, info.max)
    out = itk.GetImageFromArray(values.astype(array.dtype))
    out.CopyInformation(reference)
    return out


def mask_from(image, reference, mapping: dict[int, int] | None = None, binary: bool = False):
    """A uint8 mask on the reference grid; ``mapping`` relabels, ``binary`` keeps > 0 as 1."""
    itk = simpleitk()
    resampled = _onto(image, reference, is_mask=True)
    array = itk.GetArrayFromImage(resampled)
    if binary:
        out = (array > 0).astype(np.uint8)
    elif mapping is not None:
        out = np.zeros(array.shape, dtype=np.uint8)
        for old, new in mapping.items():
            out[array == old] = new
    else:
        out = array.astype(np.uint8)
    mask = itk.GetImageFromArray(out)
    mask.CopyInformation(reference)
    return mask


def write_case(
    cohort_dir: Path,
    case_id: str,
    images: dict[str, Any],
    masks: dict[str, Any],
) -> dict[str, Any]:
    """Write one case's images (source pixel type) and masks (uint8); return its fields.

    ``images`` must hold ``"T2W"``, the reference grid; the other images are put on it.
    ``masks`` must already be on that grid (see :func:`mask_from`). A key absent or None
    stays missing in the manifest.
    """
    reference = images["T2W"]
    # ids come from archive member names: they name folders, so they obey the contract's rule
    case_id = check_case_id(case_id, f"data set folder {str(cohort_dir)!r}")
    row: dict[str, Any] = {"case_id": case_id}
    folder = Path("cases") / case_id
    # images in the pixel type they came in, put on the reference grid; masks as they are
    files = {**{k: _image_on(v, reference) for k, v in images.items() if v is not None and k in MODALITIES},
             **{k: v for k, v in masks.items() if v is not None and k in MASK_KEYS}}
    for key in (*MODALITIES, *MASK_KEYS):
        row[key] = None
        if key in files:
            rel = folder / f"{key}.nii.gz"
            write_image(files[key], inside(cohort_dir, rel))
            row[key] = rel.as_posix()
    for key in ("gland", "lesion"):
        mask = masks.get(key)
        row[f"{key}_volume_ml"] = volume_ml(mask) if mask is not None else np.nan
    return row


def scanner_from_header(image) -> str | None:
    """Manufacturer and model from DICOM tags kept in an image header, when present."""
    parts = []
    for tag in ("0008|0070", "0008|1090"):
        if image.HasMetaDataKey(tag):
            value = image.GetMetaData(tag).strip()
            if value:
                parts.append(value)
    return " ".join(parts) or None


# ============================================================================================
# building a cohort atomically, reusing a valid one
# ============================================================================================
def _existing_cohort(cohort_dir: Path, settings: dict[str, Any], cache_dir=None):
    info_path = cohort_dir / "fetch.json"
    if not info_path.exists():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("settings_hash") != hash_json(settings):
        logger.info("%s was made with other settings; rebuilding it", cohort_dir)
        return None
    try:
        # voxels are checked again for every file changed since its last check
        return load_cohort(cohort_dir, check_pixels=True, cache_dir=cache_dir)
    except (CohortError, OSError) as err:
        logger.warning("existing cohort %s is not valid (%s); rebuilding it", cohort_dir, err)
        return None


def dataset_folder(data_dir: str | os.PathLike | None, dataset: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir>/<dataset>`` (see :func:`resolve_data_dir`): its ``raw/`` and ``cohort/``."""
    return resolve_data_dir(data_dir, cache_dir) / dataset


def build_cohort(
    dataset_dir: Path,
    title: str,
    settings: dict[str, Any],
    convert: Callable[[Path, Path], tuple[pd.DataFrame, dict[str, str]]],
    seed: int,
    force: bool,
    cache_dir: str | os.PathLike | None = None,
):
    """Reuse ``dataset_dir/cohort`` if valid for ``settings``, else build it atomically.

    ``convert(cohort_tmp, work_dir)`` writes the case files under ``cohort_tmp`` and returns
    the manifest table (without splits) and the skipped cases with reasons (logged here).
    The conversion's version (:data:`radiolens.cache.STEP_VERSIONS`) and the split seed are
    part of the settings, so a cohort made otherwise is rebuilt, not reused.

    Raises
    ------
    DownloadError
        No case could be converted, or the converted cohort fails validation (``title``
        names the data set).
    """
    settings = {"dataset": dataset_dir.name, **settings, "format": STEP_VERSIONS["datasets"], "seed": seed}
    try:
        return _build(dataset_dir, title, settings, convert, seed, force, cache_dir)
    except CohortError as err:
        raise DownloadError(f"converted {title} data failed validation: {err}") from err


def _build(dataset_dir, title, settings, convert, seed, force, cache_dir=None):
    cohort_dir = dataset_dir / "cohort"
    if not force:
        existing = _existing_cohort(cohort_dir, settings, cache_dir)
        if existing is not None:
            logger.info("using the existing cohort %s", cohort_dir)
            return existing
    token = uuid.uuid4().hex[:8]
    tmp = dataset_dir / f".cohort-tmp-{token}"
    work = dataset_dir / f".work-{token}"
    old = dataset_dir / f".cohort-old-{token}"
    try:
        tmp.mkdir(parents=True)
        work.mkdir(parents=True)
        table, skipped = convert(tmp, work)
        for case_id, reason in skipped.items():
            logger.warning("%s: skipped case %s (%s)", title, case_id, reason)
        if table.empty:
            raise DownloadError(f"no case of {settings['dataset']} could be converted: {skipped}")
        zone_check = _check_zone_convention(tmp, table, settings["dataset"])
        write_manifest(table, tmp, split_seed=seed, cache_dir=cache_dir)
        info = {
            "dataset": settings["dataset"],
            "settings": settings,
            "settings_hash": hash_json(settings),
            "n_cases": int(len(table)),
            "skipped": skipped,
            "zone_check": zone_check,
        }
        atomic_write_text(tmp / "fetch.json", json.dumps(info, indent=2, default=str))
        if cohort_dir.exists():
            cohort_dir.rename(old)
        tmp.rename(cohort_dir)
    finally:
        for leftover in (tmp, work, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    # write_manifest has just checked every voxel; the rename changed no file
    return load_cohort(cohort_dir, check_pixels=False, cache_dir=cache_dir)


def _rim_fractions(zones: np.ndarray) -> tuple[float, float]:
    """Share of each zone's voxels that touch the outside of the gland within their slice.

    The peripheral zone is the gland's outer shell and the transition zone its core, so the
    first share is normally the larger one: a check on which label is which.
    """
    outside = zones == 0
    touches = np.zeros(zones.shape, dtype=bool)
    touches[:, 1:, :] |= outside[:, :-1, :]
    touches[:, :-1, :] |= outside[:, 1:, :]
    touches[:, :, 1:] |= outside[:, :, :-1]
    touches[:, :, :-1] |= outside[:, :, 1:]
    shares = []
    for label in (1, 2):
        region = zones == label
        count = np.count_nonzero(region)
        shares.append(np.count_nonzero(region & touches) / count if count else np.nan)
    return shares[0], shares[1]


def _check_zone_convention(cohort_dir: Path, table: pd.DataFrame, dataset: str) -> dict:
    """Count the cases whose label 1 (peripheral zone) lies more on the rim than label 2.

    Zone labels are a convention that a data set's files do not always state; when most
    cases contradict the mapping used, a warning says so (and ``fetch.json`` records it).
    """
    compared = outer = 0
    for rel in table.get("zones", pd.Series(dtype=object)).dropna():
        zones = read_array(cohort_dir / rel)
        pz, tz = _rim_fractions(zones)
        if np.isfinite(pz) and np.isfinite(tz):
            compared += 1
            outer += int(pz > tz)
    consistent = compared == 0 or outer * 2 > compared
    if not consistent:
        logger.warning(
            "%s: in %d of %d cases the zone labelled peripheral (1) is not the gland's outer "
            "shell; the data set's zone labels may be the other way round", dataset,
            compared - outer, compared,
        )
    return {"cases_compared": compared, "peripheral_on_rim": outer, "consistent": consistent}
