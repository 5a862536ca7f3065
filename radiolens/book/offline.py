"""Pages that work with no network: vega and MathJax from the built site, a PNG behind every chart.

Two halves:

- :func:`write_static_assets` writes the scripts the pages load into the site's ``_static``
  folder at build time: Vega, Vega-Lite and vega-embed from ``vl-convert-python`` (the bundle
  the HTML report inlines) and MathJax 3 from the ``django-static-mathjax`` wheel (its
  ``tex-svg-full.js``: every TeX extension in one file and SVG output, so it loads no fonts and
  nothing else, which matters for pages opened from ``file://``).
- :func:`offline_charts` rewrites the executed notebooks' Altair outputs (which carry their
  Vega-Lite spec, see :func:`radiolens.book.page.enable_book_charts`) into HTML that draws the
  chart with the site's vega and shows a PNG of it (rendered by vl-convert) until, or unless,
  JavaScript draws it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import shutil
from pathlib import Path

__all__ = ["ASSET_FOLDER", "MATHJAX", "VEGA", "chart_html", "mathjax_source", "offline_charts", "write_static_assets"]

ASSET_FOLDER = "radiolens-book"  # under the site's _static/ (not "radiolens": _config.yml excludes that name)
VEGA = f"{ASSET_FOLDER}/vega.js"
MATHJAX = f"{ASSET_FOLDER}/mathjax/tex-svg-full.js"
_HERE = Path(__file__).parent / "static"
PAGE_SCRIPT, PAGE_STYLE = "radiolens-book.js", "radiolens-book.css"


def mathjax_source() -> Path:
    """MathJax 3's ``tex-svg-full.js`` as installed by the ``django-static-mathjax`` wheel."""
    try:
        import mathjax  # the wheel's package: static files only, no Django needed
    except ImportError as error:
        raise ImportError(
            "the book serves MathJax from the django-static-mathjax package: pip install 'radiolens[book]'"
        ) from error
    path = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg-full.js"
    if not path.is_file():
        raise ImportError(f"django-static-mathjax is installed but {path} is missing: reinstall it")
    return path


def write_static_assets(static_dir: str | Path) -> Path:
    """Write vega, MathJax and the book's chart script/style under ``static_dir/radiolens-book/``."""
    from radiolens.report import javascript_bundle

    folder = Path(static_dir) / ASSET_FOLDER
    (folder / "mathjax").mkdir(parents=True, exist_ok=True)
    # The bundle sets window.vega/vegaLite/vegaEmbed itself; its other top-level names (e.g.
    # `_`) would collide with Sphinx's own scripts (doctools.js declares `const _`), so it runs
    # in a function scope.
    (folder / "vega.js").write_text("(function () {\n" + javascript_bundle() + "\n})();\n", encoding="utf-8")
    shutil.copy2(mathjax_source(), Path(static_dir) / MATHJAX)
    for name in (PAGE_SCRIPT, PAGE_STYLE):
        shutil.copy2(_HERE / name, folder / name)
    return folder


def _vegalite_mime(data: dict) -> str | None:
    return next((key for key in data if key.startswith("application/vnd.vegalite.v")), None)


def _chart_png(spec: dict) -> bytes:
    import vl_convert as vlc

    from radiolens.report import vegalite_version

    return vlc.vegalite_to_png(spec, vl_version=vegalite_version(), scale=1)


def _description(spec: dict) -> str:
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    if isinstance(title, list):
        title = " ".join(str(t) for t in title)
    return str(spec.get("description") or title or "chart")


def chart_html(spec: dict) -> str:
    """A chart as the offline book shows it: a PNG, replaced by the live chart once vega draws it."""
    from radiolens.report import json_for_script

    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    ident = "altair-viz-" + hashlib.sha256(text.encode()).hexdigest()[:16]
    png = base64.b64encode(_chart_png(spec)).decode()
    alt_text = html.escape(_description(spec), quote=True)
    return (
        f'<div class="radiolens-chart" id="{ident}">'
        f'<img class="radiolens-chart-fallback" alt="{alt_text}" src="data:image/png;base64,{png}"/>'
        f"</div>\n"
        f'<script type="application/json" id="{ident}-spec">{json_for_script(spec)}</script>'
    )


def offline_charts(notebook) -> int:
    """Rewrite every chart output of an executed notebook for the offline book; return how many.

    The output keeps its spec and plain-text forms; its HTML (Altair's, which loads vega from
    a CDN) is replaced by :func:`chart_html`.
    """
    count = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            mime = _vegalite_mime(data)
            if mime is None:
                continue
            spec = data[mime]
            if isinstance(spec, str):
                spec = json.loads(spec)
            data["text/html"] = chart_html(spec)
            count += 1
    return count
