"""Build the book: execute every chapter with papermill, in order, then render with Jupyter Book.

The chapters are jupytext MyST Markdown files (``book/*.md``) listed in ``_toc.yml``. Each one
has a cell tagged ``parameters`` (``quick``, ``cache_dir``); papermill injects the values, runs
the notebook and stops at the first error, which :class:`BookBuildError` reports with the
chapter and the cell. Jupyter Book then renders the *executed* notebooks from a staging folder
(``_config.yml`` sets ``execute_notebooks: off``), so nothing runs twice.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

__all__ = ["BookBuildError", "build_book", "chapters", "execute_chapters", "mode_note", "render_html"]

logger = logging.getLogger(__name__)


class BookBuildError(RuntimeError):
    """A chapter failed to execute, or the HTML build failed."""


def mode_note(quick: bool):
    """The note at the top of every chapter saying which study its outputs come from.

    The chapters' text was written against the quick study and quotes its numbers ("in the
    quick run ..."); a page executed on the full default study says so, so that no reader
    takes a quick-mode sentence for a statement about the outputs beside it.

    Parameters
    ----------
    quick
        The chapter's ``quick`` parameter.

    Returns
    -------
    IPython.display.Markdown
    """
    from IPython.display import Markdown

    from radiolens.config import load_config

    cohort = load_config(quick=quick)["cohort"]
    if quick:
        text = (
            f"**Run mode: quick.** The outputs on this page come from the quick study "
            f"({cohort['n_cases']} synthetic cases, short training), the mode the text was written "
            "against: the numbers it quotes from \"the quick run\" were read off outputs like these. "
            "Set `quick = False` in the first cell for the full default study."
        )
    else:
        text = (
            f"**Run mode: full default study.** The outputs on this page come from the full study "
            f"({cohort['n_cases']} synthetic cases). The text was written against the quick study and "
            "quotes its numbers (\"in the quick run ...\"); the outputs here come from more data "
            "and longer training and will differ."
        )
    return Markdown(f"> {text} Either way the data are synthetic: these are not the paper's results.")


def find_root(start: str | Path | None = None) -> Path:
    """The repository root: the first folder upwards holding ``_toc.yml`` and ``book/``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").exists() and (folder / "book").is_dir():
            return folder
    raise BookBuildError(f"no _toc.yml with a book/ folder found at or above {here}")


def chapters(root: Path) -> list[str]:
    """Chapter files (without suffix, relative to ``root``) in table-of-contents order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]
    for entry in toc.get("chapters", []):
        files.append(entry["file"])
    for part in toc.get("parts", []):
        files.extend(entry["file"] for entry in part.get("chapters", []))
    return files


def _is_notebook(path: Path) -> bool:
    head = path.read_text(encoding="utf-8")[:400]
    return "jupytext:" in head


def execute_chapters(
    root: Path,
    quick: bool = True,
    cache_dir: str | Path | None = None,
    only: list[str] | None = None,
    output_dir: Path | None = None,
) -> Path:
    """Execute the chapters with papermill, in order; return the folder of executed notebooks.

    Raises
    ------
    BookBuildError
        On the first failing chapter, naming it and the failing cell.
    """
    import jupytext
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output_dir = Path(output_dir or root / "_build" / "executed")
    parameters = {"quick": bool(quick), "cache_dir": None if cache_dir is None else str(Path(cache_dir).resolve())}
    for name in chapters(root):
        source = root / f"{name}.md"
        if not source.exists():
            raise BookBuildError(f"chapter {name}: {source} is listed in _toc.yml but does not exist")
        if only and Path(name).name not in only and name not in only:
            continue
        target = output_dir / f"{name}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not _is_notebook(source):
            continue
        notebook = jupytext.read(source)
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        unexecuted = target.with_suffix(".input.ipynb")
        nbformat.write(notebook, unexecuted)
        logger.info("executing %s", name)
        print(f"[radiolens book] executing {name} ...", flush=True)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(unexecuted), str(target), parameters=parameters, kernel_name="python3",
                cwd=str(source.parent), progress_bar=False, log_output=False,
            )
        except PapermillExecutionError as err:
            raise BookBuildError(
                f"chapter {name} failed in cell {err.exec_count} (cell index {err.cell_index}): "
                f"{err.ename}: {err.evalue}\n(executed notebook with the traceback: {target})"
            ) from None
        finally:
            unexecuted.unlink(missing_ok=True)
        _strip_widget_state(target)
        print(f"[radiolens book] {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    return output_dir


def _strip_widget_state(path: Path) -> None:
    """Drop saved ipywidgets state: it bloats the notebook, and static pages show fallbacks."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    if notebook.metadata.pop("widgets", None) is not None:
        nbformat.write(notebook, path)


def render_html(root: Path, executed_dir: Path) -> Path:
    """Render the executed notebooks with Jupyter Book 1.x; return the HTML folder."""
    staging = root / "_build" / "book_src"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, staging / name)
    for item in (root / "book").iterdir():
        if item.suffix == ".md" and _is_notebook(item):
            continue  # replaced by its executed notebook
        if item.is_dir():
            if not item.name.startswith((".", "_")):
                shutil.copytree(item, staging / "book" / item.name)
        else:
            (staging / "book").mkdir(exist_ok=True)
            shutil.copy2(item, staging / "book" / item.name)
    for name in chapters(root):
        executed = executed_dir / f"{name}.ipynb"
        if executed.exists():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(executed, staging / f"{name}.ipynb")
        elif not (staging / f"{name}.md").exists():
            raise BookBuildError(f"chapter {name} has not been executed (no {executed})")
    # the console script may not be on PATH (e.g. a venv not activated): call its module
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
               "build", str(staging), "--path-output", str(root), "--all"]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise BookBuildError(f"jupyter-book build failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}")
    html = root / "_build" / "html"
    if not (html / "index.html").exists():
        raise BookBuildError(f"jupyter-book build produced no {html / 'index.html'}")
    return html


def build_book(
    root: str | Path | None = None,
    quick: bool = True,
    cache_dir: str | Path | None = None,
    only: list[str] | None = None,
    html: bool = True,
) -> Path:
    """Execute the chapters in order and render the book; return the HTML (or executed) folder."""
    root = find_root(root)
    executed = execute_chapters(root, quick=quick, cache_dir=cache_dir, only=only)
    return render_html(root, executed) if html else executed
