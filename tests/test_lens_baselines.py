"""What a covariate alone explains of radiomic features: the size baseline of the lens's R^2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from radiolens.lens import covariate_r2, label_auc


def _data(n_train=80, n_test=40, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"c{i}" for i in range(n_train + n_test)]
    log_v = pd.Series(rng.normal(3.5, 0.4, len(ids)), index=ids)
    R = pd.DataFrame({
        "size_like": 2.0 * log_v + rng.normal(0, 0.05, len(ids)),   # a function of size
        "half_size": log_v + rng.normal(0, 0.4, len(ids)),           # half size, half noise
        "texture": rng.normal(0, 1, len(ids)),                        # unrelated to size
    }, index=ids)
    train, test = ids[:n_train], ids[n_train:]
    return log_v.loc[train], R.loc[train], log_v.loc[test], R.loc[test]


def test_covariate_r2_is_the_held_out_r2_of_a_line_in_the_covariate():
    v_tr, R_tr, v_te, R_te = _data()
    r2 = covariate_r2(v_tr, R_tr, v_te, R_te)
    for column in R_tr.columns:
        model = LinearRegression().fit(v_tr.to_frame(), R_tr[column])
        assert r2[column] == pytest.approx(r2_score(R_te[column], model.predict(v_te.to_frame())), abs=1e-10)
    assert r2["size_like"] > 0.95
    assert 0.2 < r2["half_size"] < 0.8
    assert r2["texture"] < 0.05  # nothing to explain: about zero or below


def test_a_constant_test_feature_is_not_evaluable_and_bad_input_is_named():
    v_tr, R_tr, v_te, R_te = _data()
    R_te = R_te.assign(texture=1.0)
    assert np.isnan(covariate_r2(v_tr, R_tr, v_te, R_te)["texture"])
    with pytest.raises(ValueError, match="same feature columns"):
        covariate_r2(v_tr, R_tr, v_te, R_te[["texture", "size_like", "half_size"]])
    with pytest.raises(ValueError, match="test covariates"):
        covariate_r2(v_tr, R_tr, v_te.iloc[::-1], R_te)
    with pytest.raises(ValueError, match="cannot fit"):
        covariate_r2(v_tr.iloc[:2], R_tr.iloc[:2], v_te, R_te)


def _labelled(n: int, d: int, signal: float, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    index = pd.Index([f"c{i:03d}" for i in range(n)], name="case_id")
    X = pd.DataFrame(rng.normal(size=(n, d)), index=index)
    y = pd.Series(rng.random(n) < 1 / (1 + np.exp(-signal * X[0].to_numpy())), index=index)
    return X, y


def test_label_auc_reads_a_label_the_embedding_carries():
    X, y = _labelled(120, 8, signal=3.0, seed=0)
    result = label_auc(X, y, n_permutations=49)
    assert result["auc"] > 0.8 and result["p_value"] == pytest.approx(1 / 50)
    assert result["n_cases"] == 120 and result["n_positive"] == int(y.sum())
    # cases missing from the embeddings or without a label are left out
    partial = label_auc(X.iloc[:100], y.where(y.index != "c000"), n_permutations=9)
    assert partial["n_cases"] == 99


def test_label_auc_refuses_too_few_cases_of_a_class_and_non_binary_labels():
    X, y = _labelled(30, 4, signal=0.0, seed=1)
    y[:] = False
    y.iloc[:3] = True
    with pytest.raises(ValueError, match="at least 5 cases with and 5 without the label.*got 3 and 27"):
        label_auc(X, y)
    with pytest.raises(ValueError, match="0/1"):
        label_auc(X, pd.Series(np.arange(30) % 3, index=X.index))


def test_label_auc_flags_a_label_the_embedding_does_not_carry_at_most_at_its_level():
    """Calibration: embeddings and labels drawn independently (nothing to read) give p < 0.05 in
    at most ~5% of 500 runs (plus three Monte-Carlo standard errors)."""
    pvalues = np.array([label_auc(*_labelled(40, 6, signal=0.0, seed=100 + run), n_splits=4,
                                  n_permutations=99, seed=run)["p_value"] for run in range(500)])
    assert np.mean(pvalues < 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 500), np.mean(pvalues < 0.05)
    assert 0.35 < np.mean(pvalues < 0.5) < 0.65  # p-values spread evenly, not stuck at 1
