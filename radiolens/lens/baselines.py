"""What a nuisance covariate alone explains of the radiomic features (held-out R^2).

Many radiomic features grow or shrink with the size of their region of interest, and an
encoder can carry an ROI's size without carrying its texture. Before a feature's decodability
is read as "the encoder represents this texture", compare it with what the ROI's (log) volume
alone predicts on the same cases: :func:`covariate_r2` fits one least-squares line per feature
on the training cases and scores it on the test cases exactly as the lens scores its decoders
(:func:`radiolens.lens.decoders.r2_per_feature`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from radiolens.lens.decoders import r2_per_feature

__all__ = ["covariate_r2"]


def covariate_r2(
    covariate_train: pd.Series | pd.DataFrame,
    R_train: pd.DataFrame,
    covariate_test: pd.Series | pd.DataFrame,
    R_test: pd.DataFrame,
) -> pd.Series:
    """Held-out R^2 of each feature predicted from covariates alone (least squares with an intercept).

    Parameters
    ----------
    covariate_train, covariate_test
        One or more covariates per case (e.g. ``np.log(gland_volume_ml)``), indexed like the
        radiomics.
    R_train, R_test
        Radiomic features (cases x features) of the training and the test cases; the same columns.

    Returns
    -------
    pandas.Series
        R^2 on the test cases per feature (NaN for a feature that does not vary there).

    Raises
    ------
    ValueError
        Mismatched cases or columns, or fewer training cases than coefficients.
    """
    if list(R_train.columns) != list(R_test.columns):
        raise ValueError("R_train and R_test must have the same feature columns")
    c_train, c_test = pd.DataFrame(covariate_train), pd.DataFrame(covariate_test)
    for name, cov, R in (("train", c_train, R_train), ("test", c_test, R_test)):
        if not cov.index.equals(R.index):
            raise ValueError(f"the {name} covariates and radiomics must have the same cases in the same order")
    if len(R_train) <= c_train.shape[1] + 1:
        raise ValueError(f"{len(R_train)} training cases cannot fit {c_train.shape[1] + 1} coefficients")
    design_train = np.c_[np.ones(len(c_train)), c_train.to_numpy(float)]
    design_test = np.c_[np.ones(len(c_test)), c_test.to_numpy(float)]
    coef, *_ = np.linalg.lstsq(design_train, R_train.to_numpy(float), rcond=None)
    return pd.Series(r2_per_feature(R_test.to_numpy(float), design_test @ coef), index=R_test.columns, name="r2")
