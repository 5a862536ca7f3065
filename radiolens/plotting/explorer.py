"""The kernel-free explorer: every ranking of every task in one Vega-Lite page, no Python behind it.

:func:`delta_explorer` draws; :func:`explorer_data` builds the bounded tables it embeds (the
top ``top_max`` features per ranking, modality and family; scatter data for a few features
and cases), so a report with p = 2500 features per task stays light.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from radiolens.naming import FAMILIES, MODALITIES
from radiolens.plotting._display import altair
from radiolens.plotting.charts import (
    _check_tasks,
    _encoder_scale,
    _modality_scale,
    _named_csv,
    _order,
    _ranking_tooltip,
    _with_interval,
)
from radiolens.plotting.rankings import RANKINGS, importance_table, ranked
from radiolens.plotting.style import ENCODER_LABELS, family_label

__all__ = ["delta_explorer", "explorer_data"]

log = logging.getLogger(__name__)




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
        importance = importance_table(report)
        offset = next_fid
        fids = pd.Series(np.arange(offset, offset + len(importance)), index=importance["column"].to_numpy())
        next_fid += len(importance)
        scatter_columns: list[str] = []
        for measure in measures:
            for mode in RANKINGS:
                table = _with_interval(ranked(report, mode, len(importance), measure), measure)
                table["task"], table["measure"], table["mode"] = task, measure, mode
                table["fid"] = fids.loc[table["column"]].to_numpy()
                scatter_columns += list(table["column"].head(scatter_top))
                # top_max per modality and family keeps every filtered top-k exact
                table = table.sort_values("rank").groupby(["modality", "family"], observed=True).head(top_max)
                rank_frames.append(
                    table[["task", "measure", "mode", "rank", "fid", "modality", "family", "value", "lo", "hi"]]
                )
        kept = pd.unique(pd.concat([f["fid"] for f in rank_frames[-len(measures) * len(RANKINGS):]]))
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
        of the column name (e.g. :func:`radiolens.glossary.feature_definition`); wrapped to
        five lines.
    """
    alt = altair()
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
    mode = alt.param(name="mode", value="gained", bind=alt.binding_radio(options=list(RANKINGS), name="Ranking "))
    modality = alt.param(
        name="modality", value="All", bind=alt.binding_select(options=["All", *modalities], name="Modality ")
    )
    family = alt.param(
        name="family",
        value="All",
        bind=alt.binding_select(
            options=["All", *families], labels=["All", *[family_label(f) for f in families]], name="Family "
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
        .transform_fold(["pre", "ft"], as_=["encoder_key", "decoded"])
        .transform_calculate(
            encoder=f"datum.encoder_key == 'pre' ? '{ENCODER_LABELS['pre']}' : '{ENCODER_LABELS['ft']}'"
        )
        .mark_circle(size=36, opacity=0.7)
        .encode(
            x=alt.X("true:Q", title="true (min-max scaled)", scale=alt.Scale(zero=False)),
            y=alt.Y("decoded:Q", title="decoded", scale=alt.Scale(zero=False)),
            color=alt.Color(
                "encoder:N", title="Encoder", scale=_encoder_scale()
            ),
            tooltip=["case:N", "encoder:N", alt.Tooltip("true:Q", format=".3f"), alt.Tooltip("decoded:Q", format=".3f")],
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


