"""Main-job timings: `radiolens run --quick` cold and warm, optionally the full default run.

Targets (issue: the main job) on a 2-core machine: quick from a cold cache < 10 min, the full
default run < 13 min (issue 14; it was 45), a warm re-run < 30 s. Each row also gives the run's peak resident memory
(Binder offers 1-2 GB, so the quick run and the book must stay well under that).

Per step, the table gives wall seconds and CPU seconds (this process and its worker processes;
``cpu_timings.json`` of the run). On a machine shared with other jobs the wall times stretch
but the CPU seconds do not, so both are printed, with the machine's mean load average over the
run (1-minute load; a run alone on the machine loads it to about its own CPU share).

Usage::

    python benchmarks/bench_pipeline.py            # quick cold + warm
    python benchmarks/bench_pipeline.py --full     # also the full default run (long)
    python benchmarks/bench_pipeline.py --full --skip-quick   # only the full default run
    python benchmarks/bench_pipeline.py --book     # also the quick book build (uses the warm cache)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def run(args: list[str], env: dict) -> tuple[float, int, float, float]:
    """Run ``python -m radiolens ARGS``; return wall seconds, exit code, peak RSS in GiB and
    the mean 1-minute load average of the machine while it ran."""
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(5.0):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
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
    done.set()
    peak_gib = usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    load = sum(loads) / len(loads) if loads else os.getloadavg()[0]
    return elapsed, code, peak_gib, load


def stage_table(out: Path) -> str:
    """Wall and CPU seconds per step of one run, longest first."""
    path = out / "timings.json"
    if not path.exists():
        return ""
    timings = json.loads(path.read_text())
    cpu_path = out / "cpu_timings.json"
    cpu = json.loads(cpu_path.read_text()) if cpu_path.exists() else {}
    lines = [f"    {'step':<34} {'wall s':>8} {'CPU s':>8}"]
    for name, seconds in sorted(timings.items(), key=lambda x: -x[1]):
        lines.append(f"    {name:<34} {seconds:8.1f} {cpu.get(name, float('nan')):8.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also time the full default run")
    parser.add_argument("--skip-quick", action="store_true", help="do not time the quick run (with --full)")
    parser.add_argument("--book", action="store_true", help="also time `radiolens book --quick` on the warm cache")
    parser.add_argument("--workdir", default=None, help="folder for caches and outputs (default: a temporary one)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="radiolens-bench-"))
    rows = []
    modes = ([] if args.skip_quick else [("quick", ["--quick"], 600)]) + ([("full", [], 13 * 60)] if args.full else [])
    for mode, flags, target in modes:
        cache, out = work / f"cache-{mode}", work / f"out-{mode}"
        env = {**os.environ, "RADIOLENS_CACHE": str(cache)}
        cold, rc, peak, load = run(["run", *flags, "--no-progress", "--out", str(out)], env)
        rows.append((mode, "cold", cold, target, rc, peak, load))
        print(f"{mode} cold: {cold:.0f} s (rc={rc}, peak {peak:.2f} GiB, mean load {load:.1f})\n{stage_table(out)}",
              flush=True)
        warm, rc, peak, load = run(["run", *flags, "--no-progress", "--out", str(out) + "-warm"], env)
        rows.append((mode, "warm", warm, 30, rc, peak, load))
        if args.book and mode == "quick":
            seconds, rc, peak, load = run(["book", "--quick", "--cache-dir", str(cache)], env)
            rows.append(("book --quick", "warm", seconds, 600, rc, peak, load))

    print(f"\n{'run':<14}{'cache':<7}{'seconds':>10}{'target':>10}{'peak GiB':>10}{'load':>6}  ok   "
          f"(cores: {os.cpu_count()})")
    for mode, cache_state, seconds, target, rc, peak, load in rows:
        ok = "yes" if rc == 0 and seconds <= target else "NO"
        print(f"{mode:<14}{cache_state:<7}{seconds:>10.1f}{target:>10}{peak:>10.2f}{load:>6.1f}  {ok}")


if __name__ == "__main__":
    main()
