"""The study report: one self-contained HTML page, its tables as CSV, and ``summary.json``.

:func:`write_report` turns the lens reports of every task (and, when given, the downstream
metrics, penalty sweeps, planted-truth check and provenance of the run) into an output folder::

    out_dir/
      report.html        the page: opens offline, every chart drawn by JavaScript inlined once
      summary.json       headline numbers, warnings and provenance, machine-readable
      tables/*.csv       every table on the page
      lens/<task>/       each LensReport.to_dir (when the report can save itself)

The page inlines Vega, Vega-Lite and vega-embed (from ``vl-convert-python``'s bundle) exactly
once; chart specifications are embedded as JSON. Nothing is fetched from the network, so the
page works where a default Altair page (which loads vega from a CDN) shows "Error loading
script" instead of its charts.

The page is honest about what it shows: a header box says which data it ran on (the default
data are synthetic, so the paper's numbers are not expected), and separates the paper's method
from what radiolens adds.
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import json
import logging
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiolens import plotting
from radiolens._utils import jsonable
from radiolens.cache import atomic_write_dir, atomic_write_text
from radiolens.glossary import feature_definition

__all__ = ["javascript_bundle", "json_for_script", "slug", "vegalite_version", "write_report"]

log = logging.getLogger(__name__)

#: Ranking measures shown, in order: the paper's first.
_MEASURES = (
    ("rel_delta_I", "relative ΔI = ΔI / I<sub>pre</sub> (the paper's Fig. 3 ranking)"),
    ("delta_I", "ΔI = I<sub>ft</sub> − I<sub>pre</sub>, with bootstrap intervals"),
    ("delta_r2", "held-out ΔR² (radiolens; reliable in the planted-truth check)"),
)

_RANKING_TEXT = {
    "gained": "gained most",
    "lost": "lost most",
    "stable": "changed least (important before and after)",
}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def slug(name: str) -> str:
    """A file-name-safe version of a task name (``"lesion (lesion ROI)"`` -> ``"lesion-lesion-roi"``)."""
    text = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return text or "task"


@functools.lru_cache(maxsize=1)
def vegalite_version() -> str | None:
    """The Vega-Lite version (``"6.4"``) of the installed Altair's schema when vl-convert ships it.

    None means vl-convert's default; pass it as ``vl_version`` to any vl-convert call so that
    charts, bundles and PNGs all use the Vega-Lite that Altair wrote the specs for.
    """
    try:
        import altair as alt
        import vl_convert as vlc
    except ImportError as error:  # pragma: no cover - core dependencies
        raise ImportError(
            "charts are drawn offline with vl-convert-python: pip install vl-convert-python altair"
        ) from error
    match = re.match(r"v?(\d+)\.(\d+)", alt.SCHEMA_VERSION)
    wanted = f"{match[1]}.{match[2]}" if match else None
    return wanted if wanted in vlc.get_vegalite_versions() else None


def javascript_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script (from ``vl-convert-python``).

    The Vega-Lite version matches the schema of the installed Altair when vl-convert ships it.
    """
    import vl_convert as vlc

    bundle = vlc.javascript_bundle(vl_version=vegalite_version())
    # A literal "</script" would end the inline script early.
    return bundle.replace("</script", "<\\/script")


def json_for_script(obj: Any) -> str:
    """JSON that is safe inside a ``<script type="application/json">`` element."""
    text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}"
    return str(value)


def _table_html(frame: pd.DataFrame, table_id: str | None = None, caption: str | None = None) -> str:
    """A plain HTML table, every cell escaped, numbers to 4 significant digits."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for value in record:
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            cells.append(f"<td class=\"{'num' if numeric else 'txt'}\">{_esc(_fmt(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{_esc(table_id)}"' if table_id else ""
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f'<table class="tbl"{ident}>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


class _Page:
    """Collects the page's sections and chart specifications."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_charts = 0
        self.chart_errors: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def chart(self, make, caption: str | None = None, ident: str | None = None) -> None:
        """Embed a chart; a chart that cannot be built becomes a visible note, not a crash."""
        import altair as alt

        try:
            chart = make()
            # Views are validated against the Vega-Lite schema in their tests; validating
            # again here would cost ~0.3 s per chart.
            with alt.data_transformers.disable_max_rows():
                spec = chart.to_dict(validate=False)
        except Exception as error:  # noqa: BLE001 - one broken chart must not sink the report
            message = f"chart '{caption or 'untitled'}' could not be built: {type(error).__name__}: {error}"
            log.warning(message)
            self.chart_errors.append(message)
            self.add(f'<p class="note warn">{_esc(message)}</p>')
            return
        self.n_charts += 1
        ident = ident or f"chart-{self.n_charts}"
        cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
        self.add(
            f'<figure><div class="vl-chart" id="{ident}"></div>{cap}'
            f'<script type="application/json" id="{ident}-spec">{json_for_script(spec)}</script></figure>'
        )


