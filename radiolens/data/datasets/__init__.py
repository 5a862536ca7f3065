"""Public prostate MRI data sets, downloaded with checksums and converted to radiolens cohorts.

=============================  =====================  ==========================================
function                       images                 masks and labels
=============================  =====================  ==========================================
:func:`fetch_msd_prostate`     T2W, ADC (no DWI)      zones (expert); gland = zones > 0; no
(:mod:`.msd`)                                         lesions, no PI-RADS
:func:`fetch_picai`            T2W, ADC, high-b DWI   csPCa lesions (expert), whole gland and
(:mod:`.picai`)                                       zones (AI-derived), PI-RADS per lesion
:func:`fetch_prostate158`      T2W, ADC, DWI          zones (expert reader 1), lesions (expert
(:mod:`.prostate158`)                                 reader 1, PI-RADS >= 4 only); no PI-RADS
=============================  =====================  ==========================================

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

What the conversion does (the same for every data set, in :mod:`._base`):

* T2W is the reference grid. Other images are resampled onto it (linear), masks too (nearest
  neighbour) when their geometry differs (PI-CAI's DWI/ADC and AI-derived masks; MSD and
  Prostate158 already share one grid).
* Missing modalities and labels stay empty in the manifest; nothing is synthesised.
* ``gland_volume_ml`` / ``lesion_volume_ml`` are measured from the masks (voxel count x voxel
  volume); ``lesion_volume_ml`` is 0 for an annotated case without lesion and empty when the
  data set has no lesion annotation.
* Splits: patient-level 7:1:2 stratified by PI-RADS group
  (:func:`radiolens.data.contract.split_cases`, seed ``seed``).

To add a data set, write one module here whose ``fetch_<name>`` function hands a ``convert``
function to :func:`._base.build_cohort`, and list it in :data:`FETCHERS`.
"""

from radiolens.data.datasets._base import DATA_ENV_VAR, ChecksumError, DownloadError, resolve_data_dir
from radiolens.data.datasets.msd import fetch_msd_prostate
from radiolens.data.datasets.picai import fetch_picai, pirads_group_from_scores
from radiolens.data.datasets.prostate158 import fetch_prostate158

__all__ = [
    "DATA_ENV_VAR",
    "FETCHERS",
    "ChecksumError",
    "DownloadError",
    "fetch_msd_prostate",
    "fetch_picai",
    "fetch_prostate158",
    "pirads_group_from_scores",
    "resolve_data_dir",
]

#: The data sets by their ``cohort.source`` name in a study configuration.
FETCHERS = {"msd": fetch_msd_prostate, "picai": fetch_picai, "prostate158": fetch_prostate158}
