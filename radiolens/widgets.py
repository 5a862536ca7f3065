"""Kernel-backed interactive views: look at a case, read a feature, explore what fine-tuning changed.

These are the *ipywidgets* layer of radiolens' views (Binder / Jupyter with a live kernel).
The Altair-native charts that also work in the static online book live in
:mod:`radiolens.views`.

Every view here is a plain Python object that

- keeps its state in ordinary attributes and exposes pure methods (``ranked()``,
  ``scatter_data()``, ``current_slice()``...), so it can be tested without a browser;
- draws with matplotlib into ``ipywidgets.Image`` PNGs (no JavaScript beyond ipywidgets);
- has a ``_repr_mimebundle_`` carrying both the widget view and a static ``image/png``
  fallback. A front end with a live kernel shows the widget; a static page shows the PNG,
  provided the renderer prefers ``image/png`` over the widget view (for Jupyter Book /
  MyST-NB: ``nb_mime_priority_overrides: [["html",
  "application/vnd.jupyter.widget-view+json", 60]]``). Setting the environment variable
  ``RADIOLENS_STATIC_VIEWS=1`` (or passing ``interactive=False``) drops the widget view
  altogether, e.g. when executing notebooks for a static site.

Public API
----------
show_case, CaseViewer, window_for, render_slice, case_figure
WeightChangeExplorer, rank_features, ranking_figure, scatter_figure, SweepExplorer
"""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from radiolens.glossary import feature_definition
from radiolens.naming import FAMILIES, FAMILY_LABELS, MODALITIES
from radiolens.views import MODALITY_COLORS, STAGE_COLORS, STAGE_LABELS

__all__ = [
    "CaseViewer",
    "SweepExplorer",
    "WeightChangeExplorer",
    "case_figure",
    "decoder_weights_figure",
    "rank_features",
    "ranking_figure",
    "render_slice",
    "scatter_figure",
    "show_case",
    "window_for",
]

logger = logging.getLogger(__name__)

_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


# --------------------------------------------------------------------------------------
# lazy optional imports
# --------------------------------------------------------------------------------------


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - ipywidgets is a core dependency
        raise ImportError(
            "radiolens.widgets needs ipywidgets for its interactive views: pip install ipywidgets"
        ) from err
    return ipywidgets


