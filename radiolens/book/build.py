"""Build the book: execute every chapter with papermill, in order, then render with Jupyter Book.

The chapters are jupytext MyST Markdown files (``book/*.md``) listed in ``_toc.yml``. Each one
has a cell tagged ``parameters`` (``quick``, ``cache_dir``); papermill injects the values, runs
the notebook and stops at the first error, which :class:`BookBuildError` reports with the
chapter and the cell. Each executed chapter is then verified (:mod:`radiolens.book.bindings`:
every glue key its prose uses exists, every claim holds, every exercise check passes on its
reference solution). Jupyter Book renders the *executed* notebooks from a staging folder
(``_config.yml`` sets ``execute_notebooks: off``), so nothing runs twice; staging shows one
parameter cell per page and rewrites charts to draw offline (:mod:`radiolens.book.offline`).
A student edition (:mod:`radiolens.book.student`) is the same notebooks without solutions.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

__all__ = ["BookBuildError", "build_book", "chapters", "execute_chapters", "find_root", "render_html", "stage_notebook", "write_student_edition"]

logger = logging.getLogger(__name__)


class BookBuildError(RuntimeError):
    """A chapter failed to execute, or the HTML build failed."""


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
        _verify(target, name)
        print(f"[radiolens book] {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    return output_dir


def _verify(executed: Path, name: str) -> None:
    """Fail on prose keys the run did not glue and on failing exercise checks; warn on claims.

    A claim that fails on this run already shows a note on its page (the full study or a
    reader's own data may legitimately differ from the quick study the text describes); the
    book test requires every claim to hold on the quick build.
    """
    from radiolens.book.bindings import problems

    found = problems(executed, name)
    claims = [message for message in found if ": claim " in message]
    for message in claims:
        logger.warning(message)
        print(f"[radiolens book] warning: {message}", flush=True)
    errors = [message for message in found if message not in claims]
    if errors:
        raise BookBuildError("\n".join(errors) + f"\n(executed notebook: {executed})")


def _strip_widget_state(path: Path) -> None:
    """Drop saved ipywidgets state: it bloats the notebook, and static pages show fallbacks."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    if notebook.metadata.pop("widgets", None) is not None:
        nbformat.write(notebook, path)


def stage_notebook(notebook, quick: bool | None = None) -> None:
    """Prepare an executed chapter for its page, in place.

    - One parameter cell: papermill's ``injected-parameters`` cell is hidden and the chapter's
      own ``parameters`` cell (the one a reader edits) shows the ``quick`` value actually used.
    - Charts draw offline with a PNG fallback (:func:`radiolens.book.offline.offline_charts`).
    """
    from radiolens.book.offline import offline_charts

    for cell in notebook.cells:
        tags = cell.get("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
        elif "parameters" in tags and quick is not None:
            cell.source = re.sub(r"^quick\s*=.*$", f"quick = {bool(quick)}", cell.source, flags=re.M)
    offline_charts(notebook)


def _injected_quick(notebook) -> bool | None:
    for cell in notebook.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            match = re.search(r"^quick\s*=\s*(True|False)", cell.source, flags=re.M)
            return None if match is None else match[1] == "True"
    return None


def _stage(root: Path, executed_dir: Path, staging: Path, transform) -> None:
    """Copy the book's sources to ``staging``, each chapter as ``transform(executed notebook)``."""
    import nbformat

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
            notebook = transform(nbformat.read(executed, as_version=4))
            nbformat.write(notebook, staging / f"{name}.ipynb")
        elif not (staging / f"{name}.md").exists():
            raise BookBuildError(f"chapter {name} has not been executed (no {executed})")


def _jupyter_book(staging: Path, output: Path) -> Path:
    # the console script may not be on PATH (e.g. a venv not activated): call its module
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
               "build", str(staging), "--path-output", str(output), "--all"]
    completed = subprocess.run(command, capture_output=True, text=True)
    log = output / "_build" / "jupyter-book.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(completed.stdout + completed.stderr, encoding="utf-8")  # Sphinx's warnings, to read
    if completed.returncode != 0:
        raise BookBuildError(f"jupyter-book build failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}")
    html = output / "_build" / "html"
    if not (html / "index.html").exists():
        raise BookBuildError(f"jupyter-book build produced no {html / 'index.html'}")
    return html


def render_html(root: Path, executed_dir: Path) -> Path:
    """Render the executed notebooks with Jupyter Book 1.x; return the HTML folder."""

    def transform(notebook):
        stage_notebook(notebook, quick=_injected_quick(notebook))
        return notebook

    _stage(root, executed_dir, root / "_build" / "book_src", transform)
    return _jupyter_book(root / "_build" / "book_src", root)


def write_student_edition(root: Path, executed_dir: Path, html: bool = True) -> Path:
    """The student edition: every chapter without solutions, as notebooks and (optionally) HTML.

    Returns ``_build/student/html`` (or, with ``html=False``, the folder of student notebooks
    ``_build/student/book_src``).
    """
    from radiolens.book.student import solutions_left, student_notebook

    def transform(notebook):
        student = student_notebook(notebook)
        stage_notebook(student, quick=_injected_quick(student))
        left = solutions_left(student)
        if left:
            raise BookBuildError(f"the student edition still holds solutions: {left}")
        return student

    output = root / "_build" / "student"
    _stage(root, executed_dir, output / "book_src", transform)
    if not html:
        return output / "book_src"
    built = _jupyter_book(output / "book_src", output)
    target = output / "html"
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(built), target)
    return target


def build_book(
    root: str | Path | None = None,
    quick: bool = True,
    cache_dir: str | Path | None = None,
    only: list[str] | None = None,
    html: bool = True,
    student: bool = False,
) -> Path:
    """Execute the chapters in order and render the book; return the HTML (or executed) folder.

    With ``student=True`` the student edition (no solutions) is written to
    ``_build/student/`` and its folder is returned instead.
    """
    root = find_root(root)
    executed = execute_chapters(root, quick=quick, cache_dir=cache_dir, only=only)
    if student:
        return write_student_edition(root, executed, html=html)
    return render_html(root, executed) if html else executed