# --------------------------------------------------------------------------------------------
# What the page says about the data and the method
# --------------------------------------------------------------------------------------------


def _data_facts(provenance: Mapping | None) -> dict[str, Any]:
    config = (provenance or {}).get("config") or {}
    cohort = config.get("cohort") or {}
    encoder = config.get("encoder") or {}
    source = cohort.get("source")
    recorded = (provenance or {}).get("cohort") or {}
    return {
        "source": source,
        "synthetic": source in (None, "synthetic"),
        "recorded": source is not None,
        "n_cases": recorded.get("n_cases", cohort.get("n_cases")),
        "path": cohort.get("path"),
        "weights": encoder.get("weights"),
        "quick": bool(config.get("quick")),
        "lens": config.get("lens") or {},
    }


def _data_sentence(facts: Mapping[str, Any], data_description: str | None) -> str:
    if data_description:
        return data_description
    if not facts["recorded"]:
        return (
            "data whose source was not recorded in the provenance; treat the numbers as "
            "synthetic unless you know otherwise"
        )
    if facts["synthetic"]:
        n = f" ({facts['n_cases']} cases)" if facts["n_cases"] else ""
        return f"the built-in synthetic prostate mpMRI cohort{n}"
    where = f" from {facts['path']}" if facts["path"] else ""
    return f"the '{facts['source']}' cohort{where}"