def _new_figure(width: float, height: float, dpi: int = 100, layout: str | None = "constrained"):
    """A matplotlib Figure not registered with pyplot (no global state, no GUI backend)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is a core dependency
        raise ImportError("radiolens.widgets needs matplotlib to draw: pip install matplotlib") from err
    return Figure(figsize=(width, height), dpi=dpi, layout=layout)


def _figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _array_png(rgb: np.ndarray) -> bytes:
    from PIL import Image  # pillow is a dependency of matplotlib

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def _static_only(interactive: bool | None) -> bool:
    if interactive is not None:
        return not interactive
    return os.environ.get("RADIOLENS_STATIC_VIEWS", "").strip().lower() in ("1", "true", "yes")


def _bundle(widget, png: bytes, text: str, interactive: bool | None) -> dict[str, Any]:
    """Mime bundle with the widget view (unless static) and a PNG fallback."""
    bundle: dict[str, Any] = {}
    if not _static_only(interactive):
        bundle.update(widget._repr_mimebundle_() or {})
    bundle["image/png"] = base64.b64encode(png).decode("ascii")
    bundle["text/plain"] = text
    return bundle


# ======================================================================================
# Looking at a case
# ======================================================================================

#: Mask overlays: mask name -> list of (label value or None for "any non-zero", legend, RGB).
#: The zones tile the gland, so they are drawn as a translucent tint (:data:`FILLED`) under
#: the gland and lesion outlines; as outlines they would hide under the gland's.
OVERLAYS: dict[str, list[tuple[int | None, str, tuple[int, int, int]]]] = {
    "gland": [(None, "gland", (255, 215, 0))],
    "zones": [(1, "peripheral zone", (0, 200, 255)), (2, "transition zone", (230, 80, 230))],
    "lesion": [(None, "lesion", (255, 40, 40))],
}

#: ADC display window in 1e-6 mm^2/s: restricted diffusion (cancer, ~600-1000) dark, normal
#: peripheral zone (~1500-1900) bright, free water (~3000) saturated.
ADC_WINDOW = (0.0, 2500.0)

#: Overlays drawn as a translucent tint (with this opacity) rather than an outline.
FILLED: dict[str, float] = {"zones": 0.2}


def window_for(modality: str, volume: np.ndarray) -> tuple[float, float]:
    """A display window (low, high) for one modality's volume.

    ADC maps have physical units, so they get a fixed window (:data:`ADC_WINDOW`, in
    1e-6 mm^2/s; scaled by 1e-3 when the map is evidently stored in 1e-3 mm^2/s). T2W and DWI
    intensities are arbitrary scanner units, so their window comes from percentiles of the
    whole volume (T2W 0.5-99.5 %, DWI 1-99.5 %), which keeps it fixed while scrolling slices.

    Parameters
    ----------
    modality
        ``"T2W"``, ``"DWI"`` or ``"ADC"`` (others are treated like T2W).
    volume
        The whole image, any shape.

    Returns
    -------
    tuple of float
        ``(low, high)`` with ``high > low``.
    """
    values = np.asarray(volume, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    if modality.upper() == "ADC":
        low, high = ADC_WINDOW
        if np.percentile(values, 99) < 10:  # stored in 1e-3 mm^2/s, not 1e-6
            low, high = low * 1e-3, high * 1e-3
        return float(low), float(high)
    q = (1.0, 99.5) if modality.upper() == "DWI" else (0.5, 99.5)
    low, high = (float(v) for v in np.percentile(values, q))
    if not high > low:
        high = low + 1.0
    return low, high


def _mask_layers(masks2d: Mapping[str, np.ndarray | None], names: Iterable[str]):
    """Yield (mask name, binary 2-D mask, legend, colour) per overlay requested and present.

    In a fixed drawing order: zones (tinted) first, then the gland and lesion outlines.
    """
    names = set(names)
    for name in ("zones", "gland", "lesion"):
        if name not in names:
            continue
        mask = masks2d.get(name)
        if mask is None:
            continue
        for value, legend, colour in OVERLAYS[name]:
            binary = mask > 0 if value is None else mask == value
            if binary.any():
                yield name, binary, legend, colour


def _upsample(a: np.ndarray, ry: int, rx: int) -> np.ndarray:
    return np.repeat(np.repeat(a, ry, axis=0), rx, axis=1)


def render_slice(
    image2d: np.ndarray,
    window: tuple[float, float],
    masks2d: Mapping[str, np.ndarray | None] | None = None,
    show: Iterable[str] = ("gland", "zones", "lesion"),
    spacing_yx: tuple[float, float] = (1.0, 1.0),
    min_size: int = 360,
) -> np.ndarray:
    """Window one slice to grey levels and draw mask outlines on it, as an RGB array.

    Parameters
    ----------
    image2d
        The slice, (y, x).
    window
        ``(low, high)`` display window; values outside are clipped.
    masks2d
        Mask slices by name (``gland``, ``zones``, ``lesion``); missing ones may be None.
    show
        Which overlays to draw.
    spacing_yx
        Pixel size (row, column) in mm, so anisotropic pixels keep their aspect ratio.
    min_size
        The slice is enlarged by an integer factor (nearest neighbour) to at least this many
        pixels across, so outlines stay one pixel thin on screen.

    Returns
    -------
    numpy.ndarray
        uint8 array (rows, columns, 3). Where no outline is drawn, all three channels equal
        the windowed grey level ``round(255 * clip((v - low) / (high - low), 0, 1))``.
    """
    from scipy.ndimage import binary_erosion

    low, high = window
    grey = np.clip((np.nan_to_num(np.asarray(image2d, dtype=float)) - low) / (high - low), 0.0, 1.0)
    grey = np.round(grey * 255).astype(np.uint8)
    rx = max(1, int(np.ceil(min_size / max(grey.shape))))
    ry = max(1, int(round(rx * spacing_yx[0] / spacing_yx[1])))
    rgb = np.repeat(_upsample(grey, ry, rx)[..., None], 3, axis=-1)
    for name, binary, _legend, colour in _mask_layers(masks2d or {}, show):
        big = _upsample(binary, ry, rx)
        if name in FILLED:
            alpha = FILLED[name]
            tinted = (1 - alpha) * rgb[big] + alpha * np.asarray(colour, dtype=float)
            rgb[big] = np.round(tinted).astype(np.uint8)
        else:
            edge = big & ~binary_erosion(big, border_value=0)
            rgb[edge] = colour
    return rgb


def _default_slice(case) -> int:
    """The slice with the most lesion, else the middle of the gland, else the middle slice."""
    masks = getattr(case, "masks", None) or {}
    lesion = masks.get("lesion")
    if lesion is not None and np.any(lesion):
        return int(np.argmax((lesion > 0).sum(axis=(1, 2))))
    gland = masks.get("gland")
    shape = next(iter(v for v in case.images.values() if v is not None)).shape
    if gland is not None and np.any(gland):
        z = np.nonzero(np.any(gland > 0, axis=(1, 2)))[0]
        return int(round((z.min() + z.max()) / 2))
    return shape[0] // 2


def _largest_roi_slice(case, roi: str) -> int:
    mask = (getattr(case, "masks", None) or {}).get(roi)
    if mask is None or not np.any(mask):
        return _default_slice(case)
    return int(np.argmax((mask > 0).sum(axis=(1, 2))))


def _available_modalities(case) -> list[str]:
    present = [m for m, v in case.images.items() if v is not None]
    order = [m for m in MODALITIES if m in present]
    return order + [m for m in present if m not in order]


def _spacing_yx(case) -> tuple[float, float]:
    spacing = getattr(case, "spacing", None)
    if spacing is None or len(spacing) < 2:
        return 1.0, 1.0
    return float(spacing[1]), float(spacing[0])  # spacing is (x, y, z)


def _load_case(cohort, case_id):
    ids = list(cohort.case_ids)
    if case_id not in ids:
        shown = ", ".join(repr(c) for c in ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise KeyError(f"case {case_id!r} is not in this cohort ({len(ids)} cases: {shown})")
    return cohort.load_case(case_id)


def _window_label(modality: str, window: tuple[float, float]) -> str:
    low, high = window
    if modality.upper() == "ADC":
        unit = "1e-6 mm²/s" if high > 10 else "1e-3 mm²/s"
        return f"window {low:g}–{high:g} ({unit})"
    return f"window {low:.4g}–{high:.4g} (a.u.)"


def case_figure(
    case,
    case_id: str = "",
    slice_index: int | None = None,
    modalities: Sequence[str] | None = None,
    masks: Iterable[str] = ("gland", "zones", "lesion"),
    panel_size: float = 3.2,
):
    """A static matplotlib figure of one slice of a case: one panel per modality, mask outlines.

    Parameters
    ----------
    case
        A ``Case`` (``images``, ``masks``, ``spacing``, optionally ``labels``).
    case_id
        Shown in the title.
    slice_index
        Axial slice; default the slice with the most lesion, else the middle of the gland.
    modalities
        Panels to draw; default every modality the case has.
    masks
        Overlays to outline (``gland``, ``zones``, ``lesion``).
    panel_size
        Inches per panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.lines import Line2D

    modalities = list(modalities) if modalities is not None else _available_modalities(case)
    masks = tuple(masks)
    z = _default_slice(case) if slice_index is None else int(slice_index)
    sy, sx = _spacing_yx(case)
    fig = _new_figure(panel_size * len(modalities), panel_size + 0.6)
    axes = fig.subplots(1, len(modalities), squeeze=False)[0]
    case_masks = getattr(case, "masks", None) or {}
    masks2d = {k: (None if v is None else v[z]) for k, v in case_masks.items()}
    legend: dict[str, tuple[tuple[int, int, int], bool]] = {}
    for ax, modality in zip(axes, modalities):
        volume = case.images.get(modality)
        ax.set_xticks([])
        ax.set_yticks([])
        if volume is None:
            ax.set_title(f"{modality}: missing")
            continue
        window = window_for(modality, volume)
        ax.imshow(volume[z], cmap="gray", vmin=window[0], vmax=window[1], aspect=sy / sx,
                  interpolation="nearest")
        for mask_name, binary, name, colour in _mask_layers(masks2d, masks):
            rgb = tuple(c / 255 for c in colour)
            if mask_name in FILLED:
                tint = np.zeros((*binary.shape, 4))
                tint[binary] = (*rgb, FILLED[mask_name])
                ax.imshow(tint, aspect=sy / sx, interpolation="nearest")
            else:
                ax.contour(binary.astype(float), levels=[0.5], colors=[rgb], linewidths=1.0)
            legend[name] = (colour, mask_name in FILLED)
        ax.set_title(f"{modality} · slice {z}", fontsize=10)
        ax.set_xlabel(_window_label(modality, window), fontsize=8)
    labels = getattr(case, "labels", None)
    title = f"case {case_id}" if case_id else "case"
    if labels is not None:
        labels = dict(labels)
        if labels.get("pirads_group") is not None and not pd.isna(labels.get("pirads_group")):
            group = int(labels["pirads_group"])
            title += f" · PI-RADS {['<3', '3', '4', '5'][group] if 0 <= group <= 3 else group}"
        if labels.get("gland_volume_ml") is not None and not pd.isna(labels.get("gland_volume_ml")):
            title += f" · gland {float(labels['gland_volume_ml']):.0f} ml"
    fig.suptitle(title, fontsize=11)
    if legend:
        from matplotlib.patches import Patch

        handles = [
            Patch(color=tuple(c / 255 for c in col), alpha=0.5) if filled
            else Line2D([], [], color=tuple(c / 255 for c in col), lw=2)
            for col, filled in legend.values()
        ]
        fig.legend(handles, list(legend), loc="outside lower center", ncol=len(legend),
                   fontsize=8, frameon=False)
    return fig


