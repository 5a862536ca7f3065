"""The radiomic lens as a scikit-learn estimator: :class:`RadiomicLens`."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from radiolens.cache import atomic_write_bytes, atomic_write_text
from radiolens.lens._validation import align, as_embedding, as_radiomics, torch_module
from radiolens.lens.decoders import DEFAULT_RIDGE_ALPHAS, MIN_UNIT_SPREAD, Decoder, fit_decoder, r2_per_feature
from radiolens.lens.inference import (
    bootstrap_intervals,
    parallel_map,
    permutation_pvalues,
    score_table,
    wilcoxon_table,
)
from radiolens.lens.projection import ACTIVATIONS, OPTIMIZERS, Stage1Settings, project, train_projection
from radiolens.lens.report import LensReport
from radiolens.naming import MODALITIES, parse_column

_SCALES = ("paper", "standardized")
_DECODERS = ("ols", "ridge")

# Heuristics for the unreliable regime of the paper's OLS importance (see the package docstring).
_MIN_CASES_PER_UNIT = 10.0


class RadiomicLens(BaseEstimator):
    """The paper's radiomic lens as a scikit-learn style estimator.

    Parameters
    ----------
    hidden_dim
        Width of the shared hidden space. ``None``: ``min(256, d // 2, n_train // 10)``, at
        least 1 — below the embedding width ``d`` and with >= 10 training cases per hidden
        unit, where the paper's OLS importance is reliable (see :mod:`radiolens.lens.simulation`).
    l1, l2
        Elastic penalty weights on all weights of the projection and heads (paper: 1e-6, 1e-5).
    epochs, lr
        Training length and learning rate of stage 1 (paper: 200, 1e-3).
    random_state
        Seed for initialisation, batch order, bootstrap and permutations.
    decoder
        ``"ols"`` (the paper's closed-form least squares, default) or ``"ridge"`` (penalty per
        stage chosen by exact leave-one-out cross-validation on standardised ``Z``).
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
        Condition number of centred ``Z`` above which the OLS decoder falls back to the
        smallest ridge bounding it (reported in the diagnostics).
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
    hidden_dim_, n_features_in_, feature_names_in_, n_train_
    weight_, bias_ : ndarray
        The frozen projection ``Z = act(((X - x_mean_) / x_scale_) @ weight_.T + bias_)``.
    history_ : DataFrame
        ``epoch, train_loss`` (+ ``val_loss`` when validation data was given); reconstruction
        term only.
    """

    def __init__(
        self,
        hidden_dim: int | None = None,
        l1: float = 1e-6,
        l2: float = 1e-5,
        epochs: int = 200,
        lr: float = 1e-3,
        random_state: int = 0,
        decoder: str = "ols",
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
        self.hidden_dim = hidden_dim
        self.l1 = l1
        self.l2 = l2
        self.epochs = epochs
        self.lr = lr
        self.random_state = random_state
        self.decoder = decoder
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

    def _project(self, X: np.ndarray) -> np.ndarray:
        """The frozen projection in float64 (exact and reproducible)."""
        return project((X - self.x_mean_) / self.x_scale_, self.weight_, self.bias_, self.activation)

    # -- stage 1 ----------------------------------------------------------------------------
    def fit(self, X_pre: Any, R: pd.DataFrame, *, validation: tuple[Any, pd.DataFrame] | None = None) -> RadiomicLens:
        """Train the shared projection on pre-fine-tuning embeddings (PAPER.md stage 1).

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
        # case ids (as text) stage 1 saw, to report when compare() reuses them
        self.train_cases_ = [str(i) for i in R.index]
        if self.standardize_inputs:
            self.x_mean_ = X.mean(axis=0)
            sd = X.std(axis=0)
            self.x_scale_ = np.where(sd > 0, sd, 1.0)
        else:
            self.x_mean_ = np.zeros(d)
            self.x_scale_ = np.ones(d)
        h = self.default_hidden_dim(d, n) if self.hidden_dim is None else int(self.hidden_dim)
        self.hidden_dim_ = h
        self._warn_width(n, d, h)
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
        # Freeze: keep the projection; the temporary heads are discarded, as in the paper.
        self.weight_, self.bias_, self.history_ = train_projection(
            (X - self.x_mean_) / self.x_scale_, Rn, mod_index, self._stage1_settings(), val
        )
        return self

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
        """Project embeddings into the frozen hidden space.

        Returns a cases x hidden_dim DataFrame (columns ``z_000..``, X's index) when given a
        DataFrame, else an array.
        """
        self._check_fitted()
        values, index = self._embedding(X, "X", None)
        Z = self._project(values)
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
        permutation_stat: str = "delta_r2",
    ) -> LensReport:
        """Decode radiomics from pre- and post-fine-tuning embeddings and measure the shift.

        Parameters
        ----------
        X_pre, X_ft
            Embeddings of the same cases by the pre-trained and the fine-tuned encoder.
        R
            Radiomics of those cases (the decoders are fitted on them).
        test
            Optional ``(X_pre_test, X_ft_test, R_test)``: scores, ``r2_*``, Wilcoxon tests and
            the decoded tables are computed on these cases. Without it, on exact leave-one-out
            predictions of the training cases.
        n_bootstrap
            Case-resampled intervals (level ``ci``) for ``I_pre, I_ft, delta_I`` (decoders
            refitted on resampled training cases, pre and ft on the same resample; penalties and
            fallback kept) and ``delta_r2`` (evaluation cases resampled with the predictions
            fixed). They are *basic* (reverse-percentile) intervals ``[2 est - q_hi, 2 est -
            q_lo]``: a decoder refitted on a resample with repeated cases fits noise more, so the
            bootstrap distribution of a norm sits above the estimate and plain percentiles
            would be biased upwards. Intervals of ``I`` are clipped at 0.
        n_permutations
            Paired permutation test of "this feature's encoding changed": for each permutation
            the pre/ft embeddings of every case (training and test) are swapped with probability
            1/2, both decoders refitted, and the statistic recomputed. ``p_value = (1 + #{perm >=
            obs}) / (1 + n_permutations)``; ``p_adjusted`` by ``p_adjust`` over features. The
            smallest attainable p-value is ``1 / (1 + n_permutations)``.
        scale
            Units of the importance. ``"paper"``: rows of the decoder on raw ``Z`` (the paper's;
            it shrinks if ``Z_ft`` is globally larger). ``"standardized"``: on ``Z`` standardised
            per stage (scale-aware: a global rescaling of ``Z_ft`` leaves it unchanged).
            ``None`` (default): ``"paper"`` for the OLS decoder, ``"standardized"`` for ridge
            (whose penalty is defined on standardised ``Z``).
        ci
            Confidence level of bootstrap intervals.
        p_adjust
            ``"fdr_bh"`` (default) or ``"holm"``.
        permutation_stat
            ``"delta_r2"`` (default): ``|r2_ft - r2_pre|`` on the evaluation cases, specific to
            each feature. ``"delta_I"``: ``|I_ft - I_pre|``; note that a global change of the
            spectrum of ``Z`` shifts the norms of *every* row (also of features encoded by
            neither), so this tests "the decoder changed" more than "the encoding changed".

        Returns
        -------
        LensReport

        Notes
        -----
        Fitting the decoders on the cases stage 1 was trained on (as the paper does) favours
        the pre-trained stage a little: the projection has learned those cases' radiomics,
        noise included. Features encoded by neither encoder then get a larger pre decoder
        row (``delta_I < 0``: they look lost) and, because that row fits training noise, a
        worse held-out pre R^2 (``delta_r2 > 0``: they look gained). The planted-truth
        simulation shows this most for the OLS decoder; ridge shrinks it. Comparing on cases
        not used in :meth:`fit` (e.g. the validation split) removes the bias.
        """
        self._check_fitted()
        scale = self._check_compare_args(scale, ci, permutation_stat)
        rng = np.random.default_rng(int(self.random_state))
        R = as_radiomics(R, "R")
        Rn = self._scale_radiomics(R, "R")
        Zp, Zf = self._pair(X_pre, X_ft, R.index, "")
        n, h = Zp.shape
        seen = set(self.train_cases_)
        overlap = float(np.mean([str(i) in seen for i in R.index]))
        dec_p, dec_f, force_ridge, diag_warnings = self._fit_decoders(Zp, Zf, Rn, scale, loo=test is None)
        diag_warnings += self._regime_warnings(n, h, scale, force_ridge, overlap)

        if test is not None:  # evaluation cases: test, else exact leave-one-out predictions
            if len(test) != 3:
                raise ValueError("test must be a tuple (X_pre_test, X_ft_test, R_test)")
            Xpt, Xft, Rt = test
            Rt = as_radiomics(Rt, "R_test")
            Yt = self._scale_radiomics(Rt, "R_test")
            Zpt, Zft = self._pair(Xpt, Xft, Rt.index, "_test")
            eval_index = Rt.index
            pred_p, pred_f = dec_p.predict(Zpt), dec_f.predict(Zft)
        else:
            Yt, eval_index = Rn, R.index
            pred_p, pred_f = dec_p.loo_pred, dec_f.loo_pred

        imp = self._importance(dec_p, dec_f, r2_per_feature(Yt, pred_p), r2_per_feature(Yt, pred_f))
        mapper = self._mapper()
        if n_bootstrap:
            bootstrap_intervals(imp, Zp, Zf, Rn, dec_p, dec_f, scale, Yt, pred_p, pred_f, int(n_bootstrap), ci,
                                rng, mapper)
        if n_permutations:
            test_z = (Zpt, Zft, Yt) if test is not None else None
            permutation_pvalues(imp, Zp, Zf, Rn, dec_p, dec_f, scale, int(n_permutations), permutation_stat,
                                p_adjust, rng, test_z, mapper)

        cols = self.columns_
        diagnostics = {
            "evaluation": "test" if test is not None else "leave-one-out",
            "n_train_cases": int(n),
            "n_eval_cases": int(len(eval_index)),
            "hidden_dim": int(h),
            "embedding_dim": int(self.n_features_in_),
            "cases_per_hidden_unit": float(n / h),
            "decoder": self.decoder,
            "scale": scale,
            "condition_number_pre": float(dec_p.condition_number),
            "condition_number_ft": float(dec_f.condition_number),
            "decoder_used_pre": dec_p.method,
            "decoder_used_ft": dec_f.method,
            "ridge_alpha_pre": float(dec_p.alpha),
            "ridge_alpha_ft": float(dec_f.alpha),
            "fallback_used": bool(force_ridge or "fallback" in dec_p.method or "fallback" in dec_f.method),
            "constant_units_pre": dec_p.n_constant_units,
            "constant_units_ft": dec_f.n_constant_units,
            "stage1_case_overlap": overlap,
            "n_bootstrap": int(n_bootstrap),
            "n_permutations": int(n_permutations),
            "warnings": diag_warnings,
        }
        params = self._plain_params()
        params.update({"scale": scale, "ci": ci, "p_adjust": p_adjust, "permutation_stat": permutation_stat,
                       "n_bootstrap": int(n_bootstrap), "n_permutations": int(n_permutations),
                       "has_test": test is not None})
        units = pd.RangeIndex(h, name="hidden_unit")
        return LensReport(
            importance=imp,
            scores=score_table(self.column_info_, Yt, pred_p, pred_f, imp["r2_pre"].to_numpy(),
                               imp["r2_ft"].to_numpy()),
            tests=wilcoxon_table(self.column_info_, self.modalities_, Yt, pred_p, pred_f),
            observed=pd.DataFrame(Yt, index=eval_index, columns=cols),
            decoded_pre=pd.DataFrame(pred_p, index=eval_index, columns=cols),
            decoded_ft=pd.DataFrame(pred_f, index=eval_index, columns=cols),
            diagnostics=diagnostics, params=params,
            decoder_pre=pd.DataFrame(dec_p.coef_scaled, index=units, columns=cols),
            decoder_ft=pd.DataFrame(dec_f.coef_scaled, index=units, columns=cols),
        )

    def _check_compare_args(self, scale: str | None, ci: float, permutation_stat: str) -> str:
        if scale is None:
            scale = "standardized" if self.decoder == "ridge" else "paper"
        if scale not in _SCALES:
            raise ValueError(f"scale must be one of {_SCALES} or None, got {scale!r}")
        if not 0 < ci < 1:
            raise ValueError(f"ci must be in (0, 1), got {ci}")
        if permutation_stat not in ("delta_r2", "delta_I"):
            raise ValueError(f"permutation_stat must be 'delta_r2' or 'delta_I', got {permutation_stat!r}")
        return scale

    def _fit_decoders(self, Zp, Zf, Rn, scale: str, loo: bool) -> tuple[Decoder, Decoder, bool, list[str]]:
        """Both stages' decoders, and the warnings their fits raise."""
        n, h = Zp.shape
        diag_warnings: list[str] = []
        force_ridge = self.decoder == "ols" and n <= h + 1
        if force_ridge:
            msg = (
                f"fewer training cases ({n}) than hidden units + 1 ({h + 1}): least squares is "
                "underdetermined, using the cross-validated ridge decoder instead"
            )
            warnings.warn(msg, stacklevel=3)
            diag_warnings.append(msg)
        alphas = tuple(self.ridge_alphas) if self.ridge_alphas is not None else DEFAULT_RIDGE_ALPHAS
        kw = dict(decoder=self.decoder, scale=scale, ridge_alphas=alphas, max_condition=self.max_condition,
                  force_ridge=force_ridge, loo=loo)
        dec_p = fit_decoder(Zp, Rn, **kw)
        dec_f = fit_decoder(Zf, Rn, **kw)
        for stage, dec in (("pre", dec_p), ("ft", dec_f)):
            if dec.method == "ols+ridge_fallback":
                diag_warnings.append(
                    f"{stage}: Z is ill-conditioned (condition number {dec.condition_number:.3g} > "
                    f"{self.max_condition:.3g}); least squares used a ridge fallback alpha={dec.alpha:.3g}"
                )
            if dec.alpha_at_edge:
                diag_warnings.append(f"{stage}: ridge alpha {dec.alpha:.3g} is at the edge of the search grid")
        for stage, Z in (("pre", Zp), ("ft", Zf)):
            spread = Z.std(axis=0)
            tiny = int(np.sum((spread > 0) & (spread < MIN_UNIT_SPREAD * spread.max())))
            if tiny:
                msg = (
                    f"{stage}: {tiny} hidden unit(s) barely vary over these cases (spread below "
                    f"{MIN_UNIT_SPREAD:g} of the largest): the decoder weights them with huge "
                    "coefficients, which inflates the paper's importance I; compare with "
                    "scale='standardized' or rank by delta_r2"
                )
                warnings.warn(msg, stacklevel=3)
                diag_warnings.append(msg)
        return dec_p, dec_f, force_ridge, diag_warnings

    def _regime_warnings(self, n: int, h: int, scale: str, force_ridge: bool, overlap: float) -> list[str]:
        """Warnings for the regimes where the planted-truth simulation found I unreliable."""
        out = []
        d = self.n_features_in_
        cases_per_unit = n / h
        if (self.decoder == "ols" and not force_ridge and scale == "paper"
                and (h >= d or cases_per_unit < _MIN_CASES_PER_UNIT)):
            out.append(
                f"the paper's OLS importance is in its unreliable regime here (hidden_dim={h}, "
                f"embedding width {d}, {cases_per_unit:.1f} training cases per hidden unit; reliable "
                f"needs hidden_dim < d and >= {_MIN_CASES_PER_UNIT:.0f}): in a planted-truth simulation "
                "it ranked features backwards when hidden_dim >= d; prefer ranking by delta_r2 or "
                "decoder='ridge'"
            )
        if overlap > 0.5 and h >= d and self.decoder == "ridge":
            out.append(
                f"{overlap:.0%} of these cases trained stage 1 and hidden_dim={h} >= embedding width {d}: "
                "in the planted-truth simulation delta_I (OLS and ridge) ranked features backwards "
                "in this regime; rank by delta_r2, or fit the decoders on cases not used in fit()"
            )
        for msg in out:
            warnings.warn(msg, stacklevel=3)
        return out

    def _importance(self, dec_p: Decoder, dec_f: Decoder, r2_pre: np.ndarray, r2_ft: np.ndarray) -> pd.DataFrame:
        I_pre = np.sqrt(np.einsum("hp,hp->p", dec_p.coef_scaled, dec_p.coef_scaled))
        I_ft = np.sqrt(np.einsum("hp,hp->p", dec_f.coef_scaled, dec_f.coef_scaled))
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
        return self._project(Xp), self._project(Xf)

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
        torch = torch_module()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {
            name: torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.float64))
            for name in ("weight_", "bias_", "x_mean_", "x_scale_", "scaler_min_", "scaler_range_")
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path / "state.pt", buffer.getvalue())
        meta = {
            "format": "radiolens.RadiomicLens/1",
            "params": self._plain_params(),
            "columns_": self.columns_,
            "dropped_columns_": self.dropped_columns_,
            "column_info_": self.column_info_.to_dict(orient="list"),
            "modalities_": self.modalities_,
            "hidden_dim_": self.hidden_dim_,
            "n_features_in_": self.n_features_in_,
            "feature_names_in_": self.feature_names_in_,
            "n_train_": self.n_train_,
            "train_cases_": self.train_cases_,
            "history_": self.history_.to_dict(orient="list"),
        }
        atomic_write_text(path / "params.json", json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RadiomicLens:
        """Load a lens saved by :meth:`save` (no pickle: JSON + tensors with ``weights_only``)."""
        torch = torch_module()
        path = Path(path)
        meta = json.loads((path / "params.json").read_text())
        if meta.get("format") != "radiolens.RadiomicLens/1":
            raise ValueError(f"{path / 'params.json'} is not a saved RadiomicLens")
        params = dict(meta["params"])
        if "verbose" in params:  # saved before the progress flag was renamed
            params["progress"] = params.pop("verbose")
        lens = cls(**params)
        state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
        for name, tensor in state.items():
            setattr(lens, name, tensor.numpy().copy())
        lens.columns_ = meta["columns_"]
        lens.dropped_columns_ = meta["dropped_columns_"]
        lens.column_info_ = pd.DataFrame(meta["column_info_"])
        lens.modalities_ = meta["modalities_"]
        lens.hidden_dim_ = meta["hidden_dim_"]
        lens.n_features_in_ = meta["n_features_in_"]
        lens.feature_names_in_ = meta["feature_names_in_"]
        lens.n_train_ = meta["n_train_"]
        lens.train_cases_ = meta["train_cases_"]
        lens.history_ = pd.DataFrame(meta["history_"])
        return lens
