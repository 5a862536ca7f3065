"""Sphinx extension of the book (``_config.yml``: ``sphinx.extra_extensions``).

- serves vega, MathJax and the book's chart script/style from the site itself
  (:mod:`radiolens.book.offline`), so every page works from ``file://`` with no network;
- loads vega only on pages that have a chart;
- sets the theme's default colour mode (without one it logs an error on every page);
- drops scripts that Jupyter Book 1's extensions register twice: sphinx-thebe's inline
  ``const THEBE_JS_URL = ...`` declared twice is a ``SyntaxError`` on every page, and MathJax
  must load once.
"""

from __future__ import annotations

from pathlib import Path

from radiolens.book import offline

__all__ = ["setup"]


def _static_dir(app) -> Path:
    return Path(app.outdir).parent / "radiolens_static"


def _config_inited(app, config) -> None:
    folder = _static_dir(app)
    offline.write_static_assets(folder)
    config.html_static_path = [*config.html_static_path, str(folder)]
    config.mathjax_path = offline.MATHJAX
    # without a default colour mode the theme logs "Got invalid theme mode" on every page
    config.html_context = {"default_mode": "light", **config.html_context}


def _unique_scripts(scripts: list) -> list:
    seen, kept = set(), []
    for script in scripts:
        filename = str(getattr(script, "filename", script) or "")
        body = getattr(script, "attributes", {}).get("body", "")
        key = filename.split("?")[0] if filename else body
        if key in seen:
            continue
        seen.add(key)
        kept.append(script)
    return kept


def _page_context(app, pagename, templatename, context, doctree) -> None:
    if "radiolens-chart" in context.get("body", ""):
        app.add_js_file(offline.VEGA, priority=600)
        app.add_js_file(f"{offline.ASSET_FOLDER}/{offline.PAGE_SCRIPT}", priority=601)


def _dedupe(app, pagename, templatename, context, doctree) -> None:
    if "script_files" in context:
        context["script_files"] = _unique_scripts(context["script_files"])


def setup(app):
    app.connect("config-inited", _config_inited)
    app.connect("html-page-context", _page_context)
    # after every other handler has added its scripts for this page
    app.connect("html-page-context", _dedupe, priority=999)
    app.add_css_file(f"{offline.ASSET_FOLDER}/{offline.PAGE_STYLE}")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