def _header_box(title: str, facts: Mapping[str, Any], data_description: str | None) -> str:
    data = _esc(_data_sentence(facts, data_description))
    weights = f" Encoder weights: <code>{_esc(facts['weights'])}</code>." if facts["weights"] else ""
    quick = " This was a <b>--quick</b> run (small cohort, few epochs): a smoke test, not a study." if facts["quick"] else ""
    if facts["synthetic"]:
        caveat = (
            '<p class="synthetic"><b>The data are SYNTHETIC.</b> The default cohort is generated '
            "by radiolens and the default encoder is small and trained on it, so the paper's numbers "
            "(e.g. its NGTDM R² of 0.735 → 0.717 for PI-RADS, or its lists of gained and lost "
            "features) are <b>not expected</b> here. What this page shows is that the pipeline and "
            "the lens work end to end, and what they find in these data.</p>"
        )
    else:
        caveat = (
            "<p>These are results on your data; compare them with the paper only as far as the "
            "cohort, the encoder and the tasks match its setting.</p>"
        )
    lens = facts["lens"]
    run = []
    if lens.get("decoder"):
        run.append(f"decoder = <code>{_esc(lens['decoder'])}</code>")
    if lens.get("hidden_dim") is not None or "hidden_dim" in lens:
        run.append(f"hidden width = <code>{_esc(lens.get('hidden_dim') or 'auto (below d and n_train)')}</code>")
    if lens.get("n_bootstrap") is not None:
        run.append(f"{_esc(lens['n_bootstrap'])} bootstrap resamples")
    if lens.get("n_permutations") is not None:
        run.append(f"{_esc(lens['n_permutations'])} permutations")
    run_text = f"<p>This run: {', '.join(run)}.</p>" if run else ""
    return f"""
<header class="box" id="about">
<h1>{_esc(title)}</h1>
<p>This is <b>radiolens</b> applied to {data}.{weights}{quick}</p>
{caveat}
<div class="cols">
<div>
<h3>The paper's method</h3>
<p>Wang et al., <i>What Fine-Tuning Changes: A Radiomic Lens on Prostate Foundation Model
Representations</i>, MIDL 2026.</p>
<ul>
<li>A shared non-linear projection of the encoder's embeddings, trained on the pre-trained
embeddings only (L1 reconstruction of min-max scaled radiomics, elastic penalties chosen by a
sweep), then frozen.</li>
<li>Closed-form least-squares decoders from the projection to the radiomics, one for the
pre-trained and one for the fine-tuned encoder.</li>
<li>Importance I = L2 norm of a feature's decoder row; ΔI = I_ft − I_pre; relative ΔI = ΔI / I_pre
(the paper does not define it; this is our reading).</li>
<li>R² and MSE per feature family, image type and modality (Table 1, Fig. 2); Wilcoxon
signed-rank tests per family; features that gained, lost or kept importance (Fig. 3).</li>
</ul>
</div>
<div>
<h3>What radiolens adds</h3>
<ul>
<li>Scores on held-out test cases (the decoders are fitted on the training cases).</li>
<li>Held-out decodability change ΔR² per feature as a second ranking measure.</li>
<li>A cross-validated ridge decoder on standardised projections (<code>decoder="ridge"</code>)
and a scale-aware importance (the default with cross-fitting), since the paper's I depends on the
scale of the projection: a hidden unit that barely varies inflates it.</li>
<li>A calibrated default protocol: each training case is decoded through a stage-1 projection
trained on the other training cases (cross-fitting), because decoders fitted on the cases stage 1
learnt favour the pre-trained encoder; the paper's protocol stays available
(<code>protocol="paper"</code>). Each task section names the protocol that produced it.</li>
<li>Bootstrap confidence intervals and paired permutation p-values (adjusted for multiplicity)
for every feature, checked on planted truth to flag unchanged features at their nominal rate.</li>
<li>A planted-truth check: a simulation with known gained and lost features showing when
each measure recovers them (the paper's ΔI ranks them backwards when the hidden width reaches
the embedding width).</li>
<li>Diagnostics and warnings from the lens, the penalty sweep and the provenance of the run.</li>
</ul>
</div>
</div>
{run_text}
</header>"""


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1250px;padding:0 24px 48px;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-top:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
.box{border:2px solid #c33;border-radius:8px;padding:16px 20px;margin:20px 0;background:#fffaf8}
.synthetic{background:#fde8e4;padding:8px 12px;border-radius:6px}
.cols{display:flex;gap:28px;flex-wrap:wrap}.cols>div{flex:1 1 420px}
nav ul{columns:3;list-style:none;padding-left:0}
table.tbl{border-collapse:collapse;margin:8px 0 16px;font-size:0.88em}
table.tbl caption{text-align:left;font-weight:600;padding:4px 0}
table.tbl th,table.tbl td{border-bottom:1px solid #e4e4e4;padding:3px 8px}
table.tbl th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:12px 0 20px}figcaption{font-size:0.88em;color:#555;max-width:900px}
.grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.grid>figure{margin:0}
.grid figcaption{max-width:520px}
.note{color:#555}.warn{color:#8a3b00}ul.warnings li{color:#8a3b00}
pre{background:#f6f6f6;padding:10px;overflow:auto;font-size:0.85em;max-height:420px}
.vega-bindings{margin:8px 0}.vega-bind{display:inline-block;margin-right:14px}
"""

_EMBED = """
(function () {
  var charts = document.querySelectorAll("div.vl-chart");
  var state = {total: charts.length, drawn: 0, failed: 0, done: false, errors: []};
  window.radiolensCharts = state;
  window.radiolensViews = {};  // vega View of every chart, by element id
  function finish() {
    if (state.drawn + state.failed === state.total) { state.done = true; }
  }
  if (typeof vegaEmbed !== "function") {
    console.error("radiolens report: vega-embed is missing, charts cannot be drawn");
    state.failed = state.total; finish(); return;
  }
  charts.forEach(function (el) {
    var spec = JSON.parse(document.getElementById(el.id + "-spec").textContent);
    vegaEmbed(el, spec, {actions: false, renderer: "svg"}).then(function (result) {
      window.radiolensViews[el.id] = result.view;
      el.setAttribute("data-rendered", "1"); state.drawn += 1; finish();
    }).catch(function (err) {
      el.setAttribute("data-error", String(err)); el.textContent = "Chart failed to render: " + err;
      state.failed += 1; state.errors.push(el.id + ": " + err); finish();
      console.error("radiolens report: chart " + el.id + " failed: " + err);
    });
  });
  finish();
})();
"""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _ranking_table(report, kind: str, k: int, by: str) -> pd.DataFrame:
    table = plotting.ranked(report, kind, k, by)
    out = pd.DataFrame({"rank": table["rank"], "feature": table["column"]})
    for column, label in (
        ("rel_delta_I", "relative ΔI"),
        ("delta_I", "ΔI"),
        ("delta_I_lo", "ΔI low"),
        ("delta_I_hi", "ΔI high"),
        ("delta_r2", "ΔR²"),
        ("delta_r2_lo", "ΔR² low"),
        ("delta_r2_hi", "ΔR² high"),
        ("p_value", "p"),
        ("p_adjusted", "adjusted p"),
    ):
        if column in table:
            out[label] = table[column].to_numpy()
    return out


def _task_section(page: _Page, task: str, report, k: int, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    s = slug(task)
    facts: dict[str, Any] = {}
    page.add(f'<section id="task-{s}"><h2>Task: {_esc(task)}</h2>')

    importance = report.importance
    observed = getattr(report, "observed", None)
    n_cases = None if observed is None else int(len(observed))
    facts["n_features"] = int(len(importance))
    facts["n_eval_cases"] = n_cases
    cases_text = f" on {n_cases} evaluation cases" if n_cases else ""
    page.add(f'<p class="note">{facts["n_features"]} radiomic features decoded{cases_text}. '
             f"{_esc(_protocol_sentence(report))}</p>")
    facts["protocol"] = (getattr(report, "diagnostics", None) or {}).get("protocol")
    facts["scale"] = (getattr(report, "diagnostics", None) or {}).get("scale")

    # Table 1
    try:
        t1 = plotting.table1(report)
    except Exception as error:  # noqa: BLE001
        page.add(f'<p class="note warn">Table 1 could not be built: {_esc(error)}</p>')
        t1 = None
    if t1 is not None:
        tables[f"table1_{s}"] = t1
        shown = t1.drop(columns=["level", "group"]).rename(
            columns={"label": "group", "mse_pre": "MSE pre", "mse_ft": "MSE ft", "r2_pre": "R² pre",
                     "r2_ft": "R² ft", "delta_r2": "ΔR²", "p_value": "Wilcoxon p",
                     "p_adjusted": "adjusted p", "stars": "sig."}
        )
        page.add("<h3>Decoding per feature family and image type (Table 1)</h3>")
        page.add(
            _table_html(
                shown,
                f"table1-{s}",
                "MSE and R² of the decoded radiomics on the evaluation cases, pre-trained vs fine-tuned; "
                "Wilcoxon signed-rank test of per-case squared errors per family, modalities pooled "
                "(stars on the unadjusted p as in the paper: * <0.05, ** <0.01, *** <0.001; adjusted p beside)",
            )
        )
        overall = t1[t1["level"] == "overall"]
        if len(overall):
            row = overall.iloc[0]
            facts["overall"] = {k_: row[k_] for k_ in ("r2_pre", "r2_ft", "mse_pre", "mse_ft")}
        starred = t1["stars"].str.contains("*", regex=False)
        facts["families_significant"] = list(t1.loc[(t1["level"] == "family") & starred, "group"])

    page.add('<div class="grid">')
    page.chart(lambda: plotting.family_scores_chart(report), f"{task}: Table 1 as a chart.")
    page.chart(lambda: plotting.modality_r2_chart(report), f"{task}: R² per modality (Fig. 2).")
    page.add("</div>")

    # Fig. 3 with the paper's measure, then with the measures radiolens adds
    measures = [(by, label) for by, label in _MEASURES if by in importance.columns]
    ranking_frames = []
    for by, label in measures:
        page.add(f"<h3>Features that changed most, by {label}</h3>")
        interval = (
            "error bars: bootstrap interval"
            if f"{by}_lo" in importance.columns
            else "no interval (the lens bootstraps ΔI and ΔR², not this measure; see the ΔI interval in the tooltip)"
        )
        page.add('<div class="grid">')
        for kind in ("gained", "lost", "stable"):
            page.chart(
                lambda kind=kind, by=by: plotting.ranking_chart(report, kind, k, by),
                f"{task}: top {k} features that {_RANKING_TEXT[kind]} by {by}; {interval}; "
                "tooltips: every measure, R² before/after, permutation p-values.",
            )
        page.add("</div>")
        for kind in ("gained", "lost", "stable"):
            try:
                table = _ranking_table(report, kind, k, by)
            except Exception as error:  # noqa: BLE001
                page.add(f'<p class="note warn">Ranking {kind} by {by} failed: {_esc(error)}</p>')
                continue
            facts[f"top_{kind}" + ("" if by == "rel_delta_I" else f"_{by}")] = list(table["feature"])
            page.add(
                _table_html(table, f"{kind}-{by}-{s}", f"Top {k} {_RANKING_TEXT[kind]} by {by}")
            )
            ranking_frames.append(table.assign(ranking=kind, by=by))
    if ranking_frames:
        tables[f"rankings_{s}"] = pd.concat(ranking_frames, ignore_index=True)
    tables[f"importance_{s}"] = importance.reset_index(drop="column" in importance.columns)
    tables[f"scores_{s}"] = report.scores
    if report.tests is not None:
        tables[f"tests_{s}"] = report.tests

    diagnostics = dict(getattr(report, "diagnostics", None) or {})
    facts["warnings"] = [str(w) for w in diagnostics.get("warnings", []) or []]
    facts["diagnostics"] = jsonable(diagnostics)
    params = getattr(report, "params", None)
    if isinstance(params, Mapping) and params:
        facts["params"] = jsonable(params)
    if diagnostics or facts.get("params"):
        page.add("<details><summary>Lens diagnostics and parameters</summary>")
        details = {"diagnostics": jsonable(diagnostics), "params": facts.get("params", {})}
        page.add(f"<pre>{_esc(json.dumps(details, indent=2))}</pre></details>")
    page.add("</section>")
    return facts


_PROTOCOL_TEXT = {
    "cross-fit": "every training case decoded through a stage-1 projection trained on the other "
    "training cases (cross-fitting, {folds} parts), so intervals and p-values are calibrated",
    "paper": "the paper's protocol: stage 1 and the decoders on the same training cases, which favours "
    "the pre-trained encoder and makes intervals and p-values too optimistic",
    "held-out": "decoders on cases stage 1 never saw",
}
_SCALE_TEXT = {
    "paper": "the paper's I (decoder weights on the raw hidden units)",
    "standardized": "I on standardised hidden units",
    "whitened": "the scale-aware I (decoder weights on whitened hidden units, debiased: the standard "
    "deviation of the decoded feature)",
}


def _protocol_sentence(report) -> str:
    """Which protocol and importance produced a report's numbers, in words."""
    diag = getattr(report, "diagnostics", None) or {}
    protocol = diag.get("protocol")
    if protocol not in _PROTOCOL_TEXT:
        return "The lens protocol is not recorded (a report written before protocols existed)."
    text = _PROTOCOL_TEXT[protocol].format(folds=diag.get("n_folds", "?"))
    scale = _SCALE_TEXT.get(diag.get("scale"), str(diag.get("scale")))
    return f"Every number below comes from the lens protocol '{protocol}': {text}; importance is {scale}."


def _sweep_selected(sweeps: Mapping[str, pd.DataFrame] | pd.DataFrame) -> dict[str, Any]:
    frames = sweeps if isinstance(sweeps, Mapping) else {"all": sweeps}
    chosen = {}
    for task, table in frames.items():
        if "selected" in table and table["selected"].astype(bool).any():
            row = table[table["selected"].astype(bool)].iloc[0]
        else:
            row = table.loc[table["val_loss"].idxmin()]
        chosen[task] = {k: row[k] for k in ("l1", "l2", "val_loss") if k in row}
    return chosen


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def write_report(
    out_dir: str | Path,
    task_reports: Mapping[str, Any],
    downstream: pd.DataFrame | None = None,
    comparison: pd.DataFrame | None = None,
    sweeps: Mapping[str, pd.DataFrame] | pd.DataFrame | None = None,
    planted: pd.DataFrame | None = None,
    provenance: Mapping[str, Any] | None = None,
    stages: Mapping[str, pd.DataFrame] | None = None,
    warnings: Sequence[str] | None = None,
    title: str = "radiolens: what fine-tuning changed, through a radiomic lens",
    data_description: str | None = None,
    top_k: int | None = None,
    explorer: bool = True,
    save_lens_reports: bool = True,
    lens_dirs: Mapping[str, Path] | None = None,
) -> Path:
    """Write the study's report folder and return the path of ``report.html``.

    Parameters
    ----------
    out_dir
        Output folder (created). Existing files of an earlier report are replaced atomically.
    task_reports
        ``{task name: LensReport}``; may be empty (then the page says so).
    downstream
        Table 2 as tidy ``task, regime, metric, value``.
    comparison
        Table 2's frozen-vs-full differences tested on the paired test cases
        (:func:`radiolens.finetune.compare_regimes`), shown under Table 2.
    sweeps
        Penalty sweep ``l1, l2, val_loss, train_loss, selected`` per task (dict) or one table.
    planted
        Planted-truth table ``method, hidden_dim, n_cases, precision_gained, precision_lost``.
    provenance
        Versions, ``config``, ``seed``, ``timings_s`` and anything else worth recording.
    stages
        ``{task: table}`` of :func:`radiolens.lens.stage_shift_table`: where in the network
        fine-tuning acts.
    warnings
        Run-level warnings (e.g. skipped tasks); shown on the page and in ``summary.json``.
    title
        Page title.
    data_description
        Overrides the sentence naming the data (default: derived from ``provenance``).
    top_k
        Features per ranking (default: ``provenance['config']['lens']['top_k']`` or 10).
    explorer
        Include the interactive explorer of all tasks.
    save_lens_reports
        Also save each report with ``to_dir`` under ``out_dir/lens/<task>``.
    lens_dirs
        ``{task: folder}`` of reports already saved with ``to_dir`` (e.g. in a cache): copied
        instead of written again, which is much faster for wide reports.

    Returns
    -------
    pathlib.Path
        ``out_dir/report.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_reports = dict(task_reports or {})
    provenance = dict(provenance or {})
    facts = _data_facts(provenance)
    if top_k is None:
        top_k = int(facts["lens"].get("top_k") or 10)
    run_warnings = [str(w) for w in (warnings or [])]
    if sweeps is not None and len(sweeps) == 0:
        sweeps = None  # every task skipped: no sweep to show, and the page says why

    page = _Page()
    tables: dict[str, pd.DataFrame] = {}
    summary: dict[str, Any] = {
        "title": title,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": _data_sentence(facts, data_description),
        "synthetic": facts["synthetic"],
        "top_k": top_k,
        "tasks": {},
        # says plainly whether the lens ran at all (e.g. every task skipped for missing labels)
        "status": "complete" if task_reports else "no lens report: every task was skipped (see warnings)",
    }

    page.add(_header_box(title, facts, data_description))
    nav = ['<nav><h2>Contents</h2><ul>']
    nav += [f'<li><a href="#task-{slug(t)}">Task: {_esc(t)}</a></li>' for t in task_reports]
    for anchor, label, present in (
        ("downstream", "Downstream performance (Table 2)", downstream is not None),
        ("across-tasks", "All tasks side by side", bool(task_reports)),
        ("stages", "Where in the network fine-tuning acts", bool(stages)),
        ("sweep", "Penalty sweep", sweeps is not None),
        ("planted", "Planted-truth check", planted is not None),
        ("warnings", "Warnings", True),
        ("provenance", "Provenance", True),
    ):
        if present:
            nav.append(f'<li><a href="#{anchor}">{label}</a></li>')
    nav.append("</ul></nav>")
    page.add("".join(nav))

    if not task_reports:
        page.add('<p class="note warn">No task produced a lens report; see the warnings below.</p>')
    for task, report in task_reports.items():
        try:
            summary["tasks"][task] = _task_section(page, task, report, top_k, tables)
        except Exception as error:  # noqa: BLE001 - one broken task must not sink the others
            message = f"task {task!r}: report section failed: {type(error).__name__}: {error}"
            log.warning(message)
            run_warnings.append(message)
            page.add(f'<p class="note warn">{_esc(message)}</p></section>')

    if downstream is not None:
        page.add('<section id="downstream"><h2>Downstream performance (Table 2)</h2>')
        if len(downstream):
            t2 = plotting.table2(downstream)
            tables["downstream_table2"] = t2
            page.add(_table_html(t2, "table2", "Downstream test metrics: frozen backbone + trained head vs fully fine-tuned"))
            page.chart(lambda: plotting.downstream_chart(downstream), "Table 2 as a chart.")
            if comparison is not None and len(comparison):
                from radiolens.finetune.comparison import describe_comparison

                tables["downstream_comparison"] = comparison
                page.add(f"<p>{_esc(describe_comparison(comparison))}</p>")
                page.add(_table_html(comparison, "table2-tests", "Full minus frozen on the same test cases: "
                                     "difference, 95% interval, paired permutation p-value and verdict"))
                page.chart(lambda: plotting.comparison_chart(comparison), "Table 2's differences, tested.")
        elif any(str(k).startswith("fine-tuned") for k in (provenance.get("encoders") or {})):
            page.add('<p class="note">No downstream metrics: the fine-tuned encoder(s) came from elsewhere and '
                     'radiolens fine-tuned nothing (see "Encoders compared" under Provenance).</p>')
        else:
            page.add('<p class="note">No downstream metrics were recorded.</p>')
        page.add("</section>")
        summary["downstream"] = jsonable(downstream)
        if comparison is not None:
            summary["downstream_comparison"] = jsonable(comparison)

    if task_reports:
        page.add('<section id="across-tasks"><h2>All tasks side by side</h2>')
        try:
            heat = plotting.delta_heatmap_data(task_reports, "delta_I")
            tables["delta_heatmap"] = heat
        except Exception as error:  # noqa: BLE001
            page.add(f'<p class="note warn">Heatmap data failed: {_esc(error)}</p>')
        page.chart(
            lambda: plotting.delta_heatmap(task_reports, "delta_I"),
            "Mean ΔI per modality and feature family for every task (red: gained, blue: lost).",
            "heatmap-delta_I",
        )
        if all("delta_r2" in r.importance.columns for r in task_reports.values()):
            page.chart(
                lambda: plotting.delta_heatmap(task_reports, "delta_r2"),
                "Mean held-out ΔR² per modality and feature family for every task.",
            )
        if explorer:
            page.add("<h3>Explorer</h3>")
            page.add(
                '<p class="note">Pick a task, a measure, a ranking and filters; drag the slider for the '
                "number of features; click a bar to see that feature decoded against its true value "
                "on the evaluation cases (grey: pre-trained, red: fine-tuned). To keep the page "
                "light, only the top features of each ranking carry case data.</p>"
            )
            page.chart(
                lambda: plotting.delta_explorer(
                    task_reports, k=top_k, top_max=max(15, top_k), definitions=feature_definition
                ),
                None,
                "explorer",
            )
        page.add("</section>")

    if stages:
        page.add('<section id="stages"><h2>Where in the network fine-tuning acts</h2>')
        page.add(
            '<p class="note">The lens run on the pooled output of each encoder stage instead of the final '
            "embedding only. Left: how much fine-tuning moved each stage's representation of the cases "
            "(1 - linear CKA of the pre-trained and fine-tuned embeddings; 0: unchanged up to a rotation "
            "and scale). Right: the mean held-out R² of the radiomics decoded from each stage.</p>"
        )
        page.chart(lambda: plotting.stage_shift_chart(stages), None, "stages-chart")
        stage_all = plotting.concat_tasks(stages, "stage shift")
        tables["stage_shift"] = stage_all
        page.add(_table_html(stage_all, "stages-table", "Per stage: similarity and decodability"))
        summary["stages"] = jsonable(stage_all)
        page.add("</section>")

    if sweeps is not None:
        page.add('<section id="sweep"><h2>Penalty sweep (stage 1)</h2>')
        page.add(
            '<p class="note">Validation L1 reconstruction loss of the shared projection for each '
            "(λ1, λ2) on the paper's grid (or the run's); the outlined cell was selected.</p>"
        )
        page.chart(lambda: plotting.sweep_chart(sweeps), None)
        sweep_all = plotting.concat_tasks(sweeps, "sweep")
        tables["sweep"] = sweep_all
        chosen = _sweep_selected(sweeps)
        summary["sweep_selected"] = jsonable(chosen)
        chosen_table = pd.DataFrame([{"task": t, **v} for t, v in chosen.items()])
        page.add(_table_html(chosen_table, "sweep-selected", "Selected penalties"))
        page.add("</section>")

    if planted is not None:
        page.add('<section id="planted"><h2>Does the lens tell the truth? Planted-truth check</h2>')
        page.add(
            '<p class="note">Simulated embeddings in which known radiomic features are gained, lost '
            "or kept by the fine-tuned encoder. Precision of each measure's top-k at recovering the "
            "planted gained and lost features, by hidden width and number of training cases.</p>"
        )
        page.chart(lambda: plotting.planted_truth_chart(planted), None)
        tables["planted_truth"] = planted
        page.add(_table_html(planted, "planted-table", "Planted-truth precision"))
        summary["planted"] = jsonable(planted)
        page.add("</section>")

    # Warnings: the run's and every lens's
    all_warnings = list(run_warnings)
    for task, task_facts in summary["tasks"].items():
        all_warnings += [f"{task}: {w}" for w in task_facts.get("warnings", [])]
    all_warnings += page.chart_errors
    summary["warnings"] = all_warnings
    page.add('<section id="warnings"><h2>Warnings</h2>')
    if all_warnings:
        page.add('<ul class="warnings">' + "".join(f"<li>{_esc(w)}</li>" for w in all_warnings) + "</ul>")
    else:
        page.add('<p class="note">None.</p>')
    page.add("</section>")

    # Provenance
    provenance_full = dict(provenance)
    provenance_full.setdefault("report_libraries", _library_versions())
    summary["provenance"] = jsonable(provenance_full)
    page.add('<section id="provenance"><h2>Provenance</h2>')
    flat = {k: v for k, v in provenance_full.items() if not isinstance(v, Mapping) and not isinstance(v, (list, tuple))}
    if flat:
        page.add(_table_html(pd.DataFrame({"item": list(flat), "value": [_fmt(v) for v in flat.values()]}), "provenance-table"))
    encoders = provenance_full.get("encoders")
    if isinstance(encoders, Mapping) and encoders:
        # where each compared encoder came from: a reader must be able to tell which files
        # (by content hash) the numbers describe
        rows = [{"encoder": name, "format": info.get("format"), "path": info.get("path") or info.get("name") or "",
                 "sha256": info.get("sha256") or info.get("weights_sha256") or ""}
                for name, info in encoders.items() if isinstance(info, Mapping)]
        page.add(_table_html(pd.DataFrame(rows), "encoders", "Encoders compared"))
    timings = provenance_full.get("timings_s") or provenance_full.get("timings")
    if isinstance(timings, Mapping) and timings:
        page.add(
            _table_html(
                pd.DataFrame({"step": list(timings), "seconds": [float(v) for v in timings.values()]}),
                "timings",
                "Timings (s)",
            )
        )
    nested = {k: v for k, v in provenance_full.items() if k not in flat and k not in ("timings_s", "timings")}
    if nested:
        page.add(f"<pre id=\"provenance-json\">{_esc(json.dumps(jsonable(nested), indent=2))}</pre>")
    page.add("</section>")

    # Write: tables, lens reports, summary, page (page last, so it never points at missing files)
    tables_dir = out / "tables"
    tables_dir.mkdir(exist_ok=True)
    files = []
    for name, table in tables.items():
        path = tables_dir / f"{name}.csv"
        atomic_write_text(path, table.to_csv(index=False))
        files.append(str(path.relative_to(out)))
    if save_lens_reports:
        for task, report in task_reports.items():
            if hasattr(report, "to_dir"):
                target = out / "lens" / slug(task)
                source = (lens_dirs or {}).get(task)
                save = report.to_dir if source is None else partial(shutil.copytree, source, dirs_exist_ok=True)
                try:
                    atomic_write_dir(target, save)
                    files.append(str(target.relative_to(out)) + "/")
                except Exception as error:  # noqa: BLE001
                    log.warning("could not save lens report %r: %s", task, error)
    summary["files"] = sorted(files) + ["report.html", "summary.json"]
    _remove_stale(out, summary["files"])
    atomic_write_text(out / "summary.json", json.dumps(jsonable(summary), indent=2, allow_nan=False))

    document = _document(title, "\n".join(page.parts))
    path = out / "report.html"
    atomic_write_text(path, document)
    log.info("report written to %s (%d charts, %d tables)", path, page.n_charts, len(tables))
    return path


def _remove_stale(out: Path, files: list[str]) -> None:
    """Remove what an earlier report in ``out`` wrote and this one did not (e.g. a task
    skipped this time), so that the folder never mixes two runs. Only files listed in the
    earlier ``summary.json`` are touched."""
    try:
        earlier = json.loads((out / "summary.json").read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return
    keep = set(files)
    for name in earlier:
        if not isinstance(name, str) or name in keep or not name.startswith(("tables/", "lens/")):
            continue
        path = (out / name).resolve()
        if out.resolve() not in path.parents:
            continue  # never outside the output folder
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
        log.info("removed %s left by an earlier report", path)


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in ("altair", "vl_convert", "pandas", "numpy"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = "not installed"
    try:
        import vl_convert as vlc

        versions["vega"] = vlc.get_vega_version()
        versions["vega-embed"] = vlc.get_vega_embed_version()
    except (ImportError, AttributeError):
        pass
    return versions


def _document(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
<script>{javascript_bundle()}</script>
</head>
<body>
<noscript><p class="warn">The charts need JavaScript; the tables below do not.</p></noscript>
{body}
<script>{_EMBED}</script>
</body>
</html>
"""
