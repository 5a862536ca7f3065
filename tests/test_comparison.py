"""Paired tests of Table 2's frozen-vs-full differences (radiolens.finetune.comparison)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from radiolens.finetune.comparison import (
    compare_regimes,
    comparison_calibration,
    describe_comparison,
    qwk_rows,
    simulate_regimes,
)
from radiolens.finetune.metrics import quadratic_weighted_kappa, task_metrics
from radiolens.tasks import get_task


def test_qwk_rows_is_sklearns_quadratic_kappa_row_by_row():
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 4, (50, 30)), rng.integers(0, 4, (50, 30))
    pred[:10] = np.clip(true[:10] + rng.integers(-1, 2, (10, 30)), 0, 3)  # some agreement
    expected = [cohen_kappa_score(t, p, weights="quadratic", labels=[0, 1, 2, 3]) for t, p in zip(true, pred)]
    np.testing.assert_allclose(qwk_rows(true, pred), expected, rtol=1e-12, atol=1e-12)
    assert np.isnan(qwk_rows([2, 2, 2], [2, 2, 2])[0])  # both raters constant and equal: undefined


@pytest.mark.parametrize("task", ["pirads", "volume", "lesion"])
def test_the_compared_values_are_the_metrics_table2_reports(task):
    """compare_regimes recomputes each regime's metrics from the per-case predictions exactly as
    training scored them."""
    frozen, full = simulate_regimes(task, 30, effect=0.1, seed=3)
    table = compare_regimes(task, frozen, full, n_resamples=50)
    spec = get_task(task)
    for regime, predictions in (("frozen", frozen), ("full", full)):
        if spec.kind == "classification":
            expected = {"qwk": quadratic_weighted_kappa(predictions["true"], predictions["pred"]),
                        "accuracy": float((predictions["true"] == predictions["pred"]).mean())}
        elif spec.kind == "regression":
            out, y = predictions["pred_std"].to_numpy(), predictions["true_std"].to_numpy()
            std = (predictions["true_ml"] - 40).std() / predictions["true_std"].std()
            expected = task_metrics(spec, out, y, target_stats=(40.0, std))
        else:
            expected = {"dice": float(predictions["dice"].dropna().mean())}
        got = table.set_index("metric")[regime]
        for metric, value in expected.items():
            if metric in got:
                assert got[metric] == pytest.approx(value, rel=1e-9), (regime, metric)
    np.testing.assert_allclose(table["difference"], table["full"] - table["frozen"])


def test_a_real_difference_is_flagged_in_the_right_direction():
    frozen, full = simulate_regimes("lesion", 40, effect=0.25, seed=1)
    row = compare_regimes("lesion", frozen, full).iloc[0]
    assert row.verdict == "better" and row.p_value < 0.01 and row.ci_low > 0
    row = compare_regimes("lesion", full, frozen).iloc[0]  # swapped: full fine-tuning made it worse
    assert row.verdict == "worse" and row.ci_high < 0
    frozen, full = simulate_regimes("volume", 40, effect=0.6, seed=1)
    mse = compare_regimes("volume", frozen, full).set_index("metric").loc["mse"]
    assert mse.difference < 0 and mse.verdict == "better"  # lower MSE is better


def test_identical_regimes_are_not_different():
    frozen, _ = simulate_regimes("pirads", 40, seed=2)
    table = compare_regimes("pirads", frozen, frozen.copy())
    assert (table["difference"] == 0).all() and (table["p_value"] == 1).all()
    assert (table["verdict"] == "no detectable difference").all()


@pytest.mark.parametrize("task", ["pirads", "volume", "lesion"])
def test_the_test_flags_unchanged_regimes_at_most_at_its_level_and_has_power(task):
    """Calibration on data where the truth is known: two regimes drawn from one model are flagged
    in at most ~5% of 400 runs (plus three Monte-Carlo standard errors), and so is the interval;
    a real improvement is flagged far more often."""
    null = comparison_calibration(task, n_cases=40, n_runs=400, effect=0.0, n_resamples=199, seed=11)
    se = np.sqrt(0.05 * 0.95 / 400)
    assert (null["flagged"] <= 0.05 + 3 * se).all(), null
    assert (null["interval_excludes_0"] <= 0.05 + 3 * se).all(), null
    assert (null["flagged"] >= 0.01).all(), null  # not so conservative that it never rejects
    # on 40 cases a kappa or MSE change must be large to be seen (a kappa gain of about the paper's 0.21)
    effect = {"pirads": 0.5, "volume": 0.5, "lesion": 0.3}[task]
    power = comparison_calibration(task, n_cases=40, n_runs=100, effect=effect, n_resamples=199, seed=12)
    assert (power["flagged"] >= 0.4).all(), power


def test_regimes_scored_on_different_cases_are_refused():
    frozen, full = simulate_regimes("pirads", 20, seed=0)
    with pytest.raises(ValueError, match="different test cases"):
        compare_regimes("pirads", frozen, full.iloc[:-1])
    with pytest.raises(ValueError, match="twice"):
        compare_regimes("pirads", pd.concat([frozen, frozen.iloc[:1]]), full)


def test_the_sentence_carries_the_tables_numbers():
    frozen, full = simulate_regimes("lesion", 40, effect=0.25, seed=1)
    table = pd.concat([compare_regimes("lesion", frozen, full),
                       compare_regimes("pirads", *simulate_regimes("pirads", 40, seed=2))], ignore_index=True)
    text = describe_comparison(table)
    lesion, pirads = table.iloc[0], table.iloc[1]
    assert f"lesion Dice {lesion.difference:+.2f}" in text and f"p = {lesion.p_value:.2g}" in text
    assert "lesion Dice (better)" in text
    assert f"PI-RADS kappa {pirads.difference:+.2f}" in text
    assert "accuracy" not in text  # headline metrics only
    assert "no detectable difference: PI-RADS kappa" in text or pirads.verdict != "no detectable difference"
