"""The modalities, the feature families, radiomic column names (and their parts) and lens report names.

:data:`MODALITIES` is the one list of image modalities: the cohort's image columns, the
encoder's input channels in order, the radiomics extracted. To add a modality, add it here
(then give it a colour and a window in :mod:`radiolens.plotting.style` and a sentence in
:mod:`radiolens.glossary`).

PyRadiomics names a feature ``{image type}_{feature class}_{feature}``, e.g.
``original_glcm_MCC`` or ``wavelet-LHL_firstorder_Kurtosis``. radiolens prefixes the modality
so that one table can hold T2W, DWI and ADC features side by side:
``T2W__original_glcm_MCC``. Every step that needs the parts calls :func:`parse_column`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

__all__ = [
    "FAMILIES",
    "FAMILY_LABELS",
    "MODALITIES",
    "RadiomicName",
    "parse_column",
    "parse_columns",
    "parse_report_name",
    "report_name",
]

#: Modalities in the paper: T2-weighted, high-b-value diffusion-weighted, ADC map.
MODALITIES: tuple[str, ...] = ("T2W", "DWI", "ADC")

#: PyRadiomics feature classes used by the paper (no shape features).
FAMILIES: tuple[str, ...] = ("firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm")

#: Display names as the paper writes them.
FAMILY_LABELS: dict[str, str] = {
    "firstorder": "First order",
    "glcm": "GLCM",
    "gldm": "GLDM",
    "glrlm": "GLRLM",
    "glszm": "GLSZM",
    "ngtdm": "NGTDM",
    "shape": "Shape",
}

_KEY = re.compile(
    r"^(?P<image>original|wavelet-[HL]{1,3}|log-sigma-[0-9]+-[0-9]+-mm-3D|square|squareroot|"
    r"logarithm|exponential|gradient|lbp-[23]D(?:-[a-zA-Z0-9]+)?)"
    r"_(?P<family>firstorder|glcm|gldm|glrlm|glszm|ngtdm|shape|shape2D)"
    r"_(?P<feature>[A-Za-z0-9]+)$"
)


@dataclass(frozen=True)
class RadiomicName:
    """The parts of a radiomic column name."""

    column: str
    modality: str
    image_type: str  # "Original", "Wavelet", "LoG", ... (paper groups by these)
    filter: str  # the PyRadiomics image-type token, e.g. "wavelet-LHL"
    family: str  # PyRadiomics feature class, e.g. "glcm"
    feature: str  # e.g. "MCC"


def _image_type(token: str) -> str:
    if token == "original":
        return "Original"
    if token.startswith("wavelet"):
        return "Wavelet"
    if token.startswith("log-sigma"):
        return "LoG"
    if token.startswith("lbp"):
        return "LBP"
    return token.capitalize()


def parse_column(column: str, modalities: Iterable[str] | None = None) -> RadiomicName:
    """Split ``"{modality}__{pyradiomics key}"`` into its parts.

    Parameters
    ----------
    column
        The column name, e.g. ``"ADC__wavelet-LHL_firstorder_Kurtosis"``.
    modalities
        Allowed modality names; default :data:`MODALITIES`. Pass your own for other data.

    Returns
    -------
    RadiomicName

    Raises
    ------
    ValueError
        Naming the column, when it does not follow the convention or names an unknown
        modality.
    """
    allowed = tuple(MODALITIES if modalities is None else modalities)
    if not isinstance(column, str) or "__" not in column:
        raise ValueError(
            f"radiomic column {column!r} is not of the form '{{modality}}__{{pyradiomics key}}' "
            "(e.g. 'T2W__original_glcm_MCC')"
        )
    modality, key = column.split("__", 1)
    if modality not in allowed:
        raise ValueError(
            f"radiomic column {column!r} names unknown modality {modality!r}; "
            f"expected one of {list(allowed)} (pass modalities=... to allow others)"
        )
    match = _KEY.match(key)
    if match is None:
        raise ValueError(
            f"radiomic column {column!r}: {key!r} is not a PyRadiomics feature key of the form "
            "'{image type}_{feature class}_{feature}' (e.g. 'original_glcm_MCC')"
        )
    return RadiomicName(
        column=column,
        modality=modality,
        image_type=_image_type(match["image"]),
        filter=match["image"],
        family=match["family"],
        feature=match["feature"],
    )


def parse_columns(columns: Iterable[str], modalities: Iterable[str] | None = None) -> pd.DataFrame:
    """Parse many column names into a table (one row per column, in input order).

    Returns
    -------
    pandas.DataFrame
        Columns ``column, modality, image_type, filter, family, feature``.
    """
    allowed = None if modalities is None else tuple(modalities)
    rows = [parse_column(c, allowed).__dict__ for c in columns]
    return pd.DataFrame(rows, columns=["column", "modality", "image_type", "filter", "family", "feature"])


def report_name(task: str, roi: str = "gland") -> str:
    """The name of one lens report: ``"pirads"`` (gland ROI) or ``"lesion (lesion ROI)"``.

    The inverse of :func:`parse_report_name`.
    """
    return task if roi == "gland" else f"{task} ({roi} ROI)"


def parse_report_name(name: str) -> tuple[str, str]:
    """``(task, roi)`` of a report name from :meth:`Study.reports`.

    ``"volume"`` -> ``("volume", "gland")``; ``"lesion (lesion ROI)"`` -> ``("lesion", "lesion")``.

    Raises
    ------
    ValueError
        ``name`` is not of either form.
    """
    task, roi = name, "gland"
    if name.endswith(" ROI)") and " (" in name:
        task, roi = name[: -len(" ROI)")].split(" (", 1)
    if not task or not roi or "(" in task or ")" in task:
        raise ValueError(f"{name!r} is not a report name ('task' or 'task (roi ROI)')")
    return task, roi
