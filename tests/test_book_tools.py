"""The book's machinery without building the book: bindings, claims, checks, charts, student edition."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from radiolens.book import BookBuildError, execute_chapters
from radiolens.book.bindings import glue_keys_used, problems
from radiolens.book.student import solutions_left, student_notebook

REPO = Path(__file__).resolve().parents[1]
HEADER = """---
jupytext:
  text_representation: {extension: .md, format_name: myst, format_version: 0.13}
kernelspec: {display_name: Python 3, language: python, name: python3}
---
"""


def _toc_chapters() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    return [entry["file"] for part in toc["parts"] for entry in part["chapters"]]


def test_glue_keys_used_finds_roles_and_directives():
    text = """The cohort has {glue:text}`n_cases` cases ({glue}`share:.1%`), {glue:md}`verdict`.

```{glue:figure} roc_figure
:name: fig-roc
```
Other documents' keys stay whole: {glue:text}`02_data.ipynb::n_cases`. Not a role: `glue`."""
    assert glue_keys_used(text) == {"n_cases", "share", "verdict", "roc_figure", "02_data.ipynb::n_cases"}


def _record(name: str, text: str) -> dict:
    prefix = "application/papermill.record/"
    return nbformat.v4.new_output(
        "display_data", data={prefix + "text/plain": text}, metadata={"scrapbook": {"name": name, "mime_prefix": prefix}}
    )


def test_problems_names_missing_keys_failing_claims_and_checks():
    notebook = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("...")
    code.outputs = [_record("n_cases", "60"), _record("claim:adc_falls", "FAILS: ADC falls with PI-RADS"),
                    _record("claim:fine", "holds: fine"), _record("check:region_mean", "FAILED: got 3")]
    notebook.cells = [nbformat.v4.new_markdown_cell("{glue:text}`n_cases` cases, {glue:text}`n_lesion` lesions"), code]
    found = problems(notebook, "02_data")
    assert len(found) == 3, found
    assert any("'n_lesion'" in message and "never glues" in message for message in found)
    assert any("claim 'adc_falls'" in message for message in found)
    assert any("check 'region_mean'" in message for message in found)
    code.outputs = code.outputs[:1] + [_record("n_lesion", "35")]
    assert problems(notebook, "02_data") == []


def _mini_root(tmp_path: Path, chapter: str) -> Path:
    (tmp_path / "book").mkdir(parents=True)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/index\nchapters:\n  - file: book/ch\n")
    (tmp_path / "book" / "index.md").write_text("# Index\n")
    (tmp_path / "book" / "ch.md").write_text(HEADER + chapter)
    return tmp_path


CHAPTER = """# A chapter

```{code-cell} ipython3
:tags: [parameters]

quick = True
cache_dir = None
```

```{code-cell} ipython3
from radiolens.book import check, claim, glue

glue("n_cases", 60)
glue("share", 0.4567, "{:.0%}")
claim("small", 60 < 100, "the cohort is small")


def test_answer():
    assert answer == 42, f"got {answer}"


answer = ANSWER
check("answer", test_answer)
```

The cohort has {glue:text}`n_cases` cases, {glue:text}`share` of them in training.
"""


def test_execute_chapters_verifies_glue_claims_and_checks(tmp_path):
    """A chapter is executed for real (papermill, a fresh kernel) and verified after it runs."""
    root = _mini_root(tmp_path / "good", CHAPTER.replace("ANSWER", "42"))
    executed = execute_chapters(root, quick=True)
    notebook = nbformat.read(executed / "book" / "ch.ipynb", as_version=4)
    outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
    assert any("✔ answer: correct." in o.get("text", "") for o in outputs)
    from radiolens.book.bindings import glued_values

    values = glued_values(notebook)
    assert values["n_cases"] == "60" and values["share"] == "46%"  # formatted once, by the chapter
    assert values["claim:small"].startswith("holds")

    bad_check = _mini_root(tmp_path / "bad_check", CHAPTER.replace("ANSWER", "41"))
    with pytest.raises(BookBuildError, match="check 'answer' fails"):
        execute_chapters(bad_check, quick=True)

    missing = _mini_root(tmp_path / "missing", CHAPTER.replace("ANSWER", "42") + "\nAnd {glue:text}`n_tests` tests.\n")
    with pytest.raises(BookBuildError, match="'n_tests'"):
        execute_chapters(missing, quick=True)


