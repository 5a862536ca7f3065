"""Radiomic column names."""

from __future__ import annotations

import pytest

from radiolens.naming import parse_column, parse_columns


@pytest.mark.parametrize(
    "column, parts",
    [
        ("T2W__original_glcm_MCC", ("T2W", "Original", "original", "glcm", "MCC")),
        ("ADC__wavelet-LHL_firstorder_Kurtosis", ("ADC", "Wavelet", "wavelet-LHL", "firstorder", "Kurtosis")),
        ("DWI__original_firstorder_10Percentile", ("DWI", "Original", "original", "firstorder", "10Percentile")),
        ("T2W__log-sigma-1-0-mm-3D_glszm_ZoneEntropy", ("T2W", "LoG", "log-sigma-1-0-mm-3D", "glszm", "ZoneEntropy")),
    ],
)
def test_parse(column, parts):
    name = parse_column(column)
    assert (name.modality, name.image_type, name.filter, name.family, name.feature) == parts


@pytest.mark.parametrize(
    "column, message",
    [
        ("original_glcm_MCC", "not of the form"),
        ("PET__original_glcm_MCC", "unknown modality 'PET'"),
        ("T2W__original_glcmMCC", "not a PyRadiomics feature key"),
        ("T2W__wavelet-XYZ_glcm_MCC", "not a PyRadiomics feature key"),
        ("T2W__diagnostics_Image-original_Mean", "not a PyRadiomics feature key"),
    ],
)
def test_rejects_with_the_column_named(column, message):
    with pytest.raises(ValueError) as err:
        parse_column(column)
    assert column in str(err.value) and message in str(err.value)


def test_custom_modalities_and_table():
    assert parse_column("PET__original_ngtdm_Busyness", modalities=["PET"]).family == "ngtdm"
    table = parse_columns(["T2W__original_glcm_MCC", "ADC__wavelet-HHH_gldm_DependenceEntropy"])
    assert list(table["family"]) == ["glcm", "gldm"]
    assert list(table.columns) == ["column", "modality", "image_type", "filter", "family", "feature"]


@pytest.mark.parametrize(
    "name, task, roi",
    [("pirads", "pirads", "gland"), ("lesion (lesion ROI)", "lesion", "lesion"), ("volume", "volume", "gland")],
)
def test_report_names_round_trip(name, task, roi):
    from radiolens.naming import parse_report_name, report_name

    assert parse_report_name(name) == (task, roi)
    assert report_name(task, roi) == name


@pytest.mark.parametrize("bad", ["", "lesion (lesion", "lesion ( ROI)", " (lesion ROI)"])
def test_bad_report_name_is_rejected(bad):
    from radiolens.naming import parse_report_name

    with pytest.raises(ValueError, match="not a report name"):
        parse_report_name(bad)
