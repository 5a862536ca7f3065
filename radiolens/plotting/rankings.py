"""The lens's rankings as the views show them: the report's order, filtered and numbered.

The rankings themselves (which features gained, lost or kept their importance) belong to the
lens report (``LensReport.gained``, ``.lost``, ``.stable``); :func:`ranked` only asks the report
for its full order, keeps the modalities and families a view filters to, and numbers the rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = ["MEASURES", "MEASURE_LABELS", "RANKINGS", "importance_table", "ranked"]

#: The three rankings of the paper's Fig. 3.
RANKINGS: tuple[str, ...] = ("gained", "lost", "stable")
#: What a ranking may order by: the paper's relative change first.
MEASURES: tuple[str, ...] = ("rel_delta_I", "delta_I", "delta_r2")
#: Axis titles of the measures.
MEASURE_LABELS: dict[str, str] = {
    "delta_I": "ΔI = I_ft − I_pre (decoder row norm)",
    "rel_delta_I": "relative ΔI = (I_ft − I_pre) / I_pre (decoder row norm)",
    "delta_r2": "ΔR² = R²_ft − R²_pre (held-out decodability)",
}


def importance_table(report) -> pd.DataFrame:
    """The report's importance table with ``column`` as an ordinary column."""
    imp = report.importance
    if "column" not in imp.columns:
        imp = imp.rename_axis("column").reset_index()
    return imp


def ranked(
    report,
    kind: str = "gained",
    k: int | None = 10,
    by: str = "rel_delta_I",
    modalities: Iterable[str] | None = None,
    families: Iterable[str] | None = None,
) -> pd.DataFrame:
    """One of the paper's rankings as a table with a ``rank`` column (1 = first).

    The order (and, for ``"stable"``, which features are eligible: important before and
    after) is the report's own ``gained/lost/stable(n, by=by)`` over *all* features; the
    filters then keep the rows of the chosen modalities and families, in that order, and the
    first ``k`` of them are returned.

    Parameters
    ----------
    report
        A LensReport.
    kind
        ``"gained"``, ``"lost"`` or ``"stable"``.
    k
        Number of features; None for every feature the ranking returns.
    by
        Measure the lens ranks by: ``"rel_delta_I"`` (the paper's Fig. 3), ``"delta_I"`` or
        ``"delta_r2"`` (held-out decodability, radiolens's addition).
    modalities, families
        Keep only these (None keeps all).

    Returns
    -------
    pandas.DataFrame
        The importance rows of the ranked features, in rank order, plus a leading ``rank``.
    """
    if kind not in RANKINGS:
        raise ValueError(f"ranking kind must be one of {list(RANKINGS)}, got {kind!r}")
    if by not in MEASURES:
        raise ValueError(f"ranking measure by={by!r} is not one of {list(MEASURES)}")
    imp = importance_table(report)
    rows = getattr(report, kind)(len(imp), by=by)
    if isinstance(rows, pd.Series):
        rows = rows.to_frame()
    order = list(rows["column"]) if "column" in rows.columns else list(rows.index)
    # the full importance row (intervals, p-values) of each ranked feature, in the report's order
    table = imp.set_index("column").loc[order].reset_index()
    if modalities is not None:
        table = table[table["modality"].isin(list(modalities))]
    if families is not None:
        table = table[table["family"].isin(list(families))]
    if k is not None:
        table = table.head(int(k))
    table = table.reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table
