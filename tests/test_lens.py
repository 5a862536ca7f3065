"""Tests of radiolens.lens: the paper's method, what radiolens adds, and bad input."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import LeaveOneOut, cross_val_predict

from radiolens.lens import (
    IMPORTANCE_COLUMNS,
    LensReport,
    RadiomicLens,
    adjust_pvalues,
    penalty_sweep,
)
from radiolens.lens.decoders import choose_decoder
from radiolens.lens.simulation import planted_shift, recovery_precision


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    """A small planted shift: fast to fit, enough to exercise every code path."""
    return planted_shift(n_cases=80, d=24, n_per_modality=6, n_test=40, seed=3)


@pytest.fixture(scope="module")
def small_lens(small):
    """The paper's protocol: stage 1 and the decoders on the same cases, importance on raw Z."""
    return RadiomicLens(protocol="paper", hidden_dim=6, epochs=5, random_state=1).fit(small.X_pre, small.R)


@pytest.fixture(scope="module")
def planted():
    """Planted truth large enough for the rankings to be meaningful (d=96, hidden 32)."""
    return planted_shift(n_cases=600, d=96, n_test=300, seed=0)


@pytest.fixture(scope="module")
def planted_ridge_report(planted):
    lens = RadiomicLens(hidden_dim=32, epochs=100, random_state=0, decoder="ridge").fit(planted.X_pre, planted.R)
    return lens.compare(planted.X_pre, planted.X_ft, planted.R, test=planted.test, n_bootstrap=100,
                        n_permutations=99)


def _scaled(lens, R):
    return (R[lens.columns_].to_numpy() - lens.scaler_min_) / lens.scaler_range_


# --------------------------------------------------------------------------------------------
# stage 1
# --------------------------------------------------------------------------------------------
def test_fit_learns_scaling_and_projection(small, small_lens):
    lens = small_lens
    R = small.R
    np.testing.assert_array_equal(lens.scaler_min_, R.min().to_numpy())
    np.testing.assert_array_equal(lens.scaler_range_, (R.max() - R.min()).to_numpy())
    assert lens.modalities_ == ["T2W", "DWI", "ADC"]
    assert lens.weight_.shape == (6, 24) and lens.hidden_dim_ == 6
    assert list(lens.history_.columns) == ["epoch", "train_loss"] and len(lens.history_) == 5
    Z = lens.transform(small.X_pre)
    assert isinstance(Z, pd.DataFrame) and Z.index.equals(small.X_pre.index)
    assert list(Z.columns) == [f"z_{j:03d}" for j in range(6)]
    # arrays in, arrays out, same numbers
    np.testing.assert_array_equal(lens.transform(small.X_pre.to_numpy()), Z.to_numpy())


def test_training_reduces_the_reconstruction_loss(small):
    lens = RadiomicLens(hidden_dim=6, epochs=40, lr=1e-2, random_state=0).fit(small.X_pre, small.R)
    loss = lens.history_["train_loss"].to_numpy()
    assert loss[-1] < 0.8 * loss[0]


def test_default_hidden_dim_is_below_embedding_width_and_cases():
    assert RadiomicLens.default_hidden_dim(768, 1000) == 100
    assert RadiomicLens.default_hidden_dim(768, 100000) == 256
    assert RadiomicLens.default_hidden_dim(96, 2000) == 48
    assert RadiomicLens.default_hidden_dim(96, 24) == 2
    for d, n in [(768, 250), (96, 300), (16, 5), (3, 1000)]:
        h = RadiomicLens.default_hidden_dim(d, n)
        assert 1 <= h and (h < d or d == 1) and (h < n or n == 1)


def test_default_hidden_dim_used_by_fit(small):
    lens = RadiomicLens(epochs=1).fit(small.X_pre, small.R)
    assert lens.hidden_dim_ == RadiomicLens.default_hidden_dim(24, 80) == 8


# --------------------------------------------------------------------------------------------
# stage 2: decoders
# --------------------------------------------------------------------------------------------
def test_closed_form_decoder_equals_sklearn_linear_regression(small, small_lens):
    lens = small_lens
    report = lens.compare(small.X_pre, small.X_ft, small.R, test=small.test)
    for stage, X, Xt in (("pre", small.X_pre, small.X_pre_test), ("ft", small.X_ft, small.X_ft_test)):
        Z = lens.transform(X).to_numpy()
        reg = LinearRegression().fit(Z, _scaled(lens, small.R))
        expected_I = np.linalg.norm(reg.coef_, axis=1)
        np.testing.assert_allclose(report.importance[f"I_{stage}"], expected_I, rtol=0, atol=1e-8)
        # the decoder weights themselves: hidden units x radiomic columns, I is their column norm
        weights = getattr(report, f"decoder_{stage}")
        assert weights.shape == (6, len(lens.columns_)) and list(weights.columns) == lens.columns_
        np.testing.assert_allclose(weights.to_numpy(), reg.coef_.T, rtol=0, atol=1e-8)
        decoded = getattr(report, f"decoded_{stage}")
        pred = reg.predict(lens.transform(Xt).to_numpy())
        np.testing.assert_allclose(decoded.to_numpy(), pred, rtol=0, atol=1e-8)
    np.testing.assert_allclose(report.observed.to_numpy(), _scaled(lens, small.R_test), atol=0)
    scaled = lens.scale_radiomics(small.R_test)
    assert scaled.index.equals(small.R_test.index) and list(scaled.columns) == lens.columns_
    np.testing.assert_array_equal(scaled.to_numpy(), _scaled(lens, small.R_test))
    train = lens.scale_radiomics(small.R)
    assert (train.min() == 0).all() and np.allclose(train.max(), 1)
    assert report.diagnostics["decoder_used_pre"] == "ols"


