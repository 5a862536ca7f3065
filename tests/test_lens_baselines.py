"""What a covariate alone explains of radiomic features: the size baseline of the lens's R^2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from radiolens.lens import covariate_r2


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
