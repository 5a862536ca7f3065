"""The least data a lens needs: cases per split, defined once and checked up front.

These are the minimums at which every number of a lens report is *defined*, not the numbers at
which it is trustworthy (a lens on a handful of cases has intervals as wide as its range):

``train``  ``2 * n_folds`` for ``protocol="cross-fit"`` (each of the ``n_folds`` parts of the
           training cases fits its own decoders, an intercept and a slope per hidden unit need
           two cases), 2 for ``protocol="paper"`` (stage 1 and the decoders on all of them).
``val``    1: the penalty sweep scores each penalty on the validation loss (and fine-tuning
           stops early on it).
``test``   2: held-out R^2 compares predictions with the test cases' variance, which one case
           does not have.

:func:`check_cases_per_split` raises :class:`~radiolens.errors.NotEnoughDataError` with the counts,
the minimum and the fix, before any slow step runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from radiolens.errors import NotEnoughDataError

__all__ = ["MIN_TEST_CASES", "MIN_TRAIN_CASES_PER_FOLD", "MIN_VAL_CASES", "check_cases_per_split", "min_cases_per_split"]

#: Training cases per cross-fitting part (each part fits its own decoders).
MIN_TRAIN_CASES_PER_FOLD = 2
#: Validation cases (the penalty sweep's loss).
MIN_VAL_CASES = 1
#: Test cases (held-out R^2 needs their variance).
MIN_TEST_CASES = 2


def min_cases_per_split(n_folds: int = 2, protocol: str = "cross-fit") -> dict[str, int]:
    """The fewest cases per split (``{"train": .., "val": .., "test": ..}``) a lens runs on.

    Parameters
    ----------
    n_folds, protocol
        The lens's (config ``lens.n_folds`` and ``lens.protocol``).
    """
    folds = int(n_folds) if protocol == "cross-fit" else 1
    return {"train": MIN_TRAIN_CASES_PER_FOLD * max(folds, 1), "val": MIN_VAL_CASES, "test": MIN_TEST_CASES}


def check_cases_per_split(
    counts: Mapping[str, int], n_folds: int = 2, protocol: str = "cross-fit", what: str = "the cohort"
) -> None:
    """Raise :class:`~radiolens.errors.NotEnoughDataError` when a split has too few cases.

    Parameters
    ----------
    counts
        Cases per split (missing splits count 0).
    n_folds, protocol
        The lens's settings (see :func:`min_cases_per_split`).
    what
        Names the cases in the message (a cohort folder, a table, "cases with gland radiomics").
    """
    need = min_cases_per_split(n_folds, protocol)
    short = {s: int(counts.get(s, 0)) for s, n in need.items() if int(counts.get(s, 0)) < n}
    if short:
        have = {s: int(counts.get(s, 0)) for s in need}
        raise NotEnoughDataError(
            f"{what} has too few cases for a lens: {have} per split, but a lens needs at least {need} "
            f"(short: {', '.join(f'{s} {c} < {need[s]}' for s, c in short.items())}); add cases, or give the "
            "table a 'split' column that puts enough cases in each split"
            + (", or lower lens.n_folds" if protocol == "cross-fit" and "train" in short and n_folds > 2 else "")
        )
