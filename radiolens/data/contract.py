"""The cohort contract: what a manifest holds, how its values are checked, how cases are split.

One row per case; the image columns are the modalities of :data:`radiolens.naming.MODALITIES`.

Manifest columns (see ``CONTRIBUTING.md``):

========================  ==================================================================
``case_id``               unique string
``split``                 ``train``, ``val`` or ``test``
``T2W``, ``DWI``, ``ADC`` image paths, relative to the manifest's folder or absolute; empty =
                          missing
``gland``, ``zones``,     mask paths; ``zones`` holds 1 = peripheral, 2 = transition zone;
``lesion``                empty = missing
``pirads_group``          integer 0..3 meaning PI-RADS ``<3``, ``3``, ``4``, ``5``; empty =
                          unknown
``gland_volume_ml``,      floats; ``lesion_volume_ml`` is 0 when there is no lesion
``lesion_volume_ml``
``source``, ``site``,     provenance (empty when unknown)
``scanner``
========================  ==================================================================

Extra columns (e.g. a synthetic case's latent ``age``) are allowed and kept.

:func:`normalise_manifest` checks a table against this contract, :func:`split_cases` assigns
splits (patient-level, stratified), :func:`pirads_group` maps a PI-RADS score to its group;
every problem is a :class:`CohortError` naming the case, the column or file and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiolens.errors import EXIT_CODES, UserError
from radiolens.naming import MODALITIES

__all__ = [
    "FILE_KEYS",
    "LABEL_COLUMNS",
    "MANIFEST_COLUMNS",
    "MASK_KEYS",
    "MASK_VALUES",
    "PIRADS_GROUPS",
    "PROVENANCE_COLUMNS",
    "SPLITS",
    "CohortError",
    "is_missing",
    "normalise_manifest",
    "pirads_group",
    "split_cases",
]

#: Mask columns of the manifest (the image columns are :data:`radiolens.naming.MODALITIES`).
MASK_KEYS: tuple[str, ...] = ("gland", "zones", "lesion")
#: Every file column: the modalities in channel order, then the masks.
FILE_KEYS: tuple[str, ...] = MODALITIES + MASK_KEYS
#: Label columns.
LABEL_COLUMNS: tuple[str, ...] = ("pirads_group", "gland_volume_ml", "lesion_volume_ml")
#: Provenance columns.
PROVENANCE_COLUMNS: tuple[str, ...] = ("source", "site", "scanner")
#: Every contract column, in manifest order.
MANIFEST_COLUMNS: tuple[str, ...] = ("case_id", "split", *FILE_KEYS, *LABEL_COLUMNS, *PROVENANCE_COLUMNS)
#: Allowed split names.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Display names of the PI-RADS groups 0..3.
PIRADS_GROUPS: tuple[str, ...] = ("<3", "3", "4", "5")


def pirads_group(score: int) -> int:
    """The contract's PI-RADS group of a PI-RADS score: 1-2 -> 0, 3 -> 1, 4 -> 2, 5 -> 3.

    Raises
    ------
    ValueError
        A score outside 1..5.
    """
    if not 1 <= int(score) <= 5 or int(score) != score:
        raise ValueError(f"PI-RADS score {score!r} is not an integer 1..5")
    return max(0, int(score) - 2)

#: Allowed voxel values per mask.
MASK_VALUES: dict[str, frozenset[int]] = {
    "gland": frozenset({0, 1}),
    "zones": frozenset({0, 1, 2}),
    "lesion": frozenset({0, 1}),
}



class CohortError(UserError, ValueError):
    """A cohort, a case or a file breaks the contract.

    Attributes
    ----------
    case_id, key, path
        Where the problem is (``None`` when it concerns the whole manifest).
    problems
        All problems found, as ``(case_id, key, path, message)`` tuples.
    """

    exit_code = EXIT_CODES["cohort"]

    def __init__(
        self,
        message: str,
        case_id: str | None = None,
        key: str | None = None,
        path: str | os.PathLike | None = None,
        problems: list[tuple] | None = None,
    ) -> None:
        self.case_id = case_id
        self.key = key
        self.path = None if path is None else Path(path)
        self.problems = problems or [(case_id, key, self.path, message)]
        super().__init__(message)


def _describe(case_id: str | None, key: str | None, path: Any, problem: str) -> str:
    parts = []
    if case_id is not None:
        parts.append(f"case {case_id!r}")
    if key is not None:
        parts.append(f"{key} file {str(path)!r}" if path is not None else f"column {key!r}")
    elif path is not None:
        parts.append(f"file {str(path)!r}")
    return (", ".join(parts) + ": " if parts else "") + problem


def cohort_error(case_id, key, path, problem) -> CohortError:
    return CohortError(_describe(case_id, key, path, problem), case_id, key, path)


# --------------------------------------------------------------------------------------------
# manifest values
# --------------------------------------------------------------------------------------------
def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _number(value: Any) -> float:
    """A table cell as a float; NaN when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def normalise_manifest(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check the table and return it indexed by case_id with typed columns."""
    frame = frame.copy()
    if frame.index.name == "case_id":
        frame = frame.reset_index()
    missing_cols = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing_cols:
        raise CohortError(f"manifest {source}: missing column(s) {missing_cols}")
    problems: list[tuple] = []

    def bad(case_id, key, message):
        problems.append((case_id, key, None, message))

    # case ids: non-empty, unique strings
    ids = []
    for row, value in enumerate(frame["case_id"]):
        if is_missing(value):
            bad(None, "case_id", f"row {row + 2} of {source} has an empty case_id")
            ids.append(f"<row {row + 2}>")
        else:
            text = str(value).strip()
            if text.endswith(".0") and isinstance(value, float):
                text = text[:-2]
            ids.append(text)
    frame["case_id"] = pd.array(ids, dtype=object)
    counts = pd.Series(ids).value_counts()
    for dup in counts[counts > 1].index:
        rows = [i + 2 for i, c in enumerate(ids) if c == dup]
        bad(dup, "case_id", f"duplicate case id (rows {rows} of {source})")

    # file columns: strings, None when missing
    for key in FILE_KEYS:
        frame[key] = pd.array(
            [None if is_missing(v) else str(v).strip() for v in frame[key]], dtype=object
        )

    # split
    splits = []
    for case_id, value in zip(ids, frame["split"]):
        text = None if is_missing(value) else str(value).strip().lower()
        if text not in SPLITS:
            bad(case_id, "split", f"split {value!r} is not one of {list(SPLITS)}")
        splits.append(text)
    frame["split"] = pd.array(splits, dtype=object)

    # PI-RADS group
    groups: list[Any] = []
    for case_id, value in zip(ids, frame["pirads_group"]):
        if is_missing(value):
            groups.append(pd.NA)
            continue
        number = _number(value)
        if not (np.isfinite(number) and number == int(number) and 0 <= number <= 3):
            bad(
                case_id,
                "pirads_group",
                f"unknown PI-RADS group {value!r}: expected an integer 0..3 "
                f"(meaning PI-RADS {', '.join(PIRADS_GROUPS)}) or empty",
            )
            groups.append(pd.NA)
        else:
            groups.append(int(number))
    frame["pirads_group"] = pd.array(groups, dtype="Int64")

    # volumes
    for col in ("gland_volume_ml", "lesion_volume_ml"):
        values = []
        for case_id, value in zip(ids, frame[col]):
            if is_missing(value):
                values.append(np.nan)
                continue
            number = _number(value)
            if not np.isfinite(number) or number < 0:
                bad(case_id, col, f"{col} {value!r} is not a non-negative number")
                number = np.nan
            values.append(number)
        frame[col] = np.asarray(values, dtype=float)

    for col in PROVENANCE_COLUMNS:
        frame[col] = pd.array(
            [None if is_missing(v) else str(v).strip() for v in frame[col]], dtype=object
        )

    for case_id, row in zip(ids, frame[list(MODALITIES)].itertuples(index=False)):
        if all(is_missing(v) for v in row):
            bad(case_id, "T2W", "no image at all (T2W, DWI and ADC are all empty)")

    if problems:
        raise combine_problems(problems, f"manifest {source}")
    return frame.set_index("case_id", drop=True)


def combine_problems(problems: list[tuple], what: str) -> CohortError:
    lines = [_describe(c, k, p, m) for c, k, p, m in problems]
    shown = lines[:20]
    more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
    if len(lines) == 1:
        message = f"{what}: {lines[0]}"
    else:
        message = f"{what}: {len(lines)} problems\n  " + "\n  ".join(shown) + more
    first = problems[0]
    return CohortError(message, first[0], first[1], first[2], problems=problems)


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def split_cases(
    frame: pd.DataFrame,
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    stratify: str | None = "pirads_group",
    seed: int = 0,
    group: str | None = "patient_id",
) -> pd.Series:
    """Deterministic patient-level split, stratified by a label.

    Patients (``group`` column when present, else each case) are shuffled with ``seed``
    within each stratum; strata are then walked in a fixed order and each patient goes to
    the split that is furthest below its target share so far. This keeps every stratum and
    the whole cohort close to ``ratios`` (7:1:2 as in the paper), and all cases of one
    patient in one split.

    Parameters
    ----------
    frame
        Cases, with ``case_id`` as a column or index.
    ratios
        Shares of train, val, test; normalised to sum 1.
    stratify
        Column to stratify by (missing values form their own stratum); None for none.
    seed
        Random seed; the same seed and table give the same split.
    group
        Column identifying the patient; ignored when absent.

    Returns
    -------
    pandas.Series
        ``split`` per case, indexed by ``case_id`` in the frame's order.
    """
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative shares, got {ratios}")
    table = frame.reset_index() if frame.index.name == "case_id" else frame.reset_index(drop=True)
    if "case_id" not in table.columns:
        raise ValueError("split_cases needs a 'case_id' column or index")
    ids = table["case_id"].astype(str)
    patients = table[group].astype(str) if group and group in table.columns else ids
    if stratify is not None and stratify not in table.columns:
        raise CohortError(
            f"cannot stratify the split by {stratify!r}: the table has no such column "
            f"(columns: {', '.join(map(str, table.columns))}); pass stratify=None or add the column"
        )
    strata = (
        table[stratify].map(lambda v: "<missing>" if is_missing(v) else str(v))
        if stratify
        else pd.Series("all", index=table.index)
    )
    # a patient's stratum: its most severe (largest) label, so repeat studies stay together
    patient_stratum = strata.groupby(patients).max()
    rng = np.random.default_rng(seed)
    order: list[str] = []
    for stratum in sorted(patient_stratum.unique()):
        members = sorted(patient_stratum.index[patient_stratum == stratum])
        order.extend(members[i] for i in rng.permutation(len(members)))
    share = np.asarray(ratios, dtype=float) / float(sum(ratios))
    counts = np.zeros(3)
    assigned: dict[str, str] = {}
    for i, patient in enumerate(order, start=1):
        choice = int(np.argmax(share * i - counts))
        counts[choice] += 1
        assigned[patient] = SPLITS[choice]
    return pd.Series([assigned[p] for p in patients], index=pd.Index(ids, name="case_id"), name="split")


