"""Download public prostate MRI data sets and convert them to radiolens cohorts.

Three public data sets are supported, each converted to the cohort contract of
:mod:`radiolens.data.cohort` (one folder of NIfTI images and masks plus ``manifest.csv``):

=========================  =====================  ==========================================
function                   images                 masks and labels
=========================  =====================  ==========================================
:func:`fetch_msd_prostate` T2W, ADC (no DWI)      zones (expert); gland = zones > 0; no
                                                  lesions, no PI-RADS
:func:`fetch_picai`        T2W, ADC, high-b DWI   csPCa lesions (expert), whole gland and
                                                  zones (AI-derived), PI-RADS per lesion
:func:`fetch_prostate158`  T2W, ADC, DWI          zones (expert reader 1), lesions (expert
                                                  reader 1, PI-RADS >= 4 only); no PI-RADS
=========================  =====================  ==========================================

Every downloaded file is checked against a checksum with :mod:`pooch`: a published md5 for the
Medical Segmentation Decathlon, the checksums Zenodo declares for its records (read through
pooch's DOI support), and md5 sums of the PI-CAI label files at a pinned commit of
``DIAGNijmegen/picai_labels`` (``picai_labels_registry.tsv`` next to this module).

Where the data live: the ``data_dir`` argument, else ``$RADIOLENS_DATA``, else the user cache
folder (``pooch.os_cache("radiolens") / "datasets"``); see :func:`resolve_data_dir`. Downloads go to
``<data_dir>/<dataset>/raw/`` and the converted cohort to ``<data_dir>/<dataset>/cohort/``. The
cohort is built in a temporary folder, validated and only then renamed into place, so an
interrupted or failed conversion never leaves a half-written cohort; calling a fetcher again
when a valid cohort with the same settings exists does nothing but load it.

What the conversion does (the same for every data set):

* T2W is the reference grid. Other images are resampled onto it (linear), masks too (nearest
  neighbour) when their geometry differs (PI-CAI's DWI/ADC and AI-derived masks; MSD and
  Prostate158 already share one grid).
* Missing modalities and labels stay empty in the manifest; nothing is synthesised.
* ``gland_volume_ml`` / ``lesion_volume_ml`` are measured from the masks (voxel count x voxel
  volume); ``lesion_volume_ml`` is 0 for an annotated case without lesion and empty when the
  data set has no lesion annotation.
* Splits: patient-level 7:1:2 stratified by PI-RADS group
  (:func:`radiolens.data.cohort.split_cases`, seed ``seed``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tarfile
import uuid
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiolens.cache import atomic_write_text, hash_json

__all__ = [
    "DATA_ENV_VAR",
    "ChecksumError",
    "DownloadError",
    "fetch_msd_prostate",
    "fetch_picai",
    "fetch_prostate158",
    "pirads_group_from_scores",
    "resolve_data_dir",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the folder for downloaded data sets.
DATA_ENV_VAR = "RADIOLENS_DATA"

# Bump when the conversion changes, so existing cohorts are rebuilt instead of reused.
_FORMAT_VERSION = 1

# --- Medical Segmentation Decathlon, Task05_Prostate ------------------------------------------
# The tarball mirrored for MONAI; its md5 is the one MONAI's DecathlonDataset checks.
MSD_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task05_Prostate.tar"
MSD_MD5 = "35138f08b1efaef89d7424d2bcc928db"

# --- PI-CAI public training and development data ----------------------------------------------
PICAI_IMAGES_DOI = "10.5281/zenodo.6624726"
PICAI_FOLDS = (0, 1, 2, 3, 4)
PICAI_LABELS_COMMIT = "ce4a4723d7c46d882a6cbaacb40ed6c4be86282f"
PICAI_LABELS_URL = (
    f"https://raw.githubusercontent.com/DIAGNijmegen/picai_labels/{PICAI_LABELS_COMMIT}"
)
# Folder in the labels repository of each kind of file in the registry.
PICAI_LABEL_FOLDERS = {
    "marksheet": "clinical_information",
    "lesion_resampled": "csPCa_lesion_delineations/human_expert/resampled",
    "lesion_pooch25": "csPCa_lesion_delineations/human_expert/Pooch25",
    "gland_guerbet23": "anatomical_delineations/whole_gland/AI/Guerbet23",
    "zones_heviai23": "anatomical_delineations/zonal_pz_tz/AI/HeviAI23",
}
_PICAI_REGISTRY_PATH = Path(__file__).with_name("picai_labels_registry.tsv")
# Sequences of a PI-CAI study and their cohort column (hbv = the high b-value DWI).
_PICAI_SEQUENCES = {"t2w": "T2W", "adc": "ADC", "hbv": "DWI"}
_PICAI_MEMBER = re.compile(r"(?:^|/)(\d+)_(\d+)_(t2w|adc|hbv)\.mha$")

# --- Prostate158 (training set) ---------------------------------------------------------------
PROSTATE158_DOI = "10.5281/zenodo.6481141"
PROSTATE158_ARCHIVE = "prostate158_train.zip"
# The anatomy masks hold 1 = transition zone (central gland), 2 = peripheral zone, in the
# order the data set's README reports its zones; the cohort contract wants 1 = PZ, 2 = TZ.
PROSTATE158_ZONE_MAP = {1: 2, 2: 1}


# ============================================================================================
# where the data live, and downloading
# ============================================================================================
class DownloadError(RuntimeError):
    """A download failed or its content is not what the data set publishes."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum (nothing is kept)."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Resolve the folder for downloaded data sets.

    Parameters
    ----------
    data_dir
        Explicit folder; wins over everything else.

    Returns
    -------
    pathlib.Path
        ``data_dir`` if given, else ``$RADIOLENS_DATA`` if set, else
        ``pooch.os_cache("radiolens") / "datasets"`` in the user cache folder. Created if
        needed.
    """
    if data_dir is not None:
        path = Path(data_dir)
    elif os.environ.get(DATA_ENV_VAR):
        path = Path(os.environ[DATA_ENV_VAR])
    else:
        # a subfolder keeps data sets apart from the artifact cache, which also lives in
        # the user cache folder's "radiolens" (radiolens.cache.default_cache_dir)
        path = Path(_pooch().os_cache("radiolens")) / "datasets"
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pooch():
    try:
        import pooch
    except ImportError as err:  # pragma: no cover - pooch is a core dependency
        raise ImportError(
            "downloading public data sets needs pooch: pip install pooch"
        ) from err
    return pooch


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as err:  # pragma: no cover - SimpleITK is a core dependency
        raise ImportError("converting data sets needs SimpleITK: pip install SimpleITK") from err
    return sitk


def _is_hash_error(err: Exception) -> bool:
    text = str(err).lower()
    return "hash" in text and ("match" in text or "mismatch" in text)


def _retrieve(url: str, known_hash: str, folder: Path, fname: str, progressbar: bool) -> Path:
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
            url, known_hash=known_hash, fname=fname, path=folder, progressbar=progressbar
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


def _zenodo_retrieve(doi: str, fname: str, folder: Path, progressbar: bool) -> Path:
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
        path = Path(repo.fetch(fname, progressbar=progressbar))
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


def _extract_tar(archive: Path, members: Callable[[str], bool], out: Path) -> list[Path]:
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


def _extract_zip_members(archive: Path, names: Iterable[str], out: Path) -> dict[str, Path]:
    paths = {}
    with zipfile.ZipFile(archive) as zf:
        for name in names:
            target = _safe_target(out, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as source, open(target, "wb") as handle:
                shutil.copyfileobj(source, handle)
            paths[name] = target
    return paths


def _hidden(name: str) -> bool:
    # macOS resource forks ("._x.nii.gz") ship inside the MSD tarballs; they are not images
    return any(part.startswith(".") for part in Path(name).parts)


# ============================================================================================
# conversion of one case
# ============================================================================================
def _same_grid(image, reference) -> bool:
    from radiolens.data.cohort import DIRECTION_ATOL, ORIGIN_VOXEL_FRACTION, SPACING_RTOL

    if tuple(image.GetSize()) != tuple(reference.GetSize()):
        return False
    spacing = np.asarray(reference.GetSpacing())
    if not np.allclose(image.GetSpacing(), spacing, rtol=SPACING_RTOL, atol=0):
        return False
    shift = np.abs(np.asarray(image.GetOrigin()) - np.asarray(reference.GetOrigin()))
    if np.any(shift > ORIGIN_VOXEL_FRACTION * spacing.min()):
        return False
    return np.allclose(image.GetDirection(), reference.GetDirection(), atol=DIRECTION_ATOL)


def _onto(image, reference, is_mask: bool):
    """``image`` on ``reference``'s grid: its own voxels if the grids agree, else resampled."""
    sitk = _sitk()
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("expected a single-channel image")
    if _same_grid(image, reference):
        out = sitk.Image(image)
        out.CopyInformation(reference)  # removes header rounding below the tolerances
        return out
    interpolator = sitk.sitkNearestNeighbor if is_mask else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