class CaseViewer:
    """One case of a cohort: slice slider, modality selector, mask overlay toggles.

    Built by :func:`show_case`; see there. State lives in the widgets (``slider``,
    ``modality_selector``, ``mask_toggles``); the methods below read it.

    Attributes
    ----------
    case_id, case
        The case shown and its loaded arrays.
    modalities
        The modalities this case has.
    n_slices
        Number of axial slices.
    windows
        Display window per modality (see :func:`window_for`).
    widget
        The ipywidgets box to display.
    """

    def __init__(
        self,
        cohort,
        case_id: str,
        modality: str = "T2W",
        masks: Iterable[str] = ("gland", "zones", "lesion"),
        slice_index: int | None = None,
        interactive: bool | None = None,
    ):
        widgets = _ipywidgets()
        self.case_id = case_id
        self.case = _load_case(cohort, case_id)
        self.interactive = interactive
        self.modalities = _available_modalities(self.case)
        if not self.modalities:
            raise ValueError(f"case {case_id!r} has no images to show")
        if modality not in self.modalities:
            raise ValueError(
                f"case {case_id!r} has no {modality!r} image; it has {self.modalities}"
            )
        masks = tuple(masks)
        unknown = [m for m in masks if m not in OVERLAYS]
        if unknown:
            raise ValueError(f"unknown mask(s) {unknown}; choose from {list(OVERLAYS)}")
        self.n_slices = int(self.case.images[modality].shape[0])
        if slice_index is None:
            slice_index = _default_slice(self.case)
        if not 0 <= int(slice_index) < self.n_slices:
            raise IndexError(
                f"slice_index {slice_index} is outside case {case_id!r}'s "
                f"{self.n_slices} slices (0..{self.n_slices - 1})"
            )
        self.windows = {m: window_for(m, self.case.images[m]) for m in self.modalities}
        case_masks = getattr(self.case, "masks", None) or {}

        self.slider = widgets.IntSlider(
            value=int(slice_index), min=0, max=self.n_slices - 1, step=1, description="slice",
            continuous_update=True,
        )
        self.modality_selector = widgets.ToggleButtons(
            options=self.modalities, value=modality, description="modality"
        )
        self.mask_toggles = {
            name: widgets.Checkbox(
                value=name in masks and case_masks.get(name) is not None,
                description=name if case_masks.get(name) is not None else f"{name} (missing)",
                disabled=case_masks.get(name) is None,
                indent=False,
            )
            for name in OVERLAYS
        }
        self.image = widgets.Image(format="png")
        self.info = widgets.HTML()
        for w in (self.slider, self.modality_selector, *self.mask_toggles.values()):
            w.observe(self._update, "value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.modality_selector]),
                widgets.HBox([self.slider, *self.mask_toggles.values()]),
                self.image,
                self.info,
            ]
        )
        self._update()

    # -- state -------------------------------------------------------------------------
    @property
    def modality(self) -> str:
        """The modality shown."""
        return self.modality_selector.value

    @property
    def slice_index(self) -> int:
        """The axial slice shown."""
        return int(self.slider.value)

    @property
    def shown_masks(self) -> tuple[str, ...]:
        """The overlays switched on."""
        return tuple(n for n, box in self.mask_toggles.items() if box.value)

    def current_slice(self) -> np.ndarray:
        """The raw 2-D slice (y, x) of the current modality and slice."""
        return self.case.images[self.modality][self.slice_index]

    def render(self) -> np.ndarray:
        """The current view as an RGB array (see :func:`render_slice`)."""
        case_masks = getattr(self.case, "masks", None) or {}
        masks2d = {k: (None if v is None else v[self.slice_index]) for k, v in case_masks.items()}
        return render_slice(
            self.current_slice(), self.windows[self.modality], masks2d, self.shown_masks,
            spacing_yx=_spacing_yx(self.case),
        )

    def png(self) -> bytes:
        """The current interactive view as PNG bytes."""
        return _array_png(self.render())

    def figure(self):
        """Static figure of the current slice, every modality, current overlays."""
        return case_figure(self.case, self.case_id, self.slice_index, masks=self.shown_masks)

    def static_png(self) -> bytes:
        """:meth:`figure` as PNG bytes: the fallback shown where no kernel is attached."""
        return _figure_png(self.figure())

    # -- display -----------------------------------------------------------------------
    def _update(self, change=None) -> None:
        self.image.value = self.png()
        self.info.value = (
            f"<small>case <b>{self.case_id}</b> · {self.modality} · slice "
            f"{self.slice_index + 1}/{self.n_slices} · "
            f"{_window_label(self.modality, self.windows[self.modality])}</small>"
        )

    def _repr_mimebundle_(self, include=None, exclude=None):
        return _bundle(self.widget, self.static_png(), repr(self), self.interactive)

    def __repr__(self) -> str:
        return (
            f"CaseViewer(case_id={self.case_id!r}, modality={self.modality!r}, "
            f"slice_index={self.slice_index}, n_slices={self.n_slices})"
        )


