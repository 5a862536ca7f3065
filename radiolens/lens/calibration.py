"""Is the lens calibrated? Planted-truth runs that measure its false positives, coverage and power.

:func:`calibration_run` fits a lens on one :func:`~radiolens.lens.simulation.planted_shift`
(whose fine-tuned encoder gained some features, lost some, kept some and never carried the
rest), compares the encoders with bootstrap intervals and permutation p-values, and puts the
*true* change of every feature beside the estimate. :func:`calibration_table` pools runs over
seeds into the numbers the lens promises:

* false positives: among features **neither** encoder carries (their true change is 0), the
  share with ``p_value < 0.05``, with a ``delta_r2`` interval excluding 0 and with a ``delta_I``
  interval excluding 0 (each should be at most 5%);
* coverage: among planted (gained, lost, kept) features, the share of intervals containing the
  true change (should be about the intervals' level, 95%);
* power: among gained and lost features, the share with ``p_adjusted < 0.05``.

Monte-Carlo standard errors treat seeds as the independent units (features of one run share a
projection and are not independent).

The true change, given the lens's frozen projection(s) and, when the report matched the
fine-tuned embeddings' moments, the same fixed map of the fine-tuned embeddings (the estimand is
conditional on them):

``true_delta_I``
    ``I_ft - I_pre`` of decoders fitted, with the lens's settings, on ``n_big`` fresh cases of
    the same generator read through the same projection(s) (folds combined as the lens combines
    them). With so many cases the decoders are the population's best linear decoders: for a
    feature neither encoder carries both importances are 0.
``true_delta_r2``
    the expected held-out ``r2_ft - r2_pre`` of decoders fitted as the lens fits them (same
    projections, same number of decoder cases per fold) on a fresh training sample, scored on
    ``n_big`` fresh evaluation cases: the mean over ``n_truth_draws`` such training samples.
    This is what a held-out R^2 estimates; it is 0 for features neither encoder carries.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd

from radiolens.lens.decoders import r2_per_feature
from radiolens.lens.estimator import RadiomicLens, moment_map
from radiolens.lens.inference import combined_importance
from radiolens.lens.simulation import planted_shift

__all__ = ["calibration_run", "calibration_table", "true_change"]


def true_change(lens: RadiomicLens, report, sim, *, n_big: int = 20000, n_truth_draws: int = 40,
                seed: int = 0) -> pd.DataFrame:
    """The true ``delta_I`` and ``delta_r2`` of every feature for one fitted lens and report.

    Parameters
    ----------
    lens
        The fitted lens that produced ``report`` (its projections are reused).
    report
        The :class:`~radiolens.lens.LensReport` (its ``params`` give the decoder settings).
    sim
        The :class:`~radiolens.lens.simulation.PlantedShift` the lens was fitted on.
    n_big
        Fresh cases for the population decoders and for scoring.
    n_truth_draws
        Fresh training samples averaged for ``true_delta_r2``.
    seed
        Seed of the fresh cases.

    Returns
    -------
    pandas.DataFrame
        Indexed by column: ``true_I_pre, true_I_ft, true_delta_I, true_delta_r2``.
    """
    from radiolens.lens.decoders import choose_decoder

    rng = np.random.default_rng([seed, 7])
    model = sim.model
    scale = report.params["scale"]
    _, groups = lens._decoder_plan(sim.R.index)
    sizes = [len(rows) for _, rows in groups]
    # the fine-tuned embeddings pass through the same fixed map as in the report
    ft_scale, ft_shift = (moment_map(sim.X_ft.to_numpy(), sim.X_pre.to_numpy())
                          if report.diagnostics.get("match_ft_moments") else (1.0, 0.0))

    def ft(X):
        return X.to_numpy() * ft_scale + ft_shift

    big_p, big_f, big_r = model.sample(n_big, rng, prefix="big")
    ev_p, ev_f, ev_r = model.sample(n_big, rng, prefix="eval")
    Yb, Ye = lens.scale_radiomics(big_r).to_numpy(), lens.scale_radiomics(ev_r).to_numpy()
    kw = dict(decoder=lens.decoder, scale=scale, max_condition=lens.max_condition,
              fit_intercept=bool(lens.fit_intercept))
    big = [(proj(big_p.to_numpy()), proj(ft(big_f)), proj(ev_p.to_numpy()), proj(ft(ev_f))) for proj, _ in groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        I_pre, _ = combined_importance([choose_decoder(zp, Yb, **kw) for zp, _, _, _ in big])
        I_ft, _ = combined_importance([choose_decoder(zf, Yb, **kw) for _, zf, _, _ in big])
        delta_r2 = []
        for _ in range(n_truth_draws):
            preds_p, preds_f = [], []
            for (proj, _), size, (_, _, ep, ef) in zip(groups, sizes, big):
                xp, xf, r = model.sample(size, rng, prefix="draw")
                y = lens.scale_radiomics(r).to_numpy()
                preds_p.append(choose_decoder(proj(xp.to_numpy()), y, **kw).predict(ep))
                preds_f.append(choose_decoder(proj(ft(xf)), y, **kw).predict(ef))
            delta_r2.append(r2_per_feature(Ye, np.mean(preds_f, axis=0)) - r2_per_feature(Ye, np.mean(preds_p, axis=0)))
    return pd.DataFrame({"true_I_pre": I_pre, "true_I_ft": I_ft, "true_delta_I": I_ft - I_pre,
                         "true_delta_r2": np.mean(delta_r2, axis=0)}, index=pd.Index(lens.columns_, name="column"))


def calibration_run(n_cases: int = 140, d: int = 192, seed: int = 0, *, protocol: str = "cross-fit",
                    n_test: int | None = None, n_bootstrap: int = 200, n_permutations: int = 500,
                    n_big: int = 20000, n_truth_draws: int = 40, sim_params: dict | None = None,
                    compare_params: dict | None = None, **lens_params) -> pd.DataFrame:
    """One planted-truth run: every feature's estimate, interval, p-value and true change.

    Parameters
    ----------
    n_cases, d
        Training cases and embedding width of the simulated study (the built-in default study
        has 140 training cases and d = 192).
    seed
        Seed of the simulation and of the lens.
    protocol
        :class:`~radiolens.lens.RadiomicLens` protocol.
    n_test
        Held-out cases; default ``round(2 * n_cases / 7)`` (the study's 7:1:2 split).
    n_bootstrap, n_permutations
        As in :meth:`~radiolens.lens.RadiomicLens.compare`.
    n_big, n_truth_draws
        See :func:`true_change`; ``n_big=0`` leaves the true change out (faster).
    sim_params
        More :func:`~radiolens.lens.simulation.planted_shift` parameters.
    compare_params
        More :meth:`~radiolens.lens.RadiomicLens.compare` arguments.
    **lens_params
        More :class:`~radiolens.lens.RadiomicLens` parameters.

    Returns
    -------
    pandas.DataFrame
        One row per feature: ``column, truth`` and the report's importance columns, the true
        change (:func:`true_change`) and ``seed, n_cases, d, protocol``.
    """
    n_test = int(round(2 * n_cases / 7)) if n_test is None else int(n_test)
    sim = planted_shift(n_cases=n_cases, d=d, n_test=n_test, seed=seed, **(sim_params or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # regime warnings are part of what is measured
        lens = RadiomicLens(protocol=protocol, random_state=seed, **lens_params).fit(sim.X_pre, sim.R)
        report = lens.compare(sim.X_pre, sim.X_ft, sim.R, test=sim.test, n_bootstrap=n_bootstrap,
                              n_permutations=n_permutations, **(compare_params or {}))
    out = report.importance.set_index("column").join(sim.truth)
    if n_big:
        out = out.join(true_change(lens, report, sim, n_big=n_big, n_truth_draws=n_truth_draws, seed=seed))
    out = out.reset_index()
    return out.assign(seed=seed, n_cases=n_cases, d=d, protocol=protocol)


def _excludes_zero(frame: pd.DataFrame, name: str) -> pd.Series:
    return (frame[f"{name}_lo"] > 0) | (frame[f"{name}_hi"] < 0)


def _covers(frame: pd.DataFrame, name: str) -> pd.Series:
    truth = frame[f"true_{name}"]
    return (frame[f"{name}_lo"] <= truth) & (truth <= frame[f"{name}_hi"])


def calibration_table(runs: pd.DataFrame | Iterable[pd.DataFrame], by: tuple[str, ...] = ("protocol", "n_cases", "d")
                      ) -> pd.DataFrame:
    """Pool :func:`calibration_run` rows into rates with Monte-Carlo standard errors.

    Returns
    -------
    pandas.DataFrame
        One row per ``by`` group: ``seeds``; ``fp_p`` (share of features neither encoder carries
        with ``p_value < 0.05``), ``fp_delta_r2_ci`` and ``fp_delta_I_ci`` (their intervals
        excluding 0); ``cover_delta_r2`` and ``cover_delta_I`` (planted features whose interval
        holds the true change); ``power`` (gained and lost features with ``p_adjusted <
        0.05``); each with ``_se``, the standard error over seeds.
    """
    frame = runs if isinstance(runs, pd.DataFrame) else pd.concat(list(runs), ignore_index=True)
    measures = {
        "fp_p": ("unencoded", lambda f: f["p_value"] < 0.05),
        "fp_delta_r2_ci": ("unencoded", lambda f: _excludes_zero(f, "delta_r2")),
        "fp_delta_I_ci": ("unencoded", lambda f: _excludes_zero(f, "delta_I")),
        "cover_delta_r2": ("planted", lambda f: _covers(f, "delta_r2")),
        "cover_delta_I": ("planted", lambda f: _covers(f, "delta_I")),
        "power": ("changed", lambda f: f["p_adjusted"] < 0.05),
    }
    subsets = {"unencoded": ["unencoded"], "planted": ["gained", "lost", "kept"], "changed": ["gained", "lost"]}
    rows = []
    for key, group in frame.groupby(list(by), sort=True):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["seeds"] = int(group["seed"].nunique())
        for name, (subset, flag) in measures.items():
            part = group[group["truth"].isin(subsets[subset])]
            per_seed = flag(part).astype(float).groupby(part["seed"]).mean()
            row[name] = float(per_seed.mean())
            row[f"{name}_se"] = float(per_seed.std(ddof=1) / np.sqrt(len(per_seed))) if len(per_seed) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
