"""Shared test fixtures.

Tests never reach the network and never touch the real home folder: HOME, the cache and the
data folders point into a temporary directory, and sockets may only connect to loopback
(dask's LocalCluster and the browser tests serve on 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import socket

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
