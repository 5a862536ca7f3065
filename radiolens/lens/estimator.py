"""The radiomic lens as a scikit-learn estimator: :class:`RadiomicLens`."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from radiolens.lens._persistence import load_lens, save_lens
from radiolens.lens._validation import align, as_embedding, as_radiomics
from radiolens.lens.decoders import (
    DEFAULT_RIDGE_ALPHAS,
    MIN_UNIT_SPREAD,
    SCALES,
    Decoder,
    choose_decoder,
    r2_per_feature,
)
from radiolens.lens.inference import (
    PERMUTATION_STATS,
    Fold,
    add_intervals,
    adjust_pvalues,
    bootstrap_replicates,
    combined_importance,
    decoder_tables,
    loo_predictions,
    parallel_map,
    permutation_pvalues,
    score_table,
    test_predictions,
    wilcoxon_table,
)
from radiolens.lens.projection import ACTIVATIONS, OPTIMIZERS, Stage1Settings, project, train_projection
from radiolens.lens.report import LensReport
from radiolens.naming import MODALITIES, parse_column

#: How the decoders are kept apart from stage 1's training cases (see :class:`RadiomicLens`).
PROTOCOLS = ("cross-fit", "paper")
_DECODERS = ("ols", "ridge")
#: Heuristic for the unreliable regime of the paper's OLS importance (planted-truth simulation).
_MIN_CASES_PER_UNIT = 10.0
#: An evaluation feature whose sum of squares is below this per case (in min-max units, where
#: the training range is 1) is constant there: its R^2 is not evaluable.
_MIN_TSS_PER_CASE = 1e-12


@dataclass
class _Projection:
    """One frozen stage-1 projection with its input standardisation."""

    weight: np.ndarray
    bias: np.ndarray
    x_mean: np.ndarray
    x_scale: np.ndarray
    activation: str

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return project((X - self.x_mean) / self.x_scale, self.weight, self.bias, self.activation)


class RadiomicLens(BaseEstimator):
    """The paper's radiomic lens as a scikit-learn style estimator.

    Parameters
    ----------
    protocol
        Which cases the stage-2 decoders are fitted on, relative to stage 1's training cases.

        ``"cross-fit"`` (default)
            :meth:`fit` also trains one projection per part (``n_folds``) of the training cases
            on the *other* parts. :meth:`compare` then reads every training case through the
            projection that never saw it, fits each part's decoders on that part, and combines
            the parts. Stage 1 has not memorised the noise of the cases its decoders are fitted
            on, so features neither encoder carries show no change on average, and the bootstrap
            and permutation test (which hold the projections fixed) are calibrated; in the
            planted-truth benchmark (``benchmarks/bench_calibration.py``) they flag such
            features at about their nominal 5%.
        ``"paper"``
            As published: stage 1 and the decoders on the same cases. The projection has learnt
            those cases' radiomics, noise included, so features encoded by neither encoder look
            lost by ``delta_I`` and gained by ``delta_r2``, and intervals and p-values are too
            optimistic (the benchmark measures by how much).

        Under either protocol, decoders fitted on cases stage 1 never saw (no case of
        :meth:`compare`'s ``R`` was in :meth:`fit`) use the full projection (``"held-out"``).
    n_folds
        Parts of the training cases for ``protocol="cross-fit"`` (default 2: each decoder is
        fitted on half the cases, each projection trained on the other half).
    hidden_dim
        Width of the shared hidden space. ``None``: ``min(256, d // 2, n_train // 10)``, at
        least 1 — below the embedding width ``d`` and with >= 10 training cases per hidden
        unit, where the paper's OLS importance is reliable (see :mod:`radiolens.lens.simulation`).
        The cross-fitted projections have the same width.
    l1, l2
        Elastic penalty weights on all weights of the projection and heads (paper: 1e-6, 1e-5).
    epochs, lr
        Training length and learning rate of stage 1 (paper: 200, 1e-3).
    random_state
        Seed for initialisation, batch order, the cross-fitting parts, bootstrap and
        permutations (each procedure has its own random stream).
    decoder
        ``"ols"`` (the paper's closed-form least squares, default) or ``"ridge"`` (penalty per
        encoder chosen by exact leave-one-out cross-validation on standardised ``Z``).
    fit_intercept
        ``True`` (default): the decoders fit an intercept (``Z`` and ``R`` centred). ``False``:
        the paper's literal ``theta = R Z^T (Z Z^T)^-1``. After the non-linearity ``Z`` is not
        centred and ``R`` lies in ``[0, 1]``, so without an intercept the decoder spends its
        weights on reproducing each feature's mean, and ``I`` mostly measures that mean; the
        planted-truth benchmark (``benchmarks/bench_calibration.py --intercept``) shows how much
        this changes ``I`` and how much worse it recovers the truth.
    match_ft_moments
        ``True`` (the default under ``protocol="cross-fit"``; ``None`` follows the protocol):
        before the frozen projection, shift and scale every dimension of the
        fine-tuned embeddings to the mean and standard deviation the pre-trained embeddings have
        on the same decoder cases (the same map is applied to test cases). Fine-tuning often
        moves and rescales embedding dimensions wholesale (on the built-in study by several
        pre-trained standard deviations), which pushes the fine-tuned inputs of the projection,
        trained on pre-trained embeddings only, into the flat part of its non-linearity: hidden
        units that barely vary, an ill-conditioned ``Z_ft`` and a paper's importance inflated by
        orders of magnitude. A per-dimension shift or rescaling is not a change in what an
        embedding encodes (any linear read-out undoes it), so the lens compares the encoders
        after removing it. ``False`` (the default under ``protocol="paper"``): the fine-tuned
        embeddings enter the projection as they are, as in the paper.
    activation
        Non-linearity of the projection: ``"gelu"`` (default), ``"relu"``, ``"tanh"``, ``"silu"``.
    optimizer
        ``"adamw"`` (default; decoupled weight decay off, the penalty is in the loss), ``"adam"``,
        ``"sgd"``.
    batch_size
        Cases per optimisation step (default 64).
    standardize_inputs
        Standardise embedding dimensions with the training mean / standard deviation.
    device
        Torch device for stage 1 (``"cpu"`` default; ``"cuda"`` when available).
    modalities
        Allowed modality names in radiomic columns (default ``("T2W", "DWI", "ADC")``).
    ridge_alphas
        Penalties searched by the ridge decoder (default ``logspace(-3, 6, 28)``).
    max_condition
        Condition number of ``Z`` above which least squares is stabilised: on the paper's and
        the standardised scale by the smallest ridge bounding it, on the whitened scale by
        leaving out the directions with singular values below ``1 / max_condition`` of the
        largest (reported in the diagnostics).
    drop_constant
        Constant radiomic columns on the training cases cannot be min-max scaled. ``False``
        (default): raise naming them. ``True``: drop them with a warning (``dropped_columns_``).
    n_threads
        CPU threads for stage-1 training (torch) and for the bootstrap/permutation refits
        (parallel refits, one BLAS thread each). ``None``: torch's default (one thread for
        small models) and up to 4 parallel refits. On a shared, busy machine ``1`` is often
        much faster: waiting threads spin while other processes hold the cores. Bootstrap and
        permutation results do not depend on it.
    progress
        Show progress bars (stage-1 epochs, bootstrap, permutations).

    Attributes
    ----------
    columns_ : list of str
        Radiomic columns the lens was fitted on, in order.
    column_info_ : DataFrame
        ``column, modality, image_type, family, feature`` per column.
    modalities_ : list of str
        Modalities present, one temporary head each.
    scaler_min_, scaler_range_ : ndarray
        Min-max scaling of R, fitted on the training cases: ``(R - min) / range``.
    x_mean_, x_scale_ : ndarray
        Input standardisation.
    hidden_dim_, n_features_in_, feature_names_in_, n_train_, train_cases_
    weight_, bias_ : ndarray
        The frozen projection trained on every training case,
        ``Z = act(((X - x_mean_) / x_scale_) @ weight_.T + bias_)`` (:meth:`transform`).
    history_ : DataFrame
        ``epoch, train_loss`` (+ ``val_loss`` when validation data was given); reconstruction
        term only.
    fold_of_case_ : ndarray of int
        Cross-fitting part of every training case (aligned with ``train_cases_``); empty for
        ``protocol="paper"``.
    fold_weight_, fold_bias_, fold_x_mean_, fold_x_scale_ : ndarray
        The cross-fitted projections, one per part (first axis), each trained without that
        part's cases.
    fold_history_ : DataFrame
        ``fold, epoch, train_loss`` of the cross-fitted projections.
    """

    def __init__(
        self,
        protocol: str = "cross-fit",
        n_folds: int = 2,
        hidden_dim: int | None = None,
        l1: float = 1e-6,
        l2: float = 1e-5,
        epochs: int = 200,
        lr: float = 1e-3,
        random_state: int = 0,
        decoder: str = "ols",
        fit_intercept: bool = True,
        match_ft_moments: bool | None = None,
        activation: str = "gelu",
        optimizer: str = "adamw",
        batch_size: int = 64,
        standardize_inputs: bool = True,
        device: str = "cpu",
        modalities: Sequence[str] | None = None,
        ridge_alphas: Sequence[float] | None = None,
        max_condition: float = 1e7,
        drop_constant: bool = False,
        n_threads: int | None = None,
        progress: bool = False,
    ) -> None:
        self.protocol = protocol
        self.n_folds = n_folds
        self.hidden_dim = hidden_dim
        self.l1 = l1
        self.l2 = l2
        self.epochs = epochs
        self.lr = lr
        self.random_state = random_state
        self.decoder = decoder
        self.fit_intercept = fit_intercept
        self.match_ft_moments = match_ft_moments
        self.activation = activation
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.standardize_inputs = standardize_inputs
        self.device = device
        self.modalities = modalities
        self.ridge_alphas = ridge_alphas
        self.max_condition = max_condition
        self.drop_constant = drop_constant
        self.n_threads = n_threads
        self.progress = progress

    # -- helpers ----------------------------------------------------------------------------
    def _plain_params(self) -> dict[str, Any]:
        """``get_params()`` with sequences as lists (JSON, and equal after a save/load round trip)."""
        params = self.get_params()
        for key in ("modalities", "ridge_alphas"):
            if params[key] is not None:
                params[key] = list(params[key])
        return params

    def _check_params(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.protocol == "cross-fit" and int(self.n_folds) < 2:
            raise ValueError(f"n_folds must be >= 2 for protocol='cross-fit', got {self.n_folds!r}")
        if self.decoder not in _DECODERS:
            raise ValueError(f"decoder must be one of {_DECODERS}, got {self.decoder!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.hidden_dim is not None and int(self.hidden_dim) < 1:
            raise ValueError(f"hidden_dim must be a positive integer or None, got {self.hidden_dim!r}")
        if self.l1 < 0 or self.l2 < 0:
            raise ValueError(f"penalties must be >= 0, got l1={self.l1}, l2={self.l2}")
        if int(self.epochs) < 0 or int(self.batch_size) < 1:
            raise ValueError("epochs must be >= 0 and batch_size >= 1")

    def _check_fitted(self) -> None:
        if not hasattr(self, "weight_"):
            raise NotFittedError(
                "this RadiomicLens is not fitted yet; call fit(X_pre, R) (or RadiomicLens.load) first"
            )

    @staticmethod
    def default_hidden_dim(n_features_in: int, n_train: int) -> int:
        """The width ``hidden_dim=None`` picks: ``min(256, d // 2, n_train // 10)``, >= 1."""
        return int(max(1, min(256, n_features_in // 2, n_train // int(_MIN_CASES_PER_UNIT))))

    def _parse_columns(self, columns: Iterable[str]) -> pd.DataFrame:
        allowed = tuple(MODALITIES if self.modalities is None else self.modalities)
        rows = []
        for c in columns:
            name = parse_column(c, allowed)
            rows.append((name.column, name.modality, name.image_type, name.family, name.feature))
        return pd.DataFrame(rows, columns=["column", "modality", "image_type", "family", "feature"])

    def scale_radiomics(self, R: pd.DataFrame) -> pd.DataFrame:
        """Min-max scale radiomics with the ranges fitted on the training cases.

        The lens decodes (and reports errors in) these units: 0 and 1 are the smallest and
        largest training values; other cases may fall outside ``[0, 1]``.

        Parameters
        ----------
        R
            Cases x radiomic columns, the columns seen in :meth:`fit` (dropped constant
            columns may be present and are left out).

        Returns
        -------
        pandas.DataFrame
            Same index, the fitted columns (``columns_``), scaled.
        """
        self._check_fitted()
        R = as_radiomics(R, "R")
        return pd.DataFrame(self._scale_radiomics(R, "R"), index=R.index, columns=self.columns_)

    def _scale_radiomics(self, R: pd.DataFrame, what: str) -> np.ndarray:
        missing = [c for c in self.columns_ if c not in R.columns]
        known = set(self.columns_) | set(self.dropped_columns_)
        extra = [c for c in R.columns if c not in known]
        if missing or extra:
            raise ValueError(
                f"{what} columns differ from the fitted radiomic columns: "
                f"{len(missing)} missing (e.g. {missing[:5]}), {len(extra)} unexpected (e.g. {extra[:5]})"
            )
        values = R[self.columns_].to_numpy(dtype=np.float64)
        return (values - self.scaler_min_) / self.scaler_range_

    def _embedding(self, X: Any, what: str, r_index: pd.Index | None) -> tuple[np.ndarray, pd.Index | None]:
        values, index, columns = as_embedding(X, what)
        if values.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{what} has {values.shape[1]} embedding dims but the lens was fitted on "
                f"{self.n_features_in_}"
            )
        if columns is not None and self.feature_names_in_ is not None and columns != self.feature_names_in_:
            diff = [c for c in columns if c not in set(self.feature_names_in_)]
            raise ValueError(
                f"{what} embedding columns differ from those seen in fit (e.g. {diff[:5] or columns[:5]})"
            )
        if r_index is not None:
            values = align(values, index, r_index, what, "R")
            index = r_index
        return values, index

    def _projection(self, fold: int | None = None) -> _Projection:
        """The full projection (``fold=None``) or the one trained without part ``fold``."""
        if fold is None:
            return _Projection(self.weight_, self.bias_, self.x_mean_, self.x_scale_, self.activation)
        return _Projection(self.fold_weight_[fold], self.fold_bias_[fold], self.fold_x_mean_[fold],
                           self.fold_x_scale_[fold], self.activation)

    # -- stage 1 ----------------------------------------------------------------------------
    def fit(self, X_pre: Any, R: pd.DataFrame, *, validation: tuple[Any, pd.DataFrame] | None = None) -> RadiomicLens:
        """Train the shared projection on pre-fine-tuning embeddings (PAPER.md stage 1).

        With ``protocol="cross-fit"`` also trains one projection per part of the training
        cases, on the other parts (``n_folds + 1`` trainings in all).

        Parameters
        ----------
        X_pre
            Embeddings, cases x d (DataFrame indexed by case id, or array in R's case order).
        R
            Radiomics, cases x p, columns ``"{modality}__{pyradiomics key}"``.
        validation
            Optional ``(X_val, R_val)``; its reconstruction loss is recorded per epoch in
            ``history_["val_loss"]`` (used by :func:`penalty_sweep`).

        Returns
        -------
        self
        """
        self._check_params()
        R = as_radiomics(R, "R")
        X, x_index, x_columns = as_embedding(X_pre, "X_pre")
        X = align(X, x_index, R.index, "X_pre", "R")
        n, d = X.shape
        if n < 2:
            raise ValueError(f"need at least 2 training cases, got {n}")
        Rn = self._fit_scaling(R)
        self.n_features_in_ = d
        self.feature_names_in_ = x_columns
        self.n_train_ = n
        # case ids (as text) stage 1 saw, to know which projection never saw a compared case
        self.train_cases_ = [str(i) for i in R.index]
        h = self.default_hidden_dim(d, n) if self.hidden_dim is None else int(self.hidden_dim)
        self.hidden_dim_ = h
        self._warn_width(n, d, h)
        self.x_mean_, self.x_scale_ = self._standardisation(X)
        val = None
        if validation is not None:
            Xv_raw, Rv_raw = validation
            Rv_df = as_radiomics(Rv_raw, "R_val")
            Xv, xv_index, _ = as_embedding(Xv_raw, "X_val")
            Xv = align(Xv, xv_index, Rv_df.index, "X_val", "R_val")
            if Xv.shape[1] != d:
                raise ValueError(f"X_val has {Xv.shape[1]} embedding dims, X_pre has {d}")
            val = ((Xv - self.x_mean_) / self.x_scale_, self._scale_radiomics(Rv_df, "R_val"))
        mod_index = np.array([self.modalities_.index(m) for m in self.column_info_["modality"]])
        settings = self._stage1_settings()
        # Freeze: keep the projection; the temporary heads are discarded, as in the paper.
        stage1 = train_projection((X - self.x_mean_) / self.x_scale_, Rn, mod_index, settings, val)
        self.weight_, self.bias_, self.history_ = stage1.weight, stage1.bias, stage1.history
        self._fit_folds(X, Rn, mod_index, settings)
        return self

    def _fit_folds(self, X: np.ndarray, Rn: np.ndarray, mod_index: np.ndarray, settings: Stage1Settings) -> None:
        """The cross-fitted projections: part k's projection is trained on the other parts."""
        n, d = X.shape
        h = self.hidden_dim_
        K = int(self.n_folds) if self.protocol == "cross-fit" else 0
        if K > n:
            raise ValueError(f"n_folds={K} is more than the {n} training cases")
        order = np.random.default_rng([int(self.random_state), 3]).permutation(n)
        self.fold_of_case_ = np.empty(n if K else 0, dtype=np.int64)
        for k, part in enumerate(np.array_split(order, K) if K else []):
            self.fold_of_case_[part] = k
        shapes = {"fold_weight_": (K, h, d), "fold_bias_": (K, h), "fold_x_mean_": (K, d), "fold_x_scale_": (K, d)}
        for name, shape in shapes.items():
            setattr(self, name, np.zeros(shape))
        histories = []
        for k in range(K):
            other = self.fold_of_case_ != k
            mean, scale = self._standardisation(X[other])
            fold_settings = Stage1Settings(**{**vars(settings), "random_state": int(self.random_state) + 1 + k})
            stage1 = train_projection((X[other] - mean) / scale, Rn[other], mod_index, fold_settings)
            self.fold_weight_[k], self.fold_bias_[k] = stage1.weight, stage1.bias
            self.fold_x_mean_[k], self.fold_x_scale_[k] = mean, scale
            histories.append(stage1.history.assign(fold=k))
        columns = ["fold", "epoch", "train_loss"]
        self.fold_history_ = pd.concat(histories, ignore_index=True)[columns] if histories else pd.DataFrame(columns=columns)

    def _standardisation(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.standardize_inputs:
            return np.zeros(X.shape[1]), np.ones(X.shape[1])
        sd = X.std(axis=0)
        return X.mean(axis=0), np.where(sd > 0, sd, 1.0)

    def _stage1_settings(self) -> Stage1Settings:
        return Stage1Settings(
            hidden_dim=self.hidden_dim_, l1=self.l1, l2=self.l2, epochs=int(self.epochs), lr=self.lr,
            random_state=int(self.random_state), activation=self.activation, optimizer=self.optimizer,
            batch_size=int(self.batch_size), device=self.device, n_threads=self.n_threads,
            progress=bool(self.progress),
        )

    def _fit_scaling(self, R: pd.DataFrame) -> np.ndarray:
        """Learn the columns, their modalities and the min-max scaling; return scaled R."""
        info = self._parse_columns([str(c) for c in R.columns])
        values = R.to_numpy(dtype=np.float64)
        lo, hi = values.min(axis=0), values.max(axis=0)
        constant = [c for c, a, b in zip(info["column"], lo, hi) if not b > a]
        keep = np.array([b > a for a, b in zip(lo, hi)])
        if constant:
            if not self.drop_constant:
                raise ValueError(
                    f"radiomic column(s) constant on the training cases cannot be min-max scaled: "
                    f"{constant[:10]}{' ...' if len(constant) > 10 else ''} ({len(constant)} in all); "
                    "drop them, or pass RadiomicLens(drop_constant=True) to drop them with a warning"
                )
            warnings.warn(f"dropping {len(constant)} constant radiomic column(s): {constant[:10]}", stacklevel=3)
        if not keep.any():
            raise ValueError("every radiomic column is constant on the training cases")
        info = info[keep].reset_index(drop=True)
        self.dropped_columns_ = constant
        self.columns_ = info["column"].tolist()
        self.column_info_ = info
        self.modalities_ = list(dict.fromkeys(info["modality"]))
        self.scaler_min_ = lo[keep]
        self.scaler_range_ = hi[keep] - lo[keep]
        return (values[:, keep] - self.scaler_min_) / self.scaler_range_

    @staticmethod
    def _warn_width(n: int, d: int, h: int) -> None:
        if h >= n:
            warnings.warn(
                f"fewer training cases ({n}) than hidden units ({h}): the least-squares decoder is "
                "underdetermined; compare() will use a cross-validated ridge decoder instead",
                stacklevel=3,
            )
        if h >= d:
            warnings.warn(
                f"hidden_dim={h} >= embedding width {d}: the paper's OLS importance is unreliable "
                "here (use decoder='ridge' or rank by delta_r2)",
                stacklevel=3,
            )

    # -- projection -------------------------------------------------------------------------
    def transform(self, X: Any) -> pd.DataFrame | np.ndarray:
        """Project embeddings into the frozen hidden space of the projection trained on every
        training case (the paper's; the cross-fitted ones are used inside :meth:`compare`).

        Returns a cases x hidden_dim DataFrame (columns ``z_000..``, X's index) when given a
        DataFrame, else an array.
        """
        self._check_fitted()
        values, index = self._embedding(X, "X", None)
        Z = self._projection()(values)
        if isinstance(X, pd.DataFrame):
            return pd.DataFrame(Z, index=X.index, columns=[f"z_{j:03d}" for j in range(Z.shape[1])])
        return Z

    # -- stage 2 ----------------------------------------------------------------------------
    def compare(
        self,
        X_pre: Any,
        X_ft: Any,
        R: pd.DataFrame,
        test: tuple[Any, Any, pd.DataFrame] | None = None,
        *,
        n_bootstrap: int = 0,
        n_permutations: int = 0,
        scale: str | None = None,
        ci: float = 0.95,
        p_adjust: str = "fdr_bh",
        permutation_stat: str = "combined",
    ) -> LensReport:
        """Decode radiomics from pre- and post-fine-tuning embeddings and measure the shift.

        Parameters
        ----------
        X_pre, X_ft
            Embeddings of the same cases by the pre-trained and the fine-tuned encoder.
        R
            Radiomics of those cases (the decoders are fitted on them). Under
            ``protocol="cross-fit"`` they must all be training cases of :meth:`fit` (each is
            read through the projection that did not see it), or all cases it never saw.
        test
            Optional ``(X_pre_test, X_ft_test, R_test)``: scores, ``r2_*``, Wilcoxon tests and
            the decoded tables are computed on these cases. Without it, on exact leave-one-out
            predictions of the decoder cases.
        n_bootstrap
            Case-resampled intervals (level ``ci``) for ``I_pre, I_ft, delta_I`` and
            ``delta_r2``. Each resample draws every part's decoder cases with replacement
            (within the part), refits both encoders' decoders on it (projections, penalties and
            truncation kept) and, with test cases, draws the test cases too; without test cases
            ``delta_r2`` is scored on each refit's out-of-bag cases. An interval is the
            bootstrap's spread of the error reflected onto the estimate,
            ``[est - (q_hi - c), est - (q_lo - c)]``, where ``c`` is the quantity's value in the
            bootstrap world: the plain (not debiased) importance for ``I`` and ``delta_I`` (for
            the paper's and the standardised scale that is the estimate itself: the basic
            bootstrap interval), the median of the resampled ``delta_r2`` for ``delta_r2``
            (a resampled decoder, fitted on fewer distinct cases, overfits more; only the spread
            carries over). Intervals of ``I`` are clipped at 0.
        n_permutations
            Paired permutation test of "this feature's encoding changed": for each permutation
            the pre/ft embeddings of every case (decoder and test cases) are swapped with
            probability 1/2, every decoder refitted, and the statistic recomputed. ``p_value =
            (1 + #{perm >= obs}) / (1 + n_permutations)``; ``p_adjusted`` by ``p_adjust`` over
            the tested features. The smallest attainable p-value is ``1 / (1 + n_permutations)``.
            Bootstrap and permutations draw from separate random streams.
        scale
            Units of the importance (:mod:`radiolens.lens.decoders`): ``"paper"`` (raw ``Z``),
            ``"standardized"`` or ``"whitened"`` (debiased; invariant to any linear change of
            the hidden units). ``None``: ``"whitened"`` under ``protocol="cross-fit"``; under
            ``protocol="paper"`` the paper's ``"paper"`` (``"standardized"`` for ridge, whose
            penalty is defined on standardised ``Z``).
        ci
            Confidence level of bootstrap intervals.
        p_adjust
            ``"fdr_bh"`` (default) or ``"holm"``.
        permutation_stat
            ``"delta_r2"`` (default): ``|r2_ft - r2_pre|`` on the evaluation cases, specific to
            each feature. ``"delta_I"``: ``|I_ft - I_pre|``.

        Returns
        -------
        LensReport
            ``params["protocol"]`` and ``diagnostics["protocol"]`` say which protocol produced
            it (``"cross-fit"``, ``"paper"`` or ``"held-out"``). A feature constant on the
            evaluation cases has NaN ``r2_*``, ``delta_r2`` and ``p_value`` and is listed in
            ``diagnostics["not_evaluable"]``.
        """
        self._check_fitted()
        scale = self._check_compare_args(scale, ci, permutation_stat, p_adjust)
        R = as_radiomics(R, "R")
        Rn = self._scale_radiomics(R, "R")
        Xp, Xf = self._pair(X_pre, X_ft, R.index, "")
        protocol, groups = self._decoder_plan(R.index)
        if test is not None:
            if len(test) != 3:
                raise ValueError("test must be a tuple (X_pre_test, X_ft_test, R_test)")
            Rt = as_radiomics(test[2], "R_test")
            Y_eval, eval_index = self._scale_radiomics(Rt, "R_test"), Rt.index
            Xpt, Xft = self._pair(test[0], test[1], Rt.index, "_test")
        else:
            Y_eval, eval_index, Xpt, Xft = Rn, R.index, None, None
        match = self.protocol == "cross-fit" if self.match_ft_moments is None else bool(self.match_ft_moments)
        if match:
            scale_f, shift_f = moment_map(Xf, Xp)
            Xf = Xf * scale_f + shift_f
            Xft = None if Xft is None else Xft * scale_f + shift_f
        diag_warnings: list[str] = []
        folds = []
        for projection, positions in groups:
            dec_p, dec_f, fold_warnings = self._fit_decoders(projection(Xp[positions]), projection(Xf[positions]),
                                                             Rn[positions], scale, loo=test is None)
            diag_warnings += [w for w in fold_warnings if w not in diag_warnings]
            folds.append(Fold(dec_p.Z, dec_f.Z, Rn[positions], positions, dec_p.decoder, dec_f.decoder,
                              None if Xpt is None else projection(Xpt), None if Xft is None else projection(Xft)))
        n, h = len(R), self.hidden_dim_
        diag_warnings += self._regime_warnings(min(len(f.Y) for f in folds), h, scale, folds, protocol)
        for msg in diag_warnings:
            warnings.warn(msg, stacklevel=2)

        decs_p, decs_f = [f.dec_p for f in folds], [f.dec_f for f in folds]
        if test is not None:
            pred_p, pred_f = test_predictions(folds, decs_p, decs_f)
        else:
            pred_p, pred_f = loo_predictions(folds, decs_p, decs_f, n, Rn.shape[1])
        min_tss = _MIN_TSS_PER_CASE * len(Y_eval)
        imp = self._importance(decs_p, decs_f, r2_per_feature(Y_eval, pred_p, min_tss),
                               r2_per_feature(Y_eval, pred_f, min_tss))
        mapper = self._mapper()
        seed = int(self.random_state)
        if n_bootstrap:
            reps = bootstrap_replicates(folds, Y_eval, test is not None, int(n_bootstrap),
                                        np.random.default_rng([seed, 1]), mapper, min_tss)
            add_intervals(imp, reps, decs_p, decs_f, ci)
        if n_permutations:
            p = permutation_pvalues(folds, Y_eval, test is not None, permutation_stat, int(n_permutations),
                                    np.random.default_rng([seed, 2]), mapper, min_tss)
            imp["p_value"] = p
            imp["p_adjusted"] = adjust_pvalues(p, p_adjust)

        cols = self.columns_
        not_evaluable = imp.loc[imp["r2_pre"].isna() | imp["r2_ft"].isna(), "column"].tolist()
        diagnostics = self._diagnostics(protocol, folds, n, len(eval_index), test is not None, scale,
                                        not_evaluable, n_bootstrap, n_permutations, diag_warnings, match,
                                        overlap=float(np.mean([str(i) in set(self.train_cases_) for i in R.index]))
                                        if protocol == "paper" else 0.0)
        params = self._plain_params()
        params.update({"scale": scale, "ci": ci, "p_adjust": p_adjust, "permutation_stat": permutation_stat,
                       "n_bootstrap": int(n_bootstrap), "n_permutations": int(n_permutations),
                       "has_test": test is not None, "protocol_used": protocol})
        table_p, table_f = decoder_tables(folds, self.columns_, self.hidden_dim_)
        return LensReport(
            importance=imp,
            scores=score_table(self.column_info_, Y_eval, pred_p, pred_f, imp["r2_pre"].to_numpy(),
                               imp["r2_ft"].to_numpy()),
            tests=wilcoxon_table(self.column_info_, self.modalities_, Y_eval, pred_p, pred_f),
            observed=pd.DataFrame(Y_eval, index=eval_index, columns=cols),
            decoded_pre=pd.DataFrame(pred_p, index=eval_index, columns=cols),
            decoded_ft=pd.DataFrame(pred_f, index=eval_index, columns=cols),
            diagnostics=diagnostics, params=params, decoder_pre=table_p, decoder_ft=table_f,
        )

    def _check_compare_args(self, scale: str | None, ci: float, permutation_stat: str, p_adjust: str) -> str:
        if scale is None:
            if self.protocol == "cross-fit":
                scale = "whitened"
            else:
                scale = "standardized" if self.decoder == "ridge" else "paper"
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES} or None, got {scale!r}")
        if not 0 < ci < 1:
            raise ValueError(f"ci must be in (0, 1), got {ci}")
        if permutation_stat not in PERMUTATION_STATS:
            raise ValueError(f"permutation_stat must be one of {PERMUTATION_STATS}, got {permutation_stat!r}")
        if p_adjust not in ("fdr_bh", "holm"):
            raise ValueError(f"p_adjust must be 'fdr_bh' or 'holm', got {p_adjust!r}")
        return scale

    def _decoder_plan(self, index: pd.Index) -> tuple[str, list[tuple[_Projection, np.ndarray]]]:
        """``(protocol used, [(projection, rows of R it decodes)])``."""
        fold_of = dict(zip(self.train_cases_, self.fold_of_case_)) if len(self.fold_of_case_) else {}
        seen = np.array([str(i) in set(self.train_cases_) for i in index])
        if not seen.any():
            return "held-out", [(self._projection(), np.arange(len(index)))]
        if self.protocol == "paper":
            return "paper", [(self._projection(), np.arange(len(index)))]
        if not seen.all():
            unseen = [str(i) for i, s in zip(index, seen) if not s]
            raise ValueError(
                f"R mixes {int(seen.sum())} training cases of fit() with {len(unseen)} it never saw "
                f"(e.g. {unseen[:5]}); under protocol='cross-fit' pass either fit()'s training cases "
                "(each is decoded through the projection that did not see it) or only new cases"
            )
        folds = np.array([fold_of[str(i)] for i in index])
        groups = [(self._projection(k), np.flatnonzero(folds == k)) for k in range(int(self.n_folds))]
        return "cross-fit", [(proj, rows) for proj, rows in groups if len(rows)]

    def _fit_decoders(self, Zp, Zf, Y, scale: str, loo: bool):
        """Both encoders' decoders on one fold's cases, and the warnings their fits raise."""
        n, h = Zp.shape
        messages: list[str] = []
        force_ridge = self.decoder == "ols" and n <= h + 1
        if force_ridge:
            messages.append(
                f"fewer decoder cases ({n}) than hidden units + 1 ({h + 1}): least squares is "
                "underdetermined, using the cross-validated ridge decoder instead"
            )
        alphas = tuple(self.ridge_alphas) if self.ridge_alphas is not None else DEFAULT_RIDGE_ALPHAS
        kw = dict(decoder=self.decoder, scale=scale, ridge_alphas=alphas, max_condition=self.max_condition,
                  force_ridge=force_ridge, fit_intercept=bool(self.fit_intercept), loo=loo)
        fitted = []
        for encoder, Z in (("pre", Zp), ("ft", Zf)):
            dec = choose_decoder(Z, Y, **kw)
            if dec.method == "ols+ridge_fallback":
                messages.append(
                    f"{encoder}: Z is ill-conditioned (condition number {dec.condition_number:.3g} > "
                    f"{self.max_condition:.3g}); least squares used a ridge fallback alpha={dec.alpha:.3g}"
                )
            if dec.alpha_at_edge:
                messages.append(f"{encoder}: ridge alpha {dec.alpha:.3g} is at the edge of the search grid")
            spread = Z.std(axis=0)
            tiny = int(np.sum((spread > 0) & (spread < MIN_UNIT_SPREAD * spread.max())))
            if tiny and scale == "paper":
                messages.append(
                    f"{encoder}: {tiny} hidden unit(s) barely vary over these cases (spread below "
                    f"{MIN_UNIT_SPREAD:g} of the largest): the decoder weights them with huge "
                    "coefficients, which inflates the paper's importance I; compare with "
                    "scale='whitened' or rank by delta_r2"
                )
            fitted.append(_Fitted(Z, dec, tiny))
        return fitted[0], fitted[1], messages

    def _regime_warnings(self, n: int, h: int, scale: str, folds, protocol: str) -> list[str]:
        """Warnings for the regimes where the planted-truth simulation found I unreliable."""
        out = []
        d = self.n_features_in_
        cases_per_unit = n / h
        ols = all(f.dec_p.method.startswith("ols") for f in folds)
        if ols and scale == "paper" and (h >= d or cases_per_unit < _MIN_CASES_PER_UNIT):
            out.append(
                f"the paper's OLS importance is in its unreliable regime here (hidden_dim={h}, "
                f"embedding width {d}, {cases_per_unit:.1f} decoder cases per hidden unit; reliable "
                f"needs hidden_dim < d and >= {_MIN_CASES_PER_UNIT:.0f}): in a planted-truth simulation "
                "it ranked features backwards when hidden_dim >= d; prefer ranking by delta_r2 or "
                "scale='whitened'"
            )
        if protocol == "paper":
            out.append(
                "protocol 'paper': the decoders are fitted on the cases stage 1 was trained on, which "
                "favours the pre-trained encoder (features neither encoder carries tend to look lost by "
                "delta_I and gained by delta_r2) and makes intervals and p-values too optimistic; "
                "protocol='cross-fit' avoids it"
            )
        if protocol == "paper" and h >= d and self.decoder == "ridge":
            out.append(
                f"the decoder cases trained stage 1 and hidden_dim={h} >= embedding width {d}: "
                "in the planted-truth simulation delta_I (OLS and ridge) ranked features backwards "
                "in this regime; rank by delta_r2, or use protocol='cross-fit'"
            )
        return out

    def _importance(self, decs_p: Sequence[Decoder], decs_f: Sequence[Decoder], r2_pre, r2_ft) -> pd.DataFrame:
        I_pre, _ = combined_importance(decs_p)
        I_ft, _ = combined_importance(decs_f)
        imp = self.column_info_.copy()
        imp["I_pre"] = I_pre
        imp["I_ft"] = I_ft
        imp["delta_I"] = I_ft - I_pre
        with np.errstate(divide="ignore", invalid="ignore"):
            imp["rel_delta_I"] = np.where(I_pre > 0, (I_ft - I_pre) / np.where(I_pre > 0, I_pre, 1.0), np.nan)
        imp["r2_pre"] = r2_pre
        imp["r2_ft"] = r2_ft
        imp["delta_r2"] = r2_ft - r2_pre
        return imp

    def _diagnostics(self, protocol, folds, n, n_eval, has_test, scale, not_evaluable, n_bootstrap,
                     n_permutations, diag_warnings, match, overlap) -> dict:
        h = self.hidden_dim_
        decoder_cases = [len(f.Y) for f in folds]

        def worst(values):
            return float(max(values))

        return {
            "protocol": protocol,
            "n_folds": len(folds),
            "evaluation": "test" if has_test else "leave-one-out",
            "n_train_cases": int(n),
            "decoder_cases_per_fold": decoder_cases,
            "n_eval_cases": int(n_eval),
            "hidden_dim": int(h),
            "embedding_dim": int(self.n_features_in_),
            "cases_per_hidden_unit": float(min(decoder_cases) / h),
            "decoder": self.decoder,
            "fit_intercept": bool(self.fit_intercept),
            "match_ft_moments": bool(match),
            "scale": scale,
            "condition_number_pre": worst(f.dec_p.condition_number for f in folds),
            "condition_number_ft": worst(f.dec_f.condition_number for f in folds),
            "decoder_used_pre": "/".join(sorted({f.dec_p.method for f in folds})),
            "decoder_used_ft": "/".join(sorted({f.dec_f.method for f in folds})),
            "ridge_alpha_pre": worst(f.dec_p.alpha for f in folds),
            "ridge_alpha_ft": worst(f.dec_f.alpha for f in folds),
            "fallback_used": any(dec.method != self.decoder for f in folds for dec in (f.dec_p, f.dec_f)),
            "constant_units_pre": int(max(f.dec_p.n_constant_units for f in folds)),
            "constant_units_ft": int(max(f.dec_f.n_constant_units for f in folds)),
            "near_constant_units_pre": int(max(_near_constant(f.Zp) for f in folds)),
            "near_constant_units_ft": int(max(_near_constant(f.Zf) for f in folds)),
            # share of the decoder cases that the projection decoding them was trained on
            "stage1_case_overlap": overlap,
            "n_not_evaluable": len(not_evaluable),
            "not_evaluable": not_evaluable,
            "n_bootstrap": int(n_bootstrap),
            "n_permutations": int(n_permutations),
            "warnings": list(diag_warnings),
        }

    def _pair(self, X_pre: Any, X_ft: Any, r_index: pd.Index, suffix: str) -> tuple[np.ndarray, np.ndarray]:
        a, _, _ = as_embedding(X_pre, f"X_pre{suffix}")
        b, _, _ = as_embedding(X_ft, f"X_ft{suffix}")
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"X_pre{suffix} and X_ft{suffix} have different widths ({a.shape[1]} vs {b.shape[1]}); "
                "both must come from the same encoder architecture"
            )
        Xp, _ = self._embedding(X_pre, f"X_pre{suffix}", r_index)
        Xf, _ = self._embedding(X_ft, f"X_ft{suffix}", r_index)
        return Xp, Xf

    def _mapper(self):
        def mapper(fn, items, desc):
            return parallel_map(fn, items, n_threads=self.n_threads, progress=bool(self.progress), desc=desc)

        return mapper

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save the fitted lens to a folder: ``params.json`` (parameters + fitted metadata) and
        ``state.pt`` (a torch state dict of float64 tensors, loadable with ``weights_only=True``).
        Writes are atomic."""
        self._check_fitted()
        return save_lens(self, path)

    @classmethod
    def load(cls, path: str | Path) -> RadiomicLens:
        """Load a lens saved by :meth:`save` (no pickle: JSON + tensors with ``weights_only``).

        A lens saved before cross-fitting existed (format 1) loads with ``protocol="paper"``,
        the protocol it was fitted for."""
        return load_lens(cls, path)


@dataclass
class _Fitted:
    Z: np.ndarray
    decoder: Decoder
    near_constant: int


def moment_map(X: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` per dimension taking ``X`` to the mean and standard deviation
    ``reference`` has over the same cases: ``X * scale + shift``."""
    sd = X.std(axis=0)
    scale = reference.std(axis=0) / np.where(sd > 0, sd, 1.0)
    return scale, reference.mean(axis=0) - X.mean(axis=0) * scale


def _near_constant(Z: np.ndarray) -> int:
    spread = Z.std(axis=0)
    return int(np.sum((spread > 0) & (spread < MIN_UNIT_SPREAD * spread.max()))) if spread.size else 0