def _image_on(image, reference):
    """An image on the reference grid, in the pixel type the data set stored it in.

    Resampling runs in float32; integer sources (ADC in 1e-6 mm^2/s, most T2W) are rounded
    back to their type, which keeps the files as small as the originals (and writing them
    several times faster than float32).
    """
    sitk = _sitk()
    if _same_grid(image, reference):
        return _onto(image, reference, is_mask=False)
    resampled = _onto(sitk.Cast(image, sitk.sitkFloat32), reference, is_mask=False)
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        return resampled
    info = np.iinfo(array.dtype)
    values = np.clip(np.rint(sitk.GetArrayFromImage(resampled)), info.min, info.max)
    out = sitk.GetImageFromArray(values.astype(array.dtype))
    out.CopyInformation(reference)
    return out


def _mask_from(image, reference, mapping: dict[int, int] | None = None, binary: bool = False):
    """A uint8 mask on the reference grid; ``mapping`` relabels, ``binary`` keeps > 0 as 1."""
    sitk = _sitk()
    resampled = _onto(image, reference, is_mask=True)
    array = sitk.GetArrayFromImage(resampled)
    if binary:
        out = (array > 0).astype(np.uint8)
    elif mapping is not None:
        out = np.zeros(array.shape, dtype=np.uint8)
        for old, new in mapping.items():
            out[array == old] = new
    else:
        out = array.astype(np.uint8)
    mask = sitk.GetImageFromArray(out)
    mask.CopyInformation(reference)
    return mask


