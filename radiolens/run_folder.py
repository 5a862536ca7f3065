"""An honest output folder, and worker processes that end with the run.

A run's folder never holds a report that claims to be current when it is not:
:func:`begin_run` moves an earlier report (``report.html``, ``summary.json`` and the files it
lists) to ``previous/`` and writes ``RUNNING.txt``; :func:`fail_run` replaces that with
``FAILED.txt`` naming the error; :func:`finish_run` removes both markers and ``previous/``.
A process killed outright (SIGKILL) leaves ``RUNNING.txt``, which says the same.

Worker processes: :func:`stop_worker_pools` ends joblib's reusable loky workers when a run is
interrupted, and :func:`sweep_stale_worker_files` removes the semaphores and memory-map folders
that killed processes of this user left in ``/dev/shm``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import traceback
from pathlib import Path

from radiolens.cache import atomic_write_text
from radiolens.errors import UserError

__all__ = ["FAILED_MARK", "PREVIOUS_DIR", "RUNNING_MARK", "begin_run", "fail_run", "finish_run",
           "stop_worker_pools", "sweep_stale_worker_files"]

logger = logging.getLogger(__name__)

#: What a run's outcome markers are called in its output folder.
RUNNING_MARK, FAILED_MARK, PREVIOUS_DIR = "RUNNING.txt", "FAILED.txt", "previous"


def begin_run(out: Path) -> None:
    """Move an earlier report (page, summary and the files it lists) to ``previous/`` and mark
    the folder as holding a run in progress."""
    (out / FAILED_MARK).unlink(missing_ok=True)
    summary = out / "summary.json"
    if summary.exists() or (out / "report.html").exists():
        previous = out / PREVIOUS_DIR
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir()
        try:
            listed = json.loads(summary.read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError, AttributeError):
            listed = ["report.html", "summary.json"]
        for name in {*listed, "report.html", "summary.json"}:
            if not isinstance(name, str):
                continue
            source = (out / name.rstrip("/")).resolve()
            if out.resolve() not in source.parents or not source.exists():
                continue  # never anything outside the output folder
            target = previous / source.relative_to(out.resolve())
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
    atomic_write_text(out / RUNNING_MARK, f"a radiolens run started here at {time.strftime('%Y-%m-%d %H:%M:%S')} "
                      f"(process {os.getpid()}) and has not finished; no report here is current until it does\n")


def fail_run(out: Path, err: BaseException) -> None:
    what = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
    lines = [f"the radiolens run of {time.strftime('%Y-%m-%d %H:%M:%S')} failed: {what}",
             "no report in this folder is current; the last complete report, if any, is in previous/"]
    if not isinstance(err, (UserError, KeyboardInterrupt)):
        lines += ["", "".join(traceback.format_exception(type(err), err, err.__traceback__))]
    try:
        atomic_write_text(out / FAILED_MARK, "\n".join(lines) + "\n")
        (out / RUNNING_MARK).unlink(missing_ok=True)
    except OSError:  # pragma: no cover - the original error matters more
        logger.exception("could not mark %s as failed", out)


def finish_run(out: Path) -> None:
    (out / RUNNING_MARK).unlink(missing_ok=True)
    shutil.rmtree(out / PREVIOUS_DIR, ignore_errors=True)


def stop_worker_pools() -> None:
    """End joblib's reusable loky workers (radiomics) now, not at interpreter exit."""
    try:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)
    except Exception:  # noqa: BLE001 - best effort while an interruption propagates
        logger.debug("could not stop the loky workers", exc_info=True)


_STALE_NAMES = re.compile(r"^(?:sem\.loky-(\d+)-|joblib_memmapping_folder_(\d+)_)")


def sweep_stale_worker_files(shm: str | Path = "/dev/shm") -> list[Path]:
    """Remove loky semaphores and joblib memory-map folders left in ``shm`` by processes of
    this user that no longer exist (a run killed with SIGKILL cannot clean up after itself).

    Entries of live processes and of other users are never touched. Returns what was removed.
    """
    removed = []
    folder = Path(shm)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _STALE_NAMES.match(entry.name)
        if not match:
            continue
        try:
            if entry.lstat().st_uid != os.getuid() or _alive(int(match.group(1) or match.group(2))):
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    if removed:
        logger.info("removed %d worker file(s) left in %s by ended processes", len(removed), folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


