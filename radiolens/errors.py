"""The errors a user can fix: one base class, one exit code per kind.

Every mistake in what a user hands radiolens (a configuration, a cohort table, an image, a
checkpoint, too few cases) raises a subclass of :class:`UserError` whose message names the file,
case, column or key and says how to fix it. The command line prints that one message and exits
with the class's :attr:`~UserError.exit_code`; ``--verbose`` adds the traceback. Anything else
that escapes is a bug in radiolens and keeps its traceback.

To add a kind of user error, subclass :class:`UserError` (or the closest kind below) where the
mistake is detected and give it an exit code from :data:`EXIT_CODES` if it needs its own.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES",
    "CacheIntegrityError",
    "InputFileError",
    "NotEnoughDataError",
    "UnsafeNameError",
    "UserError",
]

#: The command line's exit codes, one per kind of problem (1 stays "a bug in radiolens").
EXIT_CODES: dict[str, int] = {
    "config": 2,
    "cohort": 3,
    "input file": 4,
    "not enough data": 5,
    "download": 6,
    "cache": 7,
}


class UserError(Exception):
    """A mistake in the user's input; the message says what and how to fix it."""

    #: The process exit code the command line returns for this kind of error.
    exit_code: int = 2


class InputFileError(UserError, ValueError):
    """An image, mask, checkpoint or table file that cannot be read or is not what it claims."""

    exit_code = EXIT_CODES["input file"]


class NotEnoughDataError(UserError, ValueError):
    """Too few cases (or labelled cases) for the step asked of them."""

    exit_code = EXIT_CODES["not enough data"]


class UnsafeNameError(UserError, ValueError):
    """A case id or file name that could write outside its folder or is not portable."""

    exit_code = EXIT_CODES["cohort"]


class CacheIntegrityError(UserError, RuntimeError):
    """A cache entry that fails verification and cannot be recomputed here."""

    exit_code = EXIT_CODES["cache"]
