"""The book, built as CI builds it: every chapter executed (quick mode) and rendered.

The chapters reuse the cache of the session's quick study (``quick_run``), exactly as a reader's
chapters reuse an earlier `radiolens run`. The book sources are copied to a temporary folder so
the test never touches a developer's own `_build/`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

import browser
from conftest import run_cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHART_CHAPTERS = ["03_radiomics", "04_encoder", "05_finetuning", "06_lens_projection", "07_lens_decoders",
                  "08_what_changed", "09_validation"]


def _toc_files(root: Path) -> list[str]:
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return [toc["root"], *[entry["file"] for entry in toc["chapters"]]]


@pytest.fixture(scope="session")
def built_book(quick_run, tmp_path_factory):
    cache, _, env = quick_run
    root = tmp_path_factory.mktemp("book_root")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    completed = run_cli(["book", "--quick", "--root", str(root), "--cache-dir", str(cache)], env, timeout=1500)
    if completed.returncode != 0:
        pytest.fail(f"radiolens book --quick failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}")
    return root, root / "_build" / "html"


def test_every_chapter_is_rendered(built_book):
    root, html = built_book
    for name in _toc_files(root):
        page = html / f"{name}.html"
        assert page.exists(), f"no page for {name}"
        text = page.read_text(encoding="utf-8")
        assert "<h1" in text
    index = (html / "book" / "index.html").read_text(encoding="utf-8")
    assert "synthetic" in index.lower()  # the honest disclaimer is on the first page
    # every chapter says which study its outputs come from (the CI build is the quick one)
    for name in [n for n in _toc_files(root) if Path(n).name[:2].isdigit()]:
        text = (html / f"{name}.html").read_text(encoding="utf-8")
        assert "Run mode: quick" in text and "mode_note" not in text, name


def test_no_errors_in_executed_chapters(built_book):
    root, _ = built_book
    executed = sorted((root / "_build" / "executed" / "book").glob("*.ipynb"))
    assert len(executed) >= 10
    for path in executed:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                assert output["output_type"] != "error", f"{path.name}: {output.get('ename')}: {output.get('evalue')}"
                if output["output_type"] == "stream" and output["name"] == "stderr":
                    assert "Traceback" not in output["text"], f"{path.name}: {output['text'][:500]}"
        # papermill injected the quick-mode parameters
        assert any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in notebook.cells), path.name


def test_charts_present(built_book):
    _, html = built_book
    for name in CHART_CHAPTERS:
        text = (html / "book" / f"{name}.html").read_text(encoding="utf-8")
        assert len(re.findall(r'id="altair-viz-', text)) >= 1, f"no Altair chart in {name}"


@pytest.fixture()
def served_book(built_book):
    """The rendered book over http://127.0.0.1 (as a reader's browser gets it), port chosen freely."""
    import functools
    import http.server
    import socketserver
    import threading

    _, html = built_book

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(html)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _local_cdn() -> dict[str, str]:
    """Scripts the published book loads from its CDN, served from local copies instead.

    Every Altair chart on a page loads vega itself, so the page may load the bundle several
    times: wrapped in a function, its top-level declarations cannot collide.
    """
    from radiolens.report import javascript_bundle

    return {
        "https://cdn.jsdelivr.net/npm/vega@": "(function () {\n" + javascript_bundle() + "\n})();",
        "https://cdn.jsdelivr.net/npm/vega-lite@": "",
        "https://cdn.jsdelivr.net/npm/vega-embed@": "",
        "https://cdn.jsdelivr.net/npm/mathjax@": "",  # typesetting is not under test here
    }


@pytest.mark.browser
@pytest.mark.skipif(browser.skip_reason() is not None, reason=browser.skip_reason() or "")
def test_weight_change_explorer_renders_in_a_browser(built_book, served_book):
    """Chapter 8 in headless Chromium, offline, with vega served locally instead of the CDN."""
    _, html = built_book
    n_charts = len(re.findall(r'<div id="altair-viz-[0-9a-f]+"', (html / "book" / "08_what_changed.html").read_text()))
    assert n_charts >= 3
    routes = _local_cdn()
    drawn = "Array.from(document.querySelectorAll('div[id^=altair-viz-]')).filter(d => d.querySelector('svg, canvas')).length"
    page = browser.open_page(
        f"{served_book}/book/08_what_changed.html", wait_for=f"{drawn} >= {n_charts}", timeout=90, routes=routes, settle=2,
        evaluate={"drawn": drawn, "inputs": "document.querySelectorAll('.vega-bindings input, .vega-bindings select').length"},
    )
    assert page.waited, f"only {page.values.get('drawn')} of {n_charts} charts drawn"
    assert page.values["inputs"] >= 3  # the explorer's bound controls (task, ranking, top-k, ...)
    # Jupyter Book 1.0.4's theme logs a few errors of its own on every page (a duplicated thebe
    # script, an empty theme mode); the chapter must add none beyond those of the chart-free index
    baseline = browser.open_page(f"{served_book}/book/index.html", timeout=60, routes=routes, settle=2)
    added = sorted(set(page.errors) - set(baseline.errors))
    assert added == [], added
    external = [url for url in page.requests if not url.startswith(served_book)]
    assert external == [], external  # nothing else tried the network
