"""Stage 2 of the lens: closed-form linear decoders from the frozen hidden space to radiomics.

A decoder predicts every min-max scaled radiomic feature from the hidden activations ``Z`` by
least squares (PAPER.md stage 2), solved from the singular value decomposition of ``Z`` (centred
when the decoder has an intercept), never from an explicit inverse. :func:`choose_decoder` makes
the choices that need the full data (the ridge penalty by exact leave-one-out, the fallback for
an ill-conditioned ``Z``); :meth:`Decoder.refit` repeats the same decoder with case weights,
for the many refits of the bootstrap and the permutation test.

The importance of feature ``k`` is the length of its vector of decoder weights, in one of three
units (``scale``):

``"paper"``
    weights on the raw hidden units, ``I_k = ||theta_k||``, as the paper defines it. It depends
    on how much each unit varies: a unit that barely varies needs a huge weight.
``"standardized"``
    weights on hidden units standardised per encoder (a global rescaling of ``Z`` leaves it
    unchanged), still sensitive to correlated units.
``"whitened"``
    weights on the hidden units decorrelated and standardised per encoder (ZCA whitening,
    which keeps every whitened unit as close as possible to its hidden unit). Its square is the
    variance of the decoded feature, ``theta_k' Cov(Z) theta_k``, so it is unchanged by *any*
    invertible linear change of the hidden units, and a unit that barely varies cannot inflate
    it. It is also **debiased**: a least-squares decoder fitted on ``n`` cases always picks up
    noise, which adds (for ``h`` hidden units) about ``h sigma_k^2 / n`` to the squared length
    even for a feature the hidden space does not carry at all. radiolens subtracts the
    heteroscedasticity-robust (HC2) estimate of that term, so the squared importance is unbiased
    for the variance of the best linear prediction of the feature from the hidden space
    (exactly so for homoscedastic noise), and clips it at 0 (``I = 0``: no detectable linear
    content). The weights in the decoder tables are shrunk by the same factor, so ``I`` stays
    the length of the feature's weight vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Default ridge penalties searched by (exact leave-one-out) cross-validation, on standardised Z.
DEFAULT_RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 6, 28))
#: Units the importance can be measured in (see the module docstring).
SCALES: tuple[str, ...] = ("paper", "standardized", "whitened")
#: A hidden unit whose spread is below this fraction of the widest unit's is "near-constant".
MIN_UNIT_SPREAD = 1e-3


@dataclass
class Decoder:
    """A fitted linear decoder ``R ~ Z`` for one encoder (and one fold)."""

    coef: np.ndarray  # (h, p) in raw-Z units, for prediction
    intercept: np.ndarray  # (p,)
    coef_scaled: np.ndarray  # (h, p) in the units of `scale`; its column norms are `importance`
    importance: np.ndarray  # (p,) the reported importance I
    importance_plugin: np.ndarray  # (p,) I before debiasing (equal to `importance` unless whitened)
    importance_sq: np.ndarray  # (p,) debiased squared importance before clipping at 0 (may be < 0)
    scale: str
    alpha: float  # ridge penalty (0: least squares)
    truncate: float  # singular values below truncate * largest are left out (0: none)
    method: str  # "ols", "ols+ridge_fallback", "ols+truncated", "ridge"
    condition_number: float
    n_constant_units: int
    standardized: bool  # the solve (and a ridge penalty) used per-unit standardised Z
    fit_intercept: bool
    loo_pred: np.ndarray | None = None  # (n, p) exact leave-one-out predictions (unit weights)
    leverage: np.ndarray | None = None  # (n,) diagonal of the hat matrix (unit weights)
    # (p,) debiased / plain length of the whitened decoder: how far the fitted signal must shrink
    # to have the debiased strength (1: no noise to remove; see wild_responses)
    signal_shrink: np.ndarray | None = None
    response_mean: np.ndarray | None = None  # (p,) the decoder cases' mean of R (0 without intercept)
    alpha_at_edge: bool = False

    def predict(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.coef + self.intercept

    def shrunk_predict(self, Z: np.ndarray) -> np.ndarray:
        """Predictions of the *debiased* model: the decoder's signal shrunk to its debiased
        strength (``signal_shrink``; a least-squares fit also carries the noise it fitted)."""
        return self.response_mean + (self.predict(Z) - self.response_mean) * self.signal_shrink

    def wild_responses(self, Z: np.ndarray, R: np.ndarray, signs: np.ndarray) -> np.ndarray:
        """Responses of one wild-bootstrap draw from the debiased model of the data: its
        predictions (:meth:`shrunk_predict`; resampling around the plain fit would add the
        fitted noise twice) plus each case's residual, HC2-scaled (``e_i / sqrt(1 - h_ii)``),
        times a random sign ``signs[i]``."""
        fitted = self.predict(Z)
        scale = 1.0 / np.sqrt(np.maximum(1.0 - self.leverage, 1e-12))
        return self.shrunk_predict(Z) + (R - fitted) * (scale * signs)[:, None]

    @property
    def importance_model(self) -> np.ndarray:
        """The importance of the debiased model :meth:`wild_responses` draws from, in the
        report's units (for the whitened scale, the debiased importance itself)."""
        return self.importance if self.scale == "whitened" else self.importance_plugin * self.signal_shrink

    def refit(self, Z: np.ndarray, R: np.ndarray, w: np.ndarray | None = None, *, loo: bool = False) -> Decoder:
        """The same decoder (penalty, truncation, units) fitted to other cases or case weights."""
        return fit_decoder(Z, R, w, scale=self.scale, alpha=self.alpha, truncate=self.truncate,
                           standardize=self.standardized, fit_intercept=self.fit_intercept, loo=loo,
                           method=self.method)