def show_case(
    cohort,
    case_id: str,
    modality: str = "T2W",
    masks: Iterable[str] = ("gland", "zones", "lesion"),
    slice_index: int | None = None,
    interactive: bool | None = None,
) -> CaseViewer:
    """Look at one case: slice slider, modality selector and mask outlines.

    In Jupyter with a live kernel the returned object displays as an ipywidgets view. Its
    mime bundle also carries a static PNG (the chosen slice of every modality with the
    overlays), which static pages show instead.

    Parameters
    ----------
    cohort
        A :class:`radiolens.data.Cohort` (anything with ``case_ids`` and ``load_case``).
    case_id
        The case to show.
    modality
        The modality shown first.
    masks
        Overlays switched on at first (``gland``, ``zones``, ``lesion``).
    slice_index
        Axial slice shown first; default the slice with the most lesion, else the middle of
        the gland.
    interactive
        ``False`` displays only the static image; default: interactive unless the environment
        variable ``RADIOLENS_STATIC_VIEWS`` is set.

    Returns
    -------
    CaseViewer

    Raises
    ------
    KeyError
        When ``case_id`` is not in the cohort (the message names it).
    ValueError
        For a modality the case lacks or an unknown mask name.
    """
    return CaseViewer(cohort, case_id, modality=modality, masks=masks, slice_index=slice_index,
                      interactive=interactive)


