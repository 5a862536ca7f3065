"""Cohorts: the contract every data source produces, and the sources.

* :mod:`radiolens.data.contract` - the contract: manifest columns and values, :class:`CohortError`,
  :func:`split_cases`, :func:`pirads_group`
* :mod:`radiolens.data.cohort` - cohorts on disk: :class:`Cohort`, :class:`Case`, validation,
  :func:`load_cohort`, :func:`write_manifest`
* :mod:`radiolens.data.image_io` - reading, writing and resampling images (SimpleITK)
* :mod:`radiolens.data.tables` - your own files: :func:`cohort_from_table`
* :mod:`radiolens.data.synthetic` - the built-in synthetic cohort: :func:`make_synthetic_cohort`
* :mod:`radiolens.data.datasets` - public data sets (MSD, PI-CAI, Prostate158); imported on
  first use (it needs :mod:`pooch`)
* :mod:`radiolens.data.preprocess` - resampling and cropping around the gland (not
  re-exported, so that ``radiolens.data.preprocess`` stays the module)

Every data source produces a :class:`Cohort` (a folder of images plus one manifest table);
every later step reads nothing else.
"""

from radiolens.data.cohort import Case, Cohort, load_cohort, write_manifest
from radiolens.data.contract import (
    FILE_KEYS,
    LABEL_COLUMNS,
    MANIFEST_COLUMNS,
    MASK_KEYS,
    PIRADS_GROUPS,
    PROVENANCE_COLUMNS,
    SPLITS,
    CohortError,
    pirads_group,
    split_cases,
)
from radiolens.data.image_io import write_image
from radiolens.data.synthetic import make_synthetic_cohort
from radiolens.data.tables import COLUMN_ALIASES, cohort_from_table

__all__ = [
    "COLUMN_ALIASES",
    "FILE_KEYS",
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
    "pirads_group",
    "split_cases",
    "write_image",
    "write_manifest",
]
