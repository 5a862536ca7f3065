"""The Medical Segmentation Decathlon's prostate task (Task05_Prostate) as a cohort."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pandas as pd

from radiolens._utils import progress_bar
from radiolens.data.datasets._base import (
    DownloadError,
    build_cohort,
    dataset_folder,
    extract_tar,
    fill_doc,
    hidden,
    mask_from,
    retrieve,
    write_case,
)
from radiolens.data.image_io import read_image, simpleitk, volume_ml

__all__ = ["MSD_MD5", "MSD_URL", "fetch_msd_prostate"]

logger = logging.getLogger(__name__)

# The tarball mirrored for MONAI; its md5 is the one MONAI's DecathlonDataset checks.
MSD_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task05_Prostate.tar"
MSD_MD5 = "35138f08b1efaef89d7424d2bcc928db"


@fill_doc
def fetch_msd_prostate(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
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
    %(data_dir)s
    %(seed)s
    %(force)s
    %(progress)s
    %(cache_dir)s

    %(returns)s

    Raises
    ------
    ChecksumError
        The downloaded tarball does not match its published md5.
    DownloadError
        The archive does not have the published layout.
    """
    dataset_dir = dataset_folder(data_dir, "msd_prostate", cache_dir)

    def convert(cohort_tmp: Path, work: Path):
        itk = simpleitk()
        tar = retrieve(MSD_URL, f"md5:{MSD_MD5}", dataset_dir / "raw", "Task05_Prostate.tar",
                        progress)
        pattern = re.compile(r"(^|/)Task05_Prostate/(imagesTr|labelsTr)/prostate_\d+\.nii\.gz$")

        def wanted(name: str) -> bool:
            return not hidden(name) and (
                bool(pattern.search(name)) or name.endswith("Task05_Prostate/dataset.json")
            )

        extracted = extract_tar(tar, wanted, work)
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
        for label_path in progress_bar(label_files, total=len(label_files), desc="MSD prostate", progress=progress, leave=True):
            case_id = label_path.name[: -len(".nii.gz")]
            if label_path.name not in images:
                skipped[case_id] = "label without image"
                continue
            volume = read_image(images[label_path.name])
            if volume.GetDimension() != 4 or volume.GetSize()[3] != 2:
                raise DownloadError(
                    f"case {case_id!r}, file {images[label_path.name]}: expected a 4D image with "
                    f"2 channels (T2, ADC), got size {volume.GetSize()}"
                )
            size = list(volume.GetSize()[:3])
            t2 = itk.Extract(volume, [*size, 0], [0, 0, 0, 0])
            adc = itk.Extract(volume, [*size, 0], [0, 0, 0, 1])
            label = read_image(label_path)
            zones = mask_from(label, t2, mapping={1: 1, 2: 2})
            gland = mask_from(zones, t2, binary=True)
            if volume_ml(gland) == 0:
                skipped[case_id] = "empty zone label map"
                continue
            row = write_case(cohort_tmp, case_id, {"T2W": t2, "ADC": adc},
                              {"gland": gland, "zones": zones})
            row.update(pirads_group=None, source="MSD Task05_Prostate",
                       site="Radboud University Medical Center", scanner=None,
                       patient_id=case_id)
            rows.append(row)
        return pd.DataFrame(rows), skipped

    return build_cohort(dataset_dir, "MSD prostate", {}, convert, seed, force, cache_dir)


