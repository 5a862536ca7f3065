"""The radiomic lens: which radiomic features an encoder represents, and what fine-tuning changes.

This module implements the method of Wang et al. (MIDL 2026) in two stages (see the book's
"method" chapter for the derivation):

Stage 1 (:meth:`RadiomicLens.fit`)
    A shared non-linear projection ``Z = act(W x + b)`` from encoder embeddings to a hidden
    space, trained on *pre-fine-tuning* embeddings together with one temporary linear head per
    modality that predicts that modality's min-max scaled radiomic features. Loss: the L1
    reconstruction error summed over modalities plus ``l1 * sum|w| + l2 * sum w**2`` over all
    weights. After training the projection is frozen and the heads are discarded.

Stage 2 (:meth:`RadiomicLens.compare`)
    For the pre-trained and the fine-tuned embeddings separately, a closed-form linear decoder
    from the frozen hidden space to the radiomics (least squares with intercept). The
    importance of a radiomic feature is the L2 norm of its row of the decoder; its change is
    ``delta_I = I_ft - I_pre``.

Beyond the paper (each documented where it lives): held-out decodability ``r2_pre/r2_ft``
per feature, a cross-validated ridge decoder, a scale-aware importance, diagnostics of the
regime in which the paper's importance is unreliable, bootstrap confidence intervals and a
paired permutation test.

Choices the paper leaves open and that radiolens makes (all parameters of
:class:`RadiomicLens`):

* hidden width: ``hidden_dim=None`` picks ``min(256, d // 2, n_train // 10)`` (at least 1), so
  the hidden space is narrower than the embedding *and* has at least ten training cases per
  hidden unit. A planted-truth simulation (:mod:`radiolens.simulate`) showed the paper's OLS
  importance ranking features backwards when the hidden width reaches the embedding width.
* activation GELU (smooth, no dead units that would make ``Z`` rank-deficient), optimiser
  AdamW with *no* decoupled weight decay (the elastic penalty is already in the loss),
  mini-batches of 64 cases, inputs standardised with the training mean and standard deviation.
* the L1 reconstruction term is the mean absolute error over cases and features of each
  modality, summed over modalities; penalties apply to weights, not biases.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.stats
from sklearn.exceptions import NotFittedError

from radiolens.cache import atomic_write_bytes, atomic_write_text
from radiolens.naming import MODALITIES, parse_column

__all__ = [
    "IMPORTANCE_COLUMNS",
    "LensReport",
    "PAPER_L1_GRID",
    "PAPER_L2_GRID",
    "RadiomicLens",
    "adjust_pvalues",
    "penalty_sweep",
]

logger = logging.getLogger(__name__)

#: The paper's sweep over the L1 weight penalty.
PAPER_L1_GRID: tuple[float, ...] = (0.0, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5)
#: The paper's sweep over the L2 weight penalty.
PAPER_L2_GRID: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3)

#: Default ridge penalties searched by (exact leave-one-out) cross-validation, on standardised Z.
DEFAULT_RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 6, 28))

IMPORTANCE_COLUMNS = [
    "column", "modality", "image_type", "family", "feature",
    "I_pre", "I_ft", "delta_I", "rel_delta_I", "r2_pre", "r2_ft", "delta_r2",
]
_ACTIVATIONS = ("gelu", "relu", "tanh", "silu")
_OPTIMIZERS = ("adamw", "adam", "sgd")
_SCALES = ("paper", "standardized")
_DECODERS = ("ols", "ridge")

# Heuristics for the unreliable regime of the paper's OLS importance (see module docstring).
_MIN_CASES_PER_UNIT = 10.0


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise ImportError("radiolens.lens needs PyTorch: pip install torch") from exc
    return torch


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------
def _check_unique(index: pd.Index, what: str) -> None:
    if not index.is_unique:
        dup = index[index.duplicated()].unique().tolist()
        raise ValueError(f"{what} has duplicate case ids: {dup[:10]}")


def _check_finite(values: np.ndarray, index: Sequence, columns: Sequence, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        examples = [f"case {index[r]!r} column {columns[c]!r}" for r, c in zip(rows[:5], cols[:5])]
        raise ValueError(
            f"{what} contains {int(bad.sum())} NaN/inf value(s), e.g. {'; '.join(examples)}; "
            "impute or drop those cases first"
        )


def _as_embedding(X: Any, what: str) -> tuple[np.ndarray, pd.Index | None, list[str] | None]:
    """Return (float64 values, index or None, column names or None)."""
    if isinstance(X, pd.DataFrame):
        _check_unique(X.index, what)
        try:
            values = X.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} must be numeric: {exc}") from exc
        columns = [str(c) for c in X.columns]
        _check_finite(values, X.index, columns, what)
        return values, X.index, columns
    values = np.asarray(X, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"{what} must be 2-D (cases x embedding dims), got shape {values.shape}")
    _check_finite(values, range(len(values)), [f"dim {j}" for j in range(values.shape[1])], what)
    return values, None, None


def _align(X: np.ndarray, x_index: pd.Index | None, r_index: pd.Index, what: str, r_what: str) -> np.ndarray:
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


def _as_radiomics(R: Any, what: str) -> pd.DataFrame:
    if not isinstance(R, pd.DataFrame):
        raise TypeError(
            f"{what} must be a pandas DataFrame with radiomic column names "
            "'{modality}__{pyradiomics key}' (the names decide the modality heads)"
        )
    _check_unique(R.index, what)
    if not R.columns.is_unique:
        dup = R.columns[R.columns.duplicated()].unique().tolist()
        raise ValueError(f"{what} has duplicate columns: {dup[:10]}")
    try:
        values = R.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numeric: {exc}") from exc
    _check_finite(values, R.index, [str(c) for c in R.columns], what)
    return R


# --------------------------------------------------------------------------------------------
# closed-form decoders
# --------------------------------------------------------------------------------------------
@dataclass
class _Decoder:
    """A fitted linear decoder R ~ Z (one stage)."""

    coef: np.ndarray  # (h, p) in raw-Z units, for prediction
    intercept: np.ndarray  # (p,)
    coef_scaled: np.ndarray  # (h, p) in the units importance is reported in
    alpha: float
    method: str  # "ols", "ols+ridge_fallback", "ridge"
    condition_number: float
    n_constant_units: int
    loo_pred: np.ndarray | None  # (n, p) exact leave-one-out predictions on the training cases
    standardized: bool
    alpha_at_edge: bool = False

    def predict(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.coef + self.intercept


#: A hidden unit whose spread is below this fraction of the widest unit's is "near-constant".
_MIN_UNIT_SPREAD = 1e-3


def _column_sd(Z: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    if w is None:
        return Z.std(axis=0)
    total = w.sum()
    mean = w @ Z / total
    return np.sqrt(np.maximum(w @ (Z * Z) / total - mean**2, 0.0))


def _active_units(sd: np.ndarray) -> np.ndarray:
    # A hidden unit that does not vary over the cases carries nothing beyond the intercept.
    top = sd.max() if sd.size else 0.0
    return sd > 1e-10 * max(top, 1e-300)


def _loo_ridge_alpha(U: np.ndarray, s: np.ndarray, Rc: np.ndarray, alphas: Sequence[float]) -> tuple[float, bool]:
    """Pick the ridge penalty minimising the exact leave-one-out squared error summed over features.

    Uses ``resid_i = ||Rc_i||^2 - 2 sum_j f_j u_ij M_ij + (u_i f)^T G (u_i f)`` with
    ``M = Rc UtR^T`` and ``G = UtR UtR^T`` so each penalty costs O(n h^2), not O(n h p).
    """
    n = len(U)
    UtR = U.T @ Rc  # (k, p)
    M = Rc @ UtR.T  # (n, k)
    G = UtR @ UtR.T  # (k, k)
    rsq = np.einsum("ij,ij->i", Rc, Rc)
    s2 = s**2
    best, best_err = None, np.inf
    errors = []
    for alpha in alphas:
        f = s2 / (s2 + alpha)
        A = U * f
        resid = rsq - 2 * np.einsum("ij,ij->i", A, M) + np.einsum("ij,ij->i", A @ G, A)
        lev = 1.0 / n + np.einsum("ij,ij->i", A, U)
        err = float(np.sum(np.maximum(resid, 0.0) / np.maximum(1.0 - lev, 1e-12) ** 2))
        errors.append(err)
        if err < best_err:
            best, best_err = float(alpha), err
    at_edge = best in (float(alphas[0]), float(alphas[-1]))
    return best, at_edge


def _fit_decoder(
    Z: np.ndarray,
    R: np.ndarray,
    *,
    decoder: str,
    scale: str,
    ridge_alphas: Sequence[float],
    max_condition: float,
    force_ridge: bool = False,
    loo: bool = True,
) -> _Decoder:
    """Closed-form least squares (or ridge) with intercept, via the SVD of the centred design.

    Never forms an explicit inverse. With ``alpha = 0`` this is the minimum-norm least-squares
    solution, the same as :class:`sklearn.linear_model.LinearRegression`.
    """
    n, h = Z.shape
    sd = _column_sd(Z)
    active = _active_units(sd)
    use_ridge = decoder == "ridge" or force_ridge
    standardized = use_ridge or scale == "standardized"
    Za = Z[:, active]
    if standardized:
        Za = Za / sd[active]
    z_mean = Za.mean(axis=0)
    r_mean = R.mean(axis=0)
    Zc = Za - z_mean
    Rc = R - r_mean
    U, s, Vt = np.linalg.svd(Zc, full_matrices=False)
    cond = float(s[0] / s[-1]) if s.size and s[-1] > 0 else math.inf
    alpha, method, at_edge = 0.0, "ols", False
    if use_ridge:
        alpha, at_edge = _loo_ridge_alpha(U, s, Rc, ridge_alphas)
        method = "ridge"
    elif s.size and cond > max_condition:
        # Smallest ridge that bounds the condition number of the regularised Gram matrix
        # (s0^2 + a) / (s_min^2 + a) by about max_condition^2.
        alpha = float(s[0] ** 2 / max_condition**2)
        method = "ols+ridge_fallback"
    s2 = s**2
    if alpha > 0:
        shrink = s / (s2 + alpha)
        f = s2 / (s2 + alpha)
    else:
        keep = s > s[0] * np.finfo(float).eps * max(Zc.shape) if s.size else s > 0
        shrink = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
        f = keep.astype(float)
    UtR = U.T @ Rc
    coef_solve = (Vt.T * shrink) @ UtR  # (k_active, p) in solve units
    loo_pred = None
    if loo:  # exact leave-one-out predictions, only needed when there are no test cases
        fitted = r_mean + (U * f) @ UtR
        lev = 1.0 / n + np.einsum("ij,ij->i", U * f, U)
        loo_pred = R - (R - fitted) / np.maximum(1.0 - lev, 1e-12)[:, None]

    sd_a = sd[active]
    coef_raw_a = coef_solve / sd_a[:, None] if standardized else coef_solve
    # scale == "standardized" implies standardized, so coef_solve is then in those units.
    coef_scaled_a = coef_solve if scale == "standardized" else coef_raw_a
    coef = np.zeros((h, R.shape[1]))
    coef[active] = coef_raw_a
    coef_scaled = np.zeros_like(coef)
    coef_scaled[active] = coef_scaled_a
    intercept = r_mean - (Z[:, active].mean(axis=0)) @ coef_raw_a
    return _Decoder(
        coef=coef,
        intercept=intercept,
        coef_scaled=coef_scaled,
        alpha=alpha,
        method=method,
        condition_number=cond,
        n_constant_units=int((~active).sum()),
        loo_pred=loo_pred,
        standardized=standardized,
        alpha_at_edge=at_edge,
    )


@dataclass
class _WeightedFit:
    importance: np.ndarray  # (p,) row norms in the units of `scale`
    coef: np.ndarray  # (k_active, p) raw-Z units
    intercept: np.ndarray  # (p,)
    active: np.ndarray  # (h,) bool
    loo_pred: np.ndarray | None = None

    def predict(self, Z: np.ndarray) -> np.ndarray:
        return Z[:, self.active] @ self.coef + self.intercept


def _weighted_fit(
    Z: np.ndarray,
    R: np.ndarray,
    w: np.ndarray,
    *,
    alpha: float,
    standardized: bool,
    scale: str,
    loo: bool = False,
) -> _WeightedFit:
    """Decoder fitted with case weights ``w`` (bootstrap counts) through the normal equations.

    Cholesky on the weighted Gram matrix: O(n h p) per call, no SVD, used for the many refits
    of the bootstrap and the permutation test. Standardisation (when the decoder uses it) is
    recomputed on the weighted sample. ``loo`` adds exact leave-one-out predictions (unit
    weights only).
    """
    total = w.sum()
    sd = _column_sd(Z, w)
    active = _active_units(sd)
    Za = Z[:, active]
    if standardized:
        Za = Za / sd[active]
    zm = w @ Za / total
    rm = w @ R / total
    Zc = Za - zm
    used = np.flatnonzero(w)  # a bootstrap resample leaves ~37% of the cases out
    Zw = Zc[used] * w[used, None]
    G = Zw.T @ Zc[used]
    # sum_i w_i (z_i - zm) = 0, so R needs no centring here: C = Zw^T (R - rm) = Zw^T R
    C = Zw.T @ (R[used] if len(used) < len(w) else R)
    k = G.shape[0]
    ridge = alpha
    for _attempt in range(8):
        try:
            factor = scipy.linalg.cho_factor(G + ridge * np.eye(k), lower=False, check_finite=False)
            break
        except np.linalg.LinAlgError:
            # A resample can be singular (repeated cases); add the smallest jitter that works.
            ridge = max(ridge * 10, 1e-12 * np.trace(G) / max(k, 1))
    else:  # pragma: no cover - pathological input
        raise np.linalg.LinAlgError("could not factor the Gram matrix of a resample")
    coef = scipy.linalg.cho_solve(factor, C, check_finite=False)
    coef_raw = coef / sd[active][:, None] if standardized else coef
    scaled = coef_raw if scale == "paper" else coef
    importance = np.sqrt(np.einsum("hp,hp->p", scaled, scaled))
    intercept = rm - (zm * sd[active] if standardized else zm) @ coef_raw
    out = _WeightedFit(importance=importance, coef=coef_raw, intercept=intercept, active=active)
    if loo:
        fitted = Zc @ coef + rm
        lev = 1.0 / total + np.einsum("ij,ji->i", Zc, scipy.linalg.cho_solve(factor, Zc.T, check_finite=False))
        out.loo_pred = R - (R - fitted) / np.maximum(1.0 - lev, 1e-12)[:, None]
    return out


# --------------------------------------------------------------------------------------------
# statistics helpers
# --------------------------------------------------------------------------------------------
def _r2(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    rss = np.sum((y - pred) ** 2, axis=0)
    tss = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tss > 0, 1.0 - rss / tss, np.nan)


def _weighted_r2(W: np.ndarray, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-feature R^2 under each row of case weights ``W`` (B, n) -> (B, p)."""
    total = W.sum(axis=1, keepdims=True)
    rss = W @ ((y - pred) ** 2)
    tss = W @ (y**2) - (W @ y) ** 2 / total
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tss > 1e-300, 1.0 - rss / tss, np.nan)


