"""Binder check: every chapter from a cold kernel, on one CPU core and 2 GB, on the prepared cache.

Binder gives a session about one core and 1-2 GB of memory and culls it after 10 idle minutes.
Its image is built with ``postBuild``, which fills the cache with the quick study; this script
reproduces a student's session on that cache: for each chapter it starts a fresh kernel pinned to
one core, with its data segment limited to 2 GiB (``RLIMIT_DATA``: heap and anonymous mappings,
the memory a cgroup would count), runs the chapter as a reader would (quick mode), and prints

- ``first output``: seconds from starting the kernel to the first visible output (the note on
  the study used);
- ``first result``: seconds to the first visible output after that note (the chapter's own
  first table, figure or printout) - the target is < 60 s;
- ``total``: seconds to run the whole chapter;
- ``peak``: the largest resident memory of the kernel and its child processes together, sampled
  every 0.1 s - the target is < 2 GiB.

Usage::

    bash postBuild                                  # what Binder runs: the quick study's cache
    python benchmarks/bench_binder.py               # every chapter, on $RADIOLENS_CACHE
    python benchmarks/bench_binder.py --chapter 08_what_changed --cache /path/to/cache

Needs ``psutil`` (installed with Jupyter) and the book extra. Wall times on a shared machine
mean little: the script also prints the kernel's CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_FIRST_RESULT_S = 60
TARGET_PEAK_GIB = 2.0


def limit_to_binder(cpu: int, memory_gib: float) -> None:
    """Pin this process (and every kernel it starts) to one core and cap its data segment."""
    os.sched_setaffinity(0, {cpu})
    limit = int(memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


class PeakMemory:
    """Samples the summed resident memory of this process's children (the kernel and its workers)."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._me = psutil.Process()
        self._psutil = psutil
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for child in self._me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except self._psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _visible(cell) -> bool:
    """Whether a cell shows something: glue records (myst-nb) are not shown."""
    return any("scrapbook" not in output.get("metadata", {}) for output in cell.get("outputs", []))


def run_chapter(path: Path, cache_dir: str | None, timeout: int) -> dict:
    """Execute one chapter in a fresh kernel; return its timings, peak memory and error if any."""
    import jupytext
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = jupytext.read(path)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    note_cell = None
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if "parameters" in cell.metadata.get("tags", []):
            cell.source = re.sub(r"^cache_dir\s*=.*$", f"cache_dir = {cache_dir!r}", cell.source, flags=re.M)
            cell.source = re.sub(r"^quick\s*=.*$", "quick = True", cell.source, flags=re.M)
        if note_cell is None and "start_chapter(" in cell.source:
            note_cell = index
    events: list[tuple[float, int, bool]] = []
    start = time.perf_counter()

    def executed(cell, cell_index, execute_reply):
        events.append((time.perf_counter() - start, cell_index, _visible(cell)))

    client = NotebookClient(
        notebook, kernel_name="python3", timeout=timeout, on_cell_executed=executed,
        resources={"metadata": {"path": str(path.parent)}},
    )
    error = None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with PeakMemory() as memory:
        try:
            client.execute()
        except CellExecutionError as err:
            error = str(err).strip().splitlines()[-1][:200]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.perf_counter() - start
    shown = [(t, i) for t, i, visible in events if visible]
    first = shown[0][0] if shown else float("nan")
    first_result = next((t for t, i in shown if note_cell is not None and i > note_cell), float("nan"))
    return {
        "chapter": path.stem, "first_output_s": first, "first_result_s": first_result, "total_s": total,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "peak_gib": memory.peak / 2**30, "error": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=os.environ.get("RADIOLENS_CACHE"), help="the prepared cache (default $RADIOLENS_CACHE)")
    parser.add_argument("--chapter", action="append", default=None, help="only this chapter (repeatable), e.g. 08_what_changed")
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)), help="the core to pin to")
    parser.add_argument("--memory-gib", type=float, default=TARGET_PEAK_GIB, help="data-segment limit")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    from radiolens.book import chapters

    limit_to_binder(args.cpu, args.memory_gib)
    names = [name for name in chapters(REPO) if Path(name).name[:2].isdigit()]
    if args.chapter:
        names = [name for name in names if Path(name).name in args.chapter]
    print(f"one core (cpu {args.cpu}), data segment <= {args.memory_gib} GiB, cache {args.cache}", flush=True)
    print("| chapter | first output (s) | first result (s) | total (s) | kernel CPU (s) | peak (GiB) | within targets |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for name in names:
        result = run_chapter(REPO / f"{name}.md", args.cache, args.timeout)
        ok = (result["error"] is None and result["first_result_s"] < TARGET_FIRST_RESULT_S
              and result["peak_gib"] < TARGET_PEAK_GIB)
        verdict = "yes" if ok else ("failed: " + result["error"] if result["error"] else "no")
        row = (f"| {result['chapter']} | {result['first_output_s']:.1f} | {result['first_result_s']:.1f} | "
               f"{result['total_s']:.1f} | {result['cpu_s']:.1f} | {result['peak_gib']:.2f} | {verdict} |")
        print(row, flush=True)


if __name__ == "__main__":
    main()