def column_spread(Z: np.ndarray, w: np.ndarray | None = None, centred: bool = True) -> np.ndarray:
    """Per-unit standard deviation (``centred``) or root mean square, with optional case weights."""
    w = np.ones(len(Z)) if w is None else w
    total = w.sum()
    second = w @ (Z * Z) / total
    if not centred:
        return np.sqrt(second)
    mean = w @ Z / total
    return np.sqrt(np.maximum(second - mean**2, 0.0))


def active_units(sd: np.ndarray) -> np.ndarray:
    """Units that vary at all; a unit constant over the cases carries nothing beyond the intercept."""
    top = sd.max() if sd.size else 0.0
    return sd > 1e-10 * max(top, 1e-300)


def loo_ridge_alpha(U: np.ndarray, s: np.ndarray, Rc: np.ndarray, alphas: Sequence[float],
                    offset: float) -> tuple[float, bool]:
    """Pick the ridge penalty minimising the exact leave-one-out squared error summed over features.

    Uses ``resid_i = ||Rc_i||^2 - 2 sum_j f_j u_ij M_ij + (u_i f)^T G (u_i f)`` with
    ``M = Rc UtR^T`` and ``G = UtR UtR^T`` so each penalty costs O(n h^2), not O(n h p).
    ``offset`` is the intercept's share of each leverage (``1/n``, or 0 without intercept).
    """
    UtR = U.T @ Rc  # (k, p)
    M = Rc @ UtR.T  # (n, k)
    G = UtR @ UtR.T  # (k, k)
    rsq = np.einsum("ij,ij->i", Rc, Rc)
    s2 = s**2
    best, best_err = float(alphas[0]), np.inf
    for alpha in alphas:
        f = s2 / (s2 + alpha)
        A = U * f
        resid = rsq - 2 * np.einsum("ij,ij->i", A, M) + np.einsum("ij,ij->i", A @ G, A)
        lev = offset + np.einsum("ij,ij->i", A, U)
        err = float(np.sum(np.maximum(resid, 0.0) / np.maximum(1.0 - lev, 1e-12) ** 2))
        if err < best_err:
            best, best_err = float(alpha), err
    return best, best in (float(alphas[0]), float(alphas[-1]))


