"""Uncertainty of the lens: bootstrap intervals, paired permutation tests, p-value adjustment,
and the Wilcoxon tests and score tables of the paper's Table 1 / Fig. 2.

Everything here works on *folds*: sets of decoder cases that share one frozen projection. The
paper's protocol has one fold (all cases, the projection trained on them); the cross-fitted
protocol has one fold per part of the training cases, each read through the projection trained
on the other parts. The importance combines the folds as the root mean square of the folds'
importances (the mean of their debiased squares, clipped at 0), predictions of evaluation cases
as the mean of the folds' predictions.

Which quantity each interval is for, and how it is built, is documented in
:meth:`radiolens.lens.RadiomicLens.compare`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from radiolens.lens.decoders import Decoder, r2_per_feature, weighted_r2


@dataclass
class Fold:
    """Decoder cases read through one frozen projection, and their fitted decoders."""

    Zp: np.ndarray  # decoder cases x hidden units, pre-trained encoder
    Zf: np.ndarray  # the same cases, fine-tuned encoder
    Y: np.ndarray  # their min-max scaled radiomics
    positions: np.ndarray  # their rows in the table compare() was given
    dec_p: Decoder
    dec_f: Decoder
    Zpt: np.ndarray | None = None  # evaluation (test) cases through this fold's projection
    Zft: np.ndarray | None = None


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


# --------------------------------------------------------------------------------------------
# combining folds
# --------------------------------------------------------------------------------------------
def combined_importance(decoders: Sequence[Decoder]) -> tuple[np.ndarray, np.ndarray]:
    """``(I, I_plugin)`` over folds: root of the mean (debiased) squared importance, clipped at 0."""
    sq = np.mean([d.importance_sq for d in decoders], axis=0)
    plug = np.sqrt(np.mean([d.importance_plugin**2 for d in decoders], axis=0))
    return np.sqrt(np.maximum(sq, 0.0)), plug


def squared_importance(decoders: Sequence[Decoder]) -> np.ndarray:
    """The combined importance's square before clipping: the mean over folds of the debiased
    squared importance (may be < 0). Its estimation noise is roughly symmetric around the
    truth, also where the truth is 0, where the noise of ``I`` itself is not."""
    return np.mean([d.importance_sq for d in decoders], axis=0)


def model_importance_sq(decoders: Sequence[Decoder]) -> np.ndarray:
    """The squared combined importance of the debiased model the bootstrap draws from."""
    return np.mean([d.importance_model**2 for d in decoders], axis=0)


def test_predictions(folds: Sequence[Fold], decs_p, decs_f, Zt_p=None, Zt_f=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean prediction over folds of the evaluation cases (optionally with swapped inputs)."""
    Zt_p = Zt_p or [f.Zpt for f in folds]
    Zt_f = Zt_f or [f.Zft for f in folds]
    pred_p = np.mean([d.predict(z) for d, z in zip(decs_p, Zt_p)], axis=0)
    pred_f = np.mean([d.predict(z) for d, z in zip(decs_f, Zt_f)], axis=0)
    return pred_p, pred_f


