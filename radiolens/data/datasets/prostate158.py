"""The Prostate158 training set (Zenodo) as a cohort."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import pandas as pd

from radiolens._utils import progress_bar
from radiolens.data.datasets._base import (
    DownloadError,
    build_cohort,
    dataset_folder,
    extract_zip_members,
    fill_doc,
    hidden,
    mask_from,
    scanner_from_header,
    write_case,
    zenodo_retrieve,
)
from radiolens.data.image_io import read_image, simpleitk, volume_ml

__all__ = ["PROSTATE158_ARCHIVE", "PROSTATE158_DOI", "PROSTATE158_ZONE_MAP", "fetch_prostate158"]

logger = logging.getLogger(__name__)

PROSTATE158_DOI = "10.5281/zenodo.6481141"
PROSTATE158_ARCHIVE = "prostate158_train.zip"
# The anatomy masks hold 1 = transition zone (central gland), 2 = peripheral zone, in the
# order the data set's README reports its zones; the cohort contract wants 1 = PZ, 2 = TZ.
PROSTATE158_ZONE_MAP = {1: 2, 2: 1}


@fill_doc
def fetch_prostate158(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
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
    %(data_dir)s
    %(seed)s
    %(force)s
    %(progress)s
    %(cache_dir)s

    %(returns)s
    """
    dataset_dir = dataset_folder(data_dir, "prostate158", cache_dir)

    def convert(cohort_tmp: Path, work: Path):
        itk = simpleitk()
        archive = zenodo_retrieve(PROSTATE158_DOI, PROSTATE158_ARCHIVE, dataset_dir / "raw",
                                   progress)
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not hidden(n) and not n.endswith("/")]
        tables = [n for n in names if Path(n).name in ("train.csv", "valid.csv")]
        if not tables:
            raise DownloadError(f"{archive}: no train.csv / valid.csv in the archive")
        wanted = [n for n in names if n.endswith(".csv") or n.endswith(".nii.gz")]
        files = extract_zip_members(archive, wanted, work)
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
        for _, entry in progress_bar(listing.iterrows(), total=len(listing), desc="Prostate158", progress=progress, leave=True):
            t2_path = path_of(entry, "t2")
            if t2_path is None:
                skipped[str(entry.get("ID"))] = "no t2 image"
                continue
            case_id = f"prostate158_{t2_path.parent.name}"
            t2 = read_image(t2_path)
            images = {"T2W": t2}
            for key, column in (("ADC", "adc"), ("DWI", "dwi")):
                path = path_of(entry, column)
                images[key] = None if path is None else read_image(path)
            anatomy = path_of(entry, "t2_anatomy_reader1")
            if anatomy is None:
                skipped[case_id] = "no anatomy delineation"
                continue
            zones = mask_from(read_image(anatomy), t2, mapping=PROSTATE158_ZONE_MAP)
            gland = mask_from(zones, t2, binary=True)
            if volume_ml(gland) == 0:
                skipped[case_id] = "empty anatomy delineation"
                continue
            tumour = path_of(entry, "adc_tumor_reader1") or path_of(entry, "t2_tumor_reader1")
            if tumour is None:
                lesion = itk.Image(t2.GetSize(), itk.sitkUInt8)
                lesion.CopyInformation(t2)
            else:
                lesion = mask_from(read_image(tumour), t2, binary=True)
            row = write_case(cohort_tmp, case_id, images,
                              {"gland": gland, "zones": zones, "lesion": lesion})
            row.update(pirads_group=None, source="Prostate158",
                       site="Charite Universitaetsmedizin Berlin",
                       scanner=scanner_from_header(t2), patient_id=case_id,
                       source_split=entry["source_split"])
            rows.append(row)
        return pd.DataFrame(rows), skipped

    return build_cohort(dataset_dir, "Prostate158", {}, convert, seed, force, cache_dir)