def _centred_design(Z, R, w, *, standardize: bool, fit_intercept: bool):
    """Weighted, (centred,) optionally standardised active design: what every solve works on."""
    total = w.sum()
    sd = column_spread(Z, w, centred=fit_intercept)
    active = active_units(sd)
    Za = Z[:, active]
    if standardize:
        Za = Za / sd[active]
    zm = w @ Za / total if fit_intercept else np.zeros(Za.shape[1])
    rm = w @ R / total if fit_intercept else np.zeros(R.shape[1])
    sw = np.sqrt(w)[:, None]
    return (Za - zm) * sw, (R - rm) * sw, sd, active, zm, rm


def choose_decoder(
    Z: np.ndarray,
    R: np.ndarray,
    *,
    decoder: str,
    scale: str,
    ridge_alphas: Sequence[float] = DEFAULT_RIDGE_ALPHAS,
    max_condition: float = 1e7,
    force_ridge: bool = False,
    fit_intercept: bool = True,
    loo: bool = False,
) -> Decoder:
    """Fit one encoder's decoder on all its cases, making the choices that need them.

    ``decoder="ridge"`` (or ``force_ridge``, when least squares is underdetermined) picks the
    penalty on standardised ``Z`` by exact leave-one-out. For least squares on a ``Z`` whose
    condition number exceeds ``max_condition``, the paper's and the standardised scale add the
    smallest ridge that bounds it (``"ols+ridge_fallback"``); the whitened scale, whose
    importance does not depend on the conditioning, instead leaves out the directions of ``Z``
    with singular values below ``1 / max_condition`` of the largest (``"ols+truncated"``).
    With ``alpha = 0`` and no truncation the solution is the minimum-norm least-squares one,
    the same as :class:`sklearn.linear_model.LinearRegression`.
    """
    use_ridge = decoder == "ridge" or force_ridge
    standardize = use_ridge or scale == "standardized"
    w = np.ones(len(Z))
    A, B, _, _, _, _ = _centred_design(Z, R, w, standardize=standardize, fit_intercept=fit_intercept)
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    cond = float(s[0] / s[-1]) if s.size and s[-1] > 0 else math.inf
    alpha, truncate, method, at_edge = 0.0, 0.0, "ols", False
    if use_ridge:
        alpha, at_edge = loo_ridge_alpha(U, s, B, ridge_alphas, 1.0 / len(Z) if fit_intercept else 0.0)
        method = "ridge"
    elif s.size and cond > max_condition:
        if scale == "whitened":
            truncate, method = 1.0 / max_condition, "ols+truncated"
        else:
            # Smallest ridge that bounds the condition number of the regularised Gram matrix
            # (s0^2 + a) / (s_min^2 + a) by about max_condition^2.
            alpha, method = float(s[0] ** 2 / max_condition**2), "ols+ridge_fallback"
    dec = fit_decoder(Z, R, None, scale=scale, alpha=alpha, truncate=truncate, standardize=standardize,
                      fit_intercept=fit_intercept, loo=loo, method=method, _svd=(U, s, Vt))
    dec.condition_number = cond
    dec.alpha_at_edge = at_edge
    return dec