def _volume_ml(mask) -> float:
    sitk = _sitk()
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return voxels * float(np.prod(mask.GetSpacing())) / 1000.0


def _write_case(
    cohort_dir: Path,
    case_id: str,
    images: dict[str, Any],
    masks: dict[str, Any],
) -> dict[str, Any]:
    """Write one case's images (source pixel type) and masks (uint8); return its fields.

    ``images`` must hold ``"T2W"``, the reference grid; the other images are put on it.
    ``masks`` must already be on that grid (see :func:`_mask_from`). A key absent or None
    stays missing in the manifest.
    """
    from radiolens.data.cohort import write_image

    _sitk()  # fail early, with the install hint, when SimpleITK is missing
    reference = images["T2W"]
    row: dict[str, Any] = {"case_id": case_id}
    folder = Path("cases") / case_id
    for key in ("T2W", "DWI", "ADC"):
        image = images.get(key)
        if image is None:
            row[key] = None
            continue
        rel = folder / f"{key}.nii.gz"
        write_image(_image_on(image, reference), cohort_dir / rel)
        row[key] = rel.as_posix()
    for key in ("gland", "zones", "lesion"):
        mask = masks.get(key)
        if mask is None:
            row[key] = None
            continue
        rel = folder / f"{key}.nii.gz"
        write_image(mask, cohort_dir / rel)
        row[key] = rel.as_posix()
    for key in ("gland", "lesion"):
        mask = masks.get(key)
        row[f"{key}_volume_ml"] = _volume_ml(mask) if mask is not None else np.nan
    return row


def _scanner_from_header(image) -> str | None:
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
def _existing_cohort(cohort_dir: Path, settings: dict[str, Any]):
    from radiolens.data.cohort import CohortError, load_cohort

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
        # Headers, table and files are checked; the voxels were checked when the cohort was
        # written, and Cohort.load_case checks them again whenever it reads a case.
        return load_cohort(cohort_dir, check_pixels=False)
    except (CohortError, OSError) as err:
        logger.warning("existing cohort %s is not valid (%s); rebuilding it", cohort_dir, err)
        return None


