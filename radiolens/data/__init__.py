"""Cohorts: the contract and its validation, the built-in synthetic cohort, your own data,
splitting and preprocessing (:func:`radiolens.data.preprocess.preprocess`; not re-exported
here, so that ``radiolens.data.preprocess`` stays the module).

Every data source produces a :class:`Cohort` (a folder of images plus one manifest table);
every later stage reads nothing else.
"""

from radiolens.data.cohort import (
    COLUMN_ALIASES,
    FILE_KEYS,
    IMAGE_KEYS,
    LABEL_COLUMNS,
    MANIFEST_COLUMNS,
    MASK_KEYS,
    PIRADS_GROUPS,
    PROVENANCE_COLUMNS,
    SPLITS,
    Case,
    Cohort,
    CohortError,
    cohort_from_table,
    load_cohort,
    plot_cases,
    split_cases,
    write_image,
    write_manifest,
)
from radiolens.data.synthetic import make_synthetic_cohort

__all__ = [
    "COLUMN_ALIASES",
    "FILE_KEYS",
    "IMAGE_KEYS",
    "LABEL_COLUMNS",
    "MANIFEST_COLUMNS",
    "MASK_KEYS",
    "PIRADS_GROUPS",
    "PROVENANCE_COLUMNS",
    "SPLITS",
    "Case",
    "Cohort",
    "CohortError",
    "cohort_from_table",
    "load_cohort",
    "make_synthetic_cohort",
    "plot_cases",
    "split_cases",
    "write_image",
    "write_manifest",
]

_FETCHERS = ("fetch_msd_prostate", "fetch_picai", "fetch_prostate158", "resolve_data_dir",
             "pirads_group_from_scores", "ChecksumError", "DownloadError")
__all__ += list(_FETCHERS)


def __getattr__(name: str):
    # Public data-set fetchers live in radiolens.data.fetch (pooch); import them on first use.
    if name in _FETCHERS:
        from radiolens.data import fetch

        return getattr(fetch, name)
    raise AttributeError(f"module 'radiolens.data' has no attribute {name!r}")
