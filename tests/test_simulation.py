"""Tests of radiolens.lens.simulation: the planted truth must be what it claims to be."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from radiolens.lens.simulation import (
    RELIABILITY_METHODS,
    ols_reliability_table,
    planted_shift,
    pyradiomics_columns,
    recovery_precision,
)
from radiolens.naming import parse_columns


def test_planted_shift_shapes_names_and_labels():
    sim = planted_shift(n_cases=50, d=32, n_per_modality=10, n_test=20, seed=1)
    assert sim.X_pre.shape == sim.X_ft.shape == (50, 32)
    assert sim.R.shape == (50, 30) and sim.R_test.shape == (20, 30)
    assert sim.X_pre.index.equals(sim.R.index) and sim.X_ft_test.index.equals(sim.R_test.index)
    assert not set(sim.R.index) & set(sim.R_test.index)
    info = parse_columns(sim.R.columns)  # every name is a valid radiolens column
    assert set(info["modality"]) == {"T2W", "DWI", "ADC"}
    assert {"Original", "Wavelet"} <= set(info["image_type"])
    assert info["family"].nunique() >= 4
    assert list(sim.truth.index) == list(sim.R.columns)
    counts = sim.truth["truth"].value_counts()
    assert counts["gained"] == counts["lost"] == 3 and counts["kept"] == 9 and counts["unencoded"] == 15
    assert sim.test[2] is sim.R_test
    assert planted_shift(n_cases=10, d=8, n_per_modality=3).test is None


def test_planted_shift_is_deterministic_per_seed():
    a = planted_shift(n_cases=30, d=16, n_per_modality=5, seed=4)
    b = planted_shift(n_cases=30, d=16, n_per_modality=5, seed=4)
    c = planted_shift(n_cases=30, d=16, n_per_modality=5, seed=5)
    pd.testing.assert_frame_equal(a.X_ft, b.X_ft, check_exact=True)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert not np.array_equal(a.X_pre.to_numpy(), c.X_pre.to_numpy())


def test_embeddings_encode_exactly_the_planted_features():
    """An oracle linear decoder on the raw embeddings recovers what each encoder was told to
    encode, and nothing else."""
    sim = planted_shift(n_cases=1500, d=96, n_test=1000, seed=0)
    labels = sim.truth["truth"]
    r2 = {}
    for stage, X, Xt in (("pre", sim.X_pre, sim.X_pre_test), ("ft", sim.X_ft, sim.X_ft_test)):
        reg = LinearRegression().fit(X, sim.R)
        pred = reg.predict(Xt)
        y = sim.R_test.to_numpy()
        r2[stage] = pd.Series(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0), index=sim.R.columns)
    for stage, encoded in (("pre", ("kept", "lost")), ("ft", ("kept", "gained"))):
        on = r2[stage][labels.isin(encoded)]
        off = r2[stage][~labels.isin(encoded)]
        assert on.min() > 0.3, (stage, on.min())
        assert off.abs().max() < 0.15, (stage, off.abs().max())


def test_recovery_precision_counts_top_and_bottom():
    truth = pd.DataFrame({"truth": ["gained", "gained", "lost", "kept", "unencoded"]}, index=list("abcde"))
    score = pd.Series({"a": 3.0, "b": 0.1, "c": -2.0, "d": 1.0, "e": 0.0})
    assert recovery_precision(score, truth) == (0.5, 1.0)
    assert recovery_precision(-score, truth) == (0.0, 0.0)


def test_pyradiomics_columns_are_the_papers_2511():
    cols = pyradiomics_columns()
    assert len(cols) == len(set(cols)) == 2511
    info = parse_columns(cols)
    assert info.groupby("modality").size().to_dict() == {"ADC": 837, "DWI": 837, "T2W": 837}
    assert set(info["family"]) == {"firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm"}


def test_reliability_table_shape():
    table = ols_reliability_table(hidden_dims=(4, 30), n_cases=(60,), d=24, n_test=30, epochs=2,
                                  n_per_modality=5)
    assert list(table.columns) == ["protocol", "method", "hidden_dim", "n_cases", "precision_gained",
                                   "precision_lost", "decoder_used"]
    assert len(table) == 3 * 2 * len(RELIABILITY_METHODS)
    assert set(table["protocol"]) == {"paper", "cross-fit", "held-out decoders"}
    assert set(table["method"]) == {m[0] for m in RELIABILITY_METHODS}
    assert table[["precision_gained", "precision_lost"]].stack().between(0, 1).all()
    # hidden 30 >= 60 training cases / 2 is fine for OLS; both widths ran their own lens
    assert set(table["hidden_dim"]) == {4, 30}


def test_bad_simulation_parameters():
    with pytest.raises(ValueError, match="unknown truth labels"):
        planted_shift(n_cases=10, fractions={"moved": 0.5})
    with pytest.raises(ValueError, match="sum to more than 1"):
        planted_shift(n_cases=10, fractions={"gained": 0.6, "lost": 0.6})
