"""Shared test fixtures.

Tests never reach the network and never touch the real home folder: HOME, the cache and the
data folders point into a temporary directory, and sockets may only connect to loopback
(dask's LocalCluster and the browser tests serve on 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
    except TypeError:
        return True  # unix sockets and the like


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("RADIOLENS_CACHE", str(home / "radiolens-cache"))
    monkeypatch.setenv("RADIOLENS_DATA", str(home / "radiolens-data"))

    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise RuntimeError(f"tests must not use the network (tried to connect to {address!r})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory):
    """A small built-in synthetic cohort shared by the whole session (read-only!)."""
    from radiolens.data import make_synthetic_cohort

    out = tmp_path_factory.mktemp("synthetic_cohort")
    return make_synthetic_cohort(n_cases=24, seed=7, out_dir=out)


def run_cli(args, env, timeout=1500):
    """Run ``python -m radiolens ARGS`` as a user would; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "radiolens", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One `radiolens run --quick` per test session: (cache dir, output dir, environment).

    Shared by the pipeline and book tests: the book's chapters reuse this run's cache.
    """
    root = tmp_path_factory.mktemp("quick_study")
    cache, out = root / "cache", root / "out"
    env = {**os.environ, "HOME": str(root), "RADIOLENS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    completed = run_cli(["run", "--quick", "--no-progress", "--out", str(out)], env)
    if completed.returncode != 0:
        pytest.fail(f"radiolens run --quick failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}")
    # the cache exactly as the run left it: later tests (the book's chapter 10 computes radiomics
    # of its own example cohort) add entries to `cache`; tests about the run itself copy this one
    shutil.copytree(cache, pristine_cache(cache))
    return cache, out, env


def pristine_cache(cache: Path) -> Path:
    """The copy of the quick run's cache taken before any other test used it."""
    return cache.parent / "cache_as_run_left_it"
