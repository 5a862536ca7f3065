"""What a chapter calls while it runs: its study note, its charts, prose bound to its outputs.

Every chapter starts with a hidden cell ``start_chapter(quick, cache_dir)``; numbers and claims
in its prose come from :func:`glue` and :func:`claim`; its coding exercises end with a
:func:`check` cell. All three leave *records* in the executed notebook (myst-nb glue outputs
named ``"{key}"``, ``"claim:{name}"`` and ``"check:{name}"``) that :mod:`radiolens.book.build`
verifies before it renders a page, so a sentence that no longer matches the run fails the build
instead of going out wrong. CONTRIBUTING.md ("Binding prose to outputs") shows the pattern.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

__all__ = ["CHART_RENDERER", "check", "claim", "enable_book_charts", "glue", "mode_note", "start_chapter"]

logger = logging.getLogger(__name__)

CHART_RENDERER = "radiolens-book"
CLAIM_PREFIX = "claim:"
CHECK_PREFIX = "check:"
HOLDS, FAILS = "holds", "FAILS"
PASSED, FAILED = "passed", "FAILED"


def start_chapter(quick: bool, cache_dir=None, text_bound: bool = False):
    """The first hidden cell of every chapter: book charts on, and the note on the study used.

    Parameters
    ----------
    quick, cache_dir
        The chapter's parameters (the same values it passes to ``load_config``).
    text_bound
        True once every number and claim in the chapter's prose is bound to its outputs
        (:func:`glue`, :func:`claim`); the note then says so instead of warning that the text
        quotes the quick run.

    Returns
    -------
    IPython.display.Markdown
        :func:`mode_note`, displayed as the cell's output.
    """
    enable_book_charts()
    return mode_note(quick, cache_dir=cache_dir, text_bound=text_bound)


def mode_note(quick: bool, cache_dir=None, text_bound: bool = False):
    """The note at the top of every chapter: which study its outputs come from, and its size.

    The size is read from the configuration the chapter's ``Study`` uses (the same
    ``load_config(quick=quick, cache_dir=cache_dir)``), so the note cannot disagree with it.

    Returns
    -------
    IPython.display.Markdown
    """
    from IPython.display import Markdown

    from radiolens.config import load_config

    config = load_config(quick=quick, cache_dir=cache_dir)
    cohort, finetune = config["cohort"], config["finetune"]
    grid = " x ".join(str(n) for n in cohort["shape"])
    encoder = config["encoder"]
    # pretrain_epochs applies only when the study pre-trains its own encoder
    pretrained = (f"an encoder pre-trained here for {encoder['pretrain_epochs']} epochs" if encoder["weights"] == "pretrain"
                  else f"the pre-trained encoder `{encoder['weights']}`")
    size = (
        f"{cohort['n_cases']} {cohort['source']} cases (split 7:1:2 into training, validation and test) "
        f"on a {grid} voxel grid, {pretrained}, "
        f"fine-tuned for up to {finetune['epochs']} epochs on each of {len(finetune['tasks'])} tasks"
    )
    mode = "quick study" if quick else "full default study"
    if text_bound:
        text = (
            f"**Run mode: {'quick' if quick else 'full'}.** The outputs on this page, and every number "
            f"its text quotes from them, come from the {mode}: {size}."
        )
    elif quick:
        text = (
            f"**Run mode: quick.** The outputs on this page come from the quick study: {size}. The text "
            "was written against this mode: the numbers it quotes from \"the quick run\" were read off "
            "outputs like these. Set `quick = False` in the first cell for the full default study."
        )
    else:
        text = (
            f"**Run mode: full default study.** The outputs on this page come from the full study: {size}. "
            "The text was written against the quick study and quotes its numbers (\"in the quick run ...\"); "
            "the outputs here come from more data and longer training and will differ."
        )
    return Markdown(f"> {text} Either way the data are synthetic: these are not the paper's results.")


# ---------------------------------------------------------------------------------------------
# Charts: one output that works live (Altair's own HTML) and in the offline book (the spec)
# ---------------------------------------------------------------------------------------------


def _altair_display():
    import altair as alt

    major = alt.SCHEMA_VERSION.lstrip("v").split(".")[0]
    return importlib.import_module(f"altair.vegalite.v{major}.display")


def _book_renderer(spec: dict, **metadata):
    """Altair's HTML output plus the Vega-Lite spec itself.

    A live notebook shows the HTML as usual; ``radiolens book`` replaces it with a chart drawn
    by the site's own copy of vega and a PNG fallback (:mod:`radiolens.book.offline`), which
    needs the spec.
    """
    import altair as alt

    html = _altair_display().html_renderer(spec, **metadata)
    data, meta = html if isinstance(html, tuple) else (html, {})
    # "+json" (not Altair 6's ".json"): nbformat stores only +json mime types as JSON objects
    major = alt.SCHEMA_VERSION.lstrip("v").split(".")[0]
    return {**data, f"application/vnd.vegalite.v{major}+json": spec}, meta


def enable_book_charts() -> None:
    """Make Altair charts carry their spec so that the rendered book can draw them offline."""
    import altair as alt

    if CHART_RENDERER not in alt.renderers.names():
        alt.renderers.register(CHART_RENDERER, _book_renderer)
    alt.renderers.enable(CHART_RENDERER)


# ---------------------------------------------------------------------------------------------
# Prose bound to outputs
# ---------------------------------------------------------------------------------------------


class _Text:
    """A value shown as exactly this text (no quotes) by ``{glue:text}`` and ``{glue}``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _myst_glue(name: str, value) -> None:
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # a live notebook without the book extra: nothing renders the roles anyway
        logger.debug("myst-nb not installed: %s not glued", name)
        return
    myst_glue(name, value, display=False)