def test_a_failing_claim_warns_on_the_page_but_does_not_stop_the_build(tmp_path, capsys):
    root = _mini_root(tmp_path, CHAPTER.replace("ANSWER", "42").replace("60 < 100", "60 > 100"))
    executed = execute_chapters(root, quick=True)
    assert "claim 'small' does not hold" in capsys.readouterr().out
    notebook = nbformat.read(executed / "book" / "ch.ipynb", as_version=4)
    shown = [o["data"].get("text/markdown", "") for c in notebook.cells for o in c.get("outputs", []) if "data" in o]
    assert any("does not hold" in text and "the cohort is small" in text for text in shown)


STUDENT = """# Exercises

```{exercise-start}
:label: ex-one
```

Complete `double`.

```{code-cell} ipython3
def double(x):
    ...  # your code here
```

```{exercise-end}
```

```{solution-start} ex-one
:class: dropdown
```

```{code-cell} ipython3
:tags: [solution]

def double(x):
    return 2 * x  # REFERENCE-CODE
```

REFERENCE-PROSE explained.

```{solution-end}
```

```{code-cell} ipython3
:tags: [check]

print("✔ double: correct.")
```

```{exercise}
:label: ex-two

Why?
```

````{solution} ex-two
:class: dropdown

```python
REFERENCE-IN-FENCE
```
REFERENCE-TWO because.
````

````{dropdown} Solution (older style)
REFERENCE-DROPDOWN
````

```{admonition} Try this
Keep me.
```
"""


def test_student_notebook_drops_every_kind_of_solution():
    notebook = jupytext.reads(HEADER + STUDENT, fmt="md:myst")
    notebook.cells[-3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="✔ double: correct.\n")]
    assert solutions_left(notebook)  # the full edition has them
    student = student_notebook(notebook)
    text = jupytext.writes(student, fmt="md:myst")
    assert "REFERENCE" not in text and "solution" not in text
    assert solutions_left(student) == []
    assert "Complete `double`." in text and "...  # your code here" in text and "Why?" in text and "Keep me." in text
    check_cell = next(c for c in student.cells if "check" in c.metadata.get("tags", []))
    assert check_cell.outputs == []  # the reference run's "correct" gives nothing away
    assert "REFERENCE" in jupytext.writes(notebook, fmt="md:myst")  # the original is untouched


def test_student_notebook_refuses_an_unclosed_solution():
    notebook = jupytext.reads(HEADER + "```{solution-start} ex-one\n```\n\nno end\n", fmt="md:myst")
    with pytest.raises(ValueError, match="not closed"):
        student_notebook(notebook)


@pytest.mark.parametrize("name", [f for f in _toc_chapters() if Path(f).name[:2].isdigit()])
def test_every_chapter_has_a_student_edition_without_solutions(name):
    notebook = jupytext.read(REPO / f"{name}.md")
    assert solutions_left(notebook), "every chapter has solutions in the full edition"
    student = student_notebook(notebook)
    assert solutions_left(student) == []
    full_text, student_text = (jupytext.writes(n, fmt="md:myst") for n in (notebook, student))
    statements = re.findall(r"```\{exercise(?:-start)?\}\n:label: [^\n]+\n.*?```", full_text, flags=re.S)
    assert statements and all(statement in student_text for statement in statements)
    assert student_text.count("{exercise") == full_text.count("{exercise")