def _build_cohort(
    dataset_dir: Path,
    settings: dict[str, Any],
    convert: Callable[[Path, Path], tuple[pd.DataFrame, dict[str, str]]],
    seed: int,
    force: bool,
):
    """Reuse ``dataset_dir/cohort`` if valid for ``settings``, else build it atomically.

    ``convert(cohort_tmp, work_dir)`` writes the case files under ``cohort_tmp`` and returns
    the manifest table (without splits) and the skipped cases with reasons.
    """
    from radiolens.data.cohort import load_cohort, write_manifest

    cohort_dir = dataset_dir / "cohort"
    if not force:
        existing = _existing_cohort(cohort_dir, settings)
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
        if table.empty:
            raise DownloadError(f"no case of {settings['dataset']} could be converted: {skipped}")
        zone_check = _check_zone_convention(tmp, table, settings["dataset"])
        write_manifest(table, tmp, split_seed=seed)
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
    return load_cohort(cohort_dir, check_pixels=False)


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
    sitk = _sitk()
    compared = outer = 0
    for rel in table.get("zones", pd.Series(dtype=object)).dropna():
        zones = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort_dir / rel)))
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


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


# ============================================================================================
# Medical Segmentation Decathlon, Task05_Prostate
# ============================================================================================
def fetch_msd_prostate(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    force: bool = False,
    progressbar: bool = True,
):
    """Download the Medical Segmentation Decathlon prostate task and convert it to a cohort.

    Task05_Prostate (Simpson et al., 2019; CC-BY-SA 4.0; Radboud University Medical Center)
    holds 32 labelled training cases, each a 4D NIfTI with two channels (T2, ADC on one grid)
    and a zonal label map (1 = peripheral zone, 2 = transition zone, as its ``dataset.json``
    states). The 16 unlabelled test cases are left out: the cohort contract needs a gland.

    Converted: ``T2W`` and ``ADC``; ``zones`` as published; ``gland`` = zones > 0. Missing and
    left empty: ``DWI``, ``lesion`` (no lesion annotation, so ``lesion_volume_ml`` is empty
    too) and ``pirads_group``.

    Parameters
    ----------
    data_dir
        Folder for data sets (see :func:`resolve_data_dir`).
    seed
        Seed of the 7:1:2 split.
    force
        Rebuild the cohort even if a valid one exists (the download is still reused).
    progressbar
        Show download and conversion progress.

    Returns
    -------
    radiolens.data.cohort.Cohort
        The validated cohort in ``<data_dir>/msd_prostate/cohort``.

    Raises
    ------
    ChecksumError
        The downloaded tarball does not match its published md5.
    DownloadError
        The archive does not have the published layout.
    """
    root = resolve_data_dir(data_dir)
    dataset_dir = root / "msd_prostate"
    settings = {"dataset": "msd_prostate", "format": _FORMAT_VERSION, "seed": seed}
    from radiolens.data.cohort import CohortError

    def convert(cohort_tmp: Path, work: Path):
        sitk = _sitk()
        tar = _retrieve(MSD_URL, f"md5:{MSD_MD5}", dataset_dir / "raw", "Task05_Prostate.tar",
                        progressbar)
        pattern = re.compile(r"(^|/)Task05_Prostate/(imagesTr|labelsTr)/prostate_\d+\.nii\.gz$")

        def wanted(name: str) -> bool:
            return not _hidden(name) and (
                bool(pattern.search(name)) or name.endswith("Task05_Prostate/dataset.json")
            )

        extracted = _extract_tar(tar, wanted, work)
        meta = [p for p in extracted if p.name == "dataset.json"]
        if not meta:
            raise DownloadError(f"{tar}: no Task05_Prostate/dataset.json in the archive")
        description = json.loads(meta[0].read_text())
        modalities = {str(k): str(v).upper() for k, v in description.get("modality", {}).items()}
        labels = {str(k): str(v).upper() for k, v in description.get("labels", {}).items()}
        if modalities.get("0") != "T2" or modalities.get("1") != "ADC":
            raise DownloadError(f"{meta[0]}: expected modalities 0 = T2, 1 = ADC, got {modalities}")
        if labels.get("1") != "PZ" or labels.get("2") != "TZ":
            raise DownloadError(f"{meta[0]}: expected labels 1 = PZ, 2 = TZ, got {labels}")

        images = {p.name: p for p in extracted if p.parent.name == "imagesTr"}
        label_files = sorted(p for p in extracted if p.parent.name == "labelsTr")
        rows, skipped = [], {}
        for label_path in _progress(label_files, len(label_files), "MSD prostate", progressbar):
            case_id = label_path.name[: -len(".nii.gz")]
            if label_path.name not in images:
                skipped[case_id] = "label without image"
                continue
            volume = sitk.ReadImage(str(images[label_path.name]))
            if volume.GetDimension() != 4 or volume.GetSize()[3] != 2:
                raise DownloadError(
                    f"case {case_id!r}, file {images[label_path.name]}: expected a 4D image with "
                    f"2 channels (T2, ADC), got size {volume.GetSize()}"
                )
            size = list(volume.GetSize()[:3])
            t2 = sitk.Extract(volume, [*size, 0], [0, 0, 0, 0])
            adc = sitk.Extract(volume, [*size, 0], [0, 0, 0, 1])
            label = sitk.ReadImage(str(label_path))
            zones = _mask_from(label, t2, mapping={1: 1, 2: 2})
            gland = _mask_from(zones, t2, binary=True)
            if _volume_ml(gland) == 0:
                skipped[case_id] = "empty zone label map"
                continue
            row = _write_case(cohort_tmp, case_id, {"T2W": t2, "ADC": adc},
                              {"gland": gland, "zones": zones})
            row.update(pirads_group=None, source="MSD Task05_Prostate",
                       site="Radboud University Medical Center", scanner=None,
                       patient_id=case_id)
            rows.append(row)
        for case_id, reason in skipped.items():
            logger.warning("MSD prostate: skipped case %s (%s)", case_id, reason)
        return pd.DataFrame(rows), skipped

    try:
        return _build_cohort(dataset_dir, settings, convert, seed, force)
    except CohortError as err:
        raise DownloadError(f"converted MSD prostate data failed validation: {err}") from err


