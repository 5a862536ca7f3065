"""Is the lens calibrated? False positives, coverage and power on planted truth, per protocol.

For every (protocol, training cases, embedding width) it runs :func:`radiolens.lens.calibration.
calibration_run` over several seeds (a fresh simulated study and lens per seed, held-out cases
in the built-in study's 7:1:2 proportion) and prints :func:`calibration_table`: among features
neither encoder carries, the share flagged by ``p_value < 0.05``, by a ``delta_r2`` interval
excluding 0 and by a ``delta_I`` interval excluding 0 (target: at most 5% plus Monte-Carlo
error); the coverage of the 95% intervals for the true change of planted (gained, lost, kept)
features (target 95%); and the power, the share of gained and lost features with ``p_adjusted <
0.05``. Standard errors (``_se``) are over seeds. The true change is defined in
:mod:`radiolens.lens.calibration`.

``--intercept`` instead compares the decoder with an intercept (radiolens's default) and the
paper's literal ``theta = R Z^T (Z Z^T)^-1`` without one, on the same lenses: the Spearman
correlation between the two importances, and how well each importance's ``delta_I`` recovers
the planted gains and losses (precision of the top-k).

``--units`` shows what wholesale moves of the fine-tuned embeddings (every dimension shifted and
rescaled, as the built-in study's fine-tuned encoders do; ``planted_shift(ft_offset, ft_gain)``)
do to the paper's variant of the lens (hidden units that barely vary, an ill-conditioned
``Z_ft``, warnings, worse recovery) and that radiolens's default is unchanged by them.

    python benchmarks/bench_calibration.py                       # 140 and 300 cases, d = 192
    python benchmarks/bench_calibration.py --seeds 4 --sizes 140  # a quick look
    python benchmarks/bench_calibration.py --intercept
    python benchmarks/bench_calibration.py --units --sizes 140
    python benchmarks/bench_calibration.py --downstream          # Table 2's frozen-vs-full tests

``--downstream`` checks the other statistical claim a study makes, that full fine-tuning changed
a Table 2 metric (:func:`radiolens.finetune.compare_regimes`): on simulated test splits whose two
regimes are draws from one model (nothing changed) the share flagged by ``p_value < 0.05`` and
the share whose 95% interval excludes 0 (target: at most 5%), and, for a real improvement
(``--effect``), the share flagged (power), per task, at the built-in study's 40 test cases and
at 100 and 200.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from radiolens.lens.calibration import calibration_run, calibration_table


def calibration(args) -> None:
    runs = []
    for n in args.sizes:
        for protocol in args.protocols:
            start, cpu = time.perf_counter(), time.process_time()
            for seed in range(args.seeds):
                runs.append(calibration_run(n, args.d, seed, protocol=protocol, n_bootstrap=args.bootstrap,
                                            n_permutations=args.permutations, n_threads=args.threads))
            print(f"{protocol:9s} n={n:4d} d={args.d}: {args.seeds} seeds, {time.perf_counter() - start:.0f} s wall, "
                  f"{time.process_time() - cpu:.0f} s CPU", flush=True)
    frame = pd.concat(runs, ignore_index=True)
    if args.save:
        frame.to_parquet(args.save)
    table = calibration_table(frame)
    print()
    print(f"cpus={os.cpu_count()} loadavg={os.getloadavg()[0]:.1f} bootstrap={args.bootstrap} "
          f"permutations={args.permutations}")
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))


def intercept(args) -> None:
    import warnings

    from scipy.stats import spearmanr

    from radiolens.lens import RadiomicLens
    from radiolens.lens.simulation import planted_shift, recovery_precision

    rows = []
    for n in args.sizes:
        for protocol in args.protocols:
            for seed in range(args.seeds):
                sim = planted_shift(n_cases=n, d=args.d, n_test=int(round(2 * n / 7)), seed=seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    lens = RadiomicLens(protocol=protocol, random_state=seed).fit(sim.X_pre, sim.R)
                    reports = {}
                    for fit_intercept in (True, False):
                        lens.set_params(fit_intercept=fit_intercept)
                        reports[fit_intercept] = lens.compare(sim.X_pre, sim.X_ft, sim.R, test=sim.test)
                for column in ("I_pre", "I_ft"):
                    a = reports[True].importance[column]
                    b = reports[False].importance[column]
                    rows.append({"protocol": protocol, "n_cases": n, "seed": seed, "measure": f"spearman {column}",
                                 "value": spearmanr(a, b)[0]})
                for fit_intercept, rep in reports.items():
                    g, lo = recovery_precision(rep.importance.set_index("column")["delta_I"], sim.truth)
                    name = "intercept" if fit_intercept else "no intercept (paper's formula)"
                    rows.append({"protocol": protocol, "n_cases": n, "seed": seed,
                                 "measure": f"precision gained, {name}", "value": g})
                    rows.append({"protocol": protocol, "n_cases": n, "seed": seed,
                                 "measure": f"precision lost, {name}", "value": lo})
    frame = pd.DataFrame(rows)
    summary = frame.groupby(["protocol", "n_cases", "measure"])["value"].agg(["mean", "std", "count"])
    summary["se"] = summary["std"] / np.sqrt(summary["count"])
    print(summary[["mean", "se", "count"]].round(3).to_string())


def units(args) -> None:
    import warnings

    from radiolens.lens import RadiomicLens
    from radiolens.lens.simulation import planted_shift, recovery_precision

    rows = []
    for n in args.sizes:
        for offset, gain in ((0.0, 1.0), (20.0, 0.5)):
            for variant, params in (("paper", {"protocol": "paper"}), ("default", {})):
                for seed in range(args.seeds):
                    sim = planted_shift(n_cases=n, d=args.d, n_test=int(round(2 * n / 7)), seed=seed,
                                        ft_offset=offset, ft_gain=gain)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        lens = RadiomicLens(random_state=seed, **params).fit(sim.X_pre, sim.R)
                        rep = lens.compare(sim.X_pre, sim.X_ft, sim.R, test=sim.test)
                    diag = rep.diagnostics
                    imp = rep.importance.set_index("column")
                    unit_warnings = [w for w in diag["warnings"] if "barely vary" in w or "ill-conditioned" in w]
                    row = {"n_cases": n, "ft_offset": offset, "ft_gain": gain, "variant": variant, "seed": seed,
                           "warned": bool(unit_warnings), "near_constant_units_ft": diag["near_constant_units_ft"],
                           "log10_cond_ft": np.log10(diag["condition_number_ft"])}
                    for measure in ("delta_I", "delta_r2"):
                        g, lo = recovery_precision(imp[measure], sim.truth)
                        row[f"precision_{measure}"] = (g + lo) / 2
                    rows.append(row)
    frame = pd.DataFrame(rows)
    table = frame.groupby(["n_cases", "ft_offset", "ft_gain", "variant"]).agg(
        seeds=("seed", "nunique"), reports_warned=("warned", "mean"),
        near_constant_units_ft=("near_constant_units_ft", "mean"), median_log10_cond_ft=("log10_cond_ft", "median"),
        precision_delta_I=("precision_delta_I", "mean"), precision_delta_r2=("precision_delta_r2", "mean"))
    print("share of reports with a barely-varying-unit or ill-conditioning warning; mean precision of the "
          "top-k gained and lost (chance 0.1)")
    print(table.round(3).to_string())


def downstream(args) -> None:
    from radiolens.finetune.comparison import comparison_calibration

    tables = []
    start = time.perf_counter()
    for task in ("pirads", "lesion", "volume"):
        for n in args.cases:
            for effect in (0.0, args.effect):
                tables.append(comparison_calibration(task, n_cases=n, n_runs=args.runs, effect=effect,
                                                     n_resamples=args.permutations, seed=n))
    table = pd.concat(tables, ignore_index=True)
    print(f"{args.runs} simulated test splits per row, {args.permutations} permutations each, "
          f"{time.perf_counter() - start:.0f} s; effect 0 = nothing changed (flagged should be <= 0.05)")
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[140, 300], help="training cases")
    parser.add_argument("--d", type=int, default=192, help="embedding width (built-in encoder: 192)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--protocols", nargs="+", default=["paper", "cross-fit"])
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="RadiomicLens(n_threads=...)")
    parser.add_argument("--save", default=None, help="write every feature's row to this Parquet file")
    parser.add_argument("--intercept", action="store_true", help="compare the decoder with and without intercept")
    parser.add_argument("--units", action="store_true", help="wholesale moves of the fine-tuned embeddings")
    parser.add_argument("--downstream", action="store_true", help="calibration of Table 2's frozen-vs-full tests")
    parser.add_argument("--cases", type=int, nargs="+", default=[40, 100, 200], help="--downstream: test cases")
    parser.add_argument("--runs", type=int, default=1000, help="--downstream: simulated test splits per row")
    parser.add_argument("--effect", type=float, default=0.3, help="--downstream: the improvement for the power rows")
    args = parser.parse_args()
    if args.downstream:
        downstream(args)
    elif args.intercept:
        intercept(args)
    elif args.units:
        units(args)
    else:
        calibration(args)


if __name__ == "__main__":
    main()