def fit_decoder(
    Z: np.ndarray,
    R: np.ndarray,
    w: np.ndarray | None = None,
    *,
    scale: str = "paper",
    alpha: float = 0.0,
    truncate: float = 0.0,
    standardize: bool = False,
    fit_intercept: bool = True,
    loo: bool = False,
    method: str = "ols",
    _svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Decoder:
    """Least squares (``alpha = 0``) or ridge with fixed settings, optionally with case weights
    ``w`` (bootstrap counts: a case drawn twice counts twice; weight 0 leaves it out).

    Exact leave-one-out predictions (``loo``) need unit weights.
    """
    n, h = Z.shape
    p = R.shape[1]
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    used = np.flatnonzero(w > 0)
    Zu, Ru, wu = Z[used], R[used], w[used]
    total = wu.sum()
    A, B, sd, active, zm, rm = _centred_design(Zu, Ru, wu, standardize=standardize, fit_intercept=fit_intercept)
    U, s, Vt = np.linalg.svd(A, full_matrices=False) if _svd is None else _svd  # the same A (unit weights)
    cond = float(s[0] / s[-1]) if s.size and s[-1] > 0 else math.inf
    if alpha > 0:
        f = s**2 / (s**2 + alpha)
    else:
        # numerically zero directions (and, when truncating, ill-determined ones) are left out
        floor = max(truncate, np.finfo(float).eps * max(A.shape)) * (s[0] if s.size else 0.0)
        f = (s > floor).astype(float)
    inv = np.divide(f, s, out=np.zeros_like(s), where=s > 0)
    UtB = U.T @ B
    coef_solve = Vt.T @ (inv[:, None] * UtB)  # (k_active, p), in the units of the solve
    sd_a = sd[active]
    coef_a = coef_solve / sd_a[:, None] if standardize else coef_solve
    coef = np.zeros((h, p))
    coef[active] = coef_a
    intercept = rm - (zm * sd_a if standardize else zm) @ coef_a

    fitted = U @ (f[:, None] * UtB)  # in the weighted, centred space of A and B
    hat = np.einsum("ij,ij->i", U * f, U) / wu  # leverage of one draw of each case
    offset = 1.0 / total if fit_intercept else 0.0
    # Decoder on ZCA-whitened Z: Cov(Z)^(1/2) theta = V diag(s * inv) U'B / sqrt(total).
    g = s * inv
    theta_w = Vt.T @ (g[:, None] * UtB) / np.sqrt(total)
    white_sq = np.einsum("kp,kp->p", theta_w, theta_w)
    # HC2 estimate of the noise in the squared length: (1/total) sum_i |g*U_i|^2 e_i^2 / (1 - lev_i)
    lev = np.minimum(hat + offset, 1.0 - 1e-9)
    spread = np.einsum("ij,ij->i", U * g**2, U) / (wu * (1.0 - lev))
    white_debiased_sq = white_sq - spread @ (B - fitted) ** 2 / total
    white = np.sqrt(white_sq)
    shrink = np.divide(np.sqrt(np.maximum(white_debiased_sq, 0.0)), white, out=np.zeros_like(white), where=white > 0)
    if scale == "whitened":
        importance_sq, plug = white_debiased_sq, white
        importance = np.sqrt(np.maximum(importance_sq, 0.0))
        scaled_a = theta_w * shrink
    else:
        scaled_a = coef_solve if scale == "standardized" else coef_a
        importance = plug = np.sqrt(np.einsum("kp,kp->p", scaled_a, scaled_a))
        importance_sq = importance**2
    coef_scaled = np.zeros((h, p))
    coef_scaled[active] = scaled_a

    loo_pred = leverage = None
    if np.all(wu == 1.0) and len(used) == n:
        leverage = hat + offset
    if loo:
        if leverage is None:
            raise ValueError("leave-one-out predictions need unit case weights")
        # with unit weights B - fitted is the residual R - prediction
        loo_pred = Ru - (B - fitted) / np.maximum(1.0 - leverage, 1e-12)[:, None]
    return Decoder(
        coef=coef, intercept=intercept, coef_scaled=coef_scaled, importance=importance, importance_plugin=plug,
        importance_sq=importance_sq,
        scale=scale, alpha=float(alpha), truncate=float(truncate), method=method, condition_number=cond,
        n_constant_units=int((~active).sum()), standardized=standardize, fit_intercept=fit_intercept,
        loo_pred=loo_pred, leverage=leverage, signal_shrink=shrink, response_mean=rm,
    )


def r2_per_feature(y: np.ndarray, pred: np.ndarray, min_tss: float = 0.0) -> np.ndarray:
    """Per-feature R^2; NaN where the feature (nearly) does not vary (sum of squares <= ``min_tss``)."""
    rss = np.sum((y - pred) ** 2, axis=0)
    tss = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tss > max(min_tss, 0.0), 1.0 - rss / tss, np.nan)


def weighted_r2(W: np.ndarray, y: np.ndarray, pred: np.ndarray, min_tss: float = 0.0) -> np.ndarray:
    """Per-feature R^2 under each row of case weights ``W`` (B, n) -> (B, p)."""
    total = W.sum(axis=1, keepdims=True)
    rss = W @ ((y - pred) ** 2)
    tss = W @ (y**2) - (W @ y) ** 2 / total
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tss > max(min_tss, 1e-300), 1.0 - rss / tss, np.nan)
