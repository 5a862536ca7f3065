"""Stage 2 of the lens: closed-form linear decoders from the frozen hidden space to radiomics.

:func:`fit_decoder` solves least squares (or ridge) with an intercept from the SVD of the centred
hidden activations ``Z``, never forming an explicit inverse (PAPER.md stage 2);
:func:`weighted_fit` refits with case weights through the normal equations, for the many refits
of the bootstrap and the permutation test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

#: Default ridge penalties searched by (exact leave-one-out) cross-validation, on standardised Z.
DEFAULT_RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 6, 28))


@dataclass
class Decoder:
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
MIN_UNIT_SPREAD = 1e-3


def column_sd(Z: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    if w is None:
        return Z.std(axis=0)
    total = w.sum()
    mean = w @ Z / total
    return np.sqrt(np.maximum(w @ (Z * Z) / total - mean**2, 0.0))


def active_units(sd: np.ndarray) -> np.ndarray:
    # A hidden unit that does not vary over the cases carries nothing beyond the intercept.
    top = sd.max() if sd.size else 0.0
    return sd > 1e-10 * max(top, 1e-300)


def loo_ridge_alpha(U: np.ndarray, s: np.ndarray, Rc: np.ndarray, alphas: Sequence[float]) -> tuple[float, bool]:
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


def fit_decoder(
    Z: np.ndarray,
    R: np.ndarray,
    *,
    decoder: str,
    scale: str,
    ridge_alphas: Sequence[float],
    max_condition: float,
    force_ridge: bool = False,
    loo: bool = True,
) -> Decoder:
    """Closed-form least squares (or ridge) with intercept, via the SVD of the centred design.

    Never forms an explicit inverse. With ``alpha = 0`` this is the minimum-norm least-squares
    solution, the same as :class:`sklearn.linear_model.LinearRegression`.
    """
    n, h = Z.shape
    sd = column_sd(Z)
    active = active_units(sd)
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
        alpha, at_edge = loo_ridge_alpha(U, s, Rc, ridge_alphas)
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
    return Decoder(
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
class WeightedFit:
    importance: np.ndarray  # (p,) row norms in the units of `scale`
    coef: np.ndarray  # (k_active, p) raw-Z units
    intercept: np.ndarray  # (p,)
    active: np.ndarray  # (h,) bool
    loo_pred: np.ndarray | None = None

    def predict(self, Z: np.ndarray) -> np.ndarray:
        return Z[:, self.active] @ self.coef + self.intercept


def weighted_fit(
    Z: np.ndarray,
    R: np.ndarray,
    w: np.ndarray,
    *,
    alpha: float,
    standardized: bool,
    scale: str,
    loo: bool = False,
) -> WeightedFit:
    """Decoder fitted with case weights ``w`` (bootstrap counts) through the normal equations.

    Cholesky on the weighted Gram matrix: O(n h p) per call, no SVD, used for the many refits
    of the bootstrap and the permutation test. Standardisation (when the decoder uses it) is
    recomputed on the weighted sample. ``loo`` adds exact leave-one-out predictions (unit
    weights only).
    """
    total = w.sum()
    sd = column_sd(Z, w)
    active = active_units(sd)
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
    out = WeightedFit(importance=importance, coef=coef_raw, intercept=intercept, active=active)
    if loo:
        fitted = Zc @ coef + rm
        lev = 1.0 / total + np.einsum("ij,ji->i", Zc, scipy.linalg.cho_solve(factor, Zc.T, check_finite=False))
        out.loo_pred = R - (R - fitted) / np.maximum(1.0 - lev, 1e-12)[:, None]
    return out


def r2_per_feature(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    rss = np.sum((y - pred) ** 2, axis=0)
    tss = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tss > 0, 1.0 - rss / tss, np.nan)


def weighted_r2(W: np.ndarray, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-feature R^2 under each row of case weights ``W`` (B, n) -> (B, p)."""
    total = W.sum(axis=1, keepdims=True)
    rss = W @ ((y - pred) ** 2)
    tss = W @ (y**2) - (W @ y) ** 2 / total
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tss > 1e-300, 1.0 - rss / tss, np.nan)