def test_chart_outputs_carry_their_spec_and_become_offline_html():
    import altair as alt
    import pandas as pd

    from radiolens.book.offline import offline_charts
    from radiolens.book.page import CHART_RENDERER, enable_book_charts

    previous = alt.renderers.active
    try:
        enable_book_charts()
        chart = alt.Chart(pd.DataFrame({"x": [1, 2, 3], "y": [3, 1, 2]})).mark_line().encode(x="x", y="y").properties(title="a line")
        bundle = chart._repr_mimebundle_()
        data = bundle[0] if isinstance(bundle, tuple) else bundle
    finally:
        alt.renderers.enable(previous)
    assert alt.renderers.active == previous and CHART_RENDERER in alt.renderers.names()
    mime = next(k for k in data if k.startswith("application/vnd.vegalite"))
    assert "cdn.jsdelivr.net" in data["text/html"]  # a live notebook (Binder) still gets Altair's own output

    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("chart")
    cell.outputs = [nbformat.v4.new_output("display_data", data=data), nbformat.v4.new_output("stream", name="stdout", text="x")]
    notebook.cells = [cell]
    assert offline_charts(notebook) == 1
    html = cell.outputs[0]["data"]["text/html"]
    assert "cdn" not in html and "<script src" not in html
    assert 'class="radiolens-chart"' in html and 'alt="a line"' in html
    assert 'src="data:image/png;base64,iVBOR' in html  # a real PNG: the fallback without JavaScript
    assert cell.outputs[0]["data"][mime] == data[mime]


def test_static_assets_are_local_files(tmp_path):
    from radiolens.book.offline import MATHJAX, VEGA, write_static_assets

    write_static_assets(tmp_path)
    vega, mathjax = (tmp_path / VEGA).read_text(), (tmp_path / MATHJAX).read_text()
    assert "vegaEmbed" in vega and len(vega) > 500_000
    assert "MathJax" in mathjax and len(mathjax) > 1_000_000
    assert "cdn.jsdelivr.net/npm/mathjax" not in mathjax.split("\n", 1)[0]


def test_sphinx_extension_keeps_one_copy_of_each_script():
    from radiolens.book.sphinxext import _unique_scripts

    class Script:
        def __init__(self, filename, body=""):
            self.filename, self.attributes = filename, {"body": body} if body else {}

    thebe = 'const THEBE_JS_URL = "x"'
    scripts = [Script("a.js"), Script(None, thebe), Script("m.js?v=1"), Script(None, thebe), Script("m.js?v=1"), Script(None, "other")]
    kept = _unique_scripts(scripts)
    assert [(s.filename, s.attributes.get("body")) for s in kept] == [("a.js", None), (None, thebe), ("m.js?v=1", None), (None, "other")]