# ======================================================================================
# Exploring what fine-tuning changed
# ======================================================================================

RANK_MODES: tuple[str, ...] = ("gained", "lost", "stable")
RANK_BY: tuple[str, ...] = ("rel_delta_I", "delta_I", "delta_r2")

_BY_LABELS = {
    "delta_I": "ΔI = I_ft − I_pre (decoder row norm)",
    "rel_delta_I": "relative ΔI = (I_ft − I_pre) / I_pre (decoder row norm)",
    "delta_r2": "ΔR² = R²_ft − R²_pre (held-out decodability)",
}


def _importance(report) -> pd.DataFrame:
    """The report's importance table with ``column`` as an ordinary column."""
    imp = report.importance
    if "column" not in imp.columns:
        imp = imp.rename_axis("column").reset_index()
    return imp


def _ranked_columns(ranked) -> list[str]:
    if isinstance(ranked, pd.DataFrame):
        if "column" in ranked.columns:
            return list(ranked["column"])
        return list(ranked.index)
    if isinstance(ranked, pd.Series):
        return list(ranked.index)
    return list(ranked)


def rank_features(
    report,
    mode: str = "gained",
    by: str = "rel_delta_I",
    k: int | None = 10,
    modalities: Iterable[str] | None = None,
    families: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The report's ranking of one kind, filtered to some modalities and families.

    The order (and, for ``"stable"``, which features are eligible: important before and
    after) is the report's own ``gained/lost/stable(n, by=by)`` over *all* features; the
    filters then keep the rows of the chosen modalities and families, in that order, and the
    first ``k`` of them are returned.

    Parameters
    ----------
    report
        A :class:`radiolens.lens.LensReport`.
    mode
        ``"gained"``, ``"lost"`` or ``"stable"``.
    by
        ``"rel_delta_I"`` (the paper's relative importance change ΔI / I_pre), ``"delta_I"``
        (absolute change) or ``"delta_r2"`` (held-out R² change), passed to the report.
    k
        Number of rows to keep; None keeps all.
    modalities, families
        Keep only these (None keeps all).

    Returns
    -------
    pandas.DataFrame
        Rows of ``report.importance`` in ranking order, with a leading ``rank`` column
        (1 = first in the report's ranking *after* filtering).
    """
    if mode not in RANK_MODES:
        raise ValueError(f"ranking mode {mode!r} is not one of {list(RANK_MODES)}")
    if by not in RANK_BY:
        raise ValueError(f"ranking measure by={by!r} is not one of {list(RANK_BY)}")
    imp = _importance(report)
    ordered = _ranked_columns(getattr(report, mode)(len(imp), by=by))
    table = imp.set_index("column").loc[ordered].reset_index()
    if modalities is not None:
        table = table[table["modality"].isin(list(modalities))]
    if families is not None:
        table = table[table["family"].isin(list(families))]
    if k is not None:
        table = table.head(int(k))
    table = table.reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


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
    fig = _new_figure(7.5, 1.0 + 0.3 * n)
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
    xlabel = _BY_LABELS.get(value, value)
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
    fig = _new_figure(4.6, 4.0)
    ax = fig.subplots()
    for stage, label in STAGE_LABELS.items():
        colour = STAGE_COLORS[stage]
        part = data[data["stage"] == stage]
        if r2 and r2.get(stage) is not None and np.isfinite(r2[stage]):
            label += f" (R² {r2[stage]:.2f})"
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
        Columns ``hidden_unit, stage ("pre" / "ft"), weight`` (see
        :meth:`WeightChangeExplorer.decoder_weights`).
    column
        The feature (title).

    Returns
    -------
    matplotlib.figure.Figure
    """
    units = sorted(data["hidden_unit"].unique())
    fig = _new_figure(4.6, 3.2)
    ax = fig.subplots()
    x = np.arange(len(units))
    width = 0.4
    for offset, (stage, label) in zip((-width / 2, width / 2), STAGE_LABELS.items()):
        part = data[data["stage"] == stage].set_index("hidden_unit")["weight"].reindex(units)
        norm = float(np.sqrt(np.nansum(part.to_numpy(float) ** 2)))
        ax.bar(x + offset, part.to_numpy(float), width, color=STAGE_COLORS[stage], label=f"{label} (I = {norm:.3g})")
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
        See :func:`show_case`.

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
        widgets = _ipywidgets()
        if not isinstance(reports, Mapping) or not reports:
            raise ValueError("WeightChangeExplorer needs a non-empty dict of task name -> LensReport")
        for task, report in reports.items():
            if not hasattr(report, "importance"):
                raise TypeError(f"reports[{task!r}] is not a LensReport (it has no .importance)")
        if mode not in RANK_MODES:
            raise ValueError(f"ranking mode {mode!r} is not one of {list(RANK_MODES)}")
        if by not in RANK_BY:
            raise ValueError(f"ranking measure by={by!r} is not one of {list(RANK_BY)}")
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
        imp = _importance(self.reports[first])
        self.task = widgets.Dropdown(options=list(self.reports), value=first, description="task")
        self.modality_filter = widgets.SelectMultiple(description="modality", rows=3)
        self.family_filter = widgets.SelectMultiple(description="family", rows=6)
        self._set_filter_options(imp)
        max_k = max(1, min(50, len(imp)))
        self.top_k = widgets.IntSlider(value=min(k, max_k), min=1, max=max_k, description="top k")
        self.mode = widgets.ToggleButtons(options=list(RANK_MODES), value=mode, description="rank")
        self.by = widgets.ToggleButtons(options=list(RANK_BY), value=by, description="by")
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
        """The ranked, filtered table the bars show (see :func:`rank_features`)."""
        return rank_features(
            self.report, mode=self.mode.value, by=self.by.value, k=self.top_k.value,
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
        if mode is not None and mode not in RANK_MODES:
            raise ValueError(f"ranking mode {mode!r} is not one of {list(RANK_MODES)}")
        if by is not None and by not in RANK_BY:
            raise ValueError(f"ranking measure by={by!r} is not one of {list(RANK_BY)}")
        imp = _importance(self.reports[task if task is not None else self.task.value])
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
        imp = _importance(self.report)
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
            Columns ``case_id, stage ("pre" / "ft"), observed, decoded``: ``observed`` is
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
        for stage, frame in (("pre", report.decoded_pre), ("ft", report.decoded_ft)):
            parts.append(pd.DataFrame({
                "case_id": observed.index.astype(str),
                "stage": stage,
                "observed": observed.to_numpy(dtype=float),
                "decoded": frame[column].reindex(observed.index).to_numpy(dtype=float),
            }))
        return pd.concat(parts, ignore_index=True)

    def decoder_weights(self, column: str | None = None) -> pd.DataFrame:
        """One feature's decoder weights on the hidden units, before and after fine-tuning.

        Returns
        -------
        pandas.DataFrame
            Columns ``hidden_unit, stage ("pre" / "ft"), weight`` from
            ``report.decoder_pre[column]`` and ``report.decoder_ft[column]``; the norm of a
            stage's weights is that stage's importance ``I``. Empty when the report holds no
            decoder weights (written by radiolens before they were stored).
        """
        column = self._column(column)
        parts = []
        for stage in ("pre", "ft"):
            frame = getattr(self.report, f"decoder_{stage}", None)
            if frame is None or column not in getattr(frame, "columns", ()):
                return pd.DataFrame(columns=["hidden_unit", "stage", "weight"])
            parts.append(pd.DataFrame({"hidden_unit": frame.index.to_numpy(), "stage": stage,
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
        return _figure_png(ranking_figure(self.ranked(), by=self.by.value, title=title))

    def scatter_png(self, column: str | None = None) -> bytes:
        """The decoded-vs-true scatter of a feature as PNG bytes."""
        column = self._column(column)
        row = _importance(self.report).set_index("column").loc[column]
        r2 = {"pre": float(row.get("r2_pre", np.nan)), "ft": float(row.get("r2_ft", np.nan))}
        return _figure_png(scatter_figure(self.scatter_data(column), column, r2))

    def weights_png(self, column: str | None = None) -> bytes | None:
        """The decoder-weight bars of a feature as PNG bytes (None without decoder weights)."""
        column = self._column(column)
        data = self.decoder_weights(column)
        return None if data.empty else _figure_png(decoder_weights_figure(data, column))

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
        case = _load_case(self.cohort, case_id)
        modality = column.split("__", 1)[0]
        modalities = [modality] if modality in _available_modalities(case) else None
        fig = case_figure(case, case_id, _largest_roi_slice(case, self.roi), modalities,
                          masks=(self.roi,), panel_size=3.6)
        return _figure_png(fig)

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
            imp = _importance(self.report)
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
        row = _importance(self.report).set_index("column").loc[column]
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
        return _bundle(self.widget, self.chart_png(), repr(self), self.interactive)

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
        See :func:`show_case`.
    """

    def __init__(self, sweep_table: pd.DataFrame, value: str | None = None,
                 interactive: bool | None = None):
        widgets = _ipywidgets()
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
        fig = _new_figure(1.2 + 0.9 * grid.shape[1], 1.2 + 0.6 * grid.shape[0])
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
        self.image.value = _figure_png(self.figure())
        best = self.best()
        self.info.value = (
            f"λ1 = {self.l1.value:g}, λ2 = {self.l2.value:g}: {self.value} "
            f"<b>{self.selected_loss():.4g}</b> · best: λ1 = {best['l1']:g}, "
            f"λ2 = {best['l2']:g} ({best[self.value]:.4g})"
        )

    def _repr_mimebundle_(self, include=None, exclude=None):
        return _bundle(self.widget, _figure_png(self.figure()), repr(self), self.interactive)

    def __repr__(self) -> str:
        return (f"SweepExplorer(l1={self.l1.value!r}, l2={self.l2.value!r}, "
                f"{self.value}={self.selected_loss():.4g})")
