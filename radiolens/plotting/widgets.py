"""Kernel-backed explorers of what fine-tuning changed (ipywidgets + matplotlib).

:class:`WeightChangeExplorer` (rankings per task with filters, and each feature's definition,
decoded-vs-true scatter, decoder weights and an example case) and :class:`SweepExplorer` (the
penalty grid). The Altair-native views that also work in a static page are in
:mod:`radiolens.plotting.charts` and :mod:`radiolens.plotting.explorer`; the case viewer in
:mod:`radiolens.plotting.slices`.

Every view here is a plain Python object that

- keeps its state in ordinary attributes and exposes pure methods (``ranked()``,
  ``scatter_data()``, ``decoder_weights()``...), so it can be tested without a browser;
- draws with matplotlib into ``ipywidgets.Image`` PNGs (no JavaScript beyond ipywidgets);
- has a ``_repr_mimebundle_`` carrying both the widget view and a static ``image/png``
  fallback. A front end with a live kernel shows the widget; a static page shows the PNG,
  provided the renderer prefers ``image/png`` over the widget view (for Jupyter Book /
  MyST-NB: ``nb_mime_priority_overrides: [["html",
  "application/vnd.jupyter.widget-view+json", 60]]``). Setting the environment variable
  ``RADIOLENS_STATIC_VIEWS=1`` (or passing ``interactive=False``) drops the widget view
  altogether, e.g. when executing notebooks for a static site.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from radiolens.glossary import feature_definition
from radiolens.naming import FAMILIES, FAMILY_LABELS, MODALITIES
from radiolens.plotting._display import bundle, figure_png, ipywidgets, new_figure
from radiolens.plotting.rankings import MEASURE_LABELS, MEASURES, RANKINGS, importance_table, ranked
from radiolens.plotting.slices import available_modalities, case_figure, largest_roi_slice, load_case
from radiolens.plotting.style import ENCODER_COLORS, ENCODER_LABELS, MODALITY_COLORS, OVERLAYS

__all__ = ["SweepExplorer", "WeightChangeExplorer", "decoder_weights_figure", "ranking_figure", "scatter_figure"]

logger = logging.getLogger(__name__)



def _short_label(row) -> str:
    token = str(row["column"]).split("__", 1)[-1].split("_")[0]  # e.g. "wavelet-LHL"
    image = "orig" if row["image_type"] == "Original" else token
    family = FAMILY_LABELS.get(row["family"], row["family"])
    return f"{row['modality']} · {family} · {row['feature']} ({image})"


def _intervals(table: pd.DataFrame, value: str) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Bootstrap interval of ``value`` per row, from ``{value}_lo/_hi`` columns if present.

    The lens reports intervals for ``delta_I`` but maybe not for ``rel_delta_I``; then the
    ΔI interval divided by I_pre is shown (ignoring I_pre's own uncertainty) and said so.
    """
    if f"{value}_lo" in table.columns and f"{value}_hi" in table.columns:
        return (table[f"{value}_lo"].to_numpy(float), table[f"{value}_hi"].to_numpy(float),
                "bootstrap interval")
    if value == "rel_delta_I" and {"delta_I_lo", "delta_I_hi", "I_pre"} <= set(table.columns):
        i_pre = table["I_pre"].to_numpy(float)
        return (table["delta_I_lo"].to_numpy(float) / i_pre,
                table["delta_I_hi"].to_numpy(float) / i_pre, "bootstrap ΔI interval / I_pre")
    return None