# ============================================================================================
# PI-CAI
# ============================================================================================
def pirads_group_from_scores(scores: Any, case_id: str | None = None) -> int | None:
    """Case-level PI-RADS group from PI-CAI's ``lesion_PIRADS`` cell.

    The cell lists one PI-RADS score per lesion, separated by commas; ``N/A`` marks a lesion
    found on histopathology but not on MRI; an empty cell means no suspicious lesion was seen
    (a negative MRI, PI-RADS 1-2). The case takes its most suspicious lesion.

    Parameters
    ----------
    scores
        The cell, e.g. ``"4,2,N/A"``, ``"5"``, ``""`` or NaN.
    case_id
        Named in the error message.

    Returns
    -------
    int or None
        0..3 for PI-RADS ``<3``, ``3``, ``4``, ``5``; 0 for an empty cell; None when every
        listed lesion is ``N/A`` (no MRI score to go by).

    Raises
    ------
    ValueError
        A score that is not 1..5 or ``N/A``.
    """
    if scores is None or (isinstance(scores, float) and np.isnan(scores)):
        return 0
    text = str(scores).strip()
    if text == "":
        return 0
    values = []
    for token in text.split(","):
        token = token.strip()
        if token.upper() in ("N/A", "NA", ""):
            continue
        try:
            number = int(token)
        except ValueError:
            number = 0
        if not 1 <= number <= 5:
            where = f"case {case_id!r}: " if case_id else ""
            raise ValueError(
                f"{where}lesion_PIRADS {text!r} has {token!r}, not a PI-RADS score 1-5"
            )
        values.append(number)
    if not values:
        return None
    return max(0, max(values) - 2)


def _load_picai_registry(path: Path | None = None) -> dict[tuple[str, str], str]:
    path = _PICAI_REGISTRY_PATH if path is None else path
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str)
    return {(k, c): m for k, c, m in table[["kind", "case", "md5"]].itertuples(index=False)}


def _picai_label_file(
    registry: dict[tuple[str, str], str],
    kind: str,
    case: str,
    raw_dir: Path,
) -> Path | None:
    md5 = registry.get((kind, case))
    if md5 is None:
        return None
    fname = "marksheet.csv" if kind == "marksheet" else f"{case}.nii.gz"
    url = f"{PICAI_LABELS_URL}/{PICAI_LABEL_FOLDERS[kind]}/{fname}"
    # Thousands of small files: one progress bar over cases instead of a log line per file.
    # (A filter, because pooch's logger is not registered with logging, so a changed level
    # may be shadowed by its cached isEnabledFor answers.)
    pooch_logger = _pooch().get_logger()
    pooch_logger.addFilter(_quiet)
    try:
        return _retrieve(url, f"md5:{md5}", raw_dir / "labels" / kind, fname, False)
    finally:
        pooch_logger.removeFilter(_quiet)


