"""Choosing stage 1's penalties as the paper does: one lens per ``(l1, l2)``, scored on
validation cases by the reconstruction loss."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from radiolens._utils import torch_threads
from radiolens.lens.estimator import RadiomicLens

#: The paper's sweep over the L1 weight penalty.
PAPER_L1_GRID: tuple[float, ...] = (0.0, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5)
#: The paper's sweep over the L2 weight penalty.
PAPER_L2_GRID: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3)


def penalty_sweep(
    X_train: Any,
    R_train: pd.DataFrame,
    X_val: Any,
    R_val: pd.DataFrame,
    l1_grid: Sequence[float] = PAPER_L1_GRID,
    l2_grid: Sequence[float] = PAPER_L2_GRID,
    n_jobs: int = 1,
    **lens_params: Any,
) -> pd.DataFrame:
    """Fit one lens per ``(l1, l2)`` on the training cases and score it on validation cases.

    The score is the stage-1 reconstruction loss (per-modality L1 error of the temporary heads,
    summed over modalities, without the penalty) after the last epoch, on min-max scaled
    radiomics (scaling fitted on the training cases), as the paper selects its penalties.

    Parameters
    ----------
    X_train, R_train, X_val, R_val
        Pre-fine-tuning embeddings and radiomics of training and validation cases.
    l1_grid, l2_grid
        Penalties to try (default: the paper's grid, 6 x 4 = 24 fits).
    n_jobs
        Parallel fits (joblib worker processes); 1 runs in this process. Each fit runs on one
        intra-op thread either way, so the table does not depend on ``n_jobs``.
    **lens_params
        Other :class:`RadiomicLens` parameters (``hidden_dim``, ``epochs``, ...).

    Returns
    -------
    pandas.DataFrame
        ``l1, l2, val_loss, train_loss, selected``; exactly one row has ``selected`` True (the
        lowest validation loss; ties go to the first in grid order).
    """
    for key in ("l1", "l2"):
        if key in lens_params:
            raise ValueError(f"pass {key} values through {key}_grid, not as a lens parameter")
    grid = [(float(a), float(b)) for a in l1_grid for b in l2_grid]
    if not grid:
        raise ValueError("empty penalty grid")

    def one(l1: float, l2: float) -> dict:
        with warnings.catch_warnings(), torch_threads(1):
            warnings.simplefilter("ignore")  # the same warnings would repeat for every grid point
            # only the projection trained on every training case is scored: the cross-fitted
            # ones (protocol="cross-fit") would cost n_folds more trainings per grid point
            params = {**lens_params, "l1": l1, "l2": l2, "protocol": "paper"}
            lens = RadiomicLens(**params).fit(X_train, R_train, validation=(X_val, R_val))
        last = lens.history_.iloc[-1] if len(lens.history_) else None
        return {
            "l1": l1,
            "l2": l2,
            "val_loss": float(last["val_loss"]) if last is not None else math.nan,
            "train_loss": float(last["train_loss"]) if last is not None else math.nan,
        }

    if n_jobs == 1:
        rows = [one(a, b) for a, b in grid]
    else:
        from joblib import Parallel, delayed

        rows = Parallel(n_jobs=n_jobs)(delayed(one)(a, b) for a, b in grid)
    table = pd.DataFrame(rows, columns=["l1", "l2", "val_loss", "train_loss"])
    best = int(np.nanargmin(table["val_loss"].to_numpy())) if table["val_loss"].notna().any() else 0
    table["selected"] = False
    table.loc[best, "selected"] = True
    return table