def test_leave_one_out_scores_equal_sklearn(small, small_lens):
    lens = small_lens
    report = lens.compare(small.X_pre, small.X_ft, small.R)  # no test: exact leave-one-out
    assert report.diagnostics["evaluation"] == "leave-one-out"
    Z = lens.transform(small.X_pre).to_numpy()
    Y = _scaled(lens, small.R)
    loo = cross_val_predict(LinearRegression(), Z, Y, cv=LeaveOneOut())
    np.testing.assert_allclose(report.decoded_pre.to_numpy(), loo, atol=1e-8)
    r2 = 1 - ((Y - loo) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(report.importance["r2_pre"], r2, atol=1e-8)


def test_ill_conditioned_z_uses_reported_ridge_fallback():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(50, 4))
    Z = np.column_stack([Z, Z[:, 0] + 1e-12 * rng.normal(size=50)])  # near-duplicate unit
    R = rng.normal(size=(50, 3))
    kw = dict(decoder="ols", scale="paper", ridge_alphas=(1.0,), max_condition=1e7)
    dec = choose_decoder(Z, R, **kw)
    assert dec.method == "ols+ridge_fallback" and dec.alpha > 0
    assert dec.condition_number > 1e7
    assert np.all(np.isfinite(dec.coef)) and np.abs(dec.coef).max() < 10
    well = choose_decoder(Z[:, :4], R, **kw)
    assert well.method == "ols" and well.alpha == 0.0


def test_constant_hidden_unit_gets_zero_row_not_fallback():
    rng = np.random.default_rng(1)
    Z = np.column_stack([rng.normal(size=(40, 3)), np.zeros(40)])
    R = rng.normal(size=(40, 2))
    dec = choose_decoder(Z, R, decoder="ols", scale="paper", ridge_alphas=(1.0,), max_condition=1e7)
    assert dec.method == "ols" and dec.n_constant_units == 1
    np.testing.assert_array_equal(dec.coef[3], 0.0)
    np.testing.assert_allclose(dec.coef[:3], LinearRegression().fit(Z[:, :3], R).coef_.T, atol=1e-10)


def test_scale_aware_importance_ignores_global_rescaling_of_z():
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(100, 5))
    R = Z @ rng.normal(size=(5, 4)) + 0.1 * rng.normal(size=(100, 4))
    kw = dict(decoder="ols", ridge_alphas=(1.0,), max_condition=1e7)
    paper = choose_decoder(Z, R, scale="paper", **kw)
    paper_big = choose_decoder(5 * Z, R, scale="paper", **kw)
    # the paper's importance shrinks 5-fold when Z is 5 times larger ...
    np.testing.assert_allclose(np.linalg.norm(paper_big.coef_scaled, axis=0),
                               np.linalg.norm(paper.coef_scaled, axis=0) / 5, rtol=1e-10)
    std = choose_decoder(Z, R, scale="standardized", **kw)
    std_big = choose_decoder(5 * Z, R, scale="standardized", **kw)
    # ... the standardised one does not, and predictions are the same in both units
    np.testing.assert_allclose(std_big.coef_scaled, std.coef_scaled, rtol=1e-10)
    np.testing.assert_allclose(std.predict(Z), paper.predict(Z), atol=1e-10)


def test_ridge_decoder_chooses_penalty_per_stage(small, small_lens):
    lens = RadiomicLens(**{**small_lens.get_params(), "decoder": "ridge"})
    lens.fit(small.X_pre, small.R)
    report = lens.compare(small.X_pre, small.X_ft, small.R, test=small.test)
    diag = report.diagnostics
    assert diag["decoder_used_pre"] == diag["decoder_used_ft"] == "ridge"
    assert diag["ridge_alpha_pre"] > 0 and diag["ridge_alpha_ft"] > 0
    assert diag["scale"] == "standardized"
    # the chosen alpha minimises the leave-one-out error among the grid: a refit with it equals
    # scikit-learn's Ridge on standardised Z
    from sklearn.linear_model import Ridge

    Z = lens.transform(small.X_pre).to_numpy()
    Zs = Z / Z.std(0)
    reg = Ridge(alpha=diag["ridge_alpha_pre"]).fit(Zs, _scaled(lens, small.R))
    np.testing.assert_allclose(report.importance["I_pre"], np.linalg.norm(reg.coef_, axis=1), atol=1e-8)


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def test_report_tables_have_the_promised_shape(small, small_lens):
    report = small_lens.compare(small.X_pre, small.X_ft, small.R, test=small.test)
    imp = report.importance
    assert list(imp.columns) == IMPORTANCE_COLUMNS
    assert imp["column"].tolist() == small_lens.columns_
    np.testing.assert_allclose(imp["delta_I"], imp["I_ft"] - imp["I_pre"])
    np.testing.assert_allclose(imp["rel_delta_I"], imp["delta_I"] / imp["I_pre"])
    np.testing.assert_allclose(imp["delta_r2"], imp["r2_ft"] - imp["r2_pre"])
    sc = report.scores
    assert list(sc.columns) == ["encoder", "level", "group", "r2", "mse"]
    assert set(sc["encoder"]) == {"pre", "ft"}
    assert set(sc["level"]) == {"overall", "modality", "image_type", "family", "feature"}
    feat = sc[(sc.encoder == "pre") & (sc.level == "feature")].set_index("group")["r2"]
    np.testing.assert_allclose(feat.loc[imp["column"]].to_numpy(), imp["r2_pre"].to_numpy())
    fam = sc[(sc.encoder == "ft") & (sc.level == "family") & (sc.group == "glcm")]["r2"].item()
    assert fam == pytest.approx(imp.loc[imp.family == "glcm", "r2_ft"].mean())
    mse = ((report.observed - report.decoded_ft) ** 2).to_numpy().mean()
    assert sc[(sc.encoder == "ft") & (sc.level == "overall")]["mse"].item() == pytest.approx(mse)
    assert report.observed.shape == report.decoded_pre.shape == (40, len(imp))
    assert report.observed.index.equals(small.R_test.index)
    assert {"condition_number_pre", "condition_number_ft", "cases_per_hidden_unit",
            "ridge_alpha_pre", "fallback_used", "warnings"} <= set(report.diagnostics)


