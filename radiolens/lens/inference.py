"""Uncertainty of the lens: bootstrap intervals, paired permutation tests, p-value adjustment,
and the Wilcoxon tests and score tables of the paper's Table 1 / Fig. 2."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from radiolens.lens.decoders import Decoder, r2_per_feature, weighted_fit, weighted_r2


def adjust_pvalues(p: np.ndarray, method: str = "fdr_bh") -> np.ndarray:
    """Multiplicity-adjusted p-values: ``"fdr_bh"`` (Benjamini-Hochberg) or ``"holm"``.

    NaN p-values (features that could not be tested) stay NaN and do not count as tests.
    """
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


def stars(p: float) -> str:
    """The paper's significance stars: * < 0.05, ** < 0.01, *** < 0.001, else ``"ns"``."""
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "ns"


def wilcoxon(err_pre: np.ndarray, err_ft: np.ndarray) -> tuple[float, float]:
    diff = err_pre - err_ft
    if np.all(diff == 0):
        # scipy returns (0, 1) here too, with a RuntimeWarning; an identical encoder is no shift.
        return 0.0, 1.0
    res = scipy.stats.wilcoxon(err_pre, err_ft)
    return float(res.statistic), float(res.pvalue)


def parallel_map(fn: Callable, items: Sequence, *, n_threads: int | None, progress: bool, desc: str) -> list:
    """``[fn(i) for i in items]`` on a thread pool (BLAS releases the GIL), one BLAS thread per
    worker; order kept, so results do not depend on the number of threads.

    ``n_threads=None`` uses the CPU count, at most 4.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    workers = max(1, int(n_threads) if n_threads is not None else min(4, os.cpu_count() or 1))
    with threadpool_limits(limits=1):
        if workers == 1:
            return [fn(i) for i in tqdm(items, desc=desc, disable=not progress, leave=False)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, disable=not progress, leave=False))


def bootstrap_intervals(imp: pd.DataFrame, Zp, Zf, Rn, dec_p: Decoder, dec_f: Decoder, scale: str, Yt,
                        pred_p, pred_f, B: int, ci: float, rng: np.random.Generator, mapper: Callable) -> None:
    """Add basic bootstrap intervals ``{I_pre, I_ft, delta_I, delta_r2}_{lo,hi}`` to ``imp``."""
    n = len(Zp)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=B).astype(np.float64)

    def one(b: int) -> tuple[np.ndarray, np.ndarray]:
        w = counts[b]
        fp = weighted_fit(Zp, Rn, w, alpha=dec_p.alpha, standardized=dec_p.standardized, scale=scale)
        ff = weighted_fit(Zf, Rn, w, alpha=dec_f.alpha, standardized=dec_f.standardized, scale=scale)
        return fp.importance, ff.importance

    results = mapper(one, range(B), "bootstrap")
    Ip = np.stack([r[0] for r in results])
    If = np.stack([r[1] for r in results])
    m = len(Yt)
    W = rng.multinomial(m, np.full(m, 1.0 / m), size=B).astype(np.float64)
    dr2 = weighted_r2(W, Yt, pred_f) - weighted_r2(W, Yt, pred_p)
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


def permutation_pvalues(imp: pd.DataFrame, Zp, Zf, Rn, dec_p: Decoder, dec_f: Decoder, scale: str, B: int,
                        stat_name: str, p_adjust: str, rng: np.random.Generator, test, mapper: Callable) -> None:
    """Paired permutation test; adds ``p_value`` and ``p_adjusted`` to ``imp``.

    ``test`` is ``(Zp_test, Zf_test, Y_test)`` or None (statistics on leave-one-out predictions).
    """
    n = len(Zp)
    ones = np.ones(n)
    kw_p = dict(alpha=dec_p.alpha, standardized=dec_p.standardized, scale=scale)
    kw_f = dict(alpha=dec_f.alpha, standardized=dec_f.standardized, scale=scale)
    use_r2 = stat_name == "delta_r2"
    Zpt, Zft = (test[0], test[1]) if test is not None else (None, None)

    def statistic(A, Bm, At, Bt):
        fa = weighted_fit(A, Rn, ones, loo=use_r2 and test is None, **kw_p)
        fb = weighted_fit(Bm, Rn, ones, loo=use_r2 and test is None, **kw_f)
        if not use_r2:
            return np.abs(fb.importance - fa.importance)
        if test is None:
            return np.abs(r2_per_feature(Rn, fb.loo_pred) - r2_per_feature(Rn, fa.loo_pred))
        Yt = test[2]
        return np.abs(r2_per_feature(Yt, fb.predict(Bt)) - r2_per_feature(Yt, fa.predict(At)))

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
    obs = mapper(lambda _: statistic(Zp, Zf, Zpt, Zft), [0], "observed")[0]
    tol = 1e-10 * max(float(np.nanmax(obs, initial=0.0)), 1e-300)
    exceed = np.zeros(Rn.shape[1])
    for stat in mapper(one, range(B), "permutations"):
        exceed += stat >= obs - tol
    p = (1.0 + exceed) / (1.0 + B)
    imp["p_value"] = p
    imp["p_adjusted"] = adjust_pvalues(p, p_adjust)


def score_table(info: pd.DataFrame, Y, pred_p, pred_f, r2_pre, r2_ft) -> pd.DataFrame:
    """Tidy ``encoder, level, group, r2, mse`` per feature, modality, image type, family, overall."""
    rows = []
    for encoder, pred, r2 in (("pre", pred_p, r2_pre), ("ft", pred_f, r2_ft)):
        mse = np.mean((Y - pred) ** 2, axis=0)
        rows.append((encoder, "overall", "all", float(np.nanmean(r2)), float(mse.mean())))
        for level in ("modality", "image_type", "family"):
            for group, idx in info.groupby(level, sort=False).groups.items():
                pos = info.index.get_indexer(idx)
                rows.append((encoder, level, str(group), float(np.nanmean(r2[pos])), float(mse[pos].mean())))
        for j, col in enumerate(info["column"]):
            rows.append((encoder, "feature", col, float(r2[j]), float(mse[j])))
    return pd.DataFrame(rows, columns=["encoder", "level", "group", "r2", "mse"])


def wilcoxon_table(info: pd.DataFrame, modalities: Sequence[str], Y, pred_p, pred_f) -> pd.DataFrame:
    """Wilcoxon signed-rank tests per family (modalities pooled, then per modality) of the
    per-case squared errors, pre vs ft, with Holm-adjusted p-values and the paper's stars."""
    se_p = (Y - pred_p) ** 2
    se_f = (Y - pred_f) ** 2
    rows = []
    for modality in ["all"] + list(modalities):
        sub = info if modality == "all" else info[info["modality"] == modality]
        for family, idx in sub.groupby("family", sort=False).groups.items():
            pos = info.index.get_indexer(idx)
            a = se_p[:, pos].mean(axis=1)
            b = se_f[:, pos].mean(axis=1)
            stat, pval = wilcoxon(a, b)
            rows.append({"modality": modality, "family": str(family), "n_cases": len(a),
                         "statistic": stat, "p_value": pval})
    tests = pd.DataFrame(rows, columns=["modality", "family", "n_cases", "statistic", "p_value"])
    tests["p_adjusted"] = np.nan
    pooled = tests["modality"] == "all"
    for mask in (pooled, ~pooled):
        if mask.any():
            tests.loc[mask, "p_adjusted"] = adjust_pvalues(tests.loc[mask, "p_value"].to_numpy(), "holm")
    tests["stars"] = [stars(p) for p in tests["p_value"]]
    return tests