def adjust_pvalues(p: np.ndarray, method: str = "fdr_bh") -> np.ndarray:
    """Multiplicity-adjusted p-values: ``"fdr_bh"`` (Benjamini-Hochberg) or ``"holm"``."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    ranked = q[order]
    if method == "fdr_bh":
        adj = ranked * m / np.arange(1, m + 1)
        adj = np.minimum.accumulate(adj[::-1])[::-1]
    elif method == "holm":
        adj = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:
        raise ValueError(f"unknown p-value adjustment {method!r}; use 'fdr_bh' or 'holm'")
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def _stars(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "ns"


def _wilcoxon(err_pre: np.ndarray, err_ft: np.ndarray) -> tuple[float, float]:
    diff = err_pre - err_ft
    if np.all(diff == 0):
        # scipy returns (0, 1) here too, with a RuntimeWarning; an identical encoder is no shift.
        return 0.0, 1.0
    res = scipy.stats.wilcoxon(err_pre, err_ft)
    return float(res.statistic), float(res.pvalue)


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
_FRAMES = ("importance", "scores", "tests", "observed", "decoded_pre", "decoded_ft")
#: Tables a report folder written before they existed may lack (read back as empty frames).
_OPTIONAL_FRAMES = ("decoder_pre", "decoder_ft")


@dataclass
class LensReport:
    """What :meth:`RadiomicLens.compare` measured.

    Attributes
    ----------
    importance
        One row per radiomic column: ``column, modality, image_type, family, feature, I_pre,
        I_ft, delta_I, rel_delta_I, r2_pre, r2_ft, delta_r2``; with bootstrap also
        ``I_pre_lo/hi, I_ft_lo/hi, delta_I_lo/hi, delta_r2_lo/hi``; with permutations also
        ``p_value, p_adjusted``. ``rel_delta_I = delta_I / I_pre`` (the paper does not define
        its "relative dI"; this is radiolens' reading, NaN where ``I_pre == 0``).
    scores
        Tidy ``stage, level, group, r2, mse`` on the evaluation cases (test cases when given,
        else exact leave-one-out predictions on the training cases). Group ``r2`` is the mean of
        the per-feature R^2 (scikit-learn's uniform average); ``mse`` the mean squared error
        over cases and features of the group, in min-max scaled units.
    tests
        Wilcoxon signed-rank tests on per-case squared errors (mean over the group's features),
        pre vs ft: ``modality, family, n_cases, statistic, p_value, p_adjusted, stars``;
        ``modality == "all"`` rows pool the modalities (the paper's test). ``p_adjusted`` is
        Holm-adjusted within the pooled rows and within the per-modality rows; ``stars`` follow
        the unadjusted ``p_value`` at 0.05/0.01/0.001 as in the paper.
    observed, decoded_pre, decoded_ft
        Cases x radiomic columns on the evaluation cases: min-max scaled observations and the
        two decoders' predictions.
    decoder_pre, decoder_ft
        Hidden units x radiomic columns: each stage's decoder weights in the units the
        importance is computed in, so that ``I_pre`` is the Euclidean norm of a column of
        ``decoder_pre`` (PAPER.md: "the norm of the feature's row of the decoder"). Unit ``k``'s
        weight says how strongly hidden unit ``k`` carries that radiomic feature.
    diagnostics
        JSON-able dict: condition numbers, cases per hidden unit, decoder actually used per
        stage, ridge penalties, the share of compared cases stage 1 was trained on
        (``stage1_case_overlap``), warnings.
    params
        The lens parameters and ``compare`` arguments that produced the report.
    """

    importance: pd.DataFrame
    scores: pd.DataFrame
    tests: pd.DataFrame
    observed: pd.DataFrame
    decoded_pre: pd.DataFrame
    decoded_ft: pd.DataFrame
    diagnostics: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    decoder_pre: pd.DataFrame = field(default_factory=pd.DataFrame)
    decoder_ft: pd.DataFrame = field(default_factory=pd.DataFrame)

    # -- the paper's three rankings ------------------------------------------------------------
    def _by(self, by: str) -> str:
        allowed = ("rel_delta_I", "delta_I", "delta_r2")
        if by not in allowed:
            raise ValueError(f"by must be one of {allowed}, got {by!r}")
        return by

    def gained(self, k: int = 10, by: str = "rel_delta_I") -> pd.DataFrame:
        """The ``k`` features whose encoding grew most (largest ``by``; the paper uses
        ``rel_delta_I``). ``by="delta_r2"`` ranks by held-out decodability instead, which the
        planted-truth simulation found reliable in every regime."""
        col = self._by(by)
        return self.importance.sort_values(col, ascending=False, na_position="last", kind="stable").head(k)

    def lost(self, k: int = 10, by: str = "rel_delta_I") -> pd.DataFrame:
        """The ``k`` features whose encoding shrank most (most negative ``by``)."""
        col = self._by(by)
        return self.importance.sort_values(col, ascending=True, na_position="last", kind="stable").head(k)

    def stable(self, k: int = 10, by: str = "delta_I", quantile: float = 0.5) -> pd.DataFrame:
        """The ``k`` features that changed least in absolute value among those important both
        before and after: ``I_pre`` and ``I_ft`` (for ``by="delta_r2"``: ``r2_pre`` and
        ``r2_ft``) at or above their ``quantile`` over all features."""
        col = self._by(by)
        imp = self.importance
        a, b = ("r2_pre", "r2_ft") if col == "delta_r2" else ("I_pre", "I_ft")
        keep = (imp[a] >= imp[a].quantile(quantile)) & (imp[b] >= imp[b].quantile(quantile))
        sub = imp[keep]
        order = sub[col].abs().sort_values(kind="stable").index
        return sub.loc[order].head(k)

    # -- persistence -----------------------------------------------------------------------------
    def to_dir(self, path: str | Path) -> Path:
        """Write the report to a folder: one Parquet file per table (exact), ``importance.csv``
        for people, ``diagnostics.json`` and ``params.json``. Every write is atomic."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name in _FRAMES + _OPTIONAL_FRAMES:
            frame: pd.DataFrame = getattr(self, name)
            atomic_write_bytes(path / f"{name}.parquet", frame.to_parquet(index=True))
        atomic_write_text(path / "importance.csv", self.importance.to_csv(index=False))
        atomic_write_text(path / "diagnostics.json", json.dumps(self.diagnostics, indent=2, sort_keys=True))
        atomic_write_text(path / "params.json", json.dumps(self.params, indent=2, sort_keys=True))
        return path

    @classmethod
    def from_dir(cls, path: str | Path) -> LensReport:
        """Read a report written by :meth:`to_dir`."""
        path = Path(path)
        missing = [f"{n}.parquet" for n in _FRAMES if not (path / f"{n}.parquet").exists()]
        if missing:
            raise FileNotFoundError(f"{path} is not a lens report folder: missing {missing}")
        frames = {n: pd.read_parquet(path / f"{n}.parquet") for n in _FRAMES}
        for name in _OPTIONAL_FRAMES:
            if (path / f"{name}.parquet").exists():
                frames[name] = pd.read_parquet(path / f"{name}.parquet")
        diagnostics = json.loads((path / "diagnostics.json").read_text())
        params = json.loads((path / "params.json").read_text())
        return cls(**frames, diagnostics=diagnostics, params=params)


# --------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------
class RadiomicLens:
    """The paper's radiomic lens as a scikit-learn style estimator.

    Parameters
    ----------
    hidden_dim
        Width of the shared hidden space. ``None``: ``min(256, d // 2, n_train // 10)``, at
        least 1 — below the embedding width ``d`` and with >= 10 training cases per hidden
        unit, where the paper's OLS importance is reliable (see :mod:`radiolens.simulate`).
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
    verbose
        Show a progress bar during training.

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
        verbose: bool = False,
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
        self.verbose = verbose

    _PARAM_NAMES = (
        "hidden_dim", "l1", "l2", "epochs", "lr", "random_state", "decoder", "activation",
        "optimizer", "batch_size", "standardize_inputs", "device", "modalities", "ridge_alphas",
        "max_condition", "drop_constant", "n_threads", "verbose",
    )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters, as scikit-learn estimators report them."""
        params = {name: getattr(self, name) for name in self._PARAM_NAMES}
        for key in ("modalities", "ridge_alphas"):
            if params[key] is not None:
                params[key] = list(params[key])
        return params

    def set_params(self, **params: Any) -> RadiomicLens:
        for key, value in params.items():
            if key not in self._PARAM_NAMES:
                raise ValueError(f"unknown parameter {key!r} for RadiomicLens")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        default = RadiomicLens()
        changed = [f"{k}={getattr(self, k)!r}" for k in self._PARAM_NAMES if getattr(self, k) != getattr(default, k)]
        return f"RadiomicLens({', '.join(changed)})"

    # -- helpers ----------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.decoder not in _DECODERS:
            raise ValueError(f"decoder must be one of {_DECODERS}, got {self.decoder!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
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
        R = _as_radiomics(R, "R")
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
        values, index, columns = _as_embedding(X, what)
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
            values = _align(values, index, r_index, what, "R")
            index = r_index
        return values, index

    def _project(self, X: np.ndarray) -> np.ndarray:
        """The frozen projection in float64 (exact and reproducible)."""
        torch = _torch()
        Xs = (X - self.x_mean_) / self.x_scale_
        pre = torch.from_numpy(Xs @ self.weight_.T + self.bias_)
        return _activation(torch, self.activation)(pre).numpy()

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
        torch = _torch()
        R = _as_radiomics(R, "R")
        X, x_index, x_columns = _as_embedding(X_pre, "X_pre")
        X = _align(X, x_index, R.index, "X_pre", "R")
        n, d = X.shape
        if n < 2:
            raise ValueError(f"need at least 2 training cases, got {n}")
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
            warnings.warn(f"dropping {len(constant)} constant radiomic column(s): {constant[:10]}", stacklevel=2)
        if not keep.any():
            raise ValueError("every radiomic column is constant on the training cases")
        info = info[keep].reset_index(drop=True)
        self.dropped_columns_ = constant
        self.columns_ = info["column"].tolist()
        self.column_info_ = info
        self.modalities_ = list(dict.fromkeys(info["modality"]))
        self.scaler_min_ = lo[keep]
        self.scaler_range_ = hi[keep] - lo[keep]
        Rn = (values[:, keep] - self.scaler_min_) / self.scaler_range_

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
        if h >= n:
            warnings.warn(
                f"fewer training cases ({n}) than hidden units ({h}): the least-squares decoder is "
                "underdetermined; compare() will use a cross-validated ridge decoder instead",
                stacklevel=2,
            )
        if h >= d:
            warnings.warn(
                f"hidden_dim={h} >= embedding width {d}: the paper's OLS importance is unreliable "
                "here (use decoder='ridge' or rank by delta_r2)",
                stacklevel=2,
            )

        val = None
        if validation is not None:
            Xv_raw, Rv_raw = validation
            Rv_df = _as_radiomics(Rv_raw, "R_val")
            Xv, xv_index, _ = _as_embedding(Xv_raw, "X_val")
            Xv = _align(Xv, xv_index, Rv_df.index, "X_val", "R_val")
            if Xv.shape[1] != d:
                raise ValueError(f"X_val has {Xv.shape[1]} embedding dims, X_pre has {d}")
            val = ((Xv - self.x_mean_) / self.x_scale_, self._scale_radiomics(Rv_df, "R_val"))

        self._train(torch, (X - self.x_mean_) / self.x_scale_, Rn, val)
        return self

    def _train(self, torch, Xs: np.ndarray, Rn: np.ndarray, val) -> None:
        n, d = Xs.shape
        h = self.hidden_dim_
        p = Rn.shape[1]
        device = torch.device(self.device)
        mod_index = np.array([self.modalities_.index(m) for m in self.column_info_["modality"]])
        # One block matrix of per-modality heads: row block m is modality m's temporary head.
        onehot = np.zeros((p, len(self.modalities_)), dtype=np.float32)
        onehot[np.arange(p), mod_index] = 1.0 / np.bincount(mod_index)[mod_index]
        act = _activation(torch, self.activation)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.random_state))
            share = torch.nn.Linear(d, h).to(device)
            heads = torch.nn.Linear(h, p).to(device)
            generator = torch.Generator().manual_seed(int(self.random_state))
        # Start the temporary heads at the per-feature median, the best constant under the L1
        # loss: with few cases there are few optimiser steps, and they should be spent on the
        # shared projection, not on learning offsets.
        with torch.no_grad():
            heads.bias.copy_(torch.as_tensor(np.median(Rn, axis=0), dtype=torch.float32))
        params = list(share.parameters()) + list(heads.parameters())
        if self.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        elif self.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=self.lr)
        else:
            opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9)
        x = torch.as_tensor(Xs, dtype=torch.float32, device=device)
        r = torch.as_tensor(Rn, dtype=torch.float32, device=device)
        mix = torch.as_tensor(onehot, device=device)
        weights = [share.weight, heads.weight]

        def recon(xb, rb):
            err = (heads(act(share(xb))) - rb).abs()
            return (err.mean(dim=0) @ mix).sum()  # per-modality mean absolute error, summed

        bs = min(int(self.batch_size), n)
        # Small models train faster on one thread: intra-op threads only add start-up and
        # contention cost below ~5e7 multiply-adds per step.
        threads = torch.get_num_threads()
        if self.n_threads is not None:
            torch.set_num_threads(int(self.n_threads))
        elif device.type == "cpu" and 6 * bs * (d * h + h * p) < 5e7:
            torch.set_num_threads(1)
        try:
            history = self._epochs(torch, x, r, recon, opt, weights, generator, n, bs, val, device)
        finally:
            torch.set_num_threads(threads)
        columns = ["epoch", "train_loss"] + (["val_loss"] if val is not None else [])
        self.history_ = pd.DataFrame(history, columns=columns)
        # Freeze: keep the projection (float32 weights held as float64 for exact reuse);
        # the temporary heads are discarded, as in the paper.
        self.weight_ = share.weight.detach().cpu().double().numpy().copy()
        self.bias_ = share.bias.detach().cpu().double().numpy().copy()

    def _epochs(self, torch, x, r, recon, opt, weights, generator, n, bs, val, device) -> list[dict]:
        from tqdm.auto import tqdm

        history = []
        for epoch in tqdm(range(int(self.epochs)), desc="lens stage 1", disable=not self.verbose, leave=False):
            order = torch.randperm(n, generator=generator).to(device)
            total = 0.0
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                loss = recon(x[idx], r[idx])
                objective = loss
                if self.l1:
                    objective = objective + self.l1 * sum(w.abs().sum() for w in weights)
                if self.l2:
                    objective = objective + self.l2 * sum((w * w).sum() for w in weights)
                opt.zero_grad(set_to_none=True)
                objective.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            row = {"epoch": epoch + 1, "train_loss": total / n}
            if val is not None:
                with torch.no_grad():
                    row["val_loss"] = float(
                        recon(torch.as_tensor(val[0], dtype=torch.float32, device=device),
                              torch.as_tensor(val[1], dtype=torch.float32, device=device))
                    )
            history.append(row)
        return history

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
        if scale is None:
            scale = "standardized" if self.decoder == "ridge" else "paper"
        if scale not in _SCALES:
            raise ValueError(f"scale must be one of {_SCALES} or None, got {scale!r}")
        if not 0 < ci < 1:
            raise ValueError(f"ci must be in (0, 1), got {ci}")
        if permutation_stat not in ("delta_r2", "delta_I"):
            raise ValueError(f"permutation_stat must be 'delta_r2' or 'delta_I', got {permutation_stat!r}")
        rng = np.random.default_rng(int(self.random_state))
        R = _as_radiomics(R, "R")
        Rn = self._scale_radiomics(R, "R")
        Zp, Zf = self._pair(X_pre, X_ft, R.index, "")
        n, h = Zp.shape
        diag_warnings: list[str] = []

        force_ridge = self.decoder == "ols" and n <= h + 1
        if force_ridge:
            msg = (
                f"fewer training cases ({n}) than hidden units + 1 ({h + 1}): least squares is "
                "underdetermined, using the cross-validated ridge decoder instead"
            )
            warnings.warn(msg, stacklevel=2)
            diag_warnings.append(msg)
        alphas = tuple(self.ridge_alphas) if self.ridge_alphas is not None else DEFAULT_RIDGE_ALPHAS
        kw = dict(decoder=self.decoder, scale=scale, ridge_alphas=alphas, max_condition=self.max_condition,
                  force_ridge=force_ridge, loo=test is None)
        dec_p = _fit_decoder(Zp, Rn, **kw)
        dec_f = _fit_decoder(Zf, Rn, **kw)
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
            tiny = int(np.sum((spread > 0) & (spread < _MIN_UNIT_SPREAD * spread.max())))
            if tiny:
                msg = (
                    f"{stage}: {tiny} hidden unit(s) barely vary over these cases (spread below "
                    f"{_MIN_UNIT_SPREAD:g} of the largest): the decoder weights them with huge "
                    "coefficients, which inflates the paper's importance I; compare with "
                    "scale='standardized' or rank by delta_r2"
                )
                warnings.warn(msg, stacklevel=2)
                diag_warnings.append(msg)
        cases_per_unit = n / h
        d = self.n_features_in_
        seen = set(self.train_cases_)
        overlap = float(np.mean([str(i) in seen for i in R.index]))
        if (self.decoder == "ols" and not force_ridge and scale == "paper"
                and (h >= d or cases_per_unit < _MIN_CASES_PER_UNIT)):
            msg = (
                f"the paper's OLS importance is in its unreliable regime here (hidden_dim={h}, "
                f"embedding width {d}, {cases_per_unit:.1f} training cases per hidden unit; reliable "
                f"needs hidden_dim < d and >= {_MIN_CASES_PER_UNIT:.0f}): in a planted-truth simulation "
                "it ranked features backwards when hidden_dim >= d; prefer ranking by delta_r2 or "
                "decoder='ridge'"
            )
            warnings.warn(msg, stacklevel=2)
            diag_warnings.append(msg)
        if overlap > 0.5 and h >= d and self.decoder == "ridge":
            msg = (
                f"{overlap:.0%} of these cases trained stage 1 and hidden_dim={h} >= embedding width {d}: "
                "in the planted-truth simulation delta_I (OLS and ridge) ranked features backwards "
                "in this regime; rank by delta_r2, or fit the decoders on cases not used in fit()"
            )
            warnings.warn(msg, stacklevel=2)
            diag_warnings.append(msg)

        # evaluation cases: test, else exact leave-one-out predictions
        if test is not None:
            if len(test) != 3:
                raise ValueError("test must be a tuple (X_pre_test, X_ft_test, R_test)")
            Xpt, Xft, Rt = test
            Rt = _as_radiomics(Rt, "R_test")
            Yt = self._scale_radiomics(Rt, "R_test")
            Zpt, Zft = self._pair(Xpt, Xft, Rt.index, "_test")
            eval_index = Rt.index
            pred_p, pred_f = dec_p.predict(Zpt), dec_f.predict(Zft)
            evaluation = "test"
        else:
            Yt = Rn
            eval_index = R.index
            pred_p, pred_f = dec_p.loo_pred, dec_f.loo_pred
            evaluation = "leave-one-out"

        I_pre = np.sqrt(np.einsum("hp,hp->p", dec_p.coef_scaled, dec_p.coef_scaled))
        I_ft = np.sqrt(np.einsum("hp,hp->p", dec_f.coef_scaled, dec_f.coef_scaled))
        r2_pre, r2_ft = _r2(Yt, pred_p), _r2(Yt, pred_f)
        imp = self.column_info_.copy()
        imp["I_pre"] = I_pre
        imp["I_ft"] = I_ft
        imp["delta_I"] = I_ft - I_pre
        with np.errstate(divide="ignore", invalid="ignore"):
            imp["rel_delta_I"] = np.where(I_pre > 0, (I_ft - I_pre) / np.where(I_pre > 0, I_pre, 1.0), np.nan)
        imp["r2_pre"] = r2_pre
        imp["r2_ft"] = r2_ft
        imp["delta_r2"] = r2_ft - r2_pre

        if n_bootstrap:
            self._bootstrap(imp, Zp, Zf, Rn, dec_p, dec_f, scale, Yt, pred_p, pred_f, int(n_bootstrap), ci, rng)
        if n_permutations:
            test_z = (Zpt, Zft, Yt) if test is not None else None
            self._permutation(imp, Zp, Zf, Rn, dec_p, dec_f, scale, int(n_permutations), permutation_stat,
                              p_adjust, rng, test_z)

        scores = self._scores(Yt, pred_p, pred_f, r2_pre, r2_ft)
        tests = self._tests(Yt, pred_p, pred_f)
        cols = self.columns_
        observed = pd.DataFrame(Yt, index=eval_index, columns=cols)
        decoded_pre = pd.DataFrame(pred_p, index=eval_index, columns=cols)
        decoded_ft = pd.DataFrame(pred_f, index=eval_index, columns=cols)
        diagnostics = {
            "evaluation": evaluation,
            "n_train_cases": int(n),
            "n_eval_cases": int(len(eval_index)),
            "hidden_dim": int(h),
            "embedding_dim": int(d),
            "cases_per_hidden_unit": float(cases_per_unit),
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
        params = self.get_params()
        params.update({"scale": scale, "ci": ci, "p_adjust": p_adjust, "permutation_stat": permutation_stat,
                       "n_bootstrap": int(n_bootstrap), "n_permutations": int(n_permutations),
                       "has_test": test is not None})
        units = pd.RangeIndex(h, name="hidden_unit")
        return LensReport(
            importance=imp, scores=scores, tests=tests, observed=observed, decoded_pre=decoded_pre,
            decoded_ft=decoded_ft, diagnostics=diagnostics, params=params,
            decoder_pre=pd.DataFrame(dec_p.coef_scaled, index=units, columns=cols),
            decoder_ft=pd.DataFrame(dec_f.coef_scaled, index=units, columns=cols),
        )

    def _pair(self, X_pre: Any, X_ft: Any, r_index: pd.Index, suffix: str) -> tuple[np.ndarray, np.ndarray]:
        a, _, _ = _as_embedding(X_pre, f"X_pre{suffix}")
        b, _, _ = _as_embedding(X_ft, f"X_ft{suffix}")
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"X_pre{suffix} and X_ft{suffix} have different widths ({a.shape[1]} vs {b.shape[1]}); "
                "both must come from the same encoder architecture"
            )
        Xp, _ = self._embedding(X_pre, f"X_pre{suffix}", r_index)
        Xf, _ = self._embedding(X_ft, f"X_ft{suffix}", r_index)
        return self._project(Xp), self._project(Xf)

    def _workers(self) -> int:
        """Parallel refits: ``n_threads`` (or the CPU count, at most 4), one BLAS thread each."""
        import os

        return max(1, int(self.n_threads) if self.n_threads is not None else min(4, os.cpu_count() or 1))

    def _map(self, fn, items: Sequence, desc: str) -> list:
        """``[fn(i) for i in items]`` on a thread pool (BLAS releases the GIL); order kept, so
        results do not depend on the number of threads."""
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits
        from tqdm.auto import tqdm

        workers = self._workers()
        with threadpool_limits(limits=1):
            if workers == 1:
                return [fn(i) for i in tqdm(items, desc=desc, disable=not self.verbose, leave=False)]
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, disable=not self.verbose,
                                 leave=False))

    def _bootstrap(self, imp, Zp, Zf, Rn, dec_p, dec_f, scale, Yt, pred_p, pred_f, B, ci, rng) -> None:
        n = len(Zp)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=B).astype(np.float64)

        def one(b: int) -> tuple[np.ndarray, np.ndarray]:
            w = counts[b]
            fp = _weighted_fit(Zp, Rn, w, alpha=dec_p.alpha, standardized=dec_p.standardized, scale=scale)
            ff = _weighted_fit(Zf, Rn, w, alpha=dec_f.alpha, standardized=dec_f.standardized, scale=scale)
            return fp.importance, ff.importance

        results = self._map(one, range(B), "bootstrap")
        Ip = np.stack([r[0] for r in results])
        If = np.stack([r[1] for r in results])
        m = len(Yt)
        W = rng.multinomial(m, np.full(m, 1.0 / m), size=B).astype(np.float64)
        dr2 = _weighted_r2(W, Yt, pred_f) - _weighted_r2(W, Yt, pred_p)
        lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
        for name, samples in (("I_pre", Ip), ("I_ft", If), ("delta_I", If - Ip), ("delta_r2", dr2)):
            est = imp[name].to_numpy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                q_lo = np.nanpercentile(samples, lo, axis=0)
                q_hi = np.nanpercentile(samples, hi, axis=0)
            # Basic (reverse-percentile) interval: refitting on resamples with repeated cases
            # inflates the norm of noise-fitting rows, and this interval undoes that shift.
            low, high = 2 * est - q_hi, 2 * est - q_lo
            if name in ("I_pre", "I_ft"):
                low, high = np.maximum(low, 0.0), np.maximum(high, 0.0)
            imp[f"{name}_lo"] = low
            imp[f"{name}_hi"] = high

    def _permutation(self, imp, Zp, Zf, Rn, dec_p, dec_f, scale, B, stat_name, p_adjust, rng, test) -> None:
        """Paired permutation test; ``test`` is ``(Zp_test, Zf_test, Y_test)`` or None (LOO)."""
        n = len(Zp)
        ones = np.ones(n)
        kw_p = dict(alpha=dec_p.alpha, standardized=dec_p.standardized, scale=scale)
        kw_f = dict(alpha=dec_f.alpha, standardized=dec_f.standardized, scale=scale)
        use_r2 = stat_name == "delta_r2"
        Zpt, Zft = (test[0], test[1]) if test is not None else (None, None)

        def statistic(A, Bm, At, Bt):
            fa = _weighted_fit(A, Rn, ones, loo=use_r2 and test is None, **kw_p)
            fb = _weighted_fit(Bm, Rn, ones, loo=use_r2 and test is None, **kw_f)
            if not use_r2:
                return np.abs(fb.importance - fa.importance)
            if test is None:
                return np.abs(_r2(Rn, fb.loo_pred) - _r2(Rn, fa.loo_pred))
            Yt = test[2]
            return np.abs(_r2(Yt, fb.predict(Bt)) - _r2(Yt, fa.predict(At)))

        swaps = rng.random((B, n)) < 0.5
        swaps_t = rng.random((B, len(Zpt))) < 0.5 if test is not None else None

        def one(b: int) -> np.ndarray:
            s = swaps[b][:, None]
            At = Bt = None
            if test is not None:
                st = swaps_t[b][:, None]
                At, Bt = np.where(st, Zft, Zpt), np.where(st, Zpt, Zft)
            return statistic(np.where(s, Zf, Zp), np.where(s, Zp, Zf), At, Bt)

        # The observed statistic goes through the same solver as the permutations, so an
        # encoder compared with itself gives permutations identical to it (p = 1).
        obs = self._map(lambda _: statistic(Zp, Zf, Zpt, Zft), [0], "observed")[0]
        tol = 1e-10 * max(float(np.nanmax(obs, initial=0.0)), 1e-300)
        exceed = np.zeros(Rn.shape[1])
        for stat in self._map(one, range(B), "permutations"):
            exceed += stat >= obs - tol
        p = (1.0 + exceed) / (1.0 + B)
        imp["p_value"] = p
        imp["p_adjusted"] = adjust_pvalues(p, p_adjust)

    def _scores(self, Y, pred_p, pred_f, r2_pre, r2_ft) -> pd.DataFrame:
        info = self.column_info_
        rows = []
        for stage, pred, r2 in (("pre", pred_p, r2_pre), ("ft", pred_f, r2_ft)):
            mse = np.mean((Y - pred) ** 2, axis=0)
            rows.append((stage, "overall", "all", float(np.nanmean(r2)), float(mse.mean())))
            for level in ("modality", "image_type", "family"):
                for group, idx in info.groupby(level, sort=False).groups.items():
                    pos = info.index.get_indexer(idx)
                    rows.append((stage, level, str(group), float(np.nanmean(r2[pos])), float(mse[pos].mean())))
            for j, col in enumerate(info["column"]):
                rows.append((stage, "feature", col, float(r2[j]), float(mse[j])))
        return pd.DataFrame(rows, columns=["stage", "level", "group", "r2", "mse"])

    def _tests(self, Y, pred_p, pred_f) -> pd.DataFrame:
        info = self.column_info_
        se_p = (Y - pred_p) ** 2
        se_f = (Y - pred_f) ** 2
        rows = []
        for modality in ["all"] + self.modalities_:
            sub = info if modality == "all" else info[info["modality"] == modality]
            for family, idx in sub.groupby("family", sort=False).groups.items():
                pos = info.index.get_indexer(idx)
                a = se_p[:, pos].mean(axis=1)
                b = se_f[:, pos].mean(axis=1)
                stat, pval = _wilcoxon(a, b)
                rows.append({"modality": modality, "family": str(family), "n_cases": len(a),
                             "statistic": stat, "p_value": pval})
        tests = pd.DataFrame(rows, columns=["modality", "family", "n_cases", "statistic", "p_value"])
        tests["p_adjusted"] = np.nan
        pooled = tests["modality"] == "all"
        for mask in (pooled, ~pooled):
            if mask.any():
                tests.loc[mask, "p_adjusted"] = adjust_pvalues(tests.loc[mask, "p_value"].to_numpy(), "holm")
        tests["stars"] = [_stars(p) for p in tests["p_value"]]
        return tests

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save the fitted lens to a folder: ``params.json`` (parameters + fitted metadata) and
        ``state.pt`` (a torch state dict of float64 tensors, loadable with ``weights_only=True``).
        Writes are atomic."""
        self._check_fitted()
        torch = _torch()
        import io

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
            "params": self.get_params(),
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
        torch = _torch()
        path = Path(path)
        meta = json.loads((path / "params.json").read_text())
        if meta.get("format") != "radiolens.RadiomicLens/1":
            raise ValueError(f"{path / 'params.json'} is not a saved RadiomicLens")
        lens = cls(**meta["params"])
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


def _activation(torch, name: str):
    return {
        "gelu": torch.nn.functional.gelu,
        "relu": torch.relu,
        "tanh": torch.tanh,
        "silu": torch.nn.functional.silu,
    }[name]


# --------------------------------------------------------------------------------------------
# penalty sweep
# --------------------------------------------------------------------------------------------
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
        Parallel fits (joblib); 1 runs in this process.
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the same warnings would repeat for every grid point
            lens = RadiomicLens(l1=l1, l2=l2, **lens_params).fit(X_train, R_train, validation=(X_val, R_val))
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
