"""Benchmark of radiolens.lens at the paper's scale: d = 768, p = 2511 (3 x 837), hidden 256.

Prints one row per case count: seconds to fit (stage 1, 200 epochs), to compare (stage 2 on the
training cases, scored on n // 4 held-out cases), and to compare with 200 bootstraps and with
200 permutations. Targets on a 2-core machine at n = 1000: fit < 30 s, compare < 1 s,
200 bootstraps < 20 s.

    python benchmarks/bench_lens.py            # n = 250, 1000, 4000
    python benchmarks/bench_lens.py --quick    # n = 250, 1000
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import pandas as pd

from radiolens.lens import RadiomicLens
from radiolens.lens.simulation import pyradiomics_columns


def make_data(n: int, d: int = 768, n_factors: int = 64, seed: int = 0):
    """Embeddings and 2511 radiomic columns sharing ``n_factors`` latent factors."""
    rng = np.random.default_rng(seed)
    columns = pyradiomics_columns()
    p = len(columns)
    S = rng.normal(size=(n, n_factors))
    B = rng.normal(size=(n_factors, p)) / np.sqrt(n_factors)
    R = S @ B + 0.5 * rng.normal(size=(n, p))
    A = rng.normal(size=(n_factors, d)) / np.sqrt(n_factors)
    A_ft = 0.8 * A + 0.6 * rng.normal(size=(n_factors, d)) / np.sqrt(n_factors)
    X_pre = S @ A + rng.normal(size=(n, d))
    X_ft = S @ A_ft + rng.normal(size=(n, d))
    ids = pd.Index([f"case{i:05d}" for i in range(n)], name="case_id")
    emb = [f"emb_{j:03d}" for j in range(d)]
    return (pd.DataFrame(X_pre, index=ids, columns=emb), pd.DataFrame(X_ft, index=ids, columns=emb),
            pd.DataFrame(R, index=ids, columns=columns))


CPU_SECONDS: dict[str, float] = {}


def timed(fn, name: str = ""):
    """Wall seconds (returned) and process CPU seconds (recorded under ``name``): the CPU time
    shows the work itself when other processes compete for the cores."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    CPU_SECONDS[name] = time.process_time() - cpu
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only n = 250 and 1000")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None,
                        help="RadiomicLens(n_threads=...); 1 gives clean numbers on a busy machine")
    args = parser.parse_args()
    sizes = (250, 1000) if args.quick else (250, 1000, 4000)
    rows = []
    for n in sizes:
        n_test = n // 4
        X_pre, X_ft, R = make_data(n + n_test)
        tr, te = X_pre.index[:n], X_pre.index[n:]
        test = (X_pre.loc[te], X_ft.loc[te], R.loc[te])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hidden 256 at n = 250 is deliberately in the warned regime
            lens = RadiomicLens(hidden_dim=args.hidden, epochs=args.epochs, random_state=0,
                                n_threads=args.threads)
            _, t_fit = timed(lambda: lens.fit(X_pre.loc[tr], R.loc[tr]), "fit")
            _, t_cmp = timed(lambda: lens.compare(X_pre.loc[tr], X_ft.loc[tr], R.loc[tr], test=test), "compare")
            _, t_cmp_loo = timed(lambda: lens.compare(X_pre.loc[tr], X_ft.loc[tr], R.loc[tr]))
            _, t_boot = timed(lambda: lens.compare(X_pre.loc[tr], X_ft.loc[tr], R.loc[tr], test=test,
                                                   n_bootstrap=args.bootstrap), "boot")
            _, t_perm = timed(lambda: lens.compare(X_pre.loc[tr], X_ft.loc[tr], R.loc[tr], test=test,
                                                   n_permutations=args.bootstrap))
        row = {
            "n_cases": n, "d": X_pre.shape[1], "p": R.shape[1], "hidden": args.hidden,
            "fit_s": t_fit, "compare_s": t_cmp, "compare_loo_s": t_cmp_loo,
            f"compare_{args.bootstrap}boot_s": t_boot, f"compare_{args.bootstrap}perm_s": t_perm,
            "fit_cpu_s": CPU_SECONDS["fit"], "compare_cpu_s": CPU_SECONDS["compare"],
            "boot_cpu_s": CPU_SECONDS["boot"], "loadavg": os.getloadavg()[0],
        }
        rows.append(row)
        print(pd.DataFrame([row]).round(2).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(f"cpus={os.cpu_count()} loadavg={os.getloadavg()[0]:.1f} epochs={args.epochs} threads={args.threads}")
    print(table.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