def glue(name: str, value, fmt: str = "{}") -> None:
    """Bind a value to the prose: ``{glue:text}`name``` in the chapter shows ``fmt.format(value)``.

    Parameters
    ----------
    name
        The key used in the prose; a key the prose uses but the chapter never glues fails
        ``radiolens book``.
    value
        Any value; it is formatted here, once, so the page shows exactly what the chapter's
        code computed (no format specs in the prose).
    fmt
        A ``str.format`` pattern, e.g. ``"{:.2f}"``, ``"{:,}"``, ``"{:.0%}"``.

    Returns nothing, so that a cell ending with a glue shows nothing either.

    Examples
    --------
    >>> glue("share_lesion", 0.583, "{:.0%}")  # the page shows "58%"  # doctest: +SKIP
    """
    _myst_glue(name, _Text(fmt.format(value)))


def claim(name: str, holds: bool, statement: str) -> None:
    """Check a sentence the prose states about the run, right after the output it describes.

    A claim that holds leaves a record and shows nothing. One that fails shows a warning next
    to the output, so that a reader of a different run (the full study, your own data) sees
    that the text no longer describes it; ``radiolens book`` lists failing claims and the book
    test fails on any in the quick build.

    Parameters
    ----------
    name
        A short key, unique in the chapter (``"adc_falls_with_pirads"``).
    holds
        Whether the statement is true of this run's outputs (compute it from them).
    statement
        The claim as the prose makes it, in a few words.

    Returns nothing, so that a cell ending with a claim shows nothing either.
    """
    holds = bool(holds)
    _myst_glue(CLAIM_PREFIX + name, _Text(f"{HOLDS if holds else FAILS}: {statement}"))
    if not holds:
        from IPython.display import Markdown, display

        display(Markdown(
            f"> **Note: on this run the text's claim does not hold** - \"{statement}\". "
            "That sentence of the text does not describe this run; read the outputs above instead."
        ))


def check(name: str, test: Callable[[], object], hint: str = "") -> bool:
    """The check cell of a coding exercise: run ``test`` and print a clear pass or fail.

    Parameters
    ----------
    name
        What is checked, as the reader knows it (``"region_mean"``); exercise numbers are
        assigned by the build, so they are not used here.
    test
        A function of no arguments that raises ``AssertionError`` (with a message saying what
        is wrong) when the answer is wrong; any other exception counts as a failure too.
    hint
        Printed with a failure: where to look.

    Returns
    -------
    bool
        Whether the answer passed. The book build runs the reference solution, so a failing
        check there fails ``radiolens book``.
    """
    try:
        test()
    except Exception as error:  # noqa: BLE001 - a student's code may raise anything
        kind = "" if isinstance(error, AssertionError) else f"{type(error).__name__}: "
        print(f"✘ {name}: not yet. {kind}{error}".rstrip())
        if hint:
            print(f"  Hint: {hint}")
        _myst_glue(CHECK_PREFIX + name, _Text(f"{FAILED}: {kind}{error}"))
        return False
    print(f"✔ {name}: correct.")
    _myst_glue(CHECK_PREFIX + name, _Text(PASSED))
    return True
