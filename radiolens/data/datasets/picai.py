"""The PI-CAI public training set (images from Zenodo, labels from picai_labels) as a cohort."""

from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiolens._utils import progress_bar
from radiolens.data.contract import check_case_id, pirads_group
from radiolens.data.datasets._base import (
    DownloadError,
    _pooch,
    build_cohort,
    dataset_folder,
    extract_zip_members,
    fill_doc,
    hidden,
    mask_from,
    retrieve,
    scanner_from_header,
    write_case,
    zenodo_retrieve,
)
from radiolens.data.image_io import read_image, volume_ml

__all__ = ["PICAI_FOLDS", "PICAI_IMAGES_DOI", "PICAI_LABELS_URL", "fetch_picai", "pirads_group_from_scores"]

logger = logging.getLogger(__name__)

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
# md5 of every label file at PICAI_LABELS_COMMIT (kind, case, md5).
_PICAI_REGISTRY_PATH = Path(__file__).with_name("picai_labels_registry.tsv")
# Sequences of a PI-CAI study and their cohort column (hbv = the high b-value DWI).
_PICAI_SEQUENCES = {"t2w": "T2W", "adc": "ADC", "hbv": "DWI"}
_PICAI_MEMBER = re.compile(r"(?:^|/)(\d+)_(\d+)_(t2w|adc|hbv)\.mha$")


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
    return pirads_group(max(values))


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
    # the registry's case names become file names: they obey the contract's case-id rule
    fname = "marksheet.csv" if kind == "marksheet" else f"{check_case_id(case, 'PI-CAI label registry')}.nii.gz"
    url = f"{PICAI_LABELS_URL}/{PICAI_LABEL_FOLDERS[kind]}/{fname}"
    # Thousands of small files: one progress bar over cases instead of a log line per file.
    # (A filter, because pooch's logger is not registered with logging, so a changed level
    # may be shadowed by its cached isEnabledFor answers.)
    pooch_logger = _pooch().get_logger()
    pooch_logger.addFilter(_quiet)
    try:
        return retrieve(url, f"md5:{md5}", raw_dir / "labels" / kind, fname, False)
    finally:
        pooch_logger.removeFilter(_quiet)


def _quiet(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


@fill_doc
def fetch_picai(
    data_dir: str | os.PathLike | None = None,
    folds: Sequence[int] = (0,),
    *,
    max_cases: int | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
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
    %(data_dir)s
    folds
        Which of the five image folds (0..4) to download; each is about 5 GB.
    max_cases
        Convert only the first ``max_cases`` studies (by case id) of the chosen folds.
    %(seed)s
    %(force)s
    %(progress)s
    %(cache_dir)s

    %(returns)s
    """
    folds = tuple(sorted({int(f) for f in folds}))
    bad = [f for f in folds if f not in PICAI_FOLDS]
    if bad or not folds:
        raise ValueError(
            f"folds must be a non-empty subset of {list(PICAI_FOLDS)}, got {bad or folds}"
        )
    dataset_dir = dataset_folder(data_dir, "picai", cache_dir)
    raw_dir = dataset_dir / "raw"
    settings = {"folds": list(folds), "max_cases": max_cases, "labels_commit": PICAI_LABELS_COMMIT}

    def convert(cohort_tmp: Path, work: Path):
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
            archive = zenodo_retrieve(PICAI_IMAGES_DOI, f"picai_public_images_fold{fold}.zip",
                                       raw_dir, progress)
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    match = _PICAI_MEMBER.search(name)
                    if match and not hidden(name):
                        case_id = f"{match.group(1)}_{match.group(2)}"
                        studies.setdefault(case_id, (archive, {}))[1][match.group(3)] = name
        case_ids = sorted(studies)
        if max_cases is not None:
            case_ids = case_ids[: int(max_cases)]

        rows, skipped = [], {}
        for case_id in progress_bar(case_ids, total=len(case_ids), desc="PI-CAI", progress=progress, leave=True):
            archive, members = studies[case_id]
            if "t2w" not in members:
                skipped[case_id] = "no t2w image in the archive"
                continue
            if case_id not in clinical.index:
                skipped[case_id] = "not in the marksheet"
                continue
            files = extract_zip_members(archive, members.values(), work / case_id)
            images = {
                _PICAI_SEQUENCES[seq]: read_image(files[name])
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
            gland = mask_from(read_image(gland_file), t2, binary=True)
            if volume_ml(gland) == 0:
                skipped[case_id] = "empty whole-gland delineation"
                continue
            masks = {"gland": gland}
            if zones_file is not None:
                zones = read_image(zones_file)
                masks["zones"] = mask_from(zones, t2, mapping={1: 1, 2: 2})
            if lesion_file is not None:
                masks["lesion"] = mask_from(read_image(lesion_file), t2, binary=True)
            else:
                lesion_kind = None
            record = clinical.loc[case_id]
            row = write_case(cohort_tmp, case_id, images, masks)
            row.update(
                pirads_group=pirads_group_from_scores(record["lesion_PIRADS"], case_id),
                source="PI-CAI",
                site=record["center"].strip() or None,
                scanner=scanner_from_header(t2),
                patient_id=record["patient_id"].strip(),
                lesion_PIRADS=record["lesion_PIRADS"],
                case_ISUP=record.get("case_ISUP"),
                case_csPCa=record.get("case_csPCa"),
                lesion_annotation=lesion_kind,
            )
            rows.append(row)
            shutil.rmtree(work / case_id, ignore_errors=True)
        return pd.DataFrame(rows), skipped

    return build_cohort(dataset_dir, "PI-CAI", settings, convert, seed, force, cache_dir)


