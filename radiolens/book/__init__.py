"""The book: building it (:mod:`.build`), and what its chapters call while they run (:mod:`.page`).

- :mod:`radiolens.book.build` executes the chapters with papermill and renders them with
  Jupyter Book (``radiolens book``); :mod:`.bindings` verifies each executed chapter's prose
  keys, claims and exercise checks; :mod:`.offline` makes the pages work with no network;
  :mod:`.sphinxext` is the book's Sphinx extension; :mod:`.student` strips solutions.
- :mod:`radiolens.book.page` is imported by the chapters themselves: ``start_chapter``,
  ``glue``, ``claim``, ``check``.
"""

from radiolens.book.build import (
    BookBuildError,
    build_book,
    chapters,
    execute_chapters,
    find_root,
    render_html,
    write_student_edition,
)
from radiolens.book.page import check, claim, enable_book_charts, glue, mode_note, start_chapter

__all__ = [
    "BookBuildError",
    "build_book",
    "chapters",
    "check",
    "claim",
    "enable_book_charts",
    "execute_chapters",
    "find_root",
    "glue",
    "mode_note",
    "render_html",
    "start_chapter",
    "write_student_edition",
]
