"""PyRadiomics feature extraction: exact, parallel, cached and resumable.

The lens (:mod:`radiolens.lens`) speaks in PyRadiomics features. This module computes them for
a cohort, one *work unit* at a time: a unit is one ``(case_id, modality, roi)`` triple, i.e.
one image file and one mask file. Units are

* **exact**: each unit calls :class:`radiomics.featureextractor.RadiomicsFeatureExtractor`
  with the settings you give, unchanged, so the values are bit-identical to calling
  PyRadiomics yourself. One caveat, measured: PyRadiomics' values depend in the last bits
  (~1e-13 relative) on how many threads ITK uses, because multi-threaded reductions (the
  image statistics behind normalisation) add in a different order. radiolens therefore always
  runs PyRadiomics with one ITK thread - as PyRadiomics' own batch command line does - so a
  value is the same whatever ``n_jobs``, backend or machine computed it (and the cache never
  mixes values computed under different thread counts);
* **parallel**: units run in ``n_jobs`` processes (joblib/loky) or on a ``dask.distributed``
  cluster, with BLAS/ITK threads limited to one per worker so two processes use two cores;
* **cached**: every finished unit is stored at once, by the worker that computed it, in the
  content-addressed :class:`radiolens.cache.ArtifactCache` (namespace ``"radiomics"``) under a
  key made of the SHA-256 of the image bytes, the mask bytes, the settings, the ROI label, the
  PyRadiomics version and the step's version (:func:`radiolens.cache.step_key`); a second
  call only reads the cache;
* **resumable**: entries are written atomically (temporary name + rename, checksummed
  sidecar written last), so a run killed at any moment - a worker or the parent, even with
  ``SIGKILL`` - keeps every finished unit, never duplicates one and never leaves a half-written
  entry; a truncated or corrupted entry fails its checksum and is recomputed.

Bad input never crashes a whole run and is never dropped silently: a unit that cannot be
computed becomes a row of :attr:`RadiomicsResult.failures` (and a NaN row in the features); a
case without a lesion becomes an explicit *missing* unit (NaN row, ``status == "missing"``).
:func:`clean` then makes the table the lens can read: cases missing a whole modality and
features undefined for some cases are dropped, infinities become NaN.

Modules: :mod:`~radiolens.radiomics.settings` (PyRadiomics settings),
:mod:`~radiolens.radiomics.units` (one work unit, as a worker runs it),
:mod:`~radiolens.radiomics.extraction` (a cohort: parallel, cached, assembled; the
lens-ready table).

Examples
--------
>>> from radiolens.radiomics import clean, extract                   # doctest: +SKIP
>>> R = clean(extract(cohort, rois=("gland",), n_jobs=2))            # doctest: +SKIP
>>> R.columns[0]                                                     # doctest: +SKIP
'T2W__original_firstorder_10Percentile'
"""

from radiolens.radiomics.extraction import RadiomicsResult, clean, extract, extract_detailed, extract_units
from radiolens.radiomics.settings import default_settings, load_settings, radiomics_version
from radiolens.radiomics.units import (
    CACHE_NAMESPACE,
    EmptyROIError,
    GeometryMismatchError,
    InvalidImageError,
    WorkUnit,
    make_units,
)

__all__ = [
    "CACHE_NAMESPACE",
    "EmptyROIError",
    "GeometryMismatchError",
    "InvalidImageError",
    "RadiomicsResult",
    "WorkUnit",
    "clean",
    "default_settings",
    "extract",
    "extract_detailed",
    "extract_units",
    "load_settings",
    "make_units",
    "radiomics_version",
]