def test_wilcoxon_equals_scipy_on_the_same_errors(small, small_lens):
    report = small_lens.compare(small.X_pre, small.X_ft, small.R, test=small.test)
    info = small_lens.column_info_
    se_pre = (report.observed - report.decoded_pre) ** 2
    se_ft = (report.observed - report.decoded_ft) ** 2
    tests = report.tests
    assert list(tests.columns) == ["modality", "family", "n_cases", "statistic", "p_value", "p_adjusted", "stars"]
    pooled = tests[tests.modality == "all"]
    assert set(pooled["family"]) == set(info["family"])
    for row in tests.itertuples():
        cols = info[(info.family == row.family) & ((info.modality == row.modality) | (row.modality == "all"))]["column"]
        ref = scipy.stats.wilcoxon(se_pre[cols].mean(axis=1), se_ft[cols].mean(axis=1))
        assert row.statistic == ref.statistic and row.p_value == ref.pvalue
        expected = "***" if ref.pvalue < 0.001 else "**" if ref.pvalue < 0.01 else "*" if ref.pvalue < 0.05 else "ns"
        assert row.stars == expected
    np.testing.assert_allclose(pooled["p_adjusted"], adjust_pvalues(pooled["p_value"].to_numpy(), "holm"))


def test_adjust_pvalues_matches_known_values():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.04, 0.09, 0.09, 0.2])
    np.testing.assert_allclose(adjust_pvalues(p, "fdr_bh"), [0.04, 0.16 / 3, 0.16 / 3, 0.2])


def test_rankings(small, small_lens):
    report = small_lens.compare(small.X_pre, small.X_ft, small.R, test=small.test)
    imp = report.importance
    g = report.gained(3, by="delta_I")
    assert g["delta_I"].tolist() == sorted(imp["delta_I"], reverse=True)[:3]
    lo = report.lost(3, by="delta_r2")
    assert lo["delta_r2"].tolist() == sorted(imp["delta_r2"])[:3]
    assert report.gained(2)["rel_delta_I"].tolist() == sorted(imp["rel_delta_I"], reverse=True)[:2]
    st = report.stable(4)
    both = imp[(imp.I_pre >= imp.I_pre.median()) & (imp.I_ft >= imp.I_ft.median())]
    assert st["column"].tolist() == both.loc[both["delta_I"].abs().sort_values().index, "column"].tolist()[:4]
    with pytest.raises(ValueError, match="by must be one of"):
        report.gained(3, by="I_pre")


def test_encoder_compared_with_itself_shows_exactly_zero_shift(small, small_lens):
    report = small_lens.compare(small.X_pre, small.X_pre, small.R, test=(small.X_pre_test, small.X_pre_test, small.R_test),
                                n_bootstrap=5, n_permutations=9)
    imp = report.importance
    assert (imp["delta_I"] == 0).all() and (imp["delta_r2"] == 0).all()
    assert (imp["delta_I_lo"] == 0).all() and (imp["delta_I_hi"] == 0).all()
    assert (imp["p_value"] == 1).all()
    assert (report.tests["p_value"] == 1).all() and (report.tests["statistic"] == 0).all()
    pre = report.scores[report.scores.encoder == "pre"].reset_index(drop=True)
    ft = report.scores[report.scores.encoder == "ft"].reset_index(drop=True)
    pd.testing.assert_frame_equal(pre.drop(columns="encoder"), ft.drop(columns="encoder"))


# --------------------------------------------------------------------------------------------
# planted truth
# --------------------------------------------------------------------------------------------
def test_planted_truth_is_recovered_by_delta_r2_and_ridge(planted, planted_ridge_report):
    truth = planted.truth
    ridge = planted_ridge_report
    assert ridge.diagnostics["decoder_used_pre"] == "ridge"
    for col in ("delta_r2", "delta_I"):
        score = ridge.importance.set_index("column")[col]
        gained, lost = recovery_precision(score, truth)
        assert gained >= 0.9 and lost >= 0.9, (col, gained, lost)
    # the rankings API agrees
    k = int((truth["truth"] == "gained").sum())
    for by in ("delta_r2", "delta_I"):
        assert (truth.loc[ridge.gained(k, by=by)["column"], "truth"] == "gained").mean() >= 0.9
        assert (truth.loc[ridge.lost(k, by=by)["column"], "truth"] == "lost").mean() >= 0.9


def test_permutation_pvalues_small_for_changed_not_for_kept(planted, planted_ridge_report):
    imp = planted_ridge_report.importance.set_index("column").join(planted.truth)
    changed = imp[imp.truth.isin(["gained", "lost"])]
    kept = imp[imp.truth == "kept"]
    assert (changed["p_value"] <= 0.02).all(), changed["p_value"].tolist()
    assert (changed["p_adjusted"] < 0.05).all()
    assert kept["p_value"].median() > 0.2 and (kept["p_adjusted"] < 0.05).mean() <= 0.2


