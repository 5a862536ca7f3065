"""Main-job timings: `radiolens run --quick` cold and warm, optionally the full default run.

Targets (issue: the main job) on a 2-core machine: quick from a cold cache < 10 min, the full
default run < 45 min, a warm re-run < 30 s. Each row also gives the run's peak resident memory
(Binder offers 1-2 GB, so the quick run and the book must stay well under that).

Usage::

    python benchmarks/bench_pipeline.py            # quick cold + warm
    python benchmarks/bench_pipeline.py --full     # also the full default run (long)
    python benchmarks/bench_pipeline.py --book     # also the quick book build (uses the warm cache)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], env: dict) -> tuple[float, int, float]:
    """Run ``python -m radiolens ARGS``; return wall seconds, exit code and peak RSS in GiB."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "radiolens", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        # wait4 (not proc.wait) gives this run's own resource usage: its peak resident memory
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            stderr.seek(0)
            print(stderr.read().decode(errors="replace")[-3000:], file=sys.stderr)
    peak_gib = usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    return elapsed, code, peak_gib


def stage_table(out: Path) -> str:
    path = out / "timings.json"
    if not path.exists():
        return ""
    timings = json.loads(path.read_text())
    return "\n".join(f"    {name:<34} {seconds:8.1f} s" for name, seconds in sorted(timings.items(), key=lambda x: -x[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also time the full default run")
    parser.add_argument("--book", action="store_true", help="also time `radiolens book --quick` on the warm cache")
    parser.add_argument("--workdir", default=None, help="folder for caches and outputs (default: a temporary one)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="radiolens-bench-"))
    rows = []
    modes = [("quick", ["--quick"], 600)] + ([("full", [], 45 * 60)] if args.full else [])
    for mode, flags, target in modes:
        cache, out = work / f"cache-{mode}", work / f"out-{mode}"
        env = {**os.environ, "RADIOLENS_CACHE": str(cache)}
        cold, rc, peak = run(["run", *flags, "--no-progress", "--out", str(out)], env)
        rows.append((mode, "cold", cold, target, rc, peak))
        print(f"{mode} cold: {cold:.0f} s (rc={rc}, peak {peak:.2f} GiB)\n{stage_table(out)}", flush=True)
        warm, rc, peak = run(["run", *flags, "--no-progress", "--out", str(out) + "-warm"], env)
        rows.append((mode, "warm", warm, 30, rc, peak))
        if args.book and mode == "quick":
            seconds, rc, peak = run(["book", "--quick", "--cache-dir", str(cache)], env)
            rows.append(("book --quick", "warm", seconds, 600, rc, peak))

    print(f"\n{'run':<14}{'cache':<7}{'seconds':>10}{'target':>10}{'peak GiB':>10}  ok   (cores: {os.cpu_count()})")
    for mode, cache_state, seconds, target, rc, peak in rows:
        ok = "yes" if rc == 0 and seconds <= target else "NO"
        print(f"{mode:<14}{cache_state:<7}{seconds:>10.1f}{target:>10}{peak:>10.2f}  {ok}")


if __name__ == "__main__":
    main()
