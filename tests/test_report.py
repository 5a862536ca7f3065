"""Tests of radiolens.report: a self-contained page that opens offline and says what it shows."""

from __future__ import annotations

import json
import re
from html import escape as html_escape
from html import unescape

import numpy as np
import pandas as pd
import pytest
from test_views import fake_downstream, fake_planted, fake_reports, fake_sweep, make_report

from radiolens import plotting
from radiolens.finetune.comparison import compare_regimes, describe_comparison, simulate_regimes
from radiolens.report import slug, write_report

import browser

needs_browser = pytest.mark.skipif(browser.skip_reason() is not None, reason=str(browser.skip_reason()))

PROVENANCE = {
    "radiolens": "0.1.0",
    "seed": 11,
    "config": {"cohort": {"source": "synthetic", "n_cases": 60}, "lens": {"decoder": "ols", "top_k": 6,
                                                                        "n_bootstrap": 50}},
    "timings_s": {"radiomics": 12.5, "lens": 3.25},
}
WAIT = "window.radiolensCharts && window.radiolensCharts.done"


class SavingReport:
    """A fake report that can also save itself, like LensReport.to_dir."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def to_dir(self, path):
        self.importance.to_csv(f"{path}/importance.csv", index=False)


@pytest.fixture(scope="module")
def study():
    reports = fake_reports()
    reports["pirads"] = SavingReport(reports["pirads"])
    return {
        "reports": reports,
        "downstream": fake_downstream(),
        "comparison": pd.concat([compare_regimes(task, *simulate_regimes(task, 40, effect, seed=4))
                                 for task, effect in (("pirads", 0.0), ("lesion", 0.3))], ignore_index=True),
        "sweeps": {task: fake_sweep(i) for i, task in enumerate(reports)},
        "planted": fake_planted(),
    }


@pytest.fixture(scope="module")
def written(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = write_report(
        out,
        study["reports"],
        downstream=study["downstream"],
        comparison=study["comparison"],
        sweeps=study["sweeps"],
        planted=study["planted"],
        provenance=PROVENANCE,
        warnings=["task 'extra' skipped: no labels"],
    )
    return path, path.read_text(encoding="utf-8")


def _specs(html: str) -> dict[str, dict]:
    found = re.findall(r'<script type="application/json" id="([^"]+)-spec">(.*?)</script>', html, flags=re.S)
    return {ident: json.loads(text) for ident, text in found}


def _cells(html: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table class="tbl" id="{re.escape(table_id)}">.*?<tbody>(.*?)</tbody>', html, flags=re.S)
    assert body, f"table {table_id} not in the page"
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body.group(1))]


# --------------------------------------------------------------------------------------------
# The page opens offline
# --------------------------------------------------------------------------------------------


def test_javascript_is_inlined_once(written):
    _, html = written
    assert not re.search(r"<script[^>]*\bsrc=", html)  # nothing to fetch
    assert not re.search(r"<link[^>]*\bhref=\"https?:", html)
    assert html.count("window.vegaEmbed=") == 1  # the bundle, once, not once per chart
    assert len(_specs(html)) == html.count('class="vl-chart"') >= 20


@needs_browser
@pytest.mark.browser
def test_report_draws_every_chart_offline_without_console_errors(written, study):
    path, html = written
    k = PROVENANCE["config"]["lens"]["top_k"]
    js_labels = (
        "Array.from(document.querySelectorAll('#explorer .role-axis-label text')).map(t => t.textContent)"
    )
    page = browser.open_page(
        path,
        wait_for=WAIT,
        timeout=90,
        evaluate={
            "state": "({total: radiolensCharts.total, drawn: radiolensCharts.drawn, failed: radiolensCharts.failed})",
            "undrawn": "Array.from(document.querySelectorAll('div.vl-chart'))"
            ".filter(el => !el.querySelector('svg')).map(el => el.id)",
            "labels_before": js_labels,
            "explorer_texts": "Array.from(document.querySelectorAll('#explorer .mark-text.role-mark text'))"
            ".map(t => t.textContent)",
            "points_before": "document.querySelectorAll('#explorer .mark-symbol.role-mark path').length",
            # drive the explorer's bound controls like a reader: task select, then ranking radio
            "switch": "(async () => {"
            " const box = document.getElementById('explorer');"
            " const task = box.querySelector('select[name=task]');"
            " task.value = 'volume'; task.dispatchEvent(new Event('change'));"
            " const lost = box.querySelector('input[name=mode][value=lost]');"
            " lost.checked = true; lost.dispatchEvent(new Event('change'));"
            " await radiolensViews['explorer'].runAsync();"
            " await new Promise(r => setTimeout(r, 300)); return true; })()",
            "labels_after": js_labels,

        },
    )
    assert page.waited, "charts did not finish drawing"
    assert page.errors == []
    assert page.requests == []
    state = page.values["state"]
    assert state["total"] == html.count('class="vl-chart"') and state["drawn"] == state["total"]
    assert state["failed"] == 0
    assert page.values["undrawn"] == []
    reports = study["reports"]
    before = [t for t in page.values["labels_before"] if "__" in t]
    assert before == list(reports["pirads"].gained(k, by="rel_delta_I")["column"])
    after = [t for t in page.values["labels_after"] if "__" in t]
    assert after == list(reports["volume"].lost(k, by="rel_delta_I")["column"])
    # the explorer starts with the top feature selected, so its header and scatter are not empty
    assert before[0] in page.values["explorer_texts"]
    assert page.values["points_before"] == 2 * 40  # pre and ft for each of the 40 evaluation cases


@needs_browser
@pytest.mark.browser
def test_browser_check_catches_a_page_that_needs_the_cdn(tmp_path, study):
    """Why the JavaScript is inlined: Altair's default page loads vega from a CDN and, offline,
    draws nothing. The browser check must see that."""
    chart = plotting.modality_r2_chart(study["reports"]["volume"])
    page_path = tmp_path / "cdn.html"
    page_path.write_text(chart.to_html(), encoding="utf-8")
    assert "cdn.jsdelivr.net" in page_path.read_text()
    page = browser.open_page(page_path, timeout=30, evaluate={"svgs": "document.querySelectorAll('svg').length"})
    assert any("cdn.jsdelivr.net" in url for url in page.requests)
    assert page.errors  # failed script loads are reported
    assert page.values["svgs"] == 0
    # ... and the same page draws when a test serves those scripts locally (what the book's
    # browser test does): the failure above was the network, nothing else
    from radiolens.report import javascript_bundle

    routes = {
        "https://cdn.jsdelivr.net/npm/vega@": javascript_bundle(),  # defines vega, vegaLite, vegaEmbed
        "https://cdn.jsdelivr.net/npm/vega-lite@": "",
        "https://cdn.jsdelivr.net/npm/vega-embed@": "",
    }
    page = browser.open_page(page_path, wait_for="document.querySelector('svg, canvas')", timeout=30, routes=routes,
                             evaluate={"drawn": "document.querySelectorAll('canvas, svg').length"})
    assert page.waited and page.errors == [] and page.requests == []
    assert page.values["drawn"] >= 1


# --------------------------------------------------------------------------------------------
# What the page and the files say
# --------------------------------------------------------------------------------------------


def test_honest_header(written):
    _, html = written
    header = unescape(html[html.index('<header class="box"'): html.index("</header>")])
    assert "radiolens</b> applied to the built-in synthetic prostate mpMRI cohort (60 cases)" in header
    assert "The data are SYNTHETIC" in header and "not expected" in header
    assert "The paper's method" in header and "What radiolens adds" in header
    for addition in ("held-out", "ridge", "bootstrap", "permutation", "scale-aware", "planted-truth"):
        assert addition in header
    assert "decoder = <code>ols</code>" in header


@pytest.mark.parametrize(
    "provenance, expected, synthetic",
    [
        ({"config": {"cohort": {"source": "picai", "path": "/data/picai"}}}, "the 'picai' cohort from /data/picai", False),
        (None, "source was not recorded", True),
    ],
)
def test_header_names_other_data(tmp_path, provenance, expected, synthetic):
    path = write_report(tmp_path, {"t": make_report(5)}, provenance=provenance, explorer=False)
    html = path.read_text()
    header = unescape(html[: html.index("</header>")])
    assert expected in header
    assert ("The data are SYNTHETIC" in header) == synthetic
    assert json.loads((tmp_path / "summary.json").read_text())["synthetic"] == synthetic


def test_rankings_in_page_and_summary_match_the_reports(written, study):
    path, html = written
    summary = json.loads((path.parent / "summary.json").read_text())
    k = PROVENANCE["config"]["lens"]["top_k"]
    for task, report in study["reports"].items():
        s = slug(task)
        facts = summary["tasks"][task]
        for kind in ("gained", "lost", "stable"):
            expected = list(getattr(report, kind)(k, by="rel_delta_I")["column"])  # the paper's measure
            assert facts[f"top_{kind}"] == expected
            assert [row[1] for row in _cells(html, f"{kind}-rel_delta_I-{s}")] == expected
            for by in ("delta_I", "delta_r2"):
                expected = list(getattr(report, kind)(k, by=by)["column"])
                assert facts[f"top_{kind}_{by}"] == expected
                assert [row[1] for row in _cells(html, f"{kind}-{by}-{s}")] == expected
        top = report.gained(1)["column"].iloc[0]  # the lens's default ranking
        row = _cells(html, f"gained-rel_delta_I-{s}")[0]
        assert row[1] == top
        imp = report.importance.set_index("column").loc[top]
        assert float(row[2]) == pytest.approx(imp["rel_delta_I"], rel=1e-3)  # 4 significant digits
        assert float(row[3]) == pytest.approx(imp["delta_I"], rel=1e-3)
        assert facts["n_features"] == len(report.importance)
        assert facts["overall"]["r2_ft"] == pytest.approx(
            report.scores.query("encoder == 'ft' and level == 'overall'")["r2"].item()
        )


def test_csv_tables_match_inputs(written, study):
    path, _ = written
    tables = path.parent / "tables"
    reports = study["reports"]
    for task, report in reports.items():
        s = slug(task)
        t1 = pd.read_csv(tables / f"table1_{s}.csv", keep_default_na=False, na_values=[""])
        expected = plotting.table1(report)
        np.testing.assert_allclose(t1[["mse_pre", "mse_ft", "r2_pre", "r2_ft"]], expected[["mse_pre", "mse_ft", "r2_pre", "r2_ft"]])
        assert list(t1["stars"].fillna("")) == list(expected["stars"])
        imp = pd.read_csv(tables / f"importance_{s}.csv")
        pd.testing.assert_frame_equal(imp, report.importance.reset_index(drop=True), check_dtype=False, atol=1e-12)
    t2 = pd.read_csv(tables / "downstream_table2.csv")
    pd.testing.assert_frame_equal(t2, plotting.table2(study["downstream"]), check_dtype=False)
    tests = pd.read_csv(tables / "downstream_comparison.csv")
    pd.testing.assert_frame_equal(tests, study["comparison"], check_dtype=False)
    heat = pd.read_csv(tables / "delta_heatmap.csv")
    means = reports["volume"].importance.groupby(["modality", "family"])["delta_I"].mean()
    got = heat[heat["task"] == "volume"].set_index(["modality", "family"])["value"]
    pd.testing.assert_series_equal(got.sort_index(), means.sort_index(), check_names=False)
    sweep = pd.read_csv(tables / "sweep.csv")
    assert len(sweep) == sum(len(t) for t in study["sweeps"].values())
    planted = pd.read_csv(tables / "planted_truth.csv")
    pd.testing.assert_frame_equal(planted, study["planted"], check_dtype=False)


def test_embedded_heatmap_spec_holds_the_grouped_means(written, study):
    _, html = written
    spec = _specs(html)["heatmap-delta_I"]
    (rows,) = spec["datasets"].values()
    got = {(r["task"], r["modality"], r["family"]): r["value"] for r in rows}
    for task, report in study["reports"].items():
        for (modality, family), value in report.importance.groupby(["modality", "family"])["delta_I"].mean().items():
            assert got[(task, modality, family)] == pytest.approx(value)


def test_summary_warnings_provenance_and_saved_lens_reports(written, study):
    path, html = written
    out = path.parent
    summary = json.loads((out / "summary.json").read_text())
    assert "task 'extra' skipped: no labels" in summary["warnings"]
    assert "pirads: fake warning 1" in summary["warnings"]  # the lens's own diagnostics warnings
    warnings_section = html[html.index('<section id="warnings">'):]
    assert "task &#x27;extra&#x27; skipped: no labels" in warnings_section
    assert summary["provenance"]["seed"] == 11
    assert summary["provenance"]["timings_s"] == {"radiomics": 12.5, "lens": 3.25}
    assert "altair" in summary["provenance"]["report_libraries"]
    assert "12.5" in html[html.index('id="timings"'):]
    best = study["sweeps"]["volume"].sort_values("val_loss").iloc[0]
    assert summary["sweep_selected"]["volume"]["l1"] == best["l1"]
    assert summary["downstream"][1]["value"] == pytest.approx(0.326)
    # Table 2's tested differences: the sentence on the page is the one computed from the table
    assert summary["downstream_comparison"][2]["verdict"] == "better"
    assert html_escape(describe_comparison(study["comparison"])) in html
    assert len(_cells(html, "table2-tests")) == len(study["comparison"])
    # the report that can save itself was saved; the others were skipped
    saved = pd.read_csv(out / "lens" / "pirads" / "importance.csv")
    assert list(saved["column"]) == list(study["reports"]["pirads"].importance["column"])
    assert not (out / "lens" / "volume").exists()
    for name in summary["files"]:
        assert (out / name).exists(), name


def test_a_broken_task_is_reported_not_fatal(tmp_path):
    good = make_report(6)
    broken = make_report(7)
    broken.scores = broken.scores.drop(columns="r2")
    path = write_report(tmp_path, {"good": good, "broken": broken}, explorer=False, warnings=["w0"])
    html = path.read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tasks"]["good"]["top_gained"] == list(good.gained(10)["column"])
    assert any("lacks columns ['r2']" in w for w in summary["warnings"])
    assert "lacks columns" in html
    assert (tmp_path / "tables" / "table1_good.csv").exists()


def test_empty_study_and_rewrite(tmp_path):
    path = write_report(tmp_path, {}, warnings=["task 'pirads' skipped: no labels"])
    html = path.read_text()
    assert "No task produced a lens report" in html
    assert "vl-chart" not in html.split("</head>")[1] or html.count('class="vl-chart"') == 0
    # writing again over an existing folder replaces the files
    path = write_report(tmp_path, {"t": make_report(8), "u": make_report(9)}, explorer=False)
    assert "No task produced" not in path.read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["tasks"].keys() == {"t", "u"}
    # a task missing from a later report leaves no stale tables behind; other files are kept
    (tmp_path / "tables" / "mine.csv").write_text("a\n1\n")
    write_report(tmp_path, {"t": make_report(8)}, explorer=False)
    assert not (tmp_path / "tables" / "table1_u.csv").exists()
    assert (tmp_path / "tables" / "table1_t.csv").exists() and (tmp_path / "tables" / "mine.csv").exists()


# --------------------------------------------------------------------------------------------
# With the real lens
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_reports():
    from radiolens.lens import RadiomicLens
    from radiolens.lens.simulation import planted_shift

    reports = {}
    for seed, task in enumerate(("pirads", "volume")):
        sim = planted_shift(n_cases=80, d=24, n_per_modality=8, n_test=30, seed=seed)
        lens = RadiomicLens(hidden_dim=8, epochs=15, random_state=0).fit(sim.X_pre, sim.R)
        reports[task] = lens.compare(sim.X_pre, sim.X_ft, sim.R, test=sim.test, n_bootstrap=10, n_permutations=10)
    return reports


@needs_browser
@pytest.mark.browser
def test_report_of_real_lens_reports(real_reports, tmp_path):
    from radiolens.lens import LensReport

    path = write_report(tmp_path, real_reports, provenance=PROVENANCE)
    html = path.read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    for task, report in real_reports.items():
        # Table 1 uses the lens's pooled ("all" modalities) Wilcoxon rows
        pooled = report.tests[report.tests["modality"] == "all"].set_index("family")
        t1 = pd.read_csv(tmp_path / "tables" / f"table1_{task}.csv").set_index("group")
        for family, row in pooled.iterrows():
            assert t1.loc[family, "p_value"] == pytest.approx(row["p_value"])
            assert t1.loc[family, "stars"] == row["stars"]
        assert summary["tasks"][task]["top_gained"] == list(report.gained(6)["column"])
        assert summary["tasks"][task]["top_lost_delta_r2"] == list(report.lost(6, by="delta_r2")["column"])
        # the saved lens report reads back as the same report
        again = LensReport.from_dir(tmp_path / "lens" / task)
        pd.testing.assert_frame_equal(again.importance, report.importance)
    assert "&quot;n_bootstrap&quot;: 10" in html  # the lens's parameters are shown
    page = browser.open_page(path, wait_for=WAIT, timeout=90,
                             evaluate={"drawn": "radiolensCharts.drawn", "total": "radiolensCharts.total"})
    assert page.errors == []
    assert page.values["drawn"] == page.values["total"] == html.count('class="vl-chart"')