def test_bootstrap_intervals_flag_planted_changes(planted, planted_ridge_report):
    imp = planted_ridge_report.importance.set_index("column").join(planted.truth)
    for name in ("I_pre", "I_ft", "delta_I", "delta_r2"):
        assert (imp[f"{name}_lo"] <= imp[f"{name}_hi"]).all()
        assert (imp[f"{name}_hi"] - imp[f"{name}_lo"] > 0).mean() > 0.9, name
    assert (imp["I_pre_lo"] >= 0).all()
    gained = imp[imp.truth == "gained"]
    lost = imp[imp.truth == "lost"]
    unencoded = imp[imp.truth == "unencoded"]
    assert (gained["delta_r2_lo"] > 0).all() and (lost["delta_r2_hi"] < 0).all()
    assert (gained["delta_I_lo"] > 0).all() and (lost["delta_I_hi"] < 0).all()
    # Unencoded features are not exactly zero-shift: stage 1 was trained on the same cases, so
    # the pre decoder overfits them a little more (a property of the method, recorded in the
    # book). Their typical change still sits below the lower bounds of the gained features.
    assert unencoded["delta_r2"].median() < gained["delta_r2_lo"].median()
    assert unencoded["delta_r2"].median() < gained["delta_r2"].min()


# --------------------------------------------------------------------------------------------
# persistence and determinism
# --------------------------------------------------------------------------------------------
def _assert_reports_equal(a: LensReport, b: LensReport) -> None:
    for name in ("importance", "scores", "tests", "observed", "decoded_pre", "decoded_ft", "decoder_pre", "decoder_ft"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
    assert a.diagnostics == b.diagnostics and a.params == b.params


def test_report_round_trips_exactly_through_a_folder(small, small_lens, tmp_path):
    report = small_lens.compare(small.X_pre, small.X_ft, small.R, test=small.test, n_bootstrap=5, n_permutations=5)
    report.to_dir(tmp_path / "rep")
    assert (tmp_path / "rep" / "importance.csv").exists()
    back = LensReport.from_dir(tmp_path / "rep")
    _assert_reports_equal(report, back)
    assert not list((tmp_path / "rep").glob("*.tmp")) and not list((tmp_path / "rep").glob("*.pkl"))
    with pytest.raises(FileNotFoundError, match="missing"):
        LensReport.from_dir(tmp_path)
    # a folder written before the decoder tables existed still loads, without them
    (tmp_path / "rep" / "decoder_pre.parquet").unlink()
    (tmp_path / "rep" / "decoder_ft.parquet").unlink()
    old = LensReport.from_dir(tmp_path / "rep")
    assert old.decoder_pre.empty and old.decoder_ft.empty
    pd.testing.assert_frame_equal(old.importance, report.importance, check_exact=True)


def test_lens_save_load_round_trips_exactly(small, small_lens, tmp_path):
    small_lens.save(tmp_path / "lens")
    back = RadiomicLens.load(tmp_path / "lens")
    assert back.get_params() == small_lens.get_params()
    for name in ("weight_", "bias_", "x_mean_", "x_scale_", "scaler_min_", "scaler_range_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(small_lens, name))
    pd.testing.assert_frame_equal(back.transform(small.X_ft), small_lens.transform(small.X_ft), check_exact=True)
    pd.testing.assert_frame_equal(back.history_, small_lens.history_, check_exact=True)
    _assert_reports_equal(back.compare(small.X_pre, small.X_ft, small.R, test=small.test),
                          small_lens.compare(small.X_pre, small.X_ft, small.R, test=small.test))


def test_same_inputs_and_seed_give_identical_reports(small):
    def run(seed):
        lens = RadiomicLens(hidden_dim=5, epochs=4, random_state=seed).fit(small.X_pre, small.R)
        return lens, lens.compare(small.X_pre, small.X_ft, small.R, n_bootstrap=4, n_permutations=4)

    (la, a), (lb, b) = run(11), run(11)
    np.testing.assert_array_equal(la.weight_, lb.weight_)
    _assert_reports_equal(a, b)
    lc, _ = run(12)
    assert not np.array_equal(la.weight_, lc.weight_)


def test_case_order_of_x_is_aligned_to_r(small, small_lens):
    shuffled = small.X_pre.sample(frac=1.0, random_state=0)
    a = small_lens.compare(small.X_pre, small.X_ft, small.R)
    b = small_lens.compare(shuffled, small.X_ft, small.R)
    _assert_reports_equal(a, b)


# --------------------------------------------------------------------------------------------
# penalty sweep
# --------------------------------------------------------------------------------------------
def test_penalty_sweep_selects_lowest_validation_loss(small):
    n = 60
    table = penalty_sweep(small.X_pre.iloc[:n], small.R.iloc[:n], small.X_pre.iloc[n:], small.R.iloc[n:],
                          l1_grid=(0.0, 1e-3), l2_grid=(0.0, 1e-1), hidden_dim=4, epochs=3)
    assert list(table.columns) == ["l1", "l2", "val_loss", "train_loss", "selected"]
    assert len(table) == 4 and table["selected"].sum() == 1
    best = table.loc[table["selected"]].iloc[0]
    assert best["val_loss"] == table["val_loss"].min()
    assert table[["l1", "l2"]].drop_duplicates().shape[0] == 4
    # each row is what a lens with those penalties records
    lens = RadiomicLens(l1=1e-3, l2=1e-1, hidden_dim=4, epochs=3).fit(
        small.X_pre.iloc[:n], small.R.iloc[:n], validation=(small.X_pre.iloc[n:], small.R.iloc[n:]))
    row = table[(table.l1 == 1e-3) & (table.l2 == 1e-1)].iloc[0]
    assert row["val_loss"] == lens.history_["val_loss"].iloc[-1]
    with pytest.raises(ValueError, match="l1_grid"):
        penalty_sweep(small.X_pre, small.R, small.X_pre, small.R, l1=0.1)


def test_penalty_sweep_is_the_same_in_worker_processes(small):
    n = 60
    args = (small.X_pre.iloc[:n], small.R.iloc[:n], small.X_pre.iloc[n:], small.R.iloc[n:])
    kw = dict(l1_grid=(0.0, 1e-3), l2_grid=(0.0, 1e-1), hidden_dim=4, epochs=3)
    pd.testing.assert_frame_equal(penalty_sweep(*args, n_jobs=2, **kw), penalty_sweep(*args, n_jobs=1, **kw),
                                  check_exact=True)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_unfitted_lens_raises_not_fitted(small):
    lens = RadiomicLens()
    with pytest.raises(NotFittedError, match="not fitted"):
        lens.transform(small.X_pre)
    with pytest.raises(NotFittedError):
        lens.compare(small.X_pre, small.X_ft, small.R)
    with pytest.raises(NotFittedError):
        lens.save("nowhere")
    with pytest.raises(NotFittedError):
        lens.scale_radiomics(small.R)


def test_mismatched_case_ids_are_named(small, small_lens):
    X = small.X_pre.rename(index={small.X_pre.index[0]: "intruder"})
    with pytest.raises(ValueError, match="do not match.*intruder"):
        RadiomicLens(epochs=1).fit(X, small.R)
    with pytest.raises(ValueError, match="do not match"):
        small_lens.compare(small.X_pre, X, small.R)
    with pytest.raises(ValueError, match="has 79 rows but R has 80"):
        RadiomicLens(epochs=1).fit(small.X_pre.to_numpy()[:-1], small.R)


def test_duplicate_case_ids_are_named(small):
    X = small.X_pre.copy()
    X.index = list(X.index[:-1]) + [X.index[0]]
    with pytest.raises(ValueError, match=f"duplicate case ids.*{X.index[0]}"):
        RadiomicLens(epochs=1).fit(X, small.R)
    R = small.R.copy()
    R.index = X.index
    with pytest.raises(ValueError, match="R has duplicate case ids"):
        RadiomicLens(epochs=1).fit(small.X_pre, R)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_and_inf_are_named(small, small_lens, value):
    X = small.X_pre.copy()
    X.iloc[3, 2] = value
    with pytest.raises(ValueError, match=f"NaN/inf.*{X.index[3]}.*emb_002"):
        RadiomicLens(epochs=1).fit(X, small.R)
    R = small.R.copy()
    R.iloc[1, 0] = value
    with pytest.raises(ValueError, match=f"R contains 1 NaN/inf.*{R.columns[0]}"):
        RadiomicLens(epochs=1).fit(small.X_pre, R)
    with pytest.raises(ValueError, match="X_ft contains"):
        small_lens.compare(small.X_pre, X, small.R)


def test_pre_and_ft_of_different_width(small, small_lens):
    narrow = small.X_ft.iloc[:, :-1]
    with pytest.raises(ValueError, match="different widths.*24 vs 23"):
        small_lens.compare(small.X_pre, narrow, small.R)
    with pytest.raises(ValueError, match="has 23 embedding dims but the lens was fitted on 24"):
        small_lens.transform(narrow)


def test_constant_radiomic_column_is_named_or_dropped_with_warning(small):
    R = small.R.copy()
    col = R.columns[4]
    R[col] = 3.0
    with pytest.raises(ValueError, match=f"constant.*{col}"):
        RadiomicLens(epochs=1).fit(small.X_pre, R)
    with pytest.warns(UserWarning, match=f"dropping 1 constant.*{col}"):
        lens = RadiomicLens(epochs=1, hidden_dim=3, drop_constant=True).fit(small.X_pre, R)
    assert col not in lens.columns_ and lens.dropped_columns_ == [col]
    report = lens.compare(small.X_pre, small.X_ft, R)  # the dropped column is tolerated in R
    assert col not in set(report.importance["column"])


def test_fewer_training_cases_than_hidden_units_warns_and_uses_ridge(small):
    X, R = small.X_pre.iloc[:15], small.R.iloc[:15]
    with pytest.warns(UserWarning, match="fewer training cases"):
        lens = RadiomicLens(hidden_dim=20, epochs=2).fit(X, R)
    with pytest.warns(UserWarning) as record:
        report = lens.compare(X, small.X_ft.iloc[:15], R)
    assert any("underdetermined" in str(w.message) for w in record)
    assert report.diagnostics["decoder_used_pre"] == "ridge" and report.diagnostics["fallback_used"]
    assert any("underdetermined" in w for w in report.diagnostics["warnings"])
    assert np.isfinite(report.importance[["I_pre", "I_ft", "r2_pre"]].to_numpy()).all()


def test_unreliable_regime_of_paper_importance_is_flagged(small):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = RadiomicLens(protocol="paper", hidden_dim=30, epochs=1).fit(small.X_pre, small.R)  # hidden >= d = 24
    with pytest.warns(UserWarning, match="unreliable regime"):
        report = lens.compare(small.X_pre, small.X_ft, small.R)
    assert any("unreliable" in w for w in report.diagnostics["warnings"])


def test_unknown_modality_and_bad_names_are_named(small, small_lens):
    R = small.R.rename(columns={small.R.columns[0]: "PET__original_glcm_MCC"})
    with pytest.raises(ValueError, match="PET__original_glcm_MCC.*unknown modality 'PET'"):
        RadiomicLens(epochs=1).fit(small.X_pre, R)
    lens = RadiomicLens(epochs=1, hidden_dim=3, modalities=("T2W", "DWI", "ADC", "PET")).fit(small.X_pre, R)
    assert "PET" in lens.modalities_
    R2 = small.R.rename(columns={small.R.columns[1]: "T2W__not_a_feature"})
    with pytest.raises(ValueError, match="T2W__not_a_feature"):
        RadiomicLens(epochs=1).fit(small.X_pre, R2)
    with pytest.raises(ValueError, match="columns differ.*missing"):
        small_lens.compare(small.X_pre, small.X_ft, small.R.iloc[:, 1:])
    with pytest.raises(TypeError, match="DataFrame"):
        RadiomicLens(epochs=1).fit(small.X_pre, small.R.to_numpy())


def test_bad_parameters_are_named(small, small_lens):
    with pytest.raises(ValueError, match="decoder must be one of"):
        RadiomicLens(decoder="lasso").fit(small.X_pre, small.R)
    with pytest.raises(ValueError, match="scale must be one of"):
        small_lens.compare(small.X_pre, small.X_ft, small.R, scale="log")
    with pytest.raises(ValueError, match="permutation_stat"):
        small_lens.compare(small.X_pre, small.X_ft, small.R, permutation_stat="auc")


def test_overlap_with_stage1_cases_is_reported(small, small_lens):
    same = small_lens.compare(small.X_pre, small.X_ft, small.R)
    with pytest.warns(UserWarning, match="decoder cases per hidden unit"):  # 40 cases, 6 units
        other = small_lens.compare(small.X_pre_test, small.X_ft_test, small.R_test)
    assert same.diagnostics["stage1_case_overlap"] == 1.0
    assert other.diagnostics["stage1_case_overlap"] == 0.0


def test_refit_results_do_not_depend_on_threads(small, small_lens):
    import copy

    one = copy.deepcopy(small_lens).set_params(n_threads=1)
    three = copy.deepcopy(small_lens).set_params(n_threads=3)
    kw = dict(test=small.test, n_bootstrap=6, n_permutations=6)
    a = one.compare(small.X_pre, small.X_ft, small.R, **kw)
    b = three.compare(small.X_pre, small.X_ft, small.R, **kw)
    for name in ("importance", "scores", "tests"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)


def test_ridge_on_stage1_cases_with_wide_hidden_space_is_flagged(small):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = RadiomicLens(protocol="paper", hidden_dim=30, epochs=1, decoder="ridge").fit(small.X_pre, small.R)  # 30 >= d = 24
    with pytest.warns(UserWarning, match="trained stage 1"):
        same = lens.compare(small.X_pre, small.X_ft, small.R)
    assert any("backwards" in w for w in same.diagnostics["warnings"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cases stage 1 never saw: no warning
        other = lens.compare(small.X_pre_test, small.X_ft_test, small.R_test)
    assert not any("backwards" in w for w in other.diagnostics["warnings"])


def test_decoder_on_constant_hidden_space_is_intercept_only():
    """Every hidden unit constant over the cases (e.g. a dead GELU unit): zero importance, no crash."""
    rng = np.random.default_rng(0)
    Z = np.ones((20, 3))
    R = rng.normal(size=(20, 4))
    dec = choose_decoder(Z, R, decoder="ols", scale="paper", ridge_alphas=(1.0,), max_condition=1e7)
    assert np.all(dec.coef == 0)
    np.testing.assert_allclose(dec.predict(Z), np.tile(R.mean(axis=0), (20, 1)))


def test_stage1_beats_the_best_constant_even_with_few_cases():
    """Few cases mean few optimiser steps; the heads start at the L1-optimal constant (median)."""
    sim = planted_shift(n_cases=42, n_test=0, seed=0)
    lens = RadiomicLens(epochs=100, random_state=0).fit(sim.X_pre, sim.R)
    Rn = (sim.R - sim.R.min()) / (sim.R.max() - sim.R.min())
    per_modality = (Rn - Rn.median()).abs().mean().groupby(sim.R.columns.str.split("__").str[0]).mean()
    assert lens.history_["train_loss"].iloc[-1] < per_modality.sum()


def test_near_constant_hidden_unit_is_reported():
    sim = planted_shift(n_cases=200, n_test=0, seed=1)
    lens = RadiomicLens(protocol="paper", hidden_dim=8, epochs=20, random_state=0).fit(sim.X_pre, sim.R)
    lens.weight_[0] *= 1e-6  # unit 0 now barely varies over the cases
    with pytest.warns(UserWarning, match="barely vary"):
        report = lens.compare(sim.X_pre, sim.X_ft, sim.R)
    assert any("barely vary" in w for w in report.diagnostics["warnings"])


# --------------------------------------------------------------------------------------------
# numeric failures that used to be silent
# --------------------------------------------------------------------------------------------
def test_feature_constant_on_the_evaluation_cases_is_not_evaluable(small, small_lens):
    R_test = small.R_test.copy()
    col = R_test.columns[2]
    R_test[col] = R_test[col].iloc[0] + 1e-13 * np.arange(len(R_test))  # constant up to rounding
    report = small_lens.compare(small.X_pre, small.X_ft, small.R, test=(small.X_pre_test, small.X_ft_test, R_test),
                                n_bootstrap=10, n_permutations=19)
    imp = report.importance.set_index("column")
    row = imp.loc[col]
    for name in ("r2_pre", "r2_ft", "delta_r2", "delta_r2_lo", "delta_r2_hi", "p_value", "p_adjusted"):
        assert np.isnan(row[name]), name
    assert col not in report.gained(5, by="delta_r2")["column"].tolist()
    assert col not in report.lost(5, by="delta_r2")["column"].tolist()
    assert report.diagnostics["n_not_evaluable"] == 1 and report.diagnostics["not_evaluable"] == [col]
    # family means leave it out; the multiple-testing adjustment counts only tested features
    others = imp[(imp["family"] == row["family"]) & (imp.index != col)]
    sc = report.scores
    fam = sc[(sc.encoder == "pre") & (sc.level == "family") & (sc.group == row["family"])]["r2"].item()
    assert fam == pytest.approx(others["r2_pre"].mean())
    tested = imp.drop(index=col)
    np.testing.assert_allclose(tested["p_adjusted"], adjust_pvalues(tested["p_value"].to_numpy()))


def test_one_huge_permutation_statistic_does_not_change_the_other_features_pvalues(small):
    """The tie tolerance is per feature: a feature on a scale 1e12 times larger leaves every
    other feature's p-value exactly as it is without it."""
    from radiolens.lens.decoders import choose_decoder
    from radiolens.lens.inference import Fold, permutation_pvalues

    lens = RadiomicLens(protocol="paper", hidden_dim=4, epochs=3, random_state=0).fit(small.X_pre, small.R)
    Zp, Zf = lens.transform(small.X_pre).to_numpy(), lens.transform(small.X_ft).to_numpy()
    Y = lens.scale_radiomics(small.R).to_numpy()
    huge = Y.copy()
    huge[:, 0] *= 1e12

    def pvalues(target):
        kw = dict(decoder="ols", scale="paper", loo=True)
        fold = Fold(Zp, Zf, target, np.arange(len(target)), choose_decoder(Zp, target, **kw),
                    choose_decoder(Zf, target, **kw))
        return permutation_pvalues([fold], target, False, "delta_I", 49, np.random.default_rng(0),
                                   lambda fn, items, desc: [fn(i) for i in items], 0.0)

    base, with_huge = pvalues(Y), pvalues(huge)
    np.testing.assert_array_equal(with_huge[1:], base[1:])
    assert base[1:].min() < 1.0  # the comparison is not vacuous


def test_permutation_pvalues_do_not_depend_on_the_number_of_bootstraps(small, small_lens):
    kw = dict(test=small.test, n_permutations=19)
    a = small_lens.compare(small.X_pre, small.X_ft, small.R, n_bootstrap=0, **kw).importance
    b = small_lens.compare(small.X_pre, small.X_ft, small.R, n_bootstrap=7, **kw).importance
    np.testing.assert_array_equal(a["p_value"], b["p_value"])
    c = small_lens.compare(small.X_pre, small.X_ft, small.R, test=small.test, n_bootstrap=7).importance
    np.testing.assert_array_equal(b["delta_I_lo"], c["delta_I_lo"])  # and the other way round


# --------------------------------------------------------------------------------------------
# the intercept
# --------------------------------------------------------------------------------------------
def test_without_intercept_the_decoder_is_the_papers_literal_formula(small):
    lens = RadiomicLens(protocol="paper", hidden_dim=6, epochs=5, random_state=1, fit_intercept=False)
    lens.fit(small.X_pre, small.R)
    report = lens.compare(small.X_pre, small.X_ft, small.R, test=small.test)
    for encoder, X, Xt in (("pre", small.X_pre, small.X_pre_test), ("ft", small.X_ft, small.X_ft_test)):
        Z = lens.transform(X).to_numpy().T  # hidden units x cases, the paper's orientation
        R = _scaled(lens, small.R).T  # features x cases
        theta = R @ Z.T @ np.linalg.inv(Z @ Z.T)  # theta = R Z^T (Z Z^T)^-1
        np.testing.assert_allclose(getattr(report, f"decoder_{encoder}").to_numpy(), theta.T, atol=1e-8)
        np.testing.assert_allclose(report.importance[f"I_{encoder}"], np.linalg.norm(theta, axis=1), atol=1e-8)
        np.testing.assert_allclose(getattr(report, f"decoded_{encoder}").to_numpy(),
                                   (theta @ lens.transform(Xt).to_numpy().T).T, atol=1e-8)
    assert report.diagnostics["fit_intercept"] is False and report.params["fit_intercept"] is False


# --------------------------------------------------------------------------------------------
# the whitened importance
# --------------------------------------------------------------------------------------------
def test_whitened_importance_ignores_any_linear_change_of_the_hidden_units():
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(80, 5)) @ rng.normal(size=(5, 5))
    R = Z @ rng.normal(size=(5, 3)) * 0.2 + rng.normal(size=(80, 3))
    mix = rng.normal(size=(5, 5))  # invertible almost surely
    a = choose_decoder(Z, R, decoder="ols", scale="whitened")
    b = choose_decoder(Z @ mix, R, decoder="ols", scale="whitened")
    np.testing.assert_allclose(b.importance, a.importance, rtol=1e-8)
    np.testing.assert_allclose(b.predict(Z @ mix), a.predict(Z), atol=1e-10)
    # its plain (not debiased) square is the variance of the fitted values
    fitted = LinearRegression().fit(Z, R).predict(Z)
    np.testing.assert_allclose(a.importance_plugin**2, fitted.var(axis=0), rtol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(a.coef_scaled, axis=0), a.importance, atol=1e-12)


def test_whitened_squared_importance_is_unbiased():
    """Averaged over noise draws, the debiased square is 0 for a feature Z does not carry and
    the variance of the best linear prediction for one it does, also with heteroscedastic noise;
    the plain square is biased up by about h sigma^2 / n."""
    rng = np.random.default_rng(5)
    n, h = 60, 6
    Z = rng.normal(size=(n, h)) * rng.uniform(0.2, 2, size=h)
    theta = np.zeros((h, 2))
    theta[:, 0] = 0.3 * rng.normal(size=h)
    truth = np.array([theta[:, 0] @ np.cov(Z.T, bias=True) @ theta[:, 0], 0.0])
    debiased, plain = [], []
    for _ in range(3000):
        R = Z @ theta + rng.normal(size=(n, 2)) * (0.5 + np.abs(Z[:, :1]))
        dec = choose_decoder(Z, R, decoder="ols", scale="whitened")
        debiased.append(dec.importance_sq)
        plain.append(dec.importance_plugin**2)
    debiased, plain = np.array(debiased), np.array(plain)
    se = debiased.std(axis=0) / np.sqrt(len(debiased))
    assert np.all(np.abs(debiased.mean(axis=0) - truth) < 4 * se), (debiased.mean(axis=0), truth, se)
    assert plain.mean(axis=0)[1] > 20 * se[1]  # without the correction, noise looks like content


# --------------------------------------------------------------------------------------------
# protocols
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cross_lens(small):
    return RadiomicLens(hidden_dim=4, epochs=3, random_state=2).fit(small.X_pre, small.R)


def test_cross_fit_reads_every_case_through_a_projection_that_never_saw_it(small, cross_lens):
    from radiolens.lens.projection import train_projection

    lens = cross_lens
    folds = lens.fold_of_case_
    assert sorted(np.bincount(folds)) == [40, 40] and lens.fold_weight_.shape == (2, 4, 24)
    X = small.X_pre.to_numpy()
    Rn = _scaled(lens, small.R)
    mod_index = np.array([lens.modalities_.index(m) for m in lens.column_info_["modality"]])
    for k in range(2):
        other = folds != k  # projection k is stage 1 trained on the other part only
        np.testing.assert_allclose(lens.fold_x_mean_[k], X[other].mean(axis=0))
        settings = lens._stage1_settings()
        settings.random_state = lens.random_state + 1 + k
        again = train_projection((X[other] - lens.fold_x_mean_[k]) / lens.fold_x_scale_[k], Rn[other], mod_index,
                                 settings)
        np.testing.assert_array_equal(again.weight, lens.fold_weight_[k])
    report = lens.compare(small.X_pre, small.X_ft, small.R, test=small.test)
    assert report.diagnostics["protocol"] == report.params["protocol_used"] == "cross-fit"
    assert report.params["protocol"] == "cross-fit" and report.diagnostics["stage1_case_overlap"] == 0.0
    assert report.diagnostics["scale"] == "whitened" and report.diagnostics["decoder_cases_per_fold"] == [40, 40]
    # I_pre combines the parts: the root mean square of each part's decoder on its own cases
    squares = []
    for k in range(2):
        rows = folds == k
        dec = choose_decoder(lens._projection(k)(X[rows]), Rn[rows], decoder="ols", scale="whitened")
        squares.append(dec.importance_sq)
    np.testing.assert_allclose(report.importance["I_pre"], np.sqrt(np.maximum(np.mean(squares, axis=0), 0)),
                               atol=1e-10)
    # the decoder tables stack the parts' hidden units; a column's norm is still I
    assert report.decoder_ft.shape == (8, len(lens.columns_)) and report.decoder_ft.index[4] == "fold2/z_000"
    np.testing.assert_allclose(np.linalg.norm(report.decoder_ft, axis=0), report.importance["I_ft"], atol=1e-12)


def test_cross_fit_needs_training_cases_or_new_cases_not_a_mix(small, cross_lens):
    mixed = pd.concat([small.R.iloc[:10], small.R_test.iloc[:5]])
    X = pd.concat([small.X_pre.iloc[:10], small.X_pre_test.iloc[:5]])
    with pytest.raises(ValueError, match="mixes 10 training cases.*5 it never saw"):
        cross_lens.compare(X, X, mixed)
    new = cross_lens.compare(small.X_pre_test, small.X_ft_test, small.R_test)
    assert new.diagnostics["protocol"] == "held-out" and new.diagnostics["stage1_case_overlap"] == 0.0


def test_paper_protocol_says_so(small, small_lens):
    report = small_lens.compare(small.X_pre, small.X_ft, small.R, test=small.test)
    assert report.diagnostics["protocol"] == report.params["protocol"] == "paper"
    assert report.diagnostics["scale"] == "paper" and report.diagnostics["match_ft_moments"] is False


def test_per_dimension_shift_and_scale_of_the_fine_tuned_embeddings_changes_nothing(small, cross_lens):
    rng = np.random.default_rng(6)
    a, b = rng.uniform(0.2, 5, size=24), rng.normal(0, 10, size=24)
    moved = small.X_ft * a + b
    test_moved = (small.X_pre_test, small.X_ft_test * a + b, small.R_test)
    base = cross_lens.compare(small.X_pre, small.X_ft, small.R, test=small.test).importance
    same = cross_lens.compare(small.X_pre, moved, small.R, test=test_moved).importance
    np.testing.assert_allclose(same[["I_ft", "r2_ft"]], base[["I_ft", "r2_ft"]], atol=1e-8)
    unmatched = copy.deepcopy(cross_lens).set_params(match_ft_moments=False)
    other = unmatched.compare(small.X_pre, moved, small.R, test=test_moved).importance
    assert not np.allclose(other["r2_ft"], base["r2_ft"], atol=1e-3)


def test_lens_is_a_scikit_learn_estimator(cross_lens):
    from sklearn.base import clone

    twin = clone(cross_lens)
    assert twin.get_params() == cross_lens.get_params() and not hasattr(twin, "weight_")
    assert repr(RadiomicLens(protocol="paper", n_folds=3)) == "RadiomicLens(n_folds=3, protocol='paper')"
    with pytest.raises(ValueError, match="Invalid parameter"):
        RadiomicLens().set_params(verbose=True)
    with pytest.raises(ValueError, match="protocol must be one of"):
        RadiomicLens(protocol="split").fit(np.zeros((4, 2)), pd.DataFrame({"T2W__original_glcm_MCC": [1.0, 2, 3, 4]}))


def test_cross_fitted_lens_round_trips_through_a_folder(small, cross_lens, tmp_path):
    cross_lens.save(tmp_path / "lens")
    back = RadiomicLens.load(tmp_path / "lens")
    for name in ("fold_of_case_", "fold_weight_", "fold_bias_", "fold_x_mean_", "fold_x_scale_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cross_lens, name))
    pd.testing.assert_frame_equal(back.fold_history_, cross_lens.fold_history_, check_dtype=False)
    kw = dict(test=small.test, n_bootstrap=5, n_permutations=5)
    _assert_reports_equal(back.compare(small.X_pre, small.X_ft, small.R, **kw),
                          cross_lens.compare(small.X_pre, small.X_ft, small.R, **kw))
