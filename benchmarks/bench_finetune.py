"""Benchmark: fine-tuning as the quick study runs it, 3 tasks x 2 regimes, on the built-in cohort.

Target (issue 4): quick pre-training + all three tasks x two regimes in quick mode under
10 minutes on a 2-core CPU; this script times the fine-tuning part (budget: well under 6 min).
The settings are the quick study's (``radiolens.config.QUICK``) and one case store is shared by
the six runs, as in :class:`radiolens.pipeline.Study`.

Usage::

    python benchmarks/bench_finetune.py                 # 60 cases, (32, 96, 96), micro, CPU
    python benchmarks/bench_finetune.py --n-cases 100 --device cuda
    python benchmarks/bench_finetune.py --full-epochs 10   # beyond quick mode

Prints one row per task x regime (seconds, epochs, s/epoch) and the downstream table.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cases", type=int, default=60)
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--full-epochs", type=int, default=None, help="run non-quick with this many epochs")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--cohort-dir", default=None, help="reuse/create the cohort here")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from radiolens.config import load_config
    from radiolens.data import make_synthetic_cohort
    from radiolens.finetune import finetune
    from radiolens.models import CaseStore, ConvNeXtV2Encoder3D
    from radiolens.pipeline import Study

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    # default folder: the radiolens cache, keyed by the generator's settings (reused)
    cohort = make_synthetic_cohort(n_cases=args.n_cases, seed=0, out_dir=args.cohort_dir)
    t_cohort = time.perf_counter() - t0
    try:  # the shipped pre-trained weights when they exist, else a random init (same cost)
        from radiolens.models import load_pretrained

        encoder, weights = load_pretrained("micro-synthetic"), "micro-synthetic"
        if args.preset != "micro":
            raise ValueError
    except Exception:
        torch.manual_seed(0)
        encoder, weights = ConvNeXtV2Encoder3D.from_preset(args.preset, in_chans=3), "random init"
    splits = {s: len(cohort.ids(s)) for s in ("train", "val", "test")}
    print(f"cohort: {len(cohort.case_ids)} cases {splits}, shape {cohort.load_case(cohort.case_ids[0]).shape}"
          f" (ready in {t_cohort:.1f} s); encoder {args.preset} ({weights}); device {args.device}; "
          f"torch threads {torch.get_num_threads()}; os.cpu_count {os.cpu_count()}")

    study = Study(load_config(quick=args.full_epochs is None))
    store = CaseStore(cohort, encoder.total_stride, masks=("lesion",))
    rows, tables = [], []
    t0 = time.perf_counter()
    for task in study.tasks:
        config = study.finetune_config(task)
        overrides = {"augment": not args.no_augment}
        if args.full_epochs is not None:
            overrides.update(epochs=args.full_epochs, patience=None)
        for regime in study.config["finetune"]["regimes"]:
            res = finetune(encoder, cohort, task, regime, config, seed=0, device=args.device, progress=False,
                           store=store, **overrides)
            rows.append({"task": task, "regime": regime, "seconds": res.elapsed_s, "cpu_seconds": res.cpu_s,
                         "epochs_run": len(res.history), "s_per_epoch": res.elapsed_s / len(res.history)})
            tables.append(res.metrics_table())
    total = time.perf_counter() - t0
    timings = pd.DataFrame(rows)
    print()
    print(timings.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"\ntotal fine-tuning (3 tasks x 2 regimes, incl. reading the cohort once): {total:.1f} s wall, "
          f"{timings.cpu_seconds.sum():.1f} s process CPU (all threads)")
    print()
    table = pd.concat(tables, ignore_index=True)
    print(table.pivot_table(index=["task", "metric"], columns="regime", values="value", sort=False)
          .to_string(float_format=lambda v: f"{v:.3f}"))

if __name__ == "__main__":
    main()