def test_stage_notebook_shows_one_parameter_cell_with_the_value_used():
    from radiolens.book.build import stage_notebook

    notebook = jupytext.reads(HEADER + CHAPTER, fmt="md:myst")
    injected = nbformat.v4.new_code_cell("# Parameters\nquick = False\ncache_dir = \"/tmp/x\"\n", metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(2, injected)
    stage_notebook(notebook, quick=False)
    shown = [c for c in notebook.cells if c.cell_type == "code" and "remove-cell" not in c.metadata.get("tags", [])]
    parameter_cells = [c for c in shown if "quick =" in c.source]
    assert len(parameter_cells) == 1 and "parameters" in parameter_cells[0].metadata["tags"]
    assert "quick = False" in parameter_cells[0].source and "cache_dir = None" in parameter_cells[0].source


def test_chapters_reach_each_other_by_label_not_by_number():
    """Cross-references are {numref}/{ref} to labels that exist; no plain "chapter 7" in prose."""
    labels = set()
    texts = {}
    for path in sorted((REPO / "book").glob("*.md")):
        texts[path.name] = path.read_text()
        labels |= set(re.findall(r"^\(([a-z0-9-]+)\)=$", texts[path.name], flags=re.M))
        labels |= set(re.findall(r"^:label: ([a-z0-9-]+)$", texts[path.name], flags=re.M))
    for name, text in texts.items():
        prose = re.sub(r"```\{code-cell\}.*?```", "", text, flags=re.S)
        prose = re.sub(r"```python.*?```", "", prose, flags=re.S)
        plain = re.findall(r"(?<![<%`])\b[Cc]hapters? \d+\b|(?<![<%`])\b[Ee]xercise \d+\.\d+\b", prose)
        assert plain == [], f"{name}: plain-text references {plain}"
        for target in re.findall(r"\{(?:num)?ref\}`[^`<]*<([^>]+)>`", text):
            assert target in labels, f"{name}: reference to unknown label {target!r}"


def test_glossary_terms_used_in_chapters_exist():
    glossary = (REPO / "book" / "glossary.md").read_text()
    block = glossary.split("```{glossary}", 1)[1].split("\n```", 1)[0]
    terms = {line.strip().lower() for line in block.splitlines() if line and not line.startswith(" ")}
    used = set()
    for path in (REPO / "book").glob("*.md"):
        for match in re.findall(r"\{term\}`([^`]+)`", path.read_text()):
            used.add((match.split("<")[-1].rstrip(">") if "<" in match else match).strip().lower())
    assert used, "chapters link glossary terms"
    assert used <= terms, f"terms used but not defined: {sorted(used - terms)}"
    for required in ["pi-rads", "fcmae", "grn", "glszm", "glcm", "ngtdm", "qwk", "dice", "adc", "dwi", "t2w", "roi", "mpmri"]:
        assert required in terms, required


def test_offline_book_needs_no_cdn_in_configuration():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert "radiolens.book.sphinxext" in config["sphinx"]["extra_extensions"]
    assert "sphinx_exercise" in config["sphinx"]["extra_extensions"]


def test_check_prints_a_clear_verdict_for_an_unfinished_scaffold(capsys):
    from radiolens.book import check

    def unfinished():  # what a scaffold with `...` does: arithmetic on Ellipsis
        low = ...
        return [1.0, 2.0] - low

    def wrong():
        assert 2 + 2 == 5, "got 4, expected 5"

    assert check("minmax_scale", unfinished, hint="use the training rows") is False
    assert check("sum", wrong) is False
    assert check("sum", lambda: None) is True
    out = capsys.readouterr().out
    assert "✘ minmax_scale: not yet. TypeError:" in out and "Hint: use the training rows" in out
    assert "✘ sum: not yet. got 4, expected 5" in out
    assert "✔ sum: correct." in out


#: Chapters whose prose is bound to their outputs (``start_chapter(..., text_bound=True)``);
#: 10_your_data is bound separately.
BOUND_CHAPTERS = ["01_why", "02_data", "03_radiomics", "04_encoder", "05_finetuning", "06_lens_projection",
                  "07_lens_decoders", "08_what_changed", "08b_where_it_acts", "09_validation"]
#: Phrases of prose written against one run instead of bound to the page's own outputs.
UNBOUND_PHRASES = ["at the time of writing", "in the quick run", "in our quick run", "in our runs",
                   "the quick pirads run", "were read off outputs", "with seed 0"]


@pytest.mark.parametrize("name", BOUND_CHAPTERS)
def test_bound_chapters_quote_no_run_from_memory(name):
    """A bound chapter says so in its study note and quotes no run from memory in its prose.

    Whether each glued number and claim matches the run is checked where the chapter runs
    (``problems``: a failing claim or a missing key fails ``radiolens book`` and the book test)."""
    text = (REPO / "book" / f"{name}.md").read_text()
    assert "start_chapter(quick, cache_dir, text_bound=True)" in text, f"{name} is not marked text-bound"
    prose = re.sub(r"```\{code-cell\}.*?```", "", text, flags=re.S).lower()
    prose = re.sub(r"\s+", " ", prose)
    found = [phrase for phrase in UNBOUND_PHRASES if phrase in prose]
    assert found == [], f"{name}: prose quotes a run from memory: {found}; glue the numbers (CONTRIBUTING.md)"
    assert glue_keys_used(text), f"{name} binds no number to its outputs"


def test_a_claim_that_disagrees_with_its_output_fails_the_chapter(tmp_path):
    """The claim is computed from the output it describes: change the output and it fails."""
    chapter = CHAPTER.replace("ANSWER", "42").replace(
        'claim("small", 60 < 100, "the cohort is small")',
        'n = len(range(N_CASES))\nglue("n", n)\nclaim("small", n < 100, "the cohort is small")')
    good = execute_chapters(_mini_root(tmp_path / "good", chapter.replace("N_CASES", "60")), quick=True)
    assert problems(good / "book" / "ch.ipynb", "ch") == []
    bad = execute_chapters(_mini_root(tmp_path / "bad", chapter.replace("N_CASES", "600")), quick=True)
    found = problems(bad / "book" / "ch.ipynb", "ch")
    assert len(found) == 1 and "claim 'small' does not hold" in found[0], found
