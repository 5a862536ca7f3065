"""Looking at a case: one viewer, one window rule, one slice rule, one set of overlay colours.

:func:`show_case` (a kernel-backed viewer with a static fallback), :func:`case_figure` (one
slice of every modality) and :func:`plot_cases` (a gallery of cases) draw the same panels: each
modality in its window (:func:`~radiolens.plotting.style.window_for`), on the slice with the
most lesion (else the middle of the gland), with the mask overlays of
:data:`~radiolens.plotting.style.OVERLAYS`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from radiolens._utils import optional_import
from radiolens.data.contract import PIRADS_GROUPS
from radiolens.naming import MODALITIES
from radiolens.plotting._display import array_png, bundle, figure_png, ipywidgets, new_figure, save_figure
from radiolens.plotting.style import FILLED, OVERLAYS, window_for, window_label

__all__ = ["CaseViewer", "case_figure", "plot_cases", "render_slice", "show_case"]


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


def largest_roi_slice(case, roi: str) -> int:
    mask = (getattr(case, "masks", None) or {}).get(roi)
    if mask is None or not np.any(mask):
        return _default_slice(case)
    return int(np.argmax((mask > 0).sum(axis=(1, 2))))


def available_modalities(case) -> list[str]:
    present = [m for m, v in case.images.items() if v is not None]
    order = [m for m in MODALITIES if m in present]
    return order + [m for m in present if m not in order]


def _spacing_yx(case) -> tuple[float, float]:
    spacing = getattr(case, "spacing", None)
    if spacing is None or len(spacing) < 2:
        return 1.0, 1.0
    return float(spacing[1]), float(spacing[0])  # spacing is (x, y, z)


def load_case(cohort, case_id):
    ids = list(cohort.case_ids)
    if case_id not in ids:
        shown = ", ".join(repr(c) for c in ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise KeyError(f"case {case_id!r} is not in this cohort ({len(ids)} cases: {shown})")
    return cohort.load_case(case_id)


def _draw_panel(ax, case, modality: str, z: int, masks: Iterable[str]) -> dict[str, tuple[tuple[int, int, int], bool]]:
    """One modality's slice ``z`` with its window and mask overlays on ``ax``; returns the
    legend entries drawn (name -> (colour, filled))."""
    sy, sx = _spacing_yx(case)
    ax.set_xticks([])
    ax.set_yticks([])
    volume = case.images.get(modality)
    if volume is None:
        ax.text(0.5, 0.5, f"{modality} missing", ha="center", va="center", transform=ax.transAxes)
        return {}
    window = window_for(modality, volume)
    ax.imshow(volume[z], cmap="gray", vmin=window[0], vmax=window[1], aspect=sy / sx, interpolation="nearest")
    case_masks = getattr(case, "masks", None) or {}
    masks2d = {k: (None if v is None else v[z]) for k, v in case_masks.items()}
    legend = {}
    for mask_name, binary, name, colour in _mask_layers(masks2d, masks):
        rgb = tuple(c / 255 for c in colour)
        if mask_name in FILLED:
            tint = np.zeros((*binary.shape, 4))
            tint[binary] = (*rgb, FILLED[mask_name])
            ax.imshow(tint, aspect=sy / sx, interpolation="nearest")
        else:
            ax.contour(binary.astype(float), levels=[0.5], colors=[rgb], linewidths=1.0)
        legend[name] = (colour, mask_name in FILLED)
    ax.set_xlabel(window_label(modality, window), fontsize=8)
    return legend


def _add_legend(fig, legend: Mapping[str, tuple[tuple[int, int, int], bool]], **kwargs) -> None:
    if not legend:
        return
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=tuple(c / 255 for c in col), alpha=0.5) if filled
        else Line2D([], [], color=tuple(c / 255 for c in col), lw=2)
        for col, filled in legend.values()
    ]
    fig.legend(handles, list(legend), ncol=len(legend), fontsize=8, frameon=False, **kwargs)


def _describe(case) -> str:
    """``" · PI-RADS 4 · gland 45 ml"`` from a case's labels (what is known)."""
    labels = dict(getattr(case, "labels", None) or {})
    text = ""
    group = labels.get("pirads_group")
    if group is not None and not pd.isna(group):
        group = int(group)
        text += f" · PI-RADS {PIRADS_GROUPS[group] if 0 <= group < len(PIRADS_GROUPS) else group}"
    volume = labels.get("gland_volume_ml")
    if volume is not None and not pd.isna(volume):
        text += f" · gland {float(volume):.0f} ml"
    return text


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
    modalities = list(modalities) if modalities is not None else available_modalities(case)
    masks = tuple(masks)
    z = _default_slice(case) if slice_index is None else int(slice_index)
    fig = new_figure(panel_size * len(modalities), panel_size + 0.6)
    axes = fig.subplots(1, len(modalities), squeeze=False)[0]
    legend: dict[str, tuple[tuple[int, int, int], bool]] = {}
    for ax, modality in zip(axes, modalities):
        legend.update(_draw_panel(ax, case, modality, z, masks))
        ax.set_title(f"{modality}: missing" if modality not in case.images else f"{modality} · slice {z}", fontsize=10)
    fig.suptitle((f"case {case_id}" if case_id else "case") + _describe(case), fontsize=11)
    _add_legend(fig, legend, loc="outside lower center")
    return fig


