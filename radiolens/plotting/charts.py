"""Altair charts and tables of what the radiomic lens measured (report and book).

Every function takes the objects the lens and the pipeline produce (a
:class:`radiolens.lens.LensReport`, or a ``dict`` of them keyed by task, and tidy tables) and
returns an Altair chart or a DataFrame. Charts are plain Vega-Lite specifications: all their
interactivity (the explorer's task selector, filters, slider and click selection) lives in the
specification, so they work in a static HTML page or book with no Python kernel behind them.

The charts mirror the paper (Wang et al., MIDL 2026): :func:`family_scores_chart` is Table 1
as a picture, :func:`modality_r2_chart` is Fig. 2, :func:`ranking_chart` is Fig. 3 (with the
bootstrap intervals and permutation p-values radiolens adds). :func:`delta_heatmap`,
:func:`~radiolens.plotting.explorer.delta_explorer`, :func:`sweep_chart`,
:func:`planted_truth_chart` and :func:`downstream_chart` are radiolens additions.

Data sizes are kept bounded on purpose (a report has p = 2500 features per task): charts embed
only the rows they draw; the explorer (:mod:`radiolens.plotting.explorer`) keeps a bounded
subset too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from radiolens.naming import FAMILIES, MODALITIES
from radiolens.plotting._display import altair
from radiolens.plotting.rankings import MEASURE_LABELS, importance_table, ranked
from radiolens.plotting.style import ENCODER_COLORS, ENCODER_LABELS, MODALITY_COLORS, VERDICT_COLORS, family_label

__all__ = [
    "comparison_chart",
    "delta_heatmap",
    "delta_heatmap_data",
    "downstream_chart",
    "family_scores_chart",
    "modality_r2_chart",
    "planted_truth_chart",
    "ranking_chart",
    "sweep_chart",
    "table1",
    "table1_chart",
    "table2",
]

log = logging.getLogger(__name__)

_LEVEL_LABELS = {"family": "Feature family", "image_type": "Image type", "overall": "All features"}


def _encoder_scale():
    """Colour scale of the encoder labels (``ENCODER_LABELS``' values) in ``ENCODER_COLORS``."""
    return altair().Scale(domain=[ENCODER_LABELS[s] for s in ENCODER_COLORS], range=list(ENCODER_COLORS.values()))


def _modality_scale():
    return altair().Scale(domain=list(MODALITY_COLORS), range=list(MODALITY_COLORS.values()))


def _scores(report) -> pd.DataFrame:
    """The report's scores with the pre-trained / fine-tuned column named ``encoder`` (reports
    saved before the lens named it so call it ``stage``)."""
    scores = report.scores
    return scores.rename(columns={"stage": "encoder"}) if "encoder" not in scores.columns else scores


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _named_csv(alt, name: str, frame: pd.DataFrame):
    """A named data set embedded once, as CSV text, at the top level (``datasets``).

    CSV writes each field name once instead of once per row (JSON records), which makes the
    explorer's data ~3x smaller; numeric and boolean columns are parsed back explicitly (empty
    cells become null). Named data also bypass Altair's 5000-row guard; callers keep the sizes
    bounded themselves.
    """
    frame = frame.copy()
    parse = {}
    for column in frame.columns:
        if pd.api.types.is_bool_dtype(frame[column]):
            frame[column] = frame[column].astype(int)
            parse[column] = "number"
        elif pd.api.types.is_numeric_dtype(frame[column]):
            parse[column] = "number"
    text = frame.to_csv(index=False, float_format="%.4g", lineterminator="\n")
    return alt.NamedData(name=name, format=alt.DataFormat(type="csv", parse=parse)), {name: text}


def _order(values, preferred) -> list[str]:
    """Values in a preferred order, unknown ones after it (sorted)."""
    values = [v for v in pd.unique(pd.Series(list(values))) if pd.notna(v)]
    known = [v for v in preferred if v in values]
    return known + sorted(v for v in values if v not in known)


def _check_tasks(reports: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(reports, Mapping) or not reports:
        raise ValueError("expected a non-empty dict {task name: LensReport}")
    return dict(reports)


# --------------------------------------------------------------------------------------------
# Table 1 and Fig. 2
# --------------------------------------------------------------------------------------------


def table1(report) -> pd.DataFrame:
    """The paper's Table 1 for one task: MSE and R^2 per feature family and image type.

    Rows are the feature families (in the paper's order), then the image types, then all
    features together; columns give MSE and R^2 of the pre-trained and fine-tuned decoders on
    the evaluation cases and, for families, the Wilcoxon signed-rank test of per-case squared
    errors (pre vs fine-tuned), pooled over modalities, with the lens's stars (* p < 0.05,
    ** p < 0.01, *** p < 0.001 on the unadjusted p, as in the paper) and adjusted p.

    Returns
    -------
    pandas.DataFrame
        Columns ``level, group, label, mse_pre, mse_ft, r2_pre, r2_ft, delta_r2, p_value,
        p_adjusted, stars``.
    """
    scores = _scores(report)
    missing = {"encoder", "level", "group", "r2", "mse"} - set(scores.columns)
    if missing:
        raise ValueError(f"report.scores lacks columns {sorted(missing)}")
    wanted = scores[scores["level"].isin(["family", "image_type", "overall"])]
    wide = wanted.pivot_table(index=["level", "group"], columns="encoder", values=["mse", "r2"], aggfunc="first")
    wide.columns = [f"{metric}_{encoder}" for metric, encoder in wide.columns]
    wide = wide.reset_index()
    for column in ("mse_pre", "mse_ft", "r2_pre", "r2_ft"):
        if column not in wide:
            wide[column] = np.nan
    wide["delta_r2"] = wide["r2_ft"] - wide["r2_pre"]

    tests = report.tests
    if tests is not None and len(tests):
        if "modality" in tests:  # the lens also tests each modality; Table 1 pools them
            tests = tests[tests["modality"].astype(str).str.lower() == "all"]
        tests = tests.drop_duplicates("family").set_index("family")
        is_family = wide["level"] == "family"
        for column in ("p_value", "p_adjusted", "stars"):
            if column in tests:
                wide.loc[is_family, column] = wide.loc[is_family, "group"].map(tests[column]).to_numpy()
    for column in ("p_value", "p_adjusted"):
        if column not in wide:
            wide[column] = np.nan
    if "stars" not in wide:
        wide["stars"] = ""
    wide["stars"] = wide["stars"].fillna("").astype(str)

    level_rank = {"family": 0, "image_type": 1, "overall": 2}
    families = _order(wide.loc[wide["level"] == "family", "group"], FAMILIES)
    images = _order(wide.loc[wide["level"] == "image_type", "group"], ("Original", "Wavelet"))
    group_rank = {g: i for i, g in enumerate(families + images)}
    wide["_a"] = wide["level"].map(level_rank)
    wide["_b"] = wide["group"].map(group_rank).fillna(0)
    wide = wide.sort_values(["_a", "_b"]).drop(columns=["_a", "_b"]).reset_index(drop=True)
    wide.insert(
        2,
        "label",
        [
            family_label(g) if lvl == "family" else ("All" if lvl == "overall" else str(g))
            for lvl, g in zip(wide["level"], wide["group"])
        ],
    )
    columns = ["level", "group", "label", "mse_pre", "mse_ft", "r2_pre", "r2_ft", "delta_r2", "p_value", "p_adjusted", "stars"]
    return wide[columns]


def family_scores_chart(report, title: str | None = None):
    """Table 1 as a chart: R^2 and MSE per family and image type, pre vs fine-tuned.

    Bars are grouped per family (and per image type, and for all features), grey for the
    pre-trained decoder and red for the fine-tuned one; the Wilcoxon stars of each family are
    written above its bars.
    """
    alt = altair()
    table = table1(report)
    long = table.melt(
        id_vars=["level", "label", "stars", "p_value", "p_adjusted"],
        value_vars=["r2_pre", "r2_ft", "mse_pre", "mse_ft"],
        var_name="key",
        value_name="value",
    )
    long["metric"] = long["key"].str.split("_").str[0].map({"r2": "R²", "mse": "MSE"})
    long["encoder"] = long["key"].str.split("_").str[1].map(ENCODER_LABELS)
    long["level"] = long["level"].map(_LEVEL_LABELS)
    long = long.drop(columns="key")
    levels = [lvl for lvl in _LEVEL_LABELS.values() if lvl in set(long["level"])]
    encoder_order = list(ENCODER_LABELS.values())

    def panel(level: str, metric: str, first: bool):
        order = list(table.loc[table["level"].map(_LEVEL_LABELS) == level, "label"])
        base = alt.Chart().transform_filter(
            (alt.datum.level == level) & (alt.datum.metric == metric)
        ).encode(x=alt.X("label:N", sort=order, title=level if metric == "MSE" else None,
                         axis=alt.Axis(labelAngle=-30)))
        bars = base.mark_bar().encode(
            xOffset=alt.XOffset("encoder:N", sort=encoder_order),
            y=alt.Y("value:Q", title=metric if first else None),
            color=alt.Color("encoder:N", title="Encoder", scale=_encoder_scale()),
            tooltip=[
                alt.Tooltip("label:N", title="group"),
                "encoder:N",
                "metric:N",
                alt.Tooltip("value:Q", format=".4f"),
                alt.Tooltip("p_value:Q", format=".2g", title="Wilcoxon p"),
                alt.Tooltip("p_adjusted:Q", format=".2g", title="adjusted p"),
            ],
        )
        stars = (
            base.transform_filter(alt.datum.encoder == ENCODER_LABELS["ft"])
            .transform_filter("indexof(datum.stars, '*') >= 0")  # not "" or the lens's "ns"
            .mark_text(dy=-8, fontSize=13, fontWeight="bold")
            .encode(xOffset=alt.XOffset("encoder:N", sort=encoder_order), y=alt.Y("value:Q"), text="stars:N")
        )
        return alt.layer(bars, stars).properties(width=alt.Step(22), height=170)

    rows = [
        alt.hconcat(*[panel(level, metric, i == 0) for i, level in enumerate(levels)])
        for metric in ("R²", "MSE")
    ]
    return alt.vconcat(*rows, data=long).properties(
        title=title or "Decoding of radiomics per feature family and image type (Table 1; stars: Wilcoxon p)"
    )


#: Alias: the paper's Table 1 drawn as a chart.
table1_chart = family_scores_chart


def modality_r2_chart(report, title: str | None = None):
    """Fig. 2: R^2 of the decoded radiomics per modality, pre-trained vs fine-tuned."""
    alt = altair()
    scores = _scores(report)
    data = scores[scores["level"] == "modality"].copy()
    if data.empty:
        raise ValueError("report.scores has no rows at level 'modality'")
    data["encoder"] = data["encoder"].map(ENCODER_LABELS)
    data = data[["group", "encoder", "r2", "mse"]].rename(columns={"group": "modality"})
    order = _order(data["modality"], MODALITIES)
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("modality:N", sort=order, title="Modality", axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("encoder:N", sort=list(ENCODER_LABELS.values())),
            y=alt.Y("r2:Q", title="R² of decoded radiomics"),
            color=alt.Color(
                "encoder:N", title="Encoder", scale=_encoder_scale()
            ),
            tooltip=["modality:N", "encoder:N", alt.Tooltip("r2:Q", format=".4f"), alt.Tooltip("mse:Q", format=".4f")],
        )
        .properties(width=alt.Step(28), height=200, title=title or "R² per modality (Fig. 2)")
    )


# --------------------------------------------------------------------------------------------
# Fig. 3: rankings with uncertainty
# --------------------------------------------------------------------------------------------

def _ranking_tooltip(alt) -> list:
    return [
        alt.Tooltip("column:N", title="feature"),
        alt.Tooltip("modality:N"),
        alt.Tooltip("image_type:N", title="image type"),
        alt.Tooltip("family:N"),
        alt.Tooltip("rank:Q"),
        alt.Tooltip("I_pre:Q", format=".4g"),
        alt.Tooltip("I_ft:Q", format=".4g"),
        alt.Tooltip("delta_I:Q", format=".4g", title="ΔI"),
        alt.Tooltip("rel_delta_I:Q", format=".3f", title="relative ΔI"),
        alt.Tooltip("r2_pre:Q", format=".3f", title="R² pre"),
        alt.Tooltip("r2_ft:Q", format=".3f", title="R² ft"),
        alt.Tooltip("delta_r2:Q", format=".3f", title="ΔR²"),
        alt.Tooltip("lo:Q", format=".4g", title="interval low"),
        alt.Tooltip("hi:Q", format=".4g", title="interval high"),
        alt.Tooltip("delta_I_lo:Q", format=".4g", title="ΔI interval low"),
        alt.Tooltip("delta_I_hi:Q", format=".4g", title="ΔI interval high"),
        alt.Tooltip("p_value:Q", format=".3g", title="permutation p"),
        alt.Tooltip("p_adjusted:Q", format=".3g", title="adjusted p"),
    ]


def _with_interval(table: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Add ``value, lo, hi`` (the measure and its bootstrap interval, NaN when absent)."""
    table = table.copy()
    table["value"] = table[measure]
    table["lo"] = table[f"{measure}_lo"] if f"{measure}_lo" in table else np.nan
    table["hi"] = table[f"{measure}_hi"] if f"{measure}_hi" in table else np.nan
    for column in ("I_pre", "I_ft", "delta_I", "delta_I_lo", "delta_I_hi", "rel_delta_I", "r2_pre", "r2_ft",
                   "delta_r2", "p_value", "p_adjusted"):
        if column not in table:
            table[column] = np.nan
    return table


def ranking_chart(report, kind: str = "gained", k: int = 10, by: str = "rel_delta_I", title: str | None = None):
    """Fig. 3: the top-k features that gained, lost or kept their importance.

    Bars show the ranking measure (``by``), error bars its bootstrap interval when the lens
    computed one (``compare(..., n_bootstrap=B)`` gives intervals for ``delta_I`` and
    ``delta_r2``, not for the paper's ``rel_delta_I``), colour the modality; tooltips carry
    every measure, the R^2 before and after, the ΔI interval and the permutation p-values.

    Parameters
    ----------
    report
        A LensReport.
    kind
        ``"gained"``, ``"lost"`` or ``"stable"``.
    k
        Number of features shown.
    by
        ``"rel_delta_I"`` (the paper's Fig. 3), ``"delta_I"`` or ``"delta_r2"`` (held-out
        decodability).
    """
    alt = altair()
    table = _with_interval(ranked(report, kind, k, by), by)
    keep = ["rank", "column", "modality", "image_type", "family", "feature", "value", "lo", "hi", "I_pre", "I_ft",
            "delta_I", "delta_I_lo", "delta_I_hi", "rel_delta_I", "r2_pre", "r2_ft", "delta_r2", "p_value",
            "p_adjusted"]
    table = table[keep]
    order = list(table["column"])
    y = alt.Y("column:N", sort=order, title=None, axis=alt.Axis(labelLimit=300))
    bars = alt.Chart().mark_bar().encode(
        y=y,
        x=alt.X("value:Q", title=MEASURE_LABELS.get(by, by)),
        color=alt.Color("modality:N", scale=_modality_scale(), title="Modality"),
        tooltip=_ranking_tooltip(alt),
    )
    intervals = alt.Chart().mark_rule(color="black").encode(y=y, x="lo:Q", x2="hi:Q")
    zero = alt.Chart().mark_rule(color="#444", strokeDash=[3, 3]).encode(x=alt.datum(0))
    headline = {"gained": "gained most", "lost": "lost most", "stable": "changed least (important before and after)"}
    return alt.layer(bars, intervals, zero, data=table).properties(
        width=240,
        height=alt.Step(16),
        title=title or f"Top {len(table)} features that {headline[kind]}, by {by} (Fig. 3)",
    )


# --------------------------------------------------------------------------------------------
# Across tasks
# --------------------------------------------------------------------------------------------


def delta_heatmap_data(reports: Mapping[str, Any], value: str = "delta_I") -> pd.DataFrame:
    """Mean change per task, modality and family (the data of :func:`delta_heatmap`).

    Returns
    -------
    pandas.DataFrame
        Columns ``task, modality, family, family_label, value (mean of the measure),
        n_features``.
    """
    reports = _check_tasks(reports)
    frames = []
    for task, report in reports.items():
        importance = importance_table(report)
        if value not in importance:
            raise ValueError(f"task {task!r}: report.importance has no column {value!r}")
        grouped = (
            importance.groupby(["modality", "family"], observed=True)[value]
            .agg(["mean", "size"])
            .reset_index()
            .rename(columns={"mean": "value", "size": "n_features"})
        )
        grouped.insert(0, "task", task)
        frames.append(grouped)
    data = pd.concat(frames, ignore_index=True)
    data["family_label"] = data["family"].map(family_label)
    return data[["task", "modality", "family", "family_label", "value", "n_features"]]


def delta_heatmap(reports: Mapping[str, Any], value: str = "delta_I", title: str | None = None):
    """Mean change of each modality x family, one heatmap per task side by side.

    Blue is a loss, red a gain; the colour scale is symmetric around zero and shared by the
    tasks so that they can be compared.
    """
    alt = altair()
    data = delta_heatmap_data(reports, value)
    bound = float(np.nanmax(np.abs(data["value"]))) if len(data) else 1.0
    bound = bound if bound > 0 else 1.0
    families = [family_label(f) for f in _order(data["family"], FAMILIES)]
    modalities = _order(data["modality"], MODALITIES)
    base = alt.Chart().encode(
        x=alt.X("family_label:N", sort=families, title=None, axis=alt.Axis(labelAngle=-30)),
        y=alt.Y("modality:N", sort=modalities, title=None),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "value:Q",
            title=f"mean {value}",
            scale=alt.Scale(scheme="redblue", reverse=True, domain=[-bound, bound], domainMid=0),
        ),
        tooltip=["task:N", "modality:N", "family_label:N", alt.Tooltip("value:Q", format=".4g"), "n_features:Q"],
    )
    labels = base.mark_text(fontSize=10).encode(text=alt.Text("value:Q", format=".2g"))
    tasks = list(dict.fromkeys(data["task"]))
    return (
        alt.layer(cells, labels, data=data)
        .properties(width=alt.Step(46), height=alt.Step(30))
        .facet(column=alt.Column("task:N", sort=tasks, title=None))
        .properties(title=title or f"Mean {value} per modality and feature family, per task")
    )


# --------------------------------------------------------------------------------------------
# Pipeline tables: penalty sweep, planted truth, downstream performance
# --------------------------------------------------------------------------------------------


def concat_tasks(tables, what: str) -> pd.DataFrame:
    """One table of a ``{task: table}`` dict with a leading ``task`` column (a table passes as is)."""
    if isinstance(tables, pd.DataFrame):
        return tables.copy()
    if isinstance(tables, Mapping):
        frames = []
        for task, table in tables.items():
            table = table.copy()
            table.insert(0, "task", task)
            frames.append(table)
        if not frames:
            raise ValueError(f"no {what} tables given")
        return pd.concat(frames, ignore_index=True)
    raise TypeError(f"{what}: expected a DataFrame or a dict of DataFrames, got {type(tables).__name__}")


def sweep_chart(sweep, title: str | None = None):
    """The penalty sweep: validation loss for each (lambda1, lambda2), the chosen one outlined.

    Parameters
    ----------
    sweep
        A table with columns ``l1, l2, val_loss, train_loss, selected`` or a dict of such
        tables keyed by task (one heatmap per task).
    """
    alt = altair()
    data = concat_tasks(sweep, "sweep")
    missing = {"l1", "l2", "val_loss"} - set(data.columns)
    if missing:
        raise ValueError(f"sweep table lacks columns {sorted(missing)}")
    if "selected" not in data:
        data["selected"] = data["val_loss"] == data["val_loss"].min()
    if "train_loss" not in data:
        data["train_loss"] = np.nan
    data["selected"] = data["selected"].astype(bool)
    data["λ1"] = data["l1"].map(lambda v: f"{v:g}")
    data["λ2"] = data["l2"].map(lambda v: f"{v:g}")
    l1_order = [f"{v:g}" for v in sorted(data["l1"].unique())]
    l2_order = [f"{v:g}" for v in sorted(data["l2"].unique())]
    keep = [c for c in ("task", "λ1", "λ2", "l1", "l2", "val_loss", "train_loss", "selected") if c in data]
    data = data[keep]
    base = alt.Chart().encode(
        x=alt.X("λ1:O", sort=l1_order, title="λ1 (L1 penalty)"),
        y=alt.Y("λ2:O", sort=l2_order, title="λ2 (L2 penalty)"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("val_loss:Q", title="validation loss", scale=alt.Scale(scheme="viridis", reverse=True)),
        tooltip=["λ1:N", "λ2:N", alt.Tooltip("val_loss:Q", format=".5g"), alt.Tooltip("train_loss:Q", format=".5g"),
                 "selected:N"],
    )
    chosen = base.transform_filter(alt.datum.selected).mark_rect(filled=False, stroke="black", strokeWidth=3)
    layered = alt.layer(cells, chosen, data=data).properties(width=alt.Step(40), height=alt.Step(30))
    if "task" in data:
        tasks = list(dict.fromkeys(data["task"]))
        layered = layered.facet(column=alt.Column("task:N", sort=tasks, title=None))
    return layered.properties(title=title or "Penalty sweep: validation loss (outlined: selected)")


def planted_truth_chart(table: pd.DataFrame, title: str | None = None):
    """Planted-truth check: precision of recovering the planted gained/lost features.

    Parameters
    ----------
    table
        Columns ``method, hidden_dim, n_cases, precision_gained, precision_lost`` (repeated
        rows, e.g. seeds, are averaged).
    """
    alt = altair()
    missing = {"method", "hidden_dim", "n_cases", "precision_gained", "precision_lost"} - set(table.columns)
    if missing:
        raise ValueError(f"planted-truth table lacks columns {sorted(missing)}")
    protocol = "protocol" in table.columns
    ids = ["method", "hidden_dim", "n_cases"] + (["protocol"] if protocol else [])
    long = table.melt(
        id_vars=ids,
        value_vars=["precision_gained", "precision_lost"],
        var_name="which",
        value_name="precision",
    )
    long["which"] = long["which"].str.replace("precision_", "", regex=False)
    long["method"] = long["method"].astype(str)
    cases = sorted(long["n_cases"].unique())
    tooltip = ["method:N", "which:N", "hidden_dim:O", "n_cases:O", alt.Tooltip("mean(precision):Q", format=".2f")]
    chart = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("hidden_dim:O", title="hidden width"),
            y=alt.Y("mean(precision):Q", title="precision", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("method:N", title="Measure"),
            strokeDash=alt.StrokeDash("which:N", title="planted"),
            shape=alt.Shape("which:N", title="planted"),
            tooltip=tooltip + (["protocol:N"] if protocol else []),
        )
        .properties(width=180, height=160)
    )
    # the two protocols (decoders on stage 1's own cases, or on cases it never saw) answer
    # different questions: never average them together
    facet = {"column": alt.Column("n_cases:O", sort=cases, title="training cases")}
    if protocol:
        facet["row"] = alt.Row("protocol:N", title="decoders fitted on")
    return chart.facet(**facet).properties(
        title=title or "Does the lens find the planted gained/lost features? (precision of the top-k)"
    )


def table2(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2: one row per task and metric, frozen vs fine-tuned side by side.

    Parameters
    ----------
    table
        Tidy ``task, regime, metric, value``.

    Returns
    -------
    pandas.DataFrame
        ``task, metric`` and one column per regime (e.g. ``frozen``, ``finetuned``).
    """
    missing = {"task", "regime", "metric", "value"} - set(table.columns)
    if missing:
        raise ValueError(f"downstream table lacks columns {sorted(missing)}")
    wide = table.pivot_table(index=["task", "metric"], columns="regime", values="value", aggfunc="first", sort=False)
    wide.columns.name = None
    return wide.reset_index()


def downstream_chart(table: pd.DataFrame, title: str | None = None):
    """Table 2 as a chart: downstream metric per task, frozen backbone vs fine-tuned."""
    alt = altair()
    missing = {"task", "regime", "metric", "value"} - set(table.columns)
    if missing:
        raise ValueError(f"downstream table lacks columns {sorted(missing)}")
    data = table[["task", "regime", "metric", "value"]].copy()
    data["panel"] = data["task"].astype(str) + " (" + data["metric"].astype(str) + ")"
    panels = list(dict.fromkeys(data["panel"]))
    regimes = list(dict.fromkeys(data["regime"]))
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("regime:N", sort=regimes, title=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("value:Q", title=None),
            color=alt.Color("regime:N", sort=regimes, scale=alt.Scale(range=list(ENCODER_COLORS.values())), title="Regime"),
            tooltip=["task:N", "metric:N", "regime:N", alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(width=alt.Step(40), height=160)
        .facet(column=alt.Column("panel:N", sort=panels, title=None))
        .resolve_scale(y="independent")
        .properties(title=title or "Downstream performance: frozen backbone vs fine-tuned (Table 2)")
    )




def comparison_chart(comparison: pd.DataFrame, title: str | None = None):
    """Table 2's differences, tested: full minus frozen per task and metric with its interval,
    coloured by verdict, one panel per metric (each with its own scale) and a rule at 0.

    Parameters
    ----------
    comparison
        A :func:`radiolens.finetune.compare_regimes` table (or :meth:`Study.downstream_comparison
        <radiolens.pipeline.Study.downstream_comparison>`).
    """
    alt = altair()
    missing = {"task", "metric", "difference", "ci_low", "ci_high", "p_value", "verdict"} - set(comparison.columns)
    if missing:
        raise ValueError(f"comparison table lacks columns {sorted(missing)}")
    data = comparison.assign(panel=comparison["task"].astype(str) + " (" + comparison["metric"].astype(str) + ")")
    panels = list(dict.fromkeys(data["panel"]))
    verdict = alt.Color("verdict:N", title="Full fine-tuning",
                        scale=alt.Scale(domain=list(VERDICT_COLORS), range=list(VERDICT_COLORS.values())))
    base = alt.Chart().encode(y=alt.Y("panel:N", title=None, axis=alt.Axis(labels=False, ticks=False)))
    interval = base.mark_rule(strokeWidth=2).encode(x=alt.X("ci_low:Q", title="full - frozen"), x2="ci_high:Q",
                                                     color=verdict)
    point = base.mark_point(filled=True, size=70).encode(
        x="difference:Q", color=verdict,
        tooltip=["task:N", "metric:N", alt.Tooltip("difference:Q", format="+.3f"), alt.Tooltip("ci_low:Q", format=".3f"),
                 alt.Tooltip("ci_high:Q", format=".3f"), alt.Tooltip("p_value:Q", format=".3g"), "verdict:N"])
    zero = alt.Chart().mark_rule(strokeDash=[4, 3], color="black").encode(x=alt.datum(0))
    return (
        alt.layer(zero, interval, point, data=data)
        .properties(width=320, height=28)
        .facet(row=alt.Row("panel:N", sort=panels, title=None, header=alt.Header(labelAngle=0, labelAlign="left")))
        .resolve_scale(x="independent")
        .properties(title=title or "Full fine-tuning minus frozen on the same test cases (95% interval)")
    )


def stage_shift_chart(stages, title: str | None = None):
    """Where in the network fine-tuning acts: per encoder stage, how much the embedding moved
    (1 - linear CKA) and the held-out R² of the radiomics read from it, pre-trained vs fine-tuned.

    Parameters
    ----------
    stages
        A :func:`radiolens.lens.stage_shift_table` table, or ``{task: table}``.
    """
    alt = altair()
    data = concat_tasks(stages, "stage shift")
    if "task" not in data.columns:
        data.insert(0, "task", "")
    missing = {"stage", "cka", "r2_pre", "r2_ft"} - set(data.columns)
    if missing:
        raise ValueError(f"stage table lacks columns {sorted(missing)}")
    order = sorted(data["stage"].unique())
    moved = data.assign(moved=1 - data["cka"])
    change = (
        alt.Chart(moved)
        .mark_line(point=True)
        .encode(
            x=alt.X("stage:O", sort=order, title="encoder stage"),
            y=alt.Y("moved:Q", title="1 - CKA (pre vs fine-tuned)", scale=alt.Scale(zero=True)),
            color=alt.Color("task:N", title="task"),
            tooltip=["task:N", "stage:N", alt.Tooltip("cka:Q", format=".3f"), alt.Tooltip("moved:Q", format=".3f")],
        )
        .properties(width=220, height=180, title="How much each stage moved")
    )
    long = data.melt(id_vars=["task", "stage"], value_vars=["r2_pre", "r2_ft"], var_name="encoder", value_name="r2")
    long["encoder"] = long["encoder"].str.replace("r2_", "", regex=False).map(ENCODER_LABELS)
    decoded = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("stage:O", sort=order, title="encoder stage"),
            y=alt.Y("r2:Q", title="mean held-out R² of the radiomics"),
            color=alt.Color("encoder:N", title="encoder", scale=alt.Scale(
                domain=[ENCODER_LABELS["pre"], ENCODER_LABELS["ft"]], range=[ENCODER_COLORS["pre"], ENCODER_COLORS["ft"]])),
            strokeDash=alt.StrokeDash("task:N", title="task"),
            tooltip=["task:N", "stage:N", "encoder:N", alt.Tooltip("r2:Q", format=".3f")],
        )
        .properties(width=220, height=180, title="What the lens reads from each stage")
    )
    chart = alt.hconcat(change, decoded).resolve_scale(color="independent", strokeDash="independent")
    return chart.properties(title=title) if title else chart
