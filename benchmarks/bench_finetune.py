"""Benchmark: quick-mode fine-tuning, 3 tasks x 2 regimes, on the built-in synthetic cohort.

Target (issue 4): quick pre-training + all three tasks x two regimes in quick mode under
10 minutes on a 2-core CPU; this script times the fine-tuning part (budget: well under 6 min).

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

    import torch

    from radiolens.data import make_synthetic_cohort
    from radiolens.models import ConvNeXtV2Encoder3D
    from radiolens.models.finetune import run_downstream

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

    kwargs = dict(quick=True) if args.full_epochs is None else dict(epochs=args.full_epochs, patience=None)
    t0 = time.perf_counter()
    res = run_downstream(encoder, cohort, device=args.device, augment=not args.no_augment,
                         progress=False, seed=0, **kwargs)
    total = time.perf_counter() - t0
    timings = res.timings.assign(s_per_epoch=lambda d: d.seconds / d.epochs_run)
    cpu_total = float(res.timings.cpu_seconds.sum())
    print()
    print(timings.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"\ntotal fine-tuning (3 tasks x 2 regimes, incl. reading the cohort once): {total:.1f} s wall, "
          f"{cpu_total:.1f} s process CPU (all threads)")
    print()
    print(res.wide().to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
