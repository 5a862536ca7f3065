"""Altair charts and tables of what the radiomic lens measured (report and book).

Every function takes the objects the lens and the pipeline produce (a
:class:`radiolens.lens.LensReport`, or a ``dict`` of them keyed by task, and tidy tables) and
returns an Altair chart or a DataFrame. Charts are plain Vega-Lite specifications: all their
interactivity (the explorer's task selector, filters, slider and click selection) lives in the
specification, so they work in a static HTML page or book with no Python kernel behind them.

The charts mirror the paper (Wang et al., MIDL 2026): :func:`family_scores_chart` is Table 1
as a picture, :func:`modality_r2_chart` is Fig. 2, :func:`ranking_chart` is Fig. 3 (with the
bootstrap intervals and permutation p-values radiolens adds). :func:`delta_heatmap`,
:func:`delta_explorer`, :func:`sweep_chart`, :func:`planted_truth_chart` and
:func:`downstream_chart` are radiolens additions.

Data sizes are kept bounded on purpose (a report has p = 2500 features per task): charts embed
only the rows they draw, the explorer keeps the top ``top_max`` features per ranking, modality
and family, and its scatter plots embed a subset of features and cases (see
:func:`delta_explorer`).
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from radiolens.naming import FAMILIES, FAMILY_LABELS, MODALITIES

__all__ = [
    "MODALITY_COLORS",
    "STAGE_COLORS",
    "STAGE_LABELS",
    "delta_explorer",
    "delta_heatmap",
    "delta_heatmap_data",
    "downstream_chart",
    "explorer_data",
    "family_scores_chart",
    "modality_r2_chart",
    "planted_truth_chart",
    "ranked",
    "ranking_chart",
    "sweep_chart",
    "table1",
    "table1_chart",
    "table2",
]

log = logging.getLogger(__name__)

#: How the two encoder stages are labelled in every chart.
STAGE_LABELS: dict[str, str] = {"pre": "pre-trained", "ft": "fine-tuned"}
#: One colour per encoder stage (pre-trained grey, fine-tuned red), in charts and widgets.
STAGE_COLORS: dict[str, str] = {"pre": "#7f7f7f", "ft": "#d62728"}
#: One colour per modality, shared by the Altair charts and the widgets' matplotlib figures.
MODALITY_COLORS: dict[str, str] = {"T2W": "#4c78a8", "DWI": "#f58518", "ADC": "#54a24b"}
_RANKINGS = ("gained", "lost", "stable")
_LEVEL_LABELS = {"family": "Feature family", "image_type": "Image type", "overall": "All features"}


def _stage_scale():
    """Colour scale of the stage labels (``STAGE_LABELS``' values) in ``STAGE_COLORS``."""
    return _alt().Scale(domain=[STAGE_LABELS[s] for s in STAGE_COLORS], range=list(STAGE_COLORS.values()))


def _modality_scale():
    return _alt().Scale(domain=list(MODALITY_COLORS), range=list(MODALITY_COLORS.values()))


def _alt():
    try:
        import altair as alt
    except ImportError as error:  # pragma: no cover - altair is a core dependency
        raise ImportError("radiolens.views needs altair: pip install 'altair>=5.4' vl-convert-python") from error
    return alt


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


def _importance(report) -> pd.DataFrame:
    table = report.importance
    if "column" not in table.columns:
        table = table.reset_index().rename(columns={"index": "column"})
    return table.copy()


def _family_label(family: str) -> str:
    return FAMILY_LABELS.get(family, str(family))


def _order(values, preferred) -> list[str]:
    """Values in a preferred order, unknown ones after it (sorted)."""
    values = [v for v in pd.unique(pd.Series(list(values))) if pd.notna(v)]
    known = [v for v in preferred if v in values]
    return known + sorted(v for v in values if v not in known)


def _check_tasks(reports: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(reports, Mapping) or not reports:
        raise ValueError("expected a non-empty dict {task name: LensReport}")
    return dict(reports)


def ranked(report, kind: str = "gained", k: int | None = 10, by: str = "rel_delta_I") -> pd.DataFrame:
    """One of the paper's three rankings as a table with a ``rank`` column (1 = first).

    Parameters
    ----------
    report
        A LensReport.
    kind
        ``"gained"``, ``"lost"`` or ``"stable"`` (calls ``report.gained/lost/stable``).
    k
        Number of features; None for every feature the ranking returns.
    by
        Measure the lens ranks by: ``"rel_delta_I"`` (the paper's Fig. 3), ``"delta_I"`` or
        ``"delta_r2"`` (held-out decodability, radiolens's addition).

    Returns
    -------
    pandas.DataFrame
        The importance rows of the ranked features, in rank order, plus ``rank``.
    """
    if kind not in _RANKINGS:
        raise ValueError(f"ranking kind must be one of {list(_RANKINGS)}, got {kind!r}")
    importance = _importance(report)
    n = len(importance) if k is None else int(k)
    rows = getattr(report, kind)(n, by=by)
    if isinstance(rows, pd.Series):
        rows = rows.to_frame()
    if "column" not in rows.columns:
        rows = rows.reset_index().rename(columns={"index": "column"})
    # Keep the lens's order, take the full importance row (intervals, p-values) for each.
    order = list(rows["column"])
    table = importance.set_index("column").loc[order].reset_index()
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


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
    scores = report.scores
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
            _family_label(g) if lvl == "family" else ("All" if lvl == "overall" else str(g))
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
    alt = _alt()
    table = table1(report)
    long = table.melt(
        id_vars=["level", "label", "stars", "p_value", "p_adjusted"],
        value_vars=["r2_pre", "r2_ft", "mse_pre", "mse_ft"],
        var_name="key",
        value_name="value",
    )
    long["metric"] = long["key"].str.split("_").str[0].map({"r2": "R²", "mse": "MSE"})
    long["stage"] = long["key"].str.split("_").str[1].map(STAGE_LABELS)
    long["level"] = long["level"].map(_LEVEL_LABELS)
    long = long.drop(columns="key")
    levels = [lvl for lvl in _LEVEL_LABELS.values() if lvl in set(long["level"])]
    stage_order = list(STAGE_LABELS.values())

    def panel(level: str, metric: str, first: bool):
        order = list(table.loc[table["level"].map(_LEVEL_LABELS) == level, "label"])
        base = alt.Chart().transform_filter(
            (alt.datum.level == level) & (alt.datum.metric == metric)
        ).encode(x=alt.X("label:N", sort=order, title=level if metric == "MSE" else None,
                         axis=alt.Axis(labelAngle=-30)))
        bars = base.mark_bar().encode(
            xOffset=alt.XOffset("stage:N", sort=stage_order),
            y=alt.Y("value:Q", title=metric if first else None),
            color=alt.Color("stage:N", title="Encoder", scale=_stage_scale()),
            tooltip=[
                alt.Tooltip("label:N", title="group"),
                "stage:N",
                "metric:N",
                alt.Tooltip("value:Q", format=".4f"),
                alt.Tooltip("p_value:Q", format=".2g", title="Wilcoxon p"),
                alt.Tooltip("p_adjusted:Q", format=".2g", title="adjusted p"),
            ],
        )
        stars = (
            base.transform_filter(alt.datum.stage == STAGE_LABELS["ft"])
            .transform_filter("indexof(datum.stars, '*') >= 0")  # not "" or the lens's "ns"
            .mark_text(dy=-8, fontSize=13, fontWeight="bold")
            .encode(xOffset=alt.XOffset("stage:N", sort=stage_order), y=alt.Y("value:Q"), text="stars:N")
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
    alt = _alt()
    scores = report.scores
    data = scores[scores["level"] == "modality"].copy()
    if data.empty:
        raise ValueError("report.scores has no rows at level 'modality'")
    data["stage"] = data["encoder"].map(STAGE_LABELS)
    data = data[["group", "stage", "r2", "mse"]].rename(columns={"group": "modality"})
    order = _order(data["modality"], MODALITIES)
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("modality:N", sort=order, title="Modality", axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("stage:N", sort=list(STAGE_LABELS.values())),
            y=alt.Y("r2:Q", title="R² of decoded radiomics"),
            color=alt.Color(
                "stage:N", title="Encoder", scale=_stage_scale()
            ),
            tooltip=["modality:N", "stage:N", alt.Tooltip("r2:Q", format=".4f"), alt.Tooltip("mse:Q", format=".4f")],
        )
        .properties(width=alt.Step(28), height=200, title=title or "R² per modality (Fig. 2)")
    )


# --------------------------------------------------------------------------------------------
# Fig. 3: rankings with uncertainty
# --------------------------------------------------------------------------------------------

_MEASURE_TITLES = {
    "delta_I": "ΔI = I_ft − I_pre (decoder row norm)",
    "delta_r2": "ΔR² = R²_ft − R²_pre (held-out)",
    "rel_delta_I": "relative ΔI = ΔI / I_pre",
}


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
    alt = _alt()
    table = _with_interval(ranked(report, kind, k, by), by)
    keep = ["rank", "column", "modality", "image_type", "family", "feature", "value", "lo", "hi", "I_pre", "I_ft",
            "delta_I", "delta_I_lo", "delta_I_hi", "rel_delta_I", "r2_pre", "r2_ft", "delta_r2", "p_value",
            "p_adjusted"]
    table = table[keep]
    order = list(table["column"])
    y = alt.Y("column:N", sort=order, title=None, axis=alt.Axis(labelLimit=300))
    bars = alt.Chart().mark_bar().encode(
        y=y,
        x=alt.X("value:Q", title=_MEASURE_TITLES.get(by, by)),
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
        importance = _importance(report)
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
    data["family_label"] = data["family"].map(_family_label)
    return data[["task", "modality", "family", "family_label", "value", "n_features"]]


def delta_heatmap(reports: Mapping[str, Any], value: str = "delta_I", title: str | None = None):
    """Mean change of each modality x family, one heatmap per task side by side.

    Blue is a loss, red a gain; the colour scale is symmetric around zero and shared by the
    tasks so that they can be compared.
    """
    alt = _alt()
    data = delta_heatmap_data(reports, value)
    bound = float(np.nanmax(np.abs(data["value"]))) if len(data) else 1.0
    bound = bound if bound > 0 else 1.0
    families = [_family_label(f) for f in _order(data["family"], FAMILIES)]
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
# Explorer
# --------------------------------------------------------------------------------------------


def _round_sig(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Floats rounded to ``digits`` significant digits (a page does not need 17)."""
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_float_dtype(frame[column]):
            values = frame[column].to_numpy(dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                magnitude = np.floor(np.log10(np.abs(values)))
            magnitude = np.where(np.isfinite(magnitude), magnitude, 0).astype(int)
            factor = 10.0 ** (digits - 1 - magnitude)
            frame[column] = np.round(values * factor) / factor
    return frame


_FEATURE_FIELDS = ["column", "image_type", "rel_delta_I", "delta_I", "delta_I_lo", "delta_I_hi", "I_pre", "I_ft",
                   "r2_pre", "r2_ft", "delta_r2", "p_value", "p_adjusted"]


def explorer_data(
    reports: Mapping[str, Any],
    measures: tuple[str, ...] = ("rel_delta_I", "delta_I", "delta_r2"),
    top_max: int = 25,
    scatter_top: int = 5,
    max_cases: int = 60,
    random_state: int = 0,
) -> dict[str, pd.DataFrame]:
    """The tables behind :func:`delta_explorer`, normalised to keep the page small.

    Returns
    -------
    dict
        ``"ranks"``: one row per task, measure, ranking mode and feature kept (the top
        ``top_max`` per modality and family of each ranking, so that any filter shows a correct
        top-k for k <= top_max): ``task, measure, mode, rank, fid, modality, family, value,
        lo, hi`` (``value`` is the measure, ``lo``/``hi`` its bootstrap interval).
        ``"features"``: one row per task and kept feature, ``fid`` (unique over tasks),
        ``task, column``, every measure and p-value, and ``has_scatter``.
        ``"scatter"``: wide decoded-vs-true rows ``task, fid, case, true, pre, ft`` for the
        top ``scatter_top`` features of every ranking and at most ``max_cases`` evaluation
        cases (sampled with ``random_state``).
        Floats are rounded to 4 significant digits.
    """
    reports = _check_tasks(reports)
    rank_frames, feature_frames, scatter_frames = [], [], []
    rng = np.random.default_rng(random_state)
    next_fid = 0
    for task, report in reports.items():
        importance = _importance(report)
        offset = next_fid
        fids = pd.Series(np.arange(offset, offset + len(importance)), index=importance["column"].to_numpy())
        next_fid += len(importance)
        scatter_columns: list[str] = []
        for measure in measures:
            for mode in _RANKINGS:
                table = _with_interval(ranked(report, mode, len(importance), measure), measure)
                table["task"], table["measure"], table["mode"] = task, measure, mode
                table["fid"] = fids.loc[table["column"]].to_numpy()
                scatter_columns += list(table["column"].head(scatter_top))
                # top_max per modality and family keeps every filtered top-k exact
                table = table.sort_values("rank").groupby(["modality", "family"], observed=True).head(top_max)
                rank_frames.append(
                    table[["task", "measure", "mode", "rank", "fid", "modality", "family", "value", "lo", "hi"]]
                )
        kept = pd.unique(pd.concat([f["fid"] for f in rank_frames[-len(measures) * len(_RANKINGS):]]))
        features = _with_interval(importance, measures[0]).set_index("column").loc[fids.index[kept - offset]]
        features = features.reset_index()
        features.insert(0, "task", task)
        features.insert(0, "fid", kept)
        feature_frames.append(features[["fid", "task", *_FEATURE_FIELDS]])

        scatter_columns = list(dict.fromkeys(scatter_columns))
        observed = getattr(report, "observed", None)
        decoded_pre = getattr(report, "decoded_pre", None)
        decoded_ft = getattr(report, "decoded_ft", None)
        if observed is None or decoded_pre is None or decoded_ft is None:
            log.warning("task %r: report has no observed/decoded tables; the explorer shows no scatter", task)
            continue
        cases = list(observed.index)
        if len(cases) > max_cases:
            cases = sorted(rng.choice(len(cases), size=max_cases, replace=False))
            cases = [observed.index[i] for i in cases]
        columns = [c for c in scatter_columns if c in observed.columns]
        scatter_frames.append(
            pd.DataFrame(
                {
                    "task": task,
                    "fid": np.repeat(fids.loc[columns].to_numpy(), len(cases)),
                    "case": np.tile([str(c) for c in cases], len(columns)),
                    "true": observed.loc[cases, columns].to_numpy(dtype=float).T.ravel(),
                    "pre": decoded_pre.loc[cases, columns].to_numpy(dtype=float).T.ravel(),
                    "ft": decoded_ft.loc[cases, columns].to_numpy(dtype=float).T.ravel(),
                }
            )
        )
    ranks = pd.concat(rank_frames, ignore_index=True)
    features = pd.concat(feature_frames, ignore_index=True)
    scatter = (
        pd.concat(scatter_frames, ignore_index=True)
        if scatter_frames
        else pd.DataFrame(columns=["task", "fid", "case", "true", "pre", "ft"])
    )
    features["has_scatter"] = features["fid"].isin(set(scatter["fid"]))
    return {"ranks": _round_sig(ranks), "features": _round_sig(features), "scatter": _round_sig(scatter)}


_NOT_EMBEDDED = "(scatter not embedded for this feature: only the top features of each ranking carry case data)"


def _definition(definitions, column: str) -> str:
    if definitions is None:
        return ""
    try:
        text = definitions(column) if callable(definitions) else definitions.get(column, "")
    except (KeyError, ValueError):  # e.g. a feature the definitions do not know
        return ""
    return str(text or "")


def _note(definition: str, has_scatter: bool, width: int = 62, lines: int = 5) -> list[str]:
    text = definition if has_scatter else f"{definition} {_NOT_EMBEDDED}".strip()
    wrapped = textwrap.wrap(text, width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1] + "…"
    return wrapped


def delta_explorer(
    reports: Mapping[str, Any],
    measures: tuple[str, ...] = ("rel_delta_I", "delta_I", "delta_r2"),
    k: int = 10,
    top_max: int = 25,
    scatter_top: int = 5,
    max_cases: int = 60,
    definitions: Mapping[str, str] | Callable[[str], str] | None = None,
    random_state: int = 0,
):
    """An interactive explorer of what fine-tuning changed, with no kernel needed.

    Controls (Vega-Lite parameters bound to HTML inputs): task, measure (``rel_delta_I``,
    ``delta_I`` or ``delta_r2``), ranking mode (gained / lost / stable), modality and family filters and a
    top-k slider. Bars show the measure with its bootstrap interval; clicking a bar shows that
    feature's decoded-vs-true scatter, pre-trained and fine-tuned, on the evaluation cases.

    To keep the page light, the scatter is embedded only for the top ``scatter_top`` features
    of every ranking (per task and measure) and at most ``max_cases`` evaluation cases; other
    features say so when clicked. The slider goes up to ``top_max``. Feature definitions are
    embedded for those features only, too.

    Parameters
    ----------
    reports
        ``{task: LensReport}``.
    measures
        Measures the lens may rank by.
    k
        Initial number of bars.
    top_max
        Largest k offered by the slider.
    scatter_top, max_cases, random_state
        Which features and cases carry scatter data (see above).
    definitions
        Optional definitions shown for the clicked feature: ``{column: text}`` or a function
        of the column name (e.g. :func:`radiolens.widgets.feature_definition`); wrapped to
        five lines.
    """
    alt = _alt()
    tables = explorer_data(reports, measures, top_max, scatter_top, max_cases, random_state)
    ranks, scatter, features = tables["ranks"], tables["scatter"], tables["features"]
    # Definitions only for the features with scatter data: at p = 2500 they would dominate the
    # page. Lines are joined with "|", which the text mark breaks on.
    features["note"] = [
        "|".join(_note(_definition(definitions, column), True)) if has else ""
        for column, has in zip(features["column"], features["has_scatter"])
    ]
    tasks = list(dict.fromkeys(ranks["task"]))
    modalities = _order(ranks["modality"], MODALITIES)
    families = _order(ranks["family"], FAMILIES)

    task = alt.param(name="task", value=tasks[0], bind=alt.binding_select(options=tasks, name="Task "))
    measure = alt.param(
        name="measure", value=measures[0], bind=alt.binding_radio(options=list(measures), name="Measure ")
    )
    mode = alt.param(name="mode", value="gained", bind=alt.binding_radio(options=list(_RANKINGS), name="Ranking "))
    modality = alt.param(
        name="modality", value="All", bind=alt.binding_select(options=["All", *modalities], name="Modality ")
    )
    family = alt.param(
        name="family",
        value="All",
        bind=alt.binding_select(
            options=["All", *families], labels=["All", *[_family_label(f) for f in families]], name="Family "
        ),
    )
    top_k = alt.param(
        name="k", value=min(k, top_max), bind=alt.binding_range(min=1, max=top_max, step=1, name="Top k ")
    )
    # Start with the top feature of the first view selected, so the scatter is never blank.
    first = ranks[(ranks["task"] == tasks[0]) & (ranks["measure"] == measures[0]) & (ranks["mode"] == "gained")]
    initial = [{"fid": int(first.sort_values("rank")["fid"].iloc[0])}] if len(first) else None
    pick = alt.selection_point(name="pick", fields=["fid"], on="click", empty=False, clear="dblclick", value=initial)

    ranks_data, datasets = _named_csv(alt, "explorer_ranks", ranks)
    scatter_data, more = _named_csv(alt, "explorer_scatter", scatter)
    datasets.update(more)
    features_data, more = _named_csv(alt, "explorer_features", features)
    datasets.update(more)

    y = alt.Y("column:N", sort=alt.EncodingSortField("position", op="min", order="ascending"), title=None,
              axis=alt.Axis(labelLimit=300))
    base = (
        alt.Chart(ranks_data)
        .transform_filter((alt.datum.task == task) & (alt.datum.measure == measure) & (alt.datum["mode"] == mode))
        .transform_filter((modality == "All") | (alt.datum.modality == modality))
        .transform_filter((family == "All") | (alt.datum.family == family))
        .transform_window(position="row_number()", sort=[alt.SortField("rank", order="ascending")])
        .transform_filter(alt.datum.position <= top_k)
        .transform_lookup(
            lookup="fid",
            from_=alt.LookupData(data=features_data, key="fid", fields=[*_FEATURE_FIELDS, "has_scatter", "note"]),
        )
    )
    bars = base.mark_bar(cursor="pointer").encode(
        y=y,
        x=alt.X("value:Q", title="change in the measure chosen above"),
        color=alt.Color("modality:N", scale=_modality_scale(), title="Modality"),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.65)),
        stroke=alt.condition(pick, alt.value("black"), alt.value(None)),
        tooltip=[alt.Tooltip("position:Q", title="rank"), *[t for t in _ranking_tooltip(alt) if t.shorthand != "rank:Q"]],
    ).add_params(pick)
    intervals = base.mark_rule(color="black").encode(y=y, x="lo:Q", x2="hi:Q")
    ranking = alt.layer(bars, intervals).properties(
        width=380, height=alt.Step(16), title="Click a bar to see its decoded-vs-true scatter →"
    )

    selected = (alt.datum.task == task)
    points = (
        alt.Chart(scatter_data)
        .transform_filter(selected)
        .transform_filter(pick)
        .transform_fold(["pre", "ft"], as_=["stage_key", "decoded"])
        .transform_calculate(
            stage=f"datum.stage_key == 'pre' ? '{STAGE_LABELS['pre']}' : '{STAGE_LABELS['ft']}'"
        )
        .mark_circle(size=36, opacity=0.7)
        .encode(
            x=alt.X("true:Q", title="true (min-max scaled)", scale=alt.Scale(zero=False)),
            y=alt.Y("decoded:Q", title="decoded", scale=alt.Scale(zero=False)),
            color=alt.Color(
                "stage:N", title="Encoder", scale=_stage_scale()
            ),
            tooltip=["case:N", "stage:N", alt.Tooltip("true:Q", format=".3f"), alt.Tooltip("decoded:Q", format=".3f")],
        )
    )
    identity = (
        alt.Chart(scatter_data)
        .transform_filter(selected)
        .transform_filter(pick)
        .transform_aggregate(lo="min(true)", hi="max(true)")
        .mark_rule(color="#444", strokeDash=[4, 4])
        .encode(x="lo:Q", y="lo:Q", x2="hi:Q", y2="hi:Q")
    )
    # The header reads the clicked feature from the ranking view (the features table is used
    # only through lookups: Vega-Lite 6.4 orders a data set used both ways after its lookups).
    info = (
        base.transform_filter(pick)
        .mark_text(align="left", baseline="top", fontSize=12, fontWeight="bold")
        .encode(text="column:N", x=alt.value(0), y=alt.value(0))
    )
    missing = "|".join(_note("", False)).replace("'", "\\'")
    note = (
        info.transform_calculate(text=f"datum.has_scatter ? datum.note : '{missing}'")
        .mark_text(align="left", baseline="top", fontSize=11, color="#555", fontWeight="normal", lineBreak="|")
        .encode(text="text:N", x=alt.value(0), y=alt.value(18))
    )
    scatter_view = alt.layer(points, identity).properties(width=300, height=300)
    header = alt.layer(info, note).properties(width=300, height=90, view=alt.ViewBackground(stroke=None))
    chart = (
        alt.hconcat(ranking, alt.vconcat(header, scatter_view))
        .add_params(task, measure, mode, modality, family, top_k)
        .resolve_scale(color="independent")
    )
    chart = chart.properties(
        title="What fine-tuning changed: explore the rankings (bars: bootstrap intervals where computed)"
    )
    # Set directly: .properties() would validate every embedded row against the schema (slow).
    chart.datasets = datasets
    return chart


# --------------------------------------------------------------------------------------------
# Pipeline tables: penalty sweep, planted truth, downstream performance
# --------------------------------------------------------------------------------------------


def _concat_tasks(tables, what: str) -> pd.DataFrame:
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
    alt = _alt()
    data = _concat_tasks(sweep, "sweep")
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
    alt = _alt()
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
    alt = _alt()
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
            color=alt.Color("regime:N", sort=regimes, scale=alt.Scale(range=list(STAGE_COLORS.values())), title="Regime"),
            tooltip=["task:N", "metric:N", "regime:N", alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(width=alt.Step(40), height=160)
        .facet(column=alt.Column("panel:N", sort=panels, title=None))
        .resolve_scale(y="independent")
        .properties(title=title or "Downstream performance: frozen backbone vs fine-tuned (Table 2)")
    )


# --------------------------------------------------------------------------------------------
# The kernel-backed views live in radiolens.widgets (ipywidgets + matplotlib); they are
# reachable from here too, so that "radiolens.views" is the one place to look for views.
# Imported lazily: ipywidgets and matplotlib are not needed for the Altair charts.
# --------------------------------------------------------------------------------------------

_WIDGET_VIEWS = (
    "CaseViewer",
    "SweepExplorer",
    "WeightChangeExplorer",
    "case_figure",
    "feature_definition",
    "image_type_definition",
    "rank_features",
    "ranking_figure",
    "render_slice",
    "scatter_figure",
    "show_case",
    "window_for",
)


def __getattr__(name: str):
    if name in _WIDGET_VIEWS:
        from radiolens import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module 'radiolens.views' has no attribute {name!r}")
