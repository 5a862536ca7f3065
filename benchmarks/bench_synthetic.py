"""Benchmark: generating the built-in synthetic cohort (target: 200 cases in < 60 s on 2 cores).

Run ``python benchmarks/bench_synthetic.py`` (options: ``--n-cases``, ``--jobs``, ``--preset``).
Prints one row per setting: cases, worker processes, wall seconds, seconds per case, CPU
seconds of the main process (the whole generation when n_jobs is 1: a load-independent
measure on a shared machine), and the time to load + fully validate the result (first load reads every voxel; a second load reuses
the remembered checks).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from radiolens.data import load_cohort, make_synthetic_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cases", type=int, default=200)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="tutorial", choices=["tutorial", "paper"])
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench-synthetic-")
    os.environ.setdefault("RADIOLENS_CACHE", os.path.join(work, "cache"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"preset={args.preset}  cpu_count={os.cpu_count()}  load average at start={load:.1f}")
    print(f"{'n_cases':>8} {'n_jobs':>7} {'seconds':>9} {'s/case':>8} {'main cpu s':>11} {'load+check s':>13} {'reload s':>9}")
    try:
        for jobs in args.jobs:
            out = os.path.join(work, f"cohort-{jobs}")
            start, cpu = time.perf_counter(), time.process_time()
            make_synthetic_cohort(n_cases=args.n_cases, seed=0, out_dir=out, n_jobs=jobs, preset=args.preset)
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu  # the generation's CPU time when n_jobs == 1
            start = time.perf_counter()
            load_cohort(out)
            check = time.perf_counter() - start
            start = time.perf_counter()
            load_cohort(out)
            reload = time.perf_counter() - start
            print(f"{args.n_cases:>8} {jobs:>7} {seconds:>9.1f} {seconds / args.n_cases:>8.3f} {cpu:>11.1f} {check:>13.1f} {reload:>9.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
