"""PyRadiomics settings: the paper's defaults, parameter files, and the extractor they build."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["default_settings", "load_settings", "radiomics_version"]


def radiomics_version() -> str:
    """The installed PyRadiomics version (``radiomics.__version__``); part of every cache key."""
    import radiomics

    return str(radiomics.__version__)


def default_settings() -> dict[str, Any]:
    """PyRadiomics settings used by the paper, with explicit choices for MRI.

    The paper (Wang et al., MIDL 2026) extracts first-order, GLCM, GLSZM, GLRLM, NGTDM and
    GLDM features (no shape) from the Original image and its eight Wavelet decompositions. It
    does not state the pre-processing settings; radiolens chooses them as follows.

    ``normalize: True``, ``normalizeScale: 100``
        MRI intensities (T2W, DWI) have no physical unit and vary between scanners and
        sessions. PyRadiomics' normalisation z-scores the *whole* image (before cropping) and
        multiplies by 100, so first-order features (mean, energy, percentiles) become
        comparable across cases. ADC is quantitative, but one setting for all modalities
        keeps the three blocks of features on the same footing; use your own settings per
        call if you want raw ADC.
    ``binCount: 32`` (instead of PyRadiomics' default ``binWidth: 25``)
        Texture matrices need discretised grey levels. A fixed bin *width* only makes sense
        when intensities have a fixed scale; here the eight wavelet sub-bands have ranges that
        differ by orders of magnitude (the high-pass bands sit around 0), so one width gives a
        handful of bins in some bands and hundreds in others. A fixed bin *count* gives every
        image type the same 32 grey levels, a common, reproducible choice for MRI texture and
        about 5x faster than ``binWidth: 5`` on a 130k-voxel ROI. (PyRadiomics logs a warning
        recommending bin width; radiolens silences it during extraction.)
    ``resampledPixelSpacing: None``
        Resampling belongs to the data step (``radiolens.data.preprocess``, which resamples
        real studies to the paper's 0.5 x 0.5 x 1.0 mm grid; the built-in synthetic cohort is
        generated directly on its own 0.8 x 0.8 x 2.0 mm grid), so extraction does not
        interpolate again (a second B-spline pass would blur texture). Set
        ``[0.5, 0.5, 1.0]`` here if your images are not resampled beforehand.
    ``preCrop: True`` (with ``padDistance: 5``)
        Crop image and mask to the ROI's bounding box plus 5 voxels *before* the wavelet
        filters run; the filters then work on a small box instead of the whole field of view,
        which makes extraction many times faster and only changes wavelet values within the
        filter support of the box edge.
    ``label: 1``
        Masks store the ROI as label 1. Pass a ROI as ``"zones:2"`` to pick another label.
    ``additionalInfo: True``
        PyRadiomics' ``diagnostics_*`` entries (versions, hashes, ROI size) are kept, in
        :attr:`RadiomicsResult.diagnostics`, never among the features.

    Returns
    -------
    dict
        A PyRadiomics parameter dictionary (``setting``, ``imageType``, ``featureClass``);
        a fresh copy each call, safe to modify.
    """
    return {
        "setting": {
            "normalize": True,
            "normalizeScale": 100,
            "binCount": 32,
            "resampledPixelSpacing": None,
            "preCrop": True,
            "padDistance": 5,
            "label": 1,
            "additionalInfo": True,
        },
        "imageType": {"Original": {}, "Wavelet": {}},
        # An empty list enables every feature of the class.
        "featureClass": {name: [] for name in ("firstorder", "glcm", "glszm", "glrlm", "ngtdm", "gldm")},
    }


def load_settings(settings: dict | str | os.PathLike | None = None) -> dict[str, Any]:
    """Resolve settings to a validated PyRadiomics parameter dictionary.

    Parameters
    ----------
    settings
        ``None`` (the paper's :func:`default_settings`), a parameter dictionary, or the path
        of a PyRadiomics parameter file (``.yaml``/``.yml``/``.json``).

    Returns
    -------
    dict
        A deep copy, validated by PyRadiomics' own schema.

    Raises
    ------
    ValueError
        When PyRadiomics rejects the settings (the message names the offending key).
    FileNotFoundError
        When a parameter file does not exist.
    """
    if settings is None:
        params = default_settings()
    elif isinstance(settings, dict):
        params = copy.deepcopy(settings)
    else:
        path = Path(settings)
        if not path.is_file():
            raise FileNotFoundError(f"PyRadiomics parameter file {path} does not exist")
        import yaml

        params = yaml.safe_load(path.read_text()) or {}
        if not isinstance(params, dict):
            raise ValueError(f"PyRadiomics parameter file {path} does not hold a mapping")
    unknown = set(params) - {"setting", "imageType", "featureClass", "voxelSetting"}
    if unknown:
        raise ValueError(
            f"PyRadiomics settings have unknown top-level keys {sorted(unknown)}; expected "
            "'setting', 'imageType' and 'featureClass'"
        )
    try:
        _make_extractor(params)
    except Exception as err:
        raise ValueError(f"PyRadiomics rejected the settings: {err}") from err
    return params


def _make_extractor(params: dict):
    from radiomics import featureextractor

    with _quiet_radiomics():
        # PyRadiomics mutates nothing in the dict, but give it its own copy to be sure.
        return featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(params))


_EXTRACTORS: dict[str, Any] = {}


def _extractor_for(params: dict, params_hash: str):
    """One extractor per process and settings (building one validates a schema: ~10 ms)."""
    if params_hash not in _EXTRACTORS:
        _EXTRACTORS.clear()
        _EXTRACTORS[params_hash] = _make_extractor(params)
    return _EXTRACTORS[params_hash]


@contextlib.contextmanager
def _quiet_radiomics() -> Iterator[None]:
    """Silence PyRadiomics' per-case chatter (bin-count advice, GLCM symmetry notes)."""
    rlog = logging.getLogger("radiomics")
    old = rlog.level
    rlog.setLevel(logging.ERROR)
    try:
        yield
    finally:
        rlog.setLevel(old)