def plot_cases(
    cohort,
    case_ids: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    modalities: Sequence[str] = MODALITIES,
    masks: Iterable[str] = ("gland", "zones", "lesion"),
):
    """A gallery: a few cases (rows) x their modalities (columns), as :func:`case_figure` draws them.

    Parameters
    ----------
    cohort
        The cohort.
    case_ids
        Cases to show, one row each. Default: the first case of each PI-RADS group present
        (up to 4), else the first four cases.
    path
        Save the figure here (PNG/PDF/SVG; written atomically).
    modalities
        One column each.
    masks
        Overlays (gland and lesion outlined, zones tinted; see :data:`~radiolens.plotting.style.OVERLAYS`).

    Returns
    -------
    matplotlib.figure.Figure
        A pyplot figure (shown by notebooks). Each row shows the slice with the most lesion
        (else the middle of the gland), every modality in its window (:func:`window_for`).
    """
    plt = optional_import("matplotlib.pyplot", "plot_cases")
    if case_ids is None:
        case_ids = []
        groups = cohort.manifest["pirads_group"]
        for group in range(len(PIRADS_GROUPS)):
            members = [str(c) for c in groups.index[groups == group]]
            if members:
                case_ids.append(members[0])
        if not case_ids:
            case_ids = cohort.case_ids[:4]
    case_ids = list(case_ids)
    modalities = list(modalities)
    fig, axes = plt.subplots(len(case_ids), len(modalities), figsize=(3.0 * len(modalities), 3.0 * len(case_ids) + 0.4),
                             squeeze=False)
    legend: dict[str, tuple[tuple[int, int, int], bool]] = {}
    for row, case_id in enumerate(case_ids):
        case = cohort.load_case(case_id)
        z = _default_slice(case)
        for col, modality in enumerate(modalities):
            ax = axes[row, col]
            legend.update(_draw_panel(ax, case, modality, z, masks))
            if row == 0:
                ax.set_title(f"{modality} (1e-6 mm²/s)" if modality == "ADC" else modality, fontsize=10)
        site = (getattr(case, "labels", None) or {}).get("site") or "?"
        axes[row, 0].set_ylabel(f"{case_id}{_describe(case)}\nsite {site} · slice {z}".replace(" · ", "\n", 1), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _add_legend(fig, legend, loc="lower center")
    if path is not None:
        save_figure(fig, path)
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
        widgets = ipywidgets()
        self.case_id = case_id
        self.case = load_case(cohort, case_id)
        self.interactive = interactive
        self.modalities = available_modalities(self.case)
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
        return array_png(self.render())

    def figure(self):
        """Static figure of the current slice, every modality, current overlays."""
        return case_figure(self.case, self.case_id, self.slice_index, masks=self.shown_masks)

    def static_png(self) -> bytes:
        """:meth:`figure` as PNG bytes: the fallback shown where no kernel is attached."""
        return figure_png(self.figure())

    # -- display -----------------------------------------------------------------------
    def _update(self, change=None) -> None:
        self.image.value = self.png()
        self.info.value = (
            f"<small>case <b>{self.case_id}</b> · {self.modality} · slice "
            f"{self.slice_index + 1}/{self.n_slices} · "
            f"{window_label(self.modality, self.windows[self.modality])}</small>"
        )

    def _repr_mimebundle_(self, include=None, exclude=None):
        return bundle(self.widget, self.static_png(), repr(self), self.interactive)

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