def _quiet(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def fetch_picai(
    data_dir: str | os.PathLike | None = None,
    folds: Sequence[int] = (0,),
    *,
    max_cases: int | None = None,
    seed: int = 0,
    force: bool = False,
    progressbar: bool = True,
):
    """Download the PI-CAI public training set (some folds) and convert it to a cohort.

    Images: Zenodo record doi:10.5281/zenodo.6624726, five zip folds of about 300 studies
    each, one ``.mha`` per sequence (``t2w``, ``adc``, ``hbv``; ``cor``/``sag`` are not used).
    Labels: ``DIAGNijmegen/picai_labels`` at a pinned commit (CC-BY-NC 4.0):

    * ``pirads_group`` from ``clinical_information/marksheet.csv`` column ``lesion_PIRADS``
      (PI-RADS per lesion from routine reporting): the case's maximum, see
      :func:`pirads_group_from_scores`.
    * ``lesion``: human expert csPCa delineations (ISUP >= 2), resampled to T2W
      (``human_expert/resampled``), else the expert delineations of Pooch et al. 2025 for the
      cases first labelled only by AI. ISUP-graded labels are binarised (> 0). Lesions with
      ISUP <= 1 are not delineated, so the lesion mask marks csPCa only.
    * ``gland``: AI-derived whole gland (Guerbet23); ``zones``: AI-derived zones (HeviAI23,
      1 = PZ, 2 = TZ). Both are model outputs, not expert contours.
    * ``site`` from the marksheet's ``center`` (RUMC, ZGT, PCNN); ``scanner`` from the image
      header when it carries DICOM manufacturer/model tags, else empty.

    ADC and high-b DWI (``hbv``) are resampled onto the T2W grid (linear). Extra manifest
    columns: ``patient_id`` (splits keep a patient's studies together), ``lesion_PIRADS``,
    ``case_ISUP``, ``case_csPCa``.

    Parameters
    ----------
    data_dir
        Folder for data sets (see :func:`resolve_data_dir`).
    folds
        Which of the five image folds (0..4) to download; each is about 5 GB.
    max_cases
        Convert only the first ``max_cases`` studies (by case id) of the chosen folds.
    seed
        Seed of the 7:1:2 split.
    force
        Rebuild the cohort even if a valid one exists (downloads are still reused).
    progressbar
        Show download and conversion progress.

    Returns
    -------
    radiolens.data.cohort.Cohort
        The validated cohort in ``<data_dir>/picai/cohort``.
    """
    folds = tuple(sorted({int(f) for f in folds}))
    bad = [f for f in folds if f not in PICAI_FOLDS]
    if bad or not folds:
        raise ValueError(
            f"folds must be a non-empty subset of {list(PICAI_FOLDS)}, got {bad or folds}"
        )
    root = resolve_data_dir(data_dir)
    dataset_dir = root / "picai"
    raw_dir = dataset_dir / "raw"
    settings = {
        "dataset": "picai", "format": _FORMAT_VERSION, "folds": list(folds),
        "max_cases": max_cases, "seed": seed, "labels_commit": PICAI_LABELS_COMMIT,
    }
    from radiolens.data.cohort import CohortError

    def convert(cohort_tmp: Path, work: Path):
        sitk = _sitk()
        registry = _load_picai_registry()
        marksheet_path = _picai_label_file(registry, "marksheet", "-", raw_dir)
        marksheet = pd.read_csv(marksheet_path, dtype=str, keep_default_na=False)
        needed = {"patient_id", "study_id", "lesion_PIRADS", "center"}
        if not needed <= set(marksheet.columns):
            raise DownloadError(
                f"{marksheet_path}: marksheet lacks column(s) "
                f"{sorted(needed - set(marksheet.columns))}"
            )
        marksheet["case_id"] = (
            marksheet["patient_id"].str.strip() + "_" + marksheet["study_id"].str.strip()
        )
        clinical = marksheet.set_index("case_id")

        # which studies each fold holds, and where their sequences are in the zip
        studies: dict[str, tuple[Path, dict[str, str]]] = {}
        for fold in folds:
            archive = _zenodo_retrieve(PICAI_IMAGES_DOI, f"picai_public_images_fold{fold}.zip",
                                       raw_dir, progressbar)
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    match = _PICAI_MEMBER.search(name)
                    if match and not _hidden(name):
                        case_id = f"{match.group(1)}_{match.group(2)}"
                        studies.setdefault(case_id, (archive, {}))[1][match.group(3)] = name
        case_ids = sorted(studies)
        if max_cases is not None:
            case_ids = case_ids[: int(max_cases)]

        rows, skipped = [], {}
        for case_id in _progress(case_ids, len(case_ids), "PI-CAI", progressbar):
            archive, members = studies[case_id]
            if "t2w" not in members:
                skipped[case_id] = "no t2w image in the archive"
                continue
            if case_id not in clinical.index:
                skipped[case_id] = "not in the marksheet"
                continue
            files = _extract_zip_members(archive, members.values(), work / case_id)
            images = {
                _PICAI_SEQUENCES[seq]: sitk.ReadImage(str(files[name]))
                for seq, name in members.items()
            }
            t2 = images["T2W"]
            gland_file = _picai_label_file(registry, "gland_guerbet23", case_id, raw_dir)
            zones_file = _picai_label_file(registry, "zones_heviai23", case_id, raw_dir)
            lesion_file = _picai_label_file(registry, "lesion_resampled", case_id, raw_dir)
            lesion_kind = "human_expert/resampled"
            if lesion_file is None:
                lesion_file = _picai_label_file(registry, "lesion_pooch25", case_id, raw_dir)
                lesion_kind = "human_expert/Pooch25"
            if gland_file is None:
                skipped[case_id] = "no whole-gland delineation"
                continue
            gland = _mask_from(sitk.ReadImage(str(gland_file)), t2, binary=True)
            if _volume_ml(gland) == 0:
                skipped[case_id] = "empty whole-gland delineation"
                continue
            masks = {"gland": gland}
            if zones_file is not None:
                zones = sitk.ReadImage(str(zones_file))
                masks["zones"] = _mask_from(zones, t2, mapping={1: 1, 2: 2})
            if lesion_file is not None:
                masks["lesion"] = _mask_from(sitk.ReadImage(str(lesion_file)), t2, binary=True)
            else:
                lesion_kind = None
            record = clinical.loc[case_id]
            row = _write_case(cohort_tmp, case_id, images, masks)
            row.update(
                pirads_group=pirads_group_from_scores(record["lesion_PIRADS"], case_id),
                source="PI-CAI",
                site=record["center"].strip() or None,
                scanner=_scanner_from_header(t2),
                patient_id=record["patient_id"].strip(),
                lesion_PIRADS=record["lesion_PIRADS"],
                case_ISUP=record.get("case_ISUP"),
                case_csPCa=record.get("case_csPCa"),
                lesion_annotation=lesion_kind,
            )
            rows.append(row)
            shutil.rmtree(work / case_id, ignore_errors=True)
        for case_id, reason in skipped.items():
            logger.warning("PI-CAI: skipped case %s (%s)", case_id, reason)
        return pd.DataFrame(rows), skipped

    try:
        return _build_cohort(dataset_dir, settings, convert, seed, force)
    except CohortError as err:
        raise DownloadError(f"converted PI-CAI data failed validation: {err}") from err


# ============================================================================================
# Prostate158
# ============================================================================================
def fetch_prostate158(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    force: bool = False,
    progressbar: bool = True,
):
    """Download the Prostate158 training set and convert it to a cohort.

    Prostate158 (Adams et al., 2022; Zenodo doi:10.5281/zenodo.6481141; Charite Berlin,
    Siemens 3 T) holds 139 biparametric studies: ``t2``, ``adc`` and ``dwi`` per case, already
    resampled by the authors to one grid, listed in ``train.csv`` / ``valid.csv``.

    Converted: ``T2W``, ``ADC``, ``DWI`` (the data set's ``dwi``); ``zones`` from
    ``t2_anatomy_reader1`` relabelled to 1 = PZ, 2 = TZ (see ``PROSTATE158_ZONE_MAP``);
    ``gland`` = zones > 0; ``lesion`` from ``adc_tumor_reader1`` (else ``t2_tumor_reader1``),
    binarised. The readers delineated suspicious lesions with PI-RADS >= 4 only; a case
    without a tumour file gets an empty lesion mask (volume 0). ``pirads_group`` is left
    empty: the published tables hold no PI-RADS score per case. The authors' train/valid
    assignment is kept as the extra column ``source_split``.

    Parameters
    ----------
    data_dir
        Folder for data sets (see :func:`resolve_data_dir`).
    seed
        Seed of the 7:1:2 split.
    force
        Rebuild the cohort even if a valid one exists (the download is still reused).
    progressbar
        Show download and conversion progress.

    Returns
    -------
    radiolens.data.cohort.Cohort
        The validated cohort in ``<data_dir>/prostate158/cohort``.
    """
    root = resolve_data_dir(data_dir)
    dataset_dir = root / "prostate158"
    settings = {"dataset": "prostate158", "format": _FORMAT_VERSION, "seed": seed}
    from radiolens.data.cohort import CohortError

    def convert(cohort_tmp: Path, work: Path):
        sitk = _sitk()
        archive = _zenodo_retrieve(PROSTATE158_DOI, PROSTATE158_ARCHIVE, dataset_dir / "raw",
                                   progressbar)
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not _hidden(n) and not n.endswith("/")]
        tables = [n for n in names if Path(n).name in ("train.csv", "valid.csv")]
        if not tables:
            raise DownloadError(f"{archive}: no train.csv / valid.csv in the archive")
        wanted = [n for n in names if n.endswith(".csv") or n.endswith(".nii.gz")]
        files = _extract_zip_members(archive, wanted, work)
        frames = []
        for name in tables:
            frame = pd.read_csv(files[name], dtype=str, keep_default_na=False)
            frame["_base"] = str(files[name].parent)
            frame["source_split"] = Path(name).stem
            frames.append(frame)
        listing = pd.concat(frames, ignore_index=True)
        for column in ("t2", "t2_anatomy_reader1"):
            if column not in listing.columns:
                raise DownloadError(f"{archive}: the case tables lack column {column!r}")

        def path_of(entry: pd.Series, column: str) -> Path | None:
            value = str(entry.get(column, "") or "").strip()
            if not value or Path(value).name == "empty.nii.gz":
                return None
            path = Path(entry["_base"]) / value
            if not path.exists():
                raise DownloadError(
                    f"case {entry.get('ID')!r}: {column} file {value!r} is not in the archive"
                )
            return path

        rows, skipped = [], {}
        for _, entry in _progress(listing.iterrows(), len(listing), "Prostate158", progressbar):
            t2_path = path_of(entry, "t2")
            if t2_path is None:
                skipped[str(entry.get("ID"))] = "no t2 image"
                continue
            case_id = f"prostate158_{t2_path.parent.name}"
            t2 = sitk.ReadImage(str(t2_path))
            images = {"T2W": t2}
            for key, column in (("ADC", "adc"), ("DWI", "dwi")):
                path = path_of(entry, column)
                images[key] = None if path is None else sitk.ReadImage(str(path))
            anatomy = path_of(entry, "t2_anatomy_reader1")
            if anatomy is None:
                skipped[case_id] = "no anatomy delineation"
                continue
            zones = _mask_from(sitk.ReadImage(str(anatomy)), t2, mapping=PROSTATE158_ZONE_MAP)
            gland = _mask_from(zones, t2, binary=True)
            if _volume_ml(gland) == 0:
                skipped[case_id] = "empty anatomy delineation"
                continue
            tumour = path_of(entry, "adc_tumor_reader1") or path_of(entry, "t2_tumor_reader1")
            if tumour is None:
                lesion = sitk.Image(t2.GetSize(), sitk.sitkUInt8)
                lesion.CopyInformation(t2)
            else:
                lesion = _mask_from(sitk.ReadImage(str(tumour)), t2, binary=True)
            row = _write_case(cohort_tmp, case_id, images,
                              {"gland": gland, "zones": zones, "lesion": lesion})
            row.update(pirads_group=None, source="Prostate158",
                       site="Charite Universitaetsmedizin Berlin",
                       scanner=_scanner_from_header(t2), patient_id=case_id,
                       source_split=entry["source_split"])
            rows.append(row)
        for case_id, reason in skipped.items():
            logger.warning("Prostate158: skipped case %s (%s)", case_id, reason)
        return pd.DataFrame(rows), skipped

    try:
        return _build_cohort(dataset_dir, settings, convert, seed, force)
    except CohortError as err:
        raise DownloadError(f"converted Prostate158 data failed validation: {err}") from err
