"""The student edition: the same chapters with every solution taken out.

What counts as a solution (the conventions of ``book/*.md``, see CONTRIBUTING.md):

- a ``{solution}`` directive (sphinx-exercise), with its whole body;
- a gated ``{solution-start}`` ... ``{solution-end}`` block, with every cell between them (the
  reference code of a scaffolded exercise lives there);
- a code cell tagged ``solution``;
- a ``{dropdown}`` whose title starts with "Solution" (the older style).

The outputs of cells tagged ``check`` (an exercise's self-check, which passed on the reference
solution) are cleared, so that they do not give the answer away.
"""

from __future__ import annotations

import copy
import re

__all__ = ["SOLUTION_TAG", "CHECK_TAG", "solutions_left", "student_notebook"]

SOLUTION_TAG = "solution"
CHECK_TAG = "check"

_OPEN = re.compile(r"^\s*(?P<fence>`{3,}|:{3,})\{(?P<name>[a-z-]+)\}(?P<rest>.*)$")


def _is_solution(name: str, rest: str) -> bool:
    return name in ("solution", "solution-start") or (name == "dropdown" and rest.strip().lower().startswith("solution"))


class _Stripper:
    """Drops solution text line by line; a gated block may span several cells."""

    def __init__(self) -> None:
        self.fence: str | None = None  # the fence of the solution directive being dropped
        self.gated = False  # inside {solution-start} ... {solution-end}

    def markdown(self, text: str) -> str:
        kept = []
        for line in text.splitlines():
            opening = _OPEN.match(line)
            if self.fence is not None:  # inside a directive's fences
                stripped = line.strip()
                if stripped and set(stripped) == {self.fence[0]} and len(stripped) >= len(self.fence):
                    self.fence = None
                continue
            if opening and opening["name"] == "solution-end":
                self.gated = False
                self.fence = opening["fence"]  # drop the end directive's own fence lines
                continue
            if self.gated:
                continue
            if opening and _is_solution(opening["name"], opening["rest"]):
                self.gated = opening["name"] == "solution-start"
                self.fence = opening["fence"]
                continue
            kept.append(line)
        return "\n".join(kept).strip("\n")


def student_notebook(notebook):
    """A copy of a chapter notebook (executed or not) without solutions; see the module doc."""
    result = copy.deepcopy(notebook)
    stripper = _Stripper()
    cells = []
    for cell in result.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type == "markdown":
            cell.source = stripper.markdown(cell.source)
            if cell.source.strip():
                cells.append(cell)
            continue
        if stripper.gated or SOLUTION_TAG in tags:
            continue
        if CHECK_TAG in tags and cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    if stripper.gated or stripper.fence is not None:
        raise ValueError("a solution block is not closed (missing {solution-end} or closing fence)")
    result.cells = cells
    return result


def solutions_left(notebook) -> list[str]:
    """Solution text still present in a notebook (empty for a correct student edition)."""
    found = []
    for index, cell in enumerate(notebook.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if SOLUTION_TAG in tags:
            found.append(f"cell {index}: code cell tagged {SOLUTION_TAG!r}")
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                opening = _OPEN.match(line)
                if opening and _is_solution(opening["name"], opening["rest"]):
                    found.append(f"cell {index}: {line.strip()}")
    return found