def loo_predictions(folds: Sequence[Fold], decs_p, decs_f, n: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact leave-one-out predictions of every decoder case, each from its own fold."""
    pred_p, pred_f = np.empty((n, p)), np.empty((n, p))
    for fold, dp, df in zip(folds, decs_p, decs_f):
        pred_p[fold.positions] = dp.loo_pred
        pred_f[fold.positions] = df.loo_pred
    return pred_p, pred_f


def reflected_interval(est: np.ndarray, replicates: np.ndarray, centre: np.ndarray, ci: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``[est - (q_hi - centre), est - (q_lo - centre)]``: the bootstrap's spread of the error
    around ``centre`` (the quantity's value in the bootstrap world), reflected onto ``est``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q_lo = np.nanpercentile(replicates, 100 * (1 - ci) / 2, axis=0)
        q_hi = np.nanpercentile(replicates, 100 * (1 + ci) / 2, axis=0)
    return est - (q_hi - centre), est - (q_lo - centre)


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------
def bootstrap_replicates(folds: Sequence[Fold], Y_eval: np.ndarray, has_test: bool, B: int,
                         rng: np.random.Generator, mapper: Callable, min_tss: float) -> dict[str, np.ndarray]:
    """Bootstrap replicates of the squared importances ``I_pre_sq, I_ft_sq``
    (:func:`squared_importance`) and of ``delta_r2``, each ``(B, p)``.

    The decoders are refitted by a *wild* bootstrap from a debiased model of the data
    (:meth:`Decoder.wild_responses`): every decoder case keeps its hidden activations, so a
    refit has as many distinct cases as the original (a case resample holds ~63% of them and,
    with few cases per hidden unit, its refits scatter far more than the estimate does), and its
    random sign is shared by both encoders, so their pairing is kept. ``delta_r2`` adds two
    independent parts: the refitted decoders scored on the observed evaluation cases (their
    estimation noise), and the debiased model's predictions scored on the evaluation cases
    resampled with replacement (the sampling of the evaluation cases). Resampling the evaluation
    cases around the *refitted* decoders would count the product of the two noises twice.
    Without test cases the evaluation uses the refits' leave-one-out predictions.
    """
    signs = [np.where(rng.random((B, len(f.Y))) < 0.5, -1.0, 1.0) for f in folds]
    m, p = Y_eval.shape
    eval_weights = rng.multinomial(m, np.full(m, 1.0 / m), size=B).astype(np.float64)
    if has_test:
        model_p = np.mean([f.dec_p.shrunk_predict(f.Zpt) for f in folds], axis=0)
        model_f = np.mean([f.dec_f.shrunk_predict(f.Zft) for f in folds], axis=0)
    else:
        model_p, model_f = np.empty((m, p)), np.empty((m, p))
        for f in folds:
            model_p[f.positions] = f.dec_p.shrunk_predict(f.Zp)
            model_f[f.positions] = f.dec_f.shrunk_predict(f.Zf)
    model_dr2 = r2_per_feature(Y_eval, model_f, min_tss) - r2_per_feature(Y_eval, model_p, min_tss)
    sampling = (weighted_r2(eval_weights, Y_eval, model_f, min_tss)
                - weighted_r2(eval_weights, Y_eval, model_p, min_tss) - model_dr2)

    def one(b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        loo = not has_test
        decs_p = [f.dec_p.refit(f.Zp, f.dec_p.wild_responses(f.Zp, f.Y, sg[b]), loo=loo) for f, sg in zip(folds, signs)]
        decs_f = [f.dec_f.refit(f.Zf, f.dec_f.wild_responses(f.Zf, f.Y, sg[b]), loo=loo) for f, sg in zip(folds, signs)]
        if has_test:
            pred_p, pred_f = test_predictions(folds, decs_p, decs_f)
        else:
            pred_p, pred_f = loo_predictions(folds, decs_p, decs_f, m, p)
        dr2 = r2_per_feature(Y_eval, pred_f, min_tss) - r2_per_feature(Y_eval, pred_p, min_tss)
        return squared_importance(decs_p), squared_importance(decs_f), dr2 + sampling[b]

    results = mapper(one, range(B), "bootstrap")
    return {"I_pre_sq": np.stack([r[0] for r in results]), "I_ft_sq": np.stack([r[1] for r in results]),
            "delta_r2": np.stack([r[2] for r in results])}


def add_intervals(imp: pd.DataFrame, reps: dict[str, np.ndarray], decs_p, decs_f, ci: float) -> None:
    """Add bootstrap intervals ``{I_pre, I_ft, delta_I, delta_r2}_{lo,hi}`` to ``imp`` (see
    :meth:`radiolens.lens.RadiomicLens.compare`)."""
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    # Plausible true squared importances: the estimate minus each replicate's error around
    # the bootstrap world's truth (the debiased model it draws from). Their signed root keeps the
    # noise of a feature with no content symmetric around 0, so a difference of importances is
    # not pulled towards 0 where one side carries nothing; I >= 0 is imposed on I's own bounds.
    plausible = {}
    for encoder, decs in (("pre", decs_p), ("ft", decs_f)):
        error = reps[f"I_{encoder}_sq"] - model_importance_sq(decs)
        plausible[encoder] = _signed_root(squared_importance(decs) - error)
    draws = {"I_pre": plausible["pre"], "I_ft": plausible["ft"], "delta_I": plausible["ft"] - plausible["pre"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a feature that is not evaluable
        for name, values in draws.items():
            low, high = np.nanpercentile(values, lo_q, axis=0), np.nanpercentile(values, hi_q, axis=0)
            if name != "delta_I":  # an importance is >= 0
                low, high = np.maximum(low, 0.0), np.maximum(high, 0.0)
            imp[f"{name}_lo"], imp[f"{name}_hi"] = low, high
        centre = np.nanmedian(reps["delta_r2"], axis=0)
    imp["delta_r2_lo"], imp["delta_r2_hi"] = reflected_interval(imp["delta_r2"].to_numpy(), reps["delta_r2"], centre, ci)


def _signed_root(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.sqrt(np.abs(x))


def decoder_tables(folds: Sequence[Fold], cols: list[str], h: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hidden units x features, in the importance's units; with several folds the folds'
    units are stacked (``"fold1/z_003"``) and scaled so a column's norm is still ``I``."""
    if len(folds) == 1:
        index = pd.RangeIndex(h, name="hidden_unit")
        return (pd.DataFrame(folds[0].dec_p.coef_scaled, index=index, columns=cols),
                pd.DataFrame(folds[0].dec_f.coef_scaled, index=index, columns=cols))
    index = pd.Index([f"fold{k + 1}/z_{j:03d}" for k in range(len(folds)) for j in range(h)], name="hidden_unit")
    tables = []
    for decs in ([f.dec_p for f in folds], [f.dec_f for f in folds]):
        stacked = np.vstack([d.coef_scaled for d in decs])
        norm = np.linalg.norm(stacked, axis=0)
        target = combined_importance(decs)[0]
        stacked = stacked * np.divide(target, norm, out=np.zeros_like(norm), where=norm > 0)
        tables.append(pd.DataFrame(stacked, index=index, columns=cols))
    return tables[0], tables[1]


# --------------------------------------------------------------------------------------------
# permutation test
# --------------------------------------------------------------------------------------------
#: Statistics of the permutation test (see :func:`permutation_pvalues`).
PERMUTATION_STATS = ("combined", "delta_r2", "delta_I")


def permutation_pvalues(folds: Sequence[Fold], Y_eval: np.ndarray, has_test: bool, stat_name: str, B: int,
                        rng: np.random.Generator, mapper: Callable, min_tss: float) -> np.ndarray:
    """Paired permutation p-values, one per feature (NaN where ``delta_r2`` is not defined).

    Each permutation swaps the pre-trained and fine-tuned embeddings of every case (decoder
    cases and evaluation cases alike) with probability 1/2, refits every fold's decoders with
    the same settings and recomputes the statistic: ``|delta_r2|`` on the evaluation cases,
    ``|delta_I|`` on the decoder cases, or (``"combined"``) both, joined by Fisher's
    non-parametric combination (Pesarin): each statistic is turned into its permutation
    p-value (among the observed and permuted values), the two p-values into ``-log p1 - log
    p2``, and that is compared with the same quantity of every permutation. The decoder cases
    and the evaluation cases are different cases, so the two statistics carry largely separate
    evidence. Ties count as exceedances within a tolerance relative to each feature's own
    observed statistic.
    """
    swaps = [rng.random((B, len(f.Y))) < 0.5 for f in folds]
    swaps_t = rng.random((B, len(Y_eval))) < 0.5 if has_test else None
    want_r2, want_I = stat_name in ("combined", "delta_r2"), stat_name in ("combined", "delta_I")
    n, p = Y_eval.shape

    def statistic(decoder_inputs, test_inputs) -> np.ndarray:
        loo = want_r2 and not has_test
        decs_p = [f.dec_p.refit(a, f.Y, loo=loo) for f, (a, _) in zip(folds, decoder_inputs)]
        decs_f = [f.dec_f.refit(b, f.Y, loo=loo) for f, (_, b) in zip(folds, decoder_inputs)]
        stats = []
        if want_r2:
            if has_test:
                pred_p, pred_f = test_predictions(folds, decs_p, decs_f, *test_inputs)
            else:
                pred_p, pred_f = loo_predictions(folds, decs_p, decs_f, n, p)
            stats.append(np.abs(r2_per_feature(Y_eval, pred_f, min_tss) - r2_per_feature(Y_eval, pred_p, min_tss)))
        if want_I:
            stats.append(np.abs(combined_importance(decs_f)[0] - combined_importance(decs_p)[0]))
        return np.stack(stats)  # (statistics, p)

    def one(b: int) -> np.ndarray:
        inputs = []
        for f, s in zip(folds, swaps):
            mask = s[b][:, None]
            inputs.append((np.where(mask, f.Zf, f.Zp), np.where(mask, f.Zp, f.Zf)))
        test_inputs = (None, None)
        if has_test:
            mask = swaps_t[b][:, None]
            test_inputs = ([np.where(mask, f.Zft, f.Zpt) for f in folds], [np.where(mask, f.Zpt, f.Zft) for f in folds])
        return statistic(inputs, test_inputs)

    # The observed statistic goes through the same solver as the permutations, so an
    # encoder compared with itself gives permutations identical to it (p = 1).
    observed = mapper(lambda _: statistic([(f.Zp, f.Zf) for f in folds], (None, None)), [0], "observed")[0]
    permuted = np.stack(mapper(one, range(B), "permutations"))  # (B, statistics, p)
    values = np.concatenate([observed[None], permuted])  # the observed first
    # p-value of every value (observed and permuted) among all B + 1 values of its statistic
    tol = 1e-10 * np.abs(observed) + 1e-13
    exceed = np.empty_like(values)
    for k in range(values.shape[1]):
        for j in range(p):
            column = np.sort(values[:, k, j])
            exceed[:, k, j] = len(column) - np.searchsorted(column, values[:, k, j] - tol[k, j], side="left")
    if len(observed) == 1:
        pvalues = exceed[0, 0] / (B + 1.0)
    else:
        combined = -np.log(exceed / (B + 1.0)).sum(axis=1)  # (B + 1, p)
        ctol = 1e-10 * np.abs(combined[0]) + 1e-13
        pvalues = (combined >= combined[0] - ctol).sum(axis=0) / (B + 1.0)
    return np.where(np.isfinite(observed).all(axis=0), pvalues, np.nan)


# --------------------------------------------------------------------------------------------
# Table 1 / Fig. 2
# --------------------------------------------------------------------------------------------
def score_table(info: pd.DataFrame, Y, pred_p, pred_f, r2_pre, r2_ft) -> pd.DataFrame:
    """Tidy ``encoder, level, group, r2, mse`` per feature, modality, image type, family, overall.

    Group ``r2`` is the mean over the group's evaluable features (NaN ones are left out)."""
    rows = []
    for encoder, pred, r2 in (("pre", pred_p, r2_pre), ("ft", pred_f, r2_ft)):
        mse = np.mean((Y - pred) ** 2, axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a group with no evaluable feature
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