def ranking_figure(table: pd.DataFrame, by: str = "rel_delta_I", title: str = ""):
    """Horizontal bars of a ranking in order, with bootstrap intervals when the table has them.

    The bars show what the ranking orders by (``table[by]``): the relative change
    ``rel_delta_I`` (= ΔI / I_pre, the paper's Fig. 3), ``delta_I`` or ``delta_r2``.
    Intervals come from ``{by}_lo`` / ``{by}_hi`` columns (``compare(..., n_bootstrap=B)``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    n = max(len(table), 1)
    fig = new_figure(7.5, 1.0 + 0.3 * n)
    ax = fig.subplots()
    if len(table) == 0:
        ax.text(0.5, 0.5, "no features match the filters", ha="center", va="center")
        ax.set_axis_off()
        return fig
    value = by
    y = np.arange(len(table))[::-1]
    values = table[value].to_numpy(dtype=float)
    colours = [MODALITY_COLORS.get(m, "#888888") for m in table["modality"]]
    ax.barh(y, values, color=colours, height=0.7)
    xlabel = MEASURE_LABELS.get(value, value)
    spans = _intervals(table, value)
    if spans is not None:
        low, high, what = spans
        ok = np.isfinite(low) & np.isfinite(high)
        if ok.any():
            err = np.clip(np.vstack([values - low, high - values])[:, ok], 0, None)
            ax.errorbar(values[ok], y[ok], xerr=err, fmt="none", ecolor="black", elinewidth=1,
                        capsize=2)
            xlabel += f"\nwhiskers: {what}"
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([_short_label(r) for _, r in table.iterrows()], fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    handles = [_patch(c) for c in MODALITY_COLORS.values()]
    ax.legend(handles, list(MODALITY_COLORS), fontsize=7, frameon=False, loc="best")
    return fig


def _patch(colour: str):
    from matplotlib.patches import Patch

    return Patch(color=colour)


def scatter_figure(data: pd.DataFrame, column: str, r2: Mapping[str, float] | None = None):
    """Decoded vs true (normalised) values of one feature, pre-trained and fine-tuned decoders.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(4.6, 4.0)
    ax = fig.subplots()
    for encoder, label in ENCODER_LABELS.items():
        colour = ENCODER_COLORS[encoder]
        part = data[data["encoder"] == encoder]
        if r2 and r2.get(encoder) is not None and np.isfinite(r2[encoder]):
            label += f" (R² {r2[encoder]:.2f})"
        ax.scatter(part["observed"], part["decoded"], s=14, alpha=0.7, color=colour, label=label)
    both = np.concatenate([data["observed"].to_numpy(float), data["decoded"].to_numpy(float)])
    both = both[np.isfinite(both)]
    if both.size:
        lims = (float(both.min()), float(both.max()))
        ax.plot(lims, lims, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("true (normalised radiomic value)")
    ax.set_ylabel("decoded from the embedding")
    ax.set_title(column, fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    return fig


def decoder_weights_figure(data: pd.DataFrame, column: str):
    """One feature's decoder weight on every hidden unit, pre-trained next to fine-tuned.

    Parameters
    ----------
    data
        Columns ``hidden_unit, encoder ("pre" / "ft"), weight`` (see
        :meth:`WeightChangeExplorer.decoder_weights`).
    column
        The feature (title).

    Returns
    -------
    matplotlib.figure.Figure
    """
    units = sorted(data["hidden_unit"].unique())
    fig = new_figure(4.6, 3.2)
    ax = fig.subplots()
    x = np.arange(len(units))
    width = 0.4
    for offset, (encoder, label) in zip((-width / 2, width / 2), ENCODER_LABELS.items()):
        part = data[data["encoder"] == encoder].set_index("hidden_unit")["weight"].reindex(units)
        norm = float(np.sqrt(np.nansum(part.to_numpy(float) ** 2)))
        ax.bar(x + offset, part.to_numpy(float), width, color=ENCODER_COLORS[encoder], label=f"{label} (I = {norm:.3g})")
    ax.axhline(0, color="black", lw=0.8)
    step = max(1, len(units) // 16)
    ax.set_xticks(x[::step], [str(u) for u in units[::step]], fontsize=7)
    ax.set_xlabel("hidden unit")
    ax.set_ylabel("decoder weight")
    ax.set_title(f"{column}: decoder weights", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    return fig


class WeightChangeExplorer:
    """Explore which radiomic features fine-tuning made more or less decodable.

    Controls: task, modality and family filters, top-k, ranking mode (gained / lost /
    stable) and measure (``rel_delta_I`` / ``delta_I`` / ``delta_r2``). Shows the ranked
    features as bars with bootstrap intervals; choosing a feature shows its definition, its decoded-vs-true scatter
    before and after fine-tuning, its decoder weight on every hidden unit before and after
    (the weights whose norm is the importance ``I``) and, when a cohort is given, the case with
    the most extreme value of that feature, its ROI outlined.

    Everything the widgets show comes from pure methods (:meth:`ranked`,
    :meth:`scatter_data`, :meth:`decoder_weights`, :meth:`example_case`), so it can be tested and reused without a
    browser.

    Parameters
    ----------
    reports
        Task name -> :class:`radiolens.lens.LensReport`.
    cohort
        Optional cohort for the example-case view.
    roi
        Mask outlined in the example case (``"gland"`` or ``"lesion"``).
    k, mode, by
        Initial top-k, ranking mode and measure.
    interactive
        See :func:`radiolens.plotting.show_case`.

    Attributes
    ----------
    current_feature : str or None
        The feature whose details are shown.
    """

    def __init__(
        self,
        reports: Mapping[str, Any],
        cohort=None,
        roi: str = "gland",
        k: int = 10,
        mode: str = "gained",
        by: str = "rel_delta_I",
        interactive: bool | None = None,
    ):
        widgets = ipywidgets()
        if not isinstance(reports, Mapping) or not reports:
            raise ValueError("WeightChangeExplorer needs a non-empty dict of task name -> LensReport")
        for task, report in reports.items():
            if not hasattr(report, "importance"):
                raise TypeError(f"reports[{task!r}] is not a LensReport (it has no .importance)")
        if mode not in RANKINGS:
            raise ValueError(f"ranking mode {mode!r} is not one of {list(RANKINGS)}")
        if by not in MEASURES:
            raise ValueError(f"ranking measure by={by!r} is not one of {list(MEASURES)}")
        if roi not in OVERLAYS:
            raise ValueError(f"roi {roi!r} is not one of {list(OVERLAYS)}")
        self.reports = dict(reports)
        self.cohort = cohort
        self.roi = roi
        self.interactive = interactive
        self.current_feature: str | None = None
        self._busy = False
        self._shown: tuple[str, str] | None = None  # (task, feature) the details show
        self._case_pngs: dict[tuple[str, str], bytes | None] = {}

        first = next(iter(self.reports))
        imp = importance_table(self.reports[first])
        self.task = widgets.Dropdown(options=list(self.reports), value=first, description="task")
        self.modality_filter = widgets.SelectMultiple(description="modality", rows=3)
        self.family_filter = widgets.SelectMultiple(description="family", rows=6)
        self._set_filter_options(imp)
        max_k = max(1, min(50, len(imp)))
        self.top_k = widgets.IntSlider(value=min(k, max_k), min=1, max=max_k, description="top k")
        self.mode = widgets.ToggleButtons(options=list(RANKINGS), value=mode, description="rank")
        self.by = widgets.ToggleButtons(options=list(MEASURES), value=by, description="by")
        self.feature = widgets.Dropdown(options=[], description="feature",
                                        layout=widgets.Layout(width="60%"))
        self.chart = widgets.Image(format="png")
        self.definition = widgets.HTML()
        self.scatter = widgets.Image(format="png")
        self.weights = widgets.Image(format="png")
        self.case_image = widgets.Image(format="png")
        self.case_info = widgets.HTML()

        self.task.observe(self._on_task, "value")
        for w in (self.modality_filter, self.family_filter, self.top_k, self.mode, self.by):
            w.observe(self._refresh, "value")
        self.feature.observe(self._on_feature, "value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.task, self.top_k]),
                widgets.HBox([self.mode, self.by]),
                widgets.HBox([self.modality_filter, self.family_filter]),
                self.chart,
                self.feature,
                self.definition,
                widgets.HBox([self.scatter, self.weights]),
                widgets.VBox([self.case_image, self.case_info]),
            ]
        )
        self._refresh()

    # -- state -------------------------------------------------------------------------
    @property
    def report(self):
        """The report of the selected task."""
        return self.reports[self.task.value]

    def ranked(self) -> pd.DataFrame:
        """The ranked, filtered table the bars show (see :func:`radiolens.plotting.rankings.ranked`)."""
        return ranked(
            self.report, self.mode.value, k=self.top_k.value, by=self.by.value,
            modalities=self.modality_filter.value, families=self.family_filter.value,
        )

    def update(
        self,
        task: str | None = None,
        modalities: Iterable[str] | None = None,
        families: Iterable[str] | None = None,
        k: int | None = None,
        mode: str | None = None,
        by: str | None = None,
    ) -> WeightChangeExplorer:
        """Set several controls at once and redraw once (None leaves a control as it is).

        Returns
        -------
        WeightChangeExplorer
            ``self``.
        """
        if task is not None and task not in self.reports:
            raise KeyError(f"task {task!r} is not one of {list(self.reports)}")
        if mode is not None and mode not in RANKINGS:
            raise ValueError(f"ranking mode {mode!r} is not one of {list(RANKINGS)}")
        if by is not None and by not in MEASURES:
            raise ValueError(f"ranking measure by={by!r} is not one of {list(MEASURES)}")
        imp = importance_table(self.reports[task if task is not None else self.task.value])
        for name, given, known in (("modalities", modalities, imp["modality"]),
                                   ("families", families, imp["family"])):
            unknown = sorted(set(given or ()) - set(known))
            if unknown:
                raise ValueError(f"{name} {unknown} are not in the report; it has {sorted(set(known))}")
        self._busy = True
        try:
            if task is not None and task != self.task.value:
                self.task.value = task
                self._set_filter_options(imp)
                self.top_k.max = max(1, min(50, len(imp)))
            if modalities is not None:
                self.modality_filter.value = tuple(modalities)
            if families is not None:
                self.family_filter.value = tuple(families)
            if k is not None:
                self.top_k.value = int(k)
            if mode is not None:
                self.mode.value = mode
            if by is not None:
                self.by.value = by
        finally:
            self._busy = False
        self._refresh()
        return self

    def select_feature(self, column: str) -> None:
        """Show the details of one feature (it need not be in the current ranking)."""
        imp = importance_table(self.report)
        if column not in set(imp["column"]):
            raise KeyError(f"feature {column!r} is not in the {self.task.value!r} report")
        self.current_feature = column
        listed = [value for _label, value in self.feature.options]
        if column in listed and self.feature.value != column:
            busy, self._busy = self._busy, True
            try:
                self.feature.value = column
            finally:
                self._busy = busy
        self._show_feature()

    def scatter_data(self, column: str | None = None) -> pd.DataFrame:
        """Decoded vs true values of one feature on the evaluation cases.

        Returns
        -------
        pandas.DataFrame
            Columns ``case_id, encoder ("pre" / "ft"), observed, decoded``: ``observed`` is
            ``report.observed[column]`` and ``decoded`` is ``report.decoded_pre[column]`` or
            ``report.decoded_ft[column]`` on the same cases.
        """
        column = self._column(column)
        report = self.report
        for name in ("observed", "decoded_pre", "decoded_ft"):
            frame = getattr(report, name, None)
            if frame is None or column not in frame.columns:
                raise KeyError(f"the {self.task.value!r} report has no {name}[{column!r}]")
        observed = report.observed[column]
        parts = []
        for encoder, frame in (("pre", report.decoded_pre), ("ft", report.decoded_ft)):
            parts.append(pd.DataFrame({
                "case_id": observed.index.astype(str),
                "encoder": encoder,
                "observed": observed.to_numpy(dtype=float),
                "decoded": frame[column].reindex(observed.index).to_numpy(dtype=float),
            }))
        return pd.concat(parts, ignore_index=True)

    def decoder_weights(self, column: str | None = None) -> pd.DataFrame:
        """One feature's decoder weights on the hidden units, before and after fine-tuning.

        Returns
        -------
        pandas.DataFrame
            Columns ``hidden_unit, encoder ("pre" / "ft"), weight`` from
            ``report.decoder_pre[column]`` and ``report.decoder_ft[column]``; the norm of an
            encoder's weights is its importance ``I``. Empty when the report holds no decoder
            weights (written by radiolens before they were stored).
        """
        column = self._column(column)
        parts = []
        for encoder in ("pre", "ft"):
            frame = getattr(self.report, f"decoder_{encoder}", None)
            if frame is None or column not in getattr(frame, "columns", ()):
                return pd.DataFrame(columns=["hidden_unit", "encoder", "weight"])
            parts.append(pd.DataFrame({"hidden_unit": frame.index.to_numpy(), "encoder": encoder,
                                       "weight": frame[column].to_numpy(dtype=float)}))
        return pd.concat(parts, ignore_index=True)

    def example_case(self, column: str | None = None) -> str | None:
        """The evaluation case whose true value of the feature is furthest from the median."""
        column = self._column(column)
        observed = getattr(self.report, "observed", None)
        if observed is None or column not in observed.columns:
            return None
        values = observed[column].astype(float)
        values = values[np.isfinite(values)]
        if values.empty:
            return None
        return str((values - values.median()).abs().idxmax())

    # -- drawing -----------------------------------------------------------------------
    def chart_png(self) -> bytes:
        """The bar chart of :meth:`ranked` as PNG bytes."""
        title = (f"{self.task.value}: top {self.top_k.value} {self.mode.value} "
                 f"by {self.by.value}")
        return figure_png(ranking_figure(self.ranked(), by=self.by.value, title=title))

    def scatter_png(self, column: str | None = None) -> bytes:
        """The decoded-vs-true scatter of a feature as PNG bytes."""
        column = self._column(column)
        row = importance_table(self.report).set_index("column").loc[column]
        r2 = {"pre": float(row.get("r2_pre", np.nan)), "ft": float(row.get("r2_ft", np.nan))}
        return figure_png(scatter_figure(self.scatter_data(column), column, r2))

    def weights_png(self, column: str | None = None) -> bytes | None:
        """The decoder-weight bars of a feature as PNG bytes (None without decoder weights)."""
        column = self._column(column)
        data = self.decoder_weights(column)
        return None if data.empty else figure_png(decoder_weights_figure(data, column))

    def case_png(self, column: str | None = None) -> bytes | None:
        """The example case for a feature (its modality, ROI outlined) as PNG, if a cohort is set."""
        column = self._column(column)
        key = (self.task.value, column)
        if key not in self._case_pngs:
            self._case_pngs[key] = self._draw_case(column)
        return self._case_pngs[key]

    def _draw_case(self, column: str) -> bytes | None:
        case_id = self.example_case(column)
        if self.cohort is None or case_id is None or case_id not in set(map(str, self.cohort.case_ids)):
            return None
        case = load_case(self.cohort, case_id)
        modality = column.split("__", 1)[0]
        modalities = [modality] if modality in available_modalities(case) else None
        fig = case_figure(case, case_id, largest_roi_slice(case, self.roi), modalities,
                          masks=(self.roi,), panel_size=3.6)
        return figure_png(fig)

    # -- callbacks ---------------------------------------------------------------------
    def _column(self, column: str | None) -> str:
        column = self.current_feature if column is None else column
        if column is None:
            raise ValueError("no feature chosen: pass a column or call select_feature first")
        return column

    def _set_filter_options(self, imp: pd.DataFrame) -> None:
        mods = [m for m in MODALITIES if m in set(imp["modality"])]
        mods += sorted(set(imp["modality"]) - set(mods))
        fams = [f for f in FAMILIES if f in set(imp["family"])]
        fams += sorted(set(imp["family"]) - set(fams))
        self.modality_filter.options = mods
        self.modality_filter.value = tuple(mods)
        self.family_filter.options = fams
        self.family_filter.value = tuple(fams)

    def _on_task(self, change=None) -> None:
        if self._busy:  # update() sets the filters itself
            return
        self._busy = True
        try:
            imp = importance_table(self.report)
            self._set_filter_options(imp)
            self.top_k.max = max(1, min(50, len(imp)))
        finally:
            self._busy = False
        self._refresh()

    def _refresh(self, change=None) -> None:
        if self._busy:
            return
        table = self.ranked()
        self.chart.value = self.chart_png()
        columns = list(table["column"])
        keep = self.current_feature in columns
        self._busy = True
        try:
            self.feature.options = [(_short_label(r), r["column"]) for _, r in table.iterrows()]
            if columns:
                self.feature.value = self.current_feature if keep else columns[0]
        finally:
            self._busy = False
        if not columns:
            self.current_feature = None
            self._shown = None
            self.definition.value = "<i>No feature matches the filters.</i>"
            self.scatter.value = b""
            self.weights.value = b""
            self.case_image.value = b""
            self.case_info.value = ""
        elif not keep:
            self.current_feature = columns[0]
        if columns and self._shown != (self.task.value, self.current_feature):
            self._show_feature()

    def _on_feature(self, change) -> None:
        if self._busy or change["new"] is None:
            return
        self.select_feature(change["new"])

    def _show_feature(self) -> None:
        column = self.current_feature
        try:
            text = feature_definition(column)
        except ValueError as err:
            text = str(err)
        row = importance_table(self.report).set_index("column").loc[column]
        numbers = ", ".join(
            f"{name} {row[name]:+.3g}" if name.startswith("delta") else f"{name} {row[name]:.3g}"
            for name in ("I_pre", "I_ft", "delta_I", "rel_delta_I", "r2_pre", "r2_ft", "delta_r2")
            if name in row.index and pd.notna(row[name])
        )
        self._shown = (self.task.value, column)
        self.definition.value = f"<b>{column}</b><br>{text}<br><small>{numbers}</small>"
        try:
            self.scatter.value = self.scatter_png(column)
        except KeyError as err:
            logger.info("no scatter for %s: %s", column, err)
            self.scatter.value = b""
        self.weights.value = self.weights_png(column) or b""
        png = self.case_png(column)
        self.case_image.value = png or b""
        case_id = self.example_case(column)
        self.case_info.value = (
            f"<small>example: case <b>{case_id}</b> (most extreme {column}), "
            f"{self.roi} outlined</small>" if png else ""
        )

    def _repr_mimebundle_(self, include=None, exclude=None):
        return bundle(self.widget, self.chart_png(), repr(self), self.interactive)

    def __repr__(self) -> str:
        return (
            f"WeightChangeExplorer(tasks={list(self.reports)}, task={self.task.value!r}, "
            f"mode={self.mode.value!r}, by={self.by.value!r}, k={self.top_k.value}, "
            f"feature={self.current_feature!r})"
        )


# ======================================================================================
# Penalty sweep
# ======================================================================================


class SweepExplorer:
    """Pick (lambda1, lambda2) from a penalty sweep and see its validation loss on the grid.

    Parameters
    ----------
    sweep_table
        Tidy table with columns ``l1``, ``l2`` and a validation-loss column.
    value
        The loss column; default the first of ``val_loss``, ``validation_loss``, ``loss``.
    interactive
        See :func:`radiolens.plotting.show_case`.
    """

    def __init__(self, sweep_table: pd.DataFrame, value: str | None = None,
                 interactive: bool | None = None):
        widgets = ipywidgets()
        missing = [c for c in ("l1", "l2") if c not in sweep_table.columns]
        if missing:
            raise KeyError(f"sweep table lacks column(s) {missing}; it has {list(sweep_table.columns)}")
        if value is None:
            value = next((c for c in ("val_loss", "validation_loss", "loss")
                          if c in sweep_table.columns), None)
            if value is None:
                raise KeyError(
                    "sweep table has no validation-loss column (val_loss, validation_loss or "
                    f"loss); it has {list(sweep_table.columns)}; pass value=..."
                )
        elif value not in sweep_table.columns:
            raise KeyError(f"sweep table has no column {value!r}; it has {list(sweep_table.columns)}")
        self.table = sweep_table.groupby(["l1", "l2"], as_index=False)[value].mean()
        self.value = value
        # penalty_sweep marks its choice; keep it rather than re-deciding ties
        self._selected = None
        if "selected" in sweep_table.columns and sweep_table["selected"].astype(bool).sum() == 1:
            row = sweep_table[sweep_table["selected"].astype(bool)].iloc[0]
            self._selected = (row["l1"], row["l2"])
        self.interactive = interactive
        best = self.best()
        self.l1 = widgets.Dropdown(options=sorted(self.table["l1"].unique()), value=best["l1"],
                                   description="λ1 (L1)")
        self.l2 = widgets.Dropdown(options=sorted(self.table["l2"].unique()), value=best["l2"],
                                   description="λ2 (L2)")
        self.image = widgets.Image(format="png")
        self.info = widgets.HTML()
        self.l1.observe(self._update, "value")
        self.l2.observe(self._update, "value")
        self.widget = widgets.VBox([widgets.HBox([self.l1, self.l2]), self.image, self.info])
        self._update()

    def grid(self) -> pd.DataFrame:
        """Validation loss as a table: rows l2, columns l1."""
        return self.table.pivot(index="l2", columns="l1", values=self.value).sort_index()

    def best(self) -> pd.Series:
        """The sweep's chosen row: the one marked ``selected``, else the lowest loss."""
        if self._selected is not None:
            l1, l2 = self._selected
            return self.table[(self.table["l1"] == l1) & (self.table["l2"] == l2)].iloc[0]
        return self.table.loc[self.table[self.value].idxmin()]

    def selected_loss(self) -> float:
        """Validation loss of the selected (l1, l2); NaN when that pair was not run."""
        hit = self.table[(self.table["l1"] == self.l1.value) & (self.table["l2"] == self.l2.value)]
        return float(hit[self.value].iloc[0]) if len(hit) else float("nan")

    def figure(self):
        """Heatmap of the grid, the selected cell boxed, the best one starred."""
        from matplotlib.patches import Rectangle

        grid = self.grid()
        fig = new_figure(1.2 + 0.9 * grid.shape[1], 1.2 + 0.6 * grid.shape[0])
        ax = fig.subplots()
        im = ax.imshow(grid.to_numpy(float), cmap="viridis_r", aspect="auto")
        fig.colorbar(im, ax=ax, label=self.value)
        ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns], fontsize=8)
        ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index], fontsize=8)
        ax.set_xlabel("λ1 (L1 penalty)")
        ax.set_ylabel("λ2 (L2 penalty)")
        ax.set_title("validation loss · red box: shown · ★: chosen by the sweep", fontsize=9)
        values = grid.to_numpy(float)
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=7, color="black",
                        bbox={"facecolor": "white", "alpha": 0.6, "lw": 0, "pad": 1})
        col = list(grid.columns).index(self.l1.value)
        row = list(grid.index).index(self.l2.value)
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, ec="red", lw=2))
        best = self.best()
        ax.plot(list(grid.columns).index(best["l1"]) - 0.3, list(grid.index).index(best["l2"]) - 0.25,
                marker="*", color="white", markersize=12, markeredgecolor="black")
        return fig

    def _update(self, change=None) -> None:
        self.image.value = figure_png(self.figure())
        best = self.best()
        self.info.value = (
            f"λ1 = {self.l1.value:g}, λ2 = {self.l2.value:g}: {self.value} "
            f"<b>{self.selected_loss():.4g}</b> · best: λ1 = {best['l1']:g}, "
            f"λ2 = {best['l2']:g} ({best[self.value]:.4g})"
        )

    def _repr_mimebundle_(self, include=None, exclude=None):
        return bundle(self.widget, figure_png(self.figure()), repr(self), self.interactive)

    def __repr__(self) -> str:
        return (f"SweepExplorer(l1={self.l1.value!r}, l2={self.l2.value!r}, "
                f"{self.value}={self.selected_loss():.4g})")
