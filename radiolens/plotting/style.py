"""Colours, labels and display windows shared by every chart, figure and widget.

One home for how radiolens draws things: the modality and encoder colours of the Altair charts
and the matplotlib figures, the mask overlays of the case views, and the intensity windows of
each modality. To give a new modality a colour or a window, add it here.
"""

from __future__ import annotations

import numpy as np

from radiolens.naming import FAMILY_LABELS

__all__ = [
    "ADC_WINDOW",
    "ENCODER_COLORS",
    "ENCODER_LABELS",
    "VERDICT_COLORS",
    "FILLED",
    "MODALITY_COLORS",
    "OVERLAYS",
    "family_label",
    "window_for",
    "window_label",
]

#: How the two encoders are labelled in every chart (pre-trained vs fine-tuned).
ENCODER_LABELS: dict[str, str] = {"pre": "pre-trained", "ft": "fine-tuned"}
#: One colour per encoder (pre-trained grey, fine-tuned red), in charts and widgets.
ENCODER_COLORS: dict[str, str] = {"pre": "#7f7f7f", "ft": "#d62728"}
#: One colour per verdict of a tested frozen-vs-full difference (:func:`radiolens.finetune.compare_regimes`).
VERDICT_COLORS: dict[str, str] = {"better": "#1a9850", "worse": "#d73027", "no detectable difference": "#7f7f7f"}
#: One colour per modality, shared by the Altair charts and the widgets' matplotlib figures.
MODALITY_COLORS: dict[str, str] = {"T2W": "#4c78a8", "DWI": "#f58518", "ADC": "#54a24b"}

#: Mask overlays: mask name -> list of (label value or None for "any non-zero", legend, RGB).
#: The zones tile the gland, so they are drawn as a translucent tint (:data:`FILLED`) under
#: the gland and lesion outlines; as outlines they would hide under the gland's.
OVERLAYS: dict[str, list[tuple[int | None, str, tuple[int, int, int]]]] = {
    "gland": [(None, "gland", (255, 215, 0))],
    "zones": [(1, "peripheral zone", (0, 200, 255)), (2, "transition zone", (230, 80, 230))],
    "lesion": [(None, "lesion", (255, 40, 40))],
}
#: Overlays drawn as a translucent tint (with this opacity) rather than an outline.
FILLED: dict[str, float] = {"zones": 0.2}

#: ADC display window in 1e-6 mm^2/s: restricted diffusion (cancer, ~600-1000) dark, normal
#: peripheral zone (~1500-1900) bright, free water (~3000) saturated.
ADC_WINDOW = (0.0, 2500.0)


def family_label(family: str) -> str:
    """A feature family as the paper writes it (``"glcm"`` -> ``"GLCM"``)."""
    return FAMILY_LABELS.get(family, str(family))


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


def window_label(modality: str, window: tuple[float, float]) -> str:
    """How a figure states the window it shows, with the unit."""
    low, high = window
    if modality.upper() == "ADC":
        unit = "1e-6 mm²/s" if high > 10 else "1e-3 mm²/s"
        return f"window {low:g}–{high:g} ({unit})"
    return f"window {low:.4g}–{high:.4g} (a.u.)"
