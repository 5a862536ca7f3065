"""Tests for radiolens.glossary: what each PyRadiomics feature measures."""

from __future__ import annotations

import pytest

from radiolens import glossary as G


def test_every_pyradiomics_feature_of_the_six_families_has_a_definition():
    radiomics = pytest.importorskip("radiomics")
    classes = radiomics.getFeatureClasses()
    checked = 0
    for family in ("firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm"):
        for feature in classes[family].getFeatureNames():
            text = G.feature_definition(f"T2W__original_{family}_{feature}")
            assert feature in text and len(text) > 40
            checked += 1
        # and nothing defined that PyRadiomics does not have (typos would hide there)
        assert set(G.FEATURE_DEFINITIONS[family]) == set(classes[family].getFeatureNames())
    assert checked >= 100


def test_definitions_are_distinct_except_documented_aliases():
    for family, defs in G.FEATURE_DEFINITIONS.items():
        texts = [t for t in defs.values() if not t.startswith("Same as")]
        assert len(texts) == len(set(texts)), family


def test_definition_explains_image_type_and_modality():
    text = G.feature_definition("ADC__wavelet-LHL_glcm_Imc2")
    assert "GLCM Imc2" in text
    assert "low-pass along x, high-pass along y, low-pass along z" in text
    assert "ADC" in text
    assert "without a filter" in G.feature_definition("DWI__original_ngtdm_Busyness")
    assert "diffusion" in G.feature_definition("DWI__original_ngtdm_Busyness")
    # PyRadiomics keys and family_feature work too
    assert G.feature_definition("original_firstorder_Kurtosis").startswith("First order Kurtosis")
    assert G.feature_definition("glszm_ZonePercentage").startswith("GLSZM ZonePercentage")


def test_definition_of_unknown_feature_names_it():
    with pytest.raises(ValueError, match="T2W__original_glcm_Fancy"):
        G.feature_definition("T2W__original_glcm_Fancy")
    with pytest.raises(ValueError, match="shape"):
        G.feature_definition("T2W__original_shape_Sphericity")
    with pytest.raises(ValueError, match="not_a_feature"):
        G.feature_definition("not_a_feature")
