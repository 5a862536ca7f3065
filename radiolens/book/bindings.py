"""Verify that an executed chapter backs its prose: glue keys, claims and exercise checks.

A chapter's prose uses values with myst-nb roles (``{glue:text}`n_cases```, also ``{glue}``,
``{glue:md}``, ``{glue:figure}`` ...); its code glues them with
:func:`radiolens.book.page.glue`, checks qualitative sentences with
:func:`~radiolens.book.page.claim` and grades coding exercises with
:func:`~radiolens.book.page.check`. :func:`problems` lists, for one chapter, every key the prose
uses that the run did not produce, every claim that does not hold and every check that failed.
"""

from __future__ import annotations

import re
from pathlib import Path

from radiolens.book.page import CHECK_PREFIX, CLAIM_PREFIX, FAILED, FAILS

__all__ = ["glue_keys_used", "glued_values", "problems"]

# {glue}`key`, {glue:text}`key:.2f`, {glue:md}`key:myst`, and ```{glue:figure} key / ```{glue} key
_ROLE = re.compile(r"\{glue(?::[a-z]+)?\}`([^`]+)`")
_DIRECTIVE = re.compile(r"^[`:]{3,}\{glue(?::[a-z]+)?\}[ \t]+(\S+)", re.M)


def _key(reference: str) -> str:
    """``"x:.2f"`` -> ``"x"``; ``"path::x"`` (another document's key) is returned whole."""
    if "::" in reference:
        return reference
    return reference.split(":", 1)[0].strip()


def glue_keys_used(markdown: str) -> set[str]:
    """Every glue key that MyST text refers to (roles and directives)."""
    found = {_key(match) for match in _ROLE.findall(markdown)}
    found |= {_key(match) for match in _DIRECTIVE.findall(markdown)}
    return found


def glued_values(notebook) -> dict[str, str]:
    """``{key: text/plain}`` of every value the executed notebook glued (myst-nb's records)."""
    values: dict[str, str] = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook")
            if record and "name" in record:
                text = output.get("data", {}).get(record.get("mime_prefix", "") + "text/plain", "")
                values[record["name"]] = "".join(text) if isinstance(text, list) else text
    return values


def _markdown_of(notebook) -> str:
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")


def problems(executed, name: str = "") -> list[str]:
    """What an executed chapter fails to back: missing glue keys, failing claims and checks.

    Parameters
    ----------
    executed
        The executed notebook (nbformat) or a path to it; its Markdown cells are the prose.
    name
        The chapter, for the messages.

    Returns
    -------
    list of str
        One message per problem, naming the chapter and the key; empty when all is well.
    """
    import nbformat

    if isinstance(executed, (str, Path)):
        executed = nbformat.read(executed, as_version=4)
    values = glued_values(executed)
    out = [
        f"{name}: the text uses {{glue}} key {key!r} but the chapter never glues it "
        "(call radiolens.book.glue in a code cell above it)"
        for key in sorted(glue_keys_used(_markdown_of(executed)))
        if "::" not in key and key not in values
    ]
    for key, text in sorted(values.items()):
        if key.startswith(CLAIM_PREFIX) and text.startswith(FAILS):
            out.append(f"{name}: claim {key[len(CLAIM_PREFIX):]!r} does not hold on this run ({text})")
        elif key.startswith(CHECK_PREFIX) and text.startswith(FAILED):
            out.append(f"{name}: exercise check {key[len(CHECK_PREFIX):]!r} fails on the reference solution ({text})")
    return out
