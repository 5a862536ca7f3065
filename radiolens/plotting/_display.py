"""How views reach the screen: lazy imports, matplotlib figures as PNG, widget mime bundles."""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from radiolens._utils import optional_import

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def altair():
    """Altair, imported on first use."""
    return optional_import("altair", "radiolens.plotting's charts")


def ipywidgets():
    """ipywidgets, imported on first use."""
    return optional_import("ipywidgets", "radiolens.plotting's interactive views")


def new_figure(width: float, height: float, dpi: int = 100, layout: str | None = "constrained"):
    """A matplotlib Figure not registered with pyplot (no global state, no GUI backend)."""
    figure = optional_import("matplotlib.figure", "drawing with matplotlib")
    return figure.Figure(figsize=(width, height), dpi=dpi, layout=layout)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def array_png(rgb: np.ndarray) -> bytes:
    """An RGB array as PNG bytes."""
    from PIL import Image  # pillow is a dependency of matplotlib

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (PNG/PDF/SVG from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp_name, dpi=dpi)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def static_only(interactive: bool | None) -> bool:
    """Whether to drop the widget view (``interactive=False`` or ``RADIOLENS_STATIC_VIEWS=1``)."""
    if interactive is not None:
        return not interactive
    return os.environ.get("RADIOLENS_STATIC_VIEWS", "").strip().lower() in ("1", "true", "yes")


def bundle(widget, png: bytes, text: str, interactive: bool | None) -> dict[str, Any]:
    """Mime bundle with the widget view (unless static) and a PNG fallback."""
    out: dict[str, Any] = {}
    if not static_only(interactive):
        out.update(widget._repr_mimebundle_() or {})
    out["image/png"] = base64.b64encode(png).decode("ascii")
    out["text/plain"] = text
    return out
