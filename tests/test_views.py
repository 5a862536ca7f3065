"""Tests of radiolens.plotting's charts and tables: they show what the lens reports hold."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from radiolens import plotting
from radiolens.naming import parse_columns

# --------------------------------------------------------------------------------------------
# A stand-in LensReport with the attributes and ranking semantics of radiolens.lens.LensReport
# (issue 7), built from random numbers with a known answer, so that views can be tested
# independently of the lens's numerics (and quickly).
# --------------------------------------------------------------------------------------------

_FEATURES = {
    "firstorder": ["Kurtosis", "Energy", "TotalEnergy", "Mean"],
    "glcm": ["MCC", "Correlation", "Imc2", "DifferenceEntropy"],
    "gldm": ["DependenceNonUniformityNormalized", "DependenceEntropy"],
    "glrlm": ["ShortRunHighGrayLevelEmphasis", "RunEntropy", "LongRunEmphasis"],
    "glszm": ["GrayLevelVariance", "GrayLevelNonUniformityNormalized"],
    "ngtdm": ["Busyness", "Coarseness"],
}


def _columns(image_types=("original", "wavelet-LLH")) -> list[str]:
    return [
        f"{m}__{i}_{fam}_{feat}"
        for m in ("T2W", "DWI", "ADC")
        for i in image_types
        for fam, feats in _FEATURES.items()
        for feat in feats
    ]


def _stars(p: float) -> str:
    return "***" if p < 1e-3 else "**" if p < 1e-2 else "*" if p < 0.05 else ""


@dataclass
class FakeLensReport:
    importance: pd.DataFrame
    scores: pd.DataFrame
    tests: pd.DataFrame
    observed: pd.DataFrame
    decoded_pre: pd.DataFrame
    decoded_ft: pd.DataFrame
    diagnostics: dict = field(default_factory=dict)

    def gained(self, k=10, by="rel_delta_I"):
        return self.importance.sort_values(by, ascending=False, kind="stable").head(k)

    def lost(self, k=10, by="rel_delta_I"):
        return self.importance.sort_values(by, ascending=True, kind="stable").head(k)

    def stable(self, k=10, by="delta_I", quantile=0.5):
        imp = self.importance
        a, b = ("r2_pre", "r2_ft") if by == "delta_r2" else ("I_pre", "I_ft")
        sub = imp[(imp[a] >= imp[a].quantile(quantile)) & (imp[b] >= imp[b].quantile(quantile))]
        return sub.loc[sub[by].abs().sort_values(kind="stable").index].head(k)


def _r2(true: np.ndarray, pred: np.ndarray) -> float:
    return float(1 - ((true - pred) ** 2).sum() / ((true - true.mean(axis=0)) ** 2).sum())


def make_report(seed: int = 0, n_cases: int = 40, intervals: bool = True) -> FakeLensReport:
    rng = np.random.default_rng(seed)
    columns = _columns()
    parts = parse_columns(columns)
    cases = [f"case{i:03d}" for i in range(n_cases)]
    observed = pd.DataFrame(rng.uniform(size=(n_cases, len(columns))), index=cases, columns=columns)
    noise_pre = rng.uniform(0.05, 0.4, size=len(columns))
    noise_ft = rng.uniform(0.05, 0.4, size=len(columns))
    decoded_pre = observed + rng.normal(size=observed.shape) * noise_pre
    decoded_ft = observed + rng.normal(size=observed.shape) * noise_ft

    importance = parts.drop(columns="filter").copy()
    importance["I_pre"] = rng.uniform(0.5, 2.0, size=len(columns))
    importance["I_ft"] = importance["I_pre"] * rng.uniform(0.3, 3.0, size=len(columns))
    importance["delta_I"] = importance["I_ft"] - importance["I_pre"]
    importance["rel_delta_I"] = importance["delta_I"] / importance["I_pre"]
    importance["r2_pre"] = [_r2(observed[c].to_numpy(), decoded_pre[c].to_numpy()) for c in columns]
    importance["r2_ft"] = [_r2(observed[c].to_numpy(), decoded_ft[c].to_numpy()) for c in columns]
    importance["delta_r2"] = importance["r2_ft"] - importance["r2_pre"]
    if intervals:
        for measure in ("I_pre", "I_ft", "delta_I", "delta_r2"):
            width = rng.uniform(0.01, 0.2, size=len(columns))
            importance[f"{measure}_lo"] = importance[measure] - width
            importance[f"{measure}_hi"] = importance[measure] + width
        importance["p_value"] = rng.uniform(1e-4, 1, size=len(columns))
        importance["p_adjusted"] = np.minimum(importance["p_value"] * 3, 1.0)

    rows = []
    groups = {"overall": {"all": columns}}
    for level in ("modality", "image_type", "family"):
        groups[level] = {g: list(importance.loc[importance[level] == g, "column"]) for g in importance[level].unique()}
    groups["feature"] = {c: [c] for c in columns}
    for stage, decoded in (("pre", decoded_pre), ("ft", decoded_ft)):
        for level, members in groups.items():
            for group, cols in members.items():
                true, pred = observed[cols].to_numpy(), decoded[cols].to_numpy()
                rows.append(
                    {"encoder": stage, "level": level, "group": group, "r2": _r2(true, pred),
                     "mse": float(((true - pred) ** 2).mean())}
                )
    scores = pd.DataFrame(rows)
    # like the lens: pooled ("all") rows, the paper's test, then one block per modality
    p = np.array([0.2, 0.04, 0.003, 0.0004, 0.5, 0.01])
    blocks = [pd.DataFrame({"modality": "all", "family": list(_FEATURES), "p_value": p})]
    blocks += [pd.DataFrame({"modality": m, "family": list(_FEATURES), "p_value": rng.uniform(size=6)})
               for m in ("T2W", "DWI", "ADC")]
    tests = pd.concat(blocks, ignore_index=True)
    tests["statistic"] = rng.uniform(10, 100, size=len(tests))
    tests["p_adjusted"] = np.minimum(tests["p_value"] * 2, 1.0)
    tests["stars"] = tests["p_value"].map(_stars)
    return FakeLensReport(
        importance, scores, tests, observed, decoded_pre, decoded_ft,
        {"warnings": [f"fake warning {seed}"], "condition_number": 12.5},
    )


def fake_reports() -> dict[str, FakeLensReport]:
    return {"pirads": make_report(1), "volume": make_report(2), "lesion (lesion ROI)": make_report(3)}


def fake_sweep(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"l1": a, "l2": b, "val_loss": rng.uniform(0.1, 0.3), "train_loss": rng.uniform(0.05, 0.2)}
            for a in (0, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5) for b in (0, 1e-5, 1e-4, 1e-3)]
    table = pd.DataFrame(rows)
    table["selected"] = table["val_loss"] == table["val_loss"].min()
    return table


def fake_planted() -> pd.DataFrame:
    rows = []
    for method in ("ols_delta_I", "delta_r2", "ridge_delta_I"):
        for hidden in (16, 64, 256):
            for n in (300, 800):
                good = method != "ols_delta_I" or hidden < 96
                rows.append({"method": method, "hidden_dim": hidden, "n_cases": n,
                             "precision_gained": 1.0 if good else 0.0, "precision_lost": 0.9 if good else 0.0})
    return pd.DataFrame(rows)


def fake_downstream() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": ["pirads", "pirads", "volume", "volume", "lesion", "lesion"],
            "regime": ["frozen", "finetuned"] * 3,
            "metric": ["qwk", "qwk", "mse", "mse", "dice", "dice"],
            "value": [0.118, 0.326, 0.007, 0.004, 0.399, 0.429],
        }
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _spec(chart) -> dict:
    return chart.to_dict()


def _datasets(spec: dict) -> list[list[dict]]:
    return list(spec.get("datasets", {}).values())


def _compiles(chart) -> str:
    """Compile and render the spec with Vega (vl-convert); return the SVG."""
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())


@pytest.fixture(scope="module")
def report():
    return make_report(1)


@pytest.fixture(scope="module")
def reports():
    return fake_reports()


# --------------------------------------------------------------------------------------------
# Table 1
# --------------------------------------------------------------------------------------------


def test_table1_matches_scores_and_tests(report):
    table = plotting.table1(report)
    families = list(table.loc[table["level"] == "family", "group"])
    assert families == ["firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm"]  # the paper's order
    assert list(table.loc[table["level"] == "image_type", "group"]) == ["Original", "Wavelet"]
    assert table["level"].iloc[-1] == "overall"
    scores = report.scores.set_index(["encoder", "level", "group"])
    for row in table.itertuples():
        assert row.r2_pre == pytest.approx(scores.loc[("pre", row.level, row.group), "r2"])
        assert row.mse_ft == pytest.approx(scores.loc[("ft", row.level, row.group), "mse"])
        assert row.delta_r2 == pytest.approx(row.r2_ft - row.r2_pre)
    pooled = report.tests[report.tests["modality"] == "all"]
    stars = dict(zip(pooled["family"], pooled["stars"]))
    fam = table[table["level"] == "family"]
    assert dict(zip(fam["group"], fam["stars"])) == stars
    assert set(table.loc[table["level"] != "family", "stars"]) == {""}
    assert table.loc[table["group"] == "glcm", "label"].item() == "GLCM"


def test_family_scores_chart_draws_table1_values_and_stars(report):
    chart = plotting.family_scores_chart(report)
    spec = _spec(chart)
    (rows,) = _datasets(spec)
    table = plotting.table1(report)
    ngtdm_ft = [r for r in rows if r["label"] == "NGTDM" and r["encoder"] == "fine-tuned" and r["metric"] == "R²"]
    assert ngtdm_ft[0]["value"] == pytest.approx(table.loc[table["group"] == "ngtdm", "r2_ft"].item())
    assert {r["stars"] for r in rows if r["label"] == "GLRLM"} == {"***"}
    svg = _compiles(chart)
    assert "***" in svg and "NGTDM" in svg


def test_modality_chart_uses_modality_scores(report):
    chart = plotting.modality_r2_chart(report)
    data = chart.data
    expected = report.scores[report.scores["level"] == "modality"]
    assert len(data) == len(expected) == 6
    dwi_ft = data[(data["modality"] == "DWI") & (data["encoder"] == "fine-tuned")]["r2"].item()
    assert dwi_ft == pytest.approx(expected[(expected["group"] == "DWI") & (expected["encoder"] == "ft")]["r2"].item())
    assert "<svg" in _compiles(chart)


# --------------------------------------------------------------------------------------------
# Fig. 3
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gained", "lost", "stable"])
def test_ranking_chart_follows_the_lens_ranking_with_intervals(report, kind):
    chart = plotting.ranking_chart(report, kind=kind, k=7, by="delta_I")
    data = chart.data
    expected = getattr(report, kind)(7, by="delta_I")
    assert list(data["column"]) == list(expected["column"])
    assert list(data["rank"]) == list(range(1, 8))
    imp = report.importance.set_index("column")
    for row in data.itertuples():
        assert row.lo == pytest.approx(imp.loc[row.column, "delta_I_lo"])
        assert row.hi == pytest.approx(imp.loc[row.column, "delta_I_hi"])
        assert row.p_value == pytest.approx(imp.loc[row.column, "p_value"])
    spec = _spec(chart)
    tooltips = {t.get("field") for t in spec["layer"][0]["encoding"]["tooltip"]}
    assert {"p_value", "p_adjusted", "rel_delta_I", "lo", "hi"} <= tooltips
    assert spec["layer"][1]["mark"]["type"] == "rule"  # the interval
    # the y axis keeps the lens's order, not alphabetical order
    assert spec["layer"][0]["encoding"]["y"]["sort"] == list(expected["column"])


def test_ranking_chart_default_is_the_papers_relative_change(report):
    data = plotting.ranking_chart(report, kind="lost", k=6).data
    assert list(data["column"]) == list(report.lost(6, by="rel_delta_I")["column"])
    assert np.allclose(data["value"], data["rel_delta_I"])
    assert data["lo"].isna().all()  # the lens bootstraps delta_I, not its ratio: no made-up interval
    assert np.allclose(data["delta_I_lo"], report.importance.set_index("column").loc[data["column"], "delta_I_lo"])


def test_ranking_chart_by_delta_r2_and_without_intervals():
    report = make_report(4, intervals=False)
    chart = plotting.ranking_chart(report, kind="gained", k=5, by="delta_r2")
    data = chart.data
    assert list(data["column"]) == list(report.gained(5, by="delta_r2")["column"])
    assert np.allclose(data["value"], data["delta_r2"])
    assert data["lo"].isna().all()
    assert "<svg" in _compiles(chart)


def test_ranking_rejects_unknown_kind(report):
    with pytest.raises(ValueError, match="gained"):
        plotting.ranking_chart(report, kind="best")


# --------------------------------------------------------------------------------------------
# Across tasks
# --------------------------------------------------------------------------------------------


def test_delta_heatmap_values_are_grouped_means(reports):
    chart = plotting.delta_heatmap(reports)
    data = chart.data
    assert set(data["task"]) == set(reports)
    for task, report in reports.items():
        expected = report.importance.groupby(["modality", "family"])["delta_I"].mean()
        got = data[data["task"] == task].set_index(["modality", "family"])["value"]
        pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    spec = _spec(chart)
    assert spec["facet"]["column"]["field"] == "task"
    scale = spec["spec"]["layer"][0]["encoding"]["color"]["scale"]
    assert scale["domainMid"] == 0 and scale["domain"][0] == -scale["domain"][1]
    assert "<svg" in _compiles(chart)


def test_delta_heatmap_rejects_empty_and_unknown_measure(report):
    with pytest.raises(ValueError, match="non-empty"):
        plotting.delta_heatmap({})
    with pytest.raises(ValueError, match="no column 'nope'"):
        plotting.delta_heatmap({"t": report}, value="nope")


# --------------------------------------------------------------------------------------------
# Explorer
# --------------------------------------------------------------------------------------------


def test_explorer_data_keeps_exact_topk_for_every_filter(reports):
    tables = plotting.explorer_data(reports, top_max=3, scatter_top=2, max_cases=10)
    features = tables["features"]
    assert features["fid"].is_unique  # one id per task and feature
    column_of = features.set_index("fid")["column"]
    ranks = tables["ranks"].assign(column=lambda t: column_of.loc[t["fid"]].to_numpy())
    assert set(features["task"] + "|" + features["column"]) == set(ranks["task"] + "|" + ranks["column"])
    report = reports["volume"]
    full = plotting.ranked(report, "lost", None, "delta_I")
    assert list(full["column"]) == list(report.lost(len(report.importance), by="delta_I")["column"])
    # for a family filter, the kept rows must contain that family's true top 3
    kept = ranks[(ranks["task"] == "volume") & (ranks["measure"] == "delta_I") & (ranks["mode"] == "lost")]
    for family in ("glcm", "ngtdm"):
        truth = list(full.loc[full["family"] == family, "column"].head(3))
        got = list(kept[kept["family"] == family].sort_values("rank")["column"].head(3))
        assert got == truth
    # at most top_max rows per (task, measure, mode, modality, family)
    assert ranks.groupby(["task", "measure", "mode", "modality", "family"]).size().max() == 3
    scatter = tables["scatter"]
    assert scatter.groupby("task")["case"].nunique().max() == 10
    for row in scatter.sample(20, random_state=0).itertuples():
        source = reports[row.task]
        column = column_of.loc[row.fid]
        assert features.set_index("fid").loc[row.fid, "task"] == row.task
        assert row.true == pytest.approx(source.observed.loc[row.case, column], rel=1e-3)  # 4 digits kept
        assert row.ft == pytest.approx(source.decoded_ft.loc[row.case, column], rel=1e-3)
    # the scatter features are the top 2 of every ranking of each task
    volume = set(column_of.loc[scatter.loc[scatter["task"] == "volume", "fid"].unique()])
    assert set(report.gained(2, by="delta_r2")["column"]) <= volume
    assert set(report.stable(2, by="rel_delta_I")["column"]) <= volume
    assert features["has_scatter"].any() and not features["has_scatter"].all()


def test_explorer_is_kernel_free_with_bound_controls(reports):
    chart = plotting.delta_explorer(reports, k=8, top_max=12)
    spec = _spec(chart)
    params = {p["name"]: p for p in spec["params"]}
    assert params["task"]["bind"]["input"] == "select"
    assert params["task"]["bind"]["options"] == list(reports)
    assert params["mode"]["bind"]["options"] == ["gained", "lost", "stable"]
    assert params["k"]["bind"]["input"] == "range" and params["k"]["bind"]["max"] == 12
    assert params["k"]["value"] == 8
    assert params["modality"]["bind"]["options"] == ["All", "T2W", "DWI", "ADC"]
    text = json.dumps(spec)
    assert '"pick"' in text and '"click"' in text
    assert set(spec["datasets"]) == {"explorer_ranks", "explorer_scatter", "explorer_features"}
    # the embedded data are bounded: p features x tasks would be far more rows
    assert params["measure"]["bind"]["options"] == ["rel_delta_I", "delta_I", "delta_r2"]
    assert len(_csv_dataset(spec, "explorer_scatter")) <= len(reports) * 9 * 5 * 60
    svg = _compiles(chart)
    assert "Top k" not in svg  # the controls are HTML inputs, not part of the drawing
    # the initial view draws the top-k gained of the first task by the paper's relative change
    first = plotting.ranked(reports["pirads"], "gained", 8, "rel_delta_I")
    positions = [svg.index(f">{column}<") for column in first["column"]]
    assert positions == sorted(positions)  # drawn top to bottom in the lens's order
    assert plotting.ranked(reports["pirads"], "gained", 9, "rel_delta_I")["column"].iloc[-1] not in svg


# --------------------------------------------------------------------------------------------
# Pipeline tables
# --------------------------------------------------------------------------------------------


def test_sweep_chart_marks_selected_penalties():
    sweeps = {"pirads": fake_sweep(0), "volume": fake_sweep(1)}
    chart = plotting.sweep_chart(sweeps)
    data = chart.data
    assert len(data) == 48 and set(data["task"]) == {"pirads", "volume"}
    chosen = data[data["selected"]]
    assert len(chosen) == 2
    for task, sweep in sweeps.items():
        best = sweep.loc[sweep["val_loss"].idxmin()]
        row = chosen[chosen["task"] == task].iloc[0]
        assert (row["l1"], row["l2"]) == (best["l1"], best["l2"])
    spec = _spec(chart)
    assert spec["spec"]["layer"][0]["encoding"]["x"]["sort"] == ["0", "1e-07", "3e-07", "1e-06", "3e-06", "1e-05"]
    assert "<svg" in _compiles(chart)
    single = plotting.sweep_chart(fake_sweep(0))
    assert "task" not in single.data
    with pytest.raises(ValueError, match="val_loss"):
        plotting.sweep_chart(fake_sweep(0).drop(columns="val_loss"))


def test_planted_truth_chart_long_format():
    table = fake_planted()
    chart = plotting.planted_truth_chart(table)
    data = chart.data
    assert len(data) == 2 * len(table)
    ols = data[(data["method"] == "ols_delta_I") & (data["hidden_dim"] == 256)]
    assert (ols["precision"] == 0).all()
    assert "<svg" in _compiles(chart)
    with pytest.raises(ValueError, match="precision_lost"):
        plotting.planted_truth_chart(table.drop(columns="precision_lost"))


def test_table2_and_downstream_chart():
    table = fake_downstream()
    wide = plotting.table2(table)
    assert list(wide.columns) == ["task", "metric", "frozen", "finetuned"]
    assert wide.set_index("task").loc["pirads", "finetuned"] == pytest.approx(0.326)
    chart = plotting.downstream_chart(table)
    assert set(chart.data["panel"]) == {"pirads (qwk)", "volume (mse)", "lesion (dice)"}
    assert _spec(chart)["resolve"]["scale"]["y"] == "independent"
    assert "<svg" in _compiles(chart)


def test_comparison_chart_draws_each_tested_difference_in_its_verdicts_colour():
    from radiolens.finetune.comparison import compare_regimes, simulate_regimes
    from radiolens.plotting.style import VERDICT_COLORS

    lesion = compare_regimes("lesion", *simulate_regimes("lesion", 40, effect=0.3, seed=1))
    volume = compare_regimes("volume", *simulate_regimes("volume", 40, seed=1))
    chart = plotting.comparison_chart(pd.concat([lesion, volume], ignore_index=True))
    assert list(chart.data["panel"]) == ["lesion (dice)", "volume (mse)", "volume (mae_ml)"]
    assert list(chart.data["verdict"]) == ["better", "no detectable difference", "no detectable difference"]
    spec = _spec(chart)
    scales = [layer["encoding"]["color"]["scale"] for layer in spec["spec"]["layer"] if "color" in layer.get("encoding", {})]
    assert scales and all(s["domain"] == list(VERDICT_COLORS) and s["range"] == list(VERDICT_COLORS.values())
                          for s in scales)
    assert spec["resolve"]["scale"]["x"] == "independent"
    assert "<svg" in _compiles(chart)
    with pytest.raises(ValueError, match="p_value"):
        plotting.comparison_chart(lesion.drop(columns="p_value"))


def _csv_dataset(spec: dict, name: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(spec["datasets"][name]), keep_default_na=False, na_values=[""])


def test_explorer_shows_definitions_and_says_when_scatter_is_missing(reports):
    def define(column):
        if "firstorder" in column:
            raise ValueError("unknown")  # like feature_definition for an unknown feature
        return f"definition of {column} " * 4

    chart = plotting.delta_explorer(reports, top_max=5, scatter_top=1, definitions=define)
    spec = _spec(chart)
    rows = _csv_dataset(spec, "explorer_features")
    rows["note"] = rows["note"].fillna("")
    embedded = rows[(rows["has_scatter"] == 1) & ~rows["column"].str.contains("firstorder")]
    missing = rows[rows["has_scatter"] == 0]
    assert len(embedded) and len(missing)
    # at p = 2500 definitions of every kept feature would swamp the page: only the embedded ones
    assert (missing["note"] == "").all()
    lines = embedded["note"].iloc[0].split("|")
    assert 2 <= len(lines) <= 5 and all(len(line) <= 62 for line in lines)
    assert " ".join(lines).startswith(f"definition of {embedded['column'].iloc[0]}")
    assert (rows.loc[(rows["has_scatter"] == 1) & rows["column"].str.contains("firstorder"), "note"] == "").all()
    # the page says so for features without scatter data, and draws the definition lines
    assert "not embedded" in json.dumps(spec)
    import vl_convert as vlc

    svg = vlc.vegalite_to_svg(chart.to_json())
    initial = reports["pirads"].gained(1)["column"].iloc[0]  # selected when the page opens
    shown = rows.set_index(["task", "column"]).loc[("pirads", initial), "note"].split("|")
    assert shown[0].startswith(f"definition of {initial}")
    assert f">{shown[0]}<" in svg and f">{shown[1]}<" in svg

    column = rows["column"].iloc[0]
    spec = _spec(plotting.delta_explorer(reports, top_max=5, scatter_top=1, definitions={column: "short text"}))
    again = _csv_dataset(spec, "explorer_features").set_index(["task", "column"])
    assert again.loc[(rows["task"].iloc[0], column), "note"].startswith("short text")


def test_planted_truth_chart_keeps_protocols_apart():
    table = pd.DataFrame({
        "method": ["ols delta_I (paper)"] * 2, "hidden_dim": [256, 256], "n_cases": [300, 300],
        "precision_gained": [0.0, 1.0], "precision_lost": [0.0, 1.0], "protocol": ["paper", "held-out decoders"],
    })
    spec = plotting.planted_truth_chart(table).to_dict()
    assert spec["facet"]["row"]["field"] == "protocol"  # never averaged into one line
    assert "row" not in plotting.planted_truth_chart(table.drop(columns="protocol")).to_dict()["facet"]
