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

from radiolens.book.bindings import glued_values, problems

import browser
from conftest import run_cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHART_CHAPTERS = ["03_radiomics", "04_encoder", "05_finetuning", "06_lens_projection", "07_lens_decoders",
                  "08_what_changed", "08b_where_it_acts", "09_validation"]


def _toc_files(root: Path) -> list[str]:
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return [toc["root"], *[entry["file"] for part in toc["parts"] for entry in part["chapters"]]]


def _chapter_files(root: Path) -> list[str]:
    return [name for name in _toc_files(root) if Path(name).name[:2].isdigit()]


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
    # every chapter says which study its outputs come from (the CI build is the quick one), with
    # its size read from the configuration the chapter used
    from radiolens.config import load_config

    n_cases = load_config(quick=True)["cohort"]["n_cases"]
    for name in _chapter_files(root):
        text = (html / f"{name}.html").read_text(encoding="utf-8")
        assert "Run mode: quick" in text and "start_chapter" not in text, name
        assert f"{n_cases} synthetic cases" in text, name
        # one parameter cell: papermill's injected copy is hidden, the chapter's own one shows
        assert len(re.findall(r'<span class="n">quick</span> <span class="o">=</span>', text)) == 1, name
        assert "injected-parameters" not in text, name
    for name in ("book/glossary", "book/teaching"):
        assert (html / f"{name}.html").exists()


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
        # the prose is backed by the run: every glue key exists, every claim holds, and every
        # exercise check passed on its reference solution
        assert problems(notebook, path.stem) == [], problems(notebook, path.stem)
    checks = [key for path in executed for key in glued_values(nbformat.read(path, as_version=4)) if key.startswith("check:")]
    assert len(checks) >= 8, checks  # a scaffolded, self-checking exercise in every methods chapter


def test_every_glued_number_is_on_its_page(built_book):
    """Chapter 2's prose is bound to its outputs: the page shows the values the run glued."""
    root, html = built_book
    notebook = nbformat.read(root / "_build" / "executed" / "book" / "02_data.ipynb", as_version=4)
    values = glued_values(notebook)
    text = re.sub(r"<[^>]+>", "", (html / "book" / "02_data.html").read_text(encoding="utf-8"))
    text = re.sub(r"\s+", " ", text)
    sentence = f"This cohort’s {values['n_cases']} cases split {values['n_train']} / {values['n_val']} / {values['n_test']}"
    assert sentence.replace("’", "'") in text.replace("’", "'")
    assert "{glue" not in text and "glue:text" not in text


def test_charts_are_offline_with_a_picture(built_book):
    _, html = built_book
    for name in CHART_CHAPTERS:
        text = (html / "book" / f"{name}.html").read_text(encoding="utf-8")
        charts = re.findall(r'<div class="radiolens-chart" id="(altair-viz-[0-9a-f]+)"><img class="radiolens-chart-fallback" alt="[^"]*" src="data:image/png;base64,', text)
        assert charts, f"no chart with a PNG fallback in {name}"
        assert all(f'id="{ident}-spec"' in text for ident in charts), name
        assert "radiolens-book/vega.js" in text, name
    for page in html.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "cdn.jsdelivr.net" not in text and "cdnjs" not in text, f"{page} loads a script from a CDN"
    assert (html / "_static" / "radiolens-book" / "mathjax" / "tex-svg-full.js").exists()


def test_student_edition_has_no_solutions(built_book):
    """The student edition, made from the executed chapters (no second render in CI)."""
    import jupytext

    from radiolens.book import write_student_edition

    root, _ = built_book
    folder = write_student_edition(root, root / "_build" / "executed", html=False)
    for name in _chapter_files(root):
        full = (root / f"{name}.md").read_text(encoding="utf-8")
        blocks = re.findall(r"(`{3,})\{solution\}.*?\n\1\n", full, flags=re.S)
        blocks += re.findall(r"```\{solution-start\}.*?```\{solution-end\}", full, flags=re.S)
        assert blocks, f"{name} has no solutions to remove"
        student = jupytext.writes(nbformat.read(folder / f"{name}.ipynb", as_version=4), fmt="md:myst")
        outside = full
        for block in blocks:
            outside = outside.replace(block, "")
        for block in blocks:
            # lines only a solution has (a scaffold repeats the function's signature and docstring)
            lines = [line.strip() for line in block.splitlines()[2:]
                     if len(line.strip()) > 25 and not line.strip().startswith(("```", ":")) and line.strip() not in outside]
            leaked = [line for line in lines if line in student]
            assert leaked == [], f"{name}: solution text in the student edition: {leaked[:2]}"
        assert "{exercise" in student, name


PAGE_STATE = {
    "charts": "document.querySelectorAll('div.radiolens-chart').length",
    "drawn": "Array.from(document.querySelectorAll('div.radiolens-chart[data-rendered]')).filter(d => d.querySelector('.radiolens-chart-live svg, .radiolens-chart-live canvas')).length",
    "pictures_left": "document.querySelectorAll('img.radiolens-chart-fallback').length",
    "math": "document.querySelectorAll('span.math, div.math').length",
    "typeset": "document.querySelectorAll('mjx-container svg').length",
    "inputs": "document.querySelectorAll('.vega-bindings input, .vega-bindings select').length",
    # a table wider than the text column must sit in a box that scrolls sideways
    "clipped_tables": """Array.from(document.querySelectorAll('article table')).filter(table => {
        const article = document.querySelector('article').getBoundingClientRect();
        if (table.getBoundingClientRect().right <= article.right + 1) return false;
        for (let box = table.parentElement; box && box.tagName !== 'ARTICLE'; box = box.parentElement) {
            if (['auto', 'scroll'].includes(getComputedStyle(box).overflowX)) return false;
        }
        return true;
    }).length""",
}
READY = ("document.readyState === 'complete' && (!window.radiolensCharts || "
         "radiolensCharts.drawn + radiolensCharts.failed >= radiolensCharts.total) && "
         "(document.querySelectorAll('span.math, div.math').length === 0 || "
         "(window.MathJax && MathJax.startup && MathJax.startup.document && "
         "document.querySelectorAll('mjx-container').length >= document.querySelectorAll('span.math, div.math').length))")


@pytest.mark.browser
@pytest.mark.skipif(browser.skip_reason() is not None, reason=browser.skip_reason() or "")
def test_every_page_works_offline_from_file(built_book):
    """Every page opened from file:// with no network: no console error, every chart drawn by
    the site's own vega, every equation typeset by its own MathJax, no request leaves the disk."""
    root, html = built_book
    for name in _toc_files(root):
        page = browser.open_page(html / f"{name}.html", wait_for=READY, evaluate=PAGE_STATE, timeout=120, settle=1)
        values = page.values
        assert page.waited, f"{name}: charts or equations never finished: {values}"
        assert page.errors == [], f"{name}: {page.errors}"
        assert page.requests == [], f"{name} tried the network: {page.requests}"
        assert values["drawn"] == values["charts"] and values["pictures_left"] == 0, f"{name}: {values}"
        assert values["typeset"] >= values["math"], f"{name}: {values}"
        assert values["clipped_tables"] == 0, f"{name}: a wide table is cut off"
        if Path(name).name in CHART_CHAPTERS:
            assert values["charts"] >= 1, name
        if Path(name).name == "08_what_changed":
            assert values["inputs"] >= 3  # the explorer's bound controls (task, ranking, top-k, ...)
