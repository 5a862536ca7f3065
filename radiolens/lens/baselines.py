"""Reference points for reading the lens: what a nuisance covariate alone explains of the
radiomic features (held-out R^2), and what the embedding knows about a case label.

Many radiomic features grow or shrink with the size of their region of interest, and an
encoder can carry an ROI's size without carrying its texture. Before a feature's decodability
is read as "the encoder represents this texture", compare it with what the ROI's (log) volume
alone predicts on the same cases: :func:`covariate_r2` fits one least-squares line per feature
on the training cases and scores it on the test cases exactly as the lens scores its decoders
(:func:`radiolens.lens.decoders.r2_per_feature`).

A lens can only decode what the embedding carries. :func:`label_auc` asks a plainer question
first: can a linear probe tell cases with a label (say, "has a lesion") from cases without it,
from the embedding alone? Its cross-validated AUC comes with a label-permutation p-value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from radiolens.lens.decoders import r2_per_feature

__all__ = ["covariate_r2", "label_auc"]


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


def label_auc(
    X: pd.DataFrame,
    y: pd.Series,
    n_splits: int = 5,
    n_permutations: int = 999,
    alpha: float | None = None,
    seed: int = 0,
) -> pd.Series:
    """How well a linear probe reads a binary case label from embeddings: cross-validated AUC.

    The probe is a ridge regression of the 0/1 label on the embedding (features standardised
    with each training fold's mean and deviation; penalty ``alpha``, default the number of
    embedding dimensions), fitted on ``n_splits - 1`` folds and scoring the held-out fold; the
    AUC is computed over every case's out-of-fold score. The p-value repeats the same procedure,
    on the same folds, for ``n_permutations`` random permutations of the labels, ``(1 +
    #{AUC_perm >= AUC}) / (1 + n_permutations)``: exact under "the embedding carries nothing
    about the label", so it falls below 0.05 at most 5% of the time when that is so. A ridge
    probe is linear in the labels, so every permutation costs one matrix product.

    Parameters
    ----------
    X
        Embeddings, cases x dimensions.
    y
        The label per case (booleans or 0/1), indexed by case id; cases missing from either
        input, or with a missing label, are left out.
    n_splits, n_permutations, alpha, seed
        Folds, label permutations, ridge penalty, and the seed of folds and permutations.

    Returns
    -------
    pandas.Series
        ``auc``, ``p_value``, ``n_cases``, ``n_positive``.

    Raises
    ------
    ValueError
        Fewer than ``n_splits`` cases with or without the label, or labels other than 0/1.
    """
    from scipy.stats import rankdata

    labels = pd.Series(y).dropna()
    cases = X.index.intersection(labels.index, sort=False)
    values = labels.loc[cases].astype(float).to_numpy()
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"label_auc needs a 0/1 (or boolean) label; got values {sorted(set(values))[:5]}")
    n, n_positive = len(values), int(values.sum())
    if min(n_positive, n - n_positive) < int(n_splits):
        raise ValueError(f"label_auc needs at least {n_splits} cases with and {n_splits} without the label "
                         f"(n_splits); got {n_positive} and {n - n_positive}")
    features = X.loc[cases].to_numpy(float)
    penalty = float(features.shape[1] if alpha is None else alpha)
    rng = np.random.default_rng(int(seed))
    # column 0: the labels; the others: permutations of them (every column has n_positive ones)
    targets = np.column_stack([values] + [rng.permutation(values) for _ in range(int(n_permutations))])
    # folds drawn without looking at the labels: the permuted labels then meet the very same procedure
    fold_of = rng.permutation(np.arange(n) % int(n_splits))
    scores = np.empty_like(targets)
    for fold in range(int(n_splits)):
        train, test = fold_of != fold, fold_of == fold
        mean, std = features[train].mean(0), features[train].std(0)
        std[std == 0] = 1.0
        Z = (features - mean) / std
        gram = Z[train].T @ Z[train] + penalty * np.eye(Z.shape[1])
        weights = np.linalg.solve(gram, Z[train].T @ (targets[train] - targets[train].mean(0)))
        scores[test] = Z[test] @ weights
    ranks = rankdata(scores, axis=0)
    auc = ((ranks * targets).sum(0) - n_positive * (n_positive + 1) / 2) / (n_positive * (n - n_positive))
    p_value = float((1 + (auc[1:] >= auc[0] - 1e-12).sum()) / (1 + int(n_permutations)))
    return pd.Series({"auc": float(auc[0]), "p_value": p_value, "n_cases": n, "n_positive": n_positive})
