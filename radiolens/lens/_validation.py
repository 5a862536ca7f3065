"""Input checks shared by the lens: every message names the case, column or table to fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def torch_module():
    """PyTorch, imported on first use (the lens's stage 1 is a small torch model)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise ImportError("radiolens.lens needs PyTorch: pip install torch") from exc
    return torch


def check_unique(index: pd.Index, what: str) -> None:
    if not index.is_unique:
        dup = index[index.duplicated()].unique().tolist()
        raise ValueError(f"{what} has duplicate case ids: {dup[:10]}")


def check_finite(values: np.ndarray, index: Sequence, columns: Sequence, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        examples = [f"case {index[r]!r} column {columns[c]!r}" for r, c in zip(rows[:5], cols[:5])]
        raise ValueError(
            f"{what} contains {int(bad.sum())} NaN/inf value(s), e.g. {'; '.join(examples)}; "
            "impute or drop those cases first"
        )


def as_embedding(X: Any, what: str) -> tuple[np.ndarray, pd.Index | None, list[str] | None]:
    """Return (float64 values, index or None, column names or None)."""
    if isinstance(X, pd.DataFrame):
        check_unique(X.index, what)
        try:
            values = X.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} must be numeric: {exc}") from exc
        columns = [str(c) for c in X.columns]
        check_finite(values, X.index, columns, what)
        return values, X.index, columns
    values = np.asarray(X, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"{what} must be 2-D (cases x embedding dims), got shape {values.shape}")
    check_finite(values, range(len(values)), [f"dim {j}" for j in range(values.shape[1])], what)
    return values, None, None


def align(X: np.ndarray, x_index: pd.Index | None, r_index: pd.Index, what: str, r_what: str) -> np.ndarray:
    """Order the rows of X like R's cases; refuse mismatched case ids."""
    if x_index is None:
        if len(X) != len(r_index):
            raise ValueError(f"{what} has {len(X)} rows but {r_what} has {len(r_index)} cases")
        return X
    if not x_index.equals(r_index):
        missing = r_index.difference(x_index)
        extra = x_index.difference(r_index)
        if len(missing) or len(extra):
            raise ValueError(
                f"case ids of {what} and {r_what} do not match: "
                f"{len(missing)} in {r_what} only (e.g. {missing[:5].tolist()}), "
                f"{len(extra)} in {what} only (e.g. {extra[:5].tolist()})"
            )
        X = X[x_index.get_indexer(r_index)]
    return X


def as_radiomics(R: Any, what: str) -> pd.DataFrame:
    if not isinstance(R, pd.DataFrame):
        raise TypeError(
            f"{what} must be a pandas DataFrame with radiomic column names "
            "'{modality}__{pyradiomics key}' (the names decide the modality heads)"
        )
    check_unique(R.index, what)
    if not R.columns.is_unique:
        dup = R.columns[R.columns.duplicated()].unique().tolist()
        raise ValueError(f"{what} has duplicate columns: {dup[:10]}")
    try:
        values = R.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numeric: {exc}") from exc
    check_finite(values, R.index, [str(c) for c in R.columns], what)
    return R
