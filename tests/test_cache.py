"""The content-hash cache: round trips, corruption detection, atomic writes, key resolution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from radiolens import cache as cache_module
from radiolens.cache import (
    ArtifactCache,
    atomic_write_bytes,
    default_cache_dir,
    hash_array,
    hash_frame,
    hash_json,
    step_key,
)


def test_cache_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIOLENS_CACHE", str(tmp_path / "env"))
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("RADIOLENS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "radiolens"


def test_frame_and_array_round_trip(tmp_path):
    cache = ArtifactCache(tmp_path, "stage")
    frame = pd.DataFrame({"a": [1.5, np.nan], "b": ["x", "y"]}, index=pd.Index(["c1", "c2"], name="case_id"))
    cache.put_frame("k1", frame, meta={"n": 2})
    pd.testing.assert_frame_equal(cache.get_frame("k1"), frame)
    assert cache.meta("k1", "parquet") == {"n": 2}
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    cache.put_arrays("k2", arrays)
    np.testing.assert_array_equal(cache.get_arrays("k2")["w"], arrays["w"])
    cache.put_json("k3", {"x": [1, 2]})
    assert cache.get_json("k3") == {"x": [1, 2]}
    assert cache.get_frame("absent") is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_sidecar"])
def test_corrupt_entries_are_detected(tmp_path, damage):
    cache = ArtifactCache(tmp_path, "stage")
    cache.put_frame("k", pd.DataFrame({"a": range(100)}))
    data = tmp_path / "stage" / "k.parquet"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:50])
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    else:
        (tmp_path / "stage" / "k.json").unlink()
    assert cache.get_frame("k") is None
    assert not cache.has("k", "parquet")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")

    class Boom(Exception):
        pass

    from radiolens import cache as cache_module

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise Boom

    with pytest.raises(Boom):
        cache_module._atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_hashes_track_content():
    a = np.zeros((2, 3))
    assert hash_array(a) == hash_array(a.copy())
    assert hash_array(a) != hash_array(a.astype(np.float32))
    assert hash_array(a) != hash_array(a.reshape(3, 2))
    assert hash_json({"a": 1, "b": 2}) == hash_json({"b": 2, "a": 1})
    assert hash_json({"a": 1}) != hash_json({"a": 2})
    f = pd.DataFrame({"x": [1.0, 2.0]}, index=["a", "b"])
    assert hash_frame(f) == hash_frame(f.copy())
    assert hash_frame(f) != hash_frame(f.rename(index={"a": "c"}))
    assert hash_frame(f) != hash_frame(f.rename(columns={"x": "y"}))


def test_invalid_keys_rejected(tmp_path):
    with pytest.raises(ValueError, match="invalid cache key"):
        ArtifactCache(tmp_path).put_json("../escape", 1)


def test_atomic_write_dir_appears_only_complete(tmp_path):
    from radiolens.cache import atomic_write_dir

    target = tmp_path / "report"

    def save(folder):
        (folder / "a.csv").write_text("x\n1\n")

    atomic_write_dir(target, save)
    assert (target / "a.csv").read_text() == "x\n1\n"

    def broken(folder):
        (folder / "a.csv").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, broken)
    assert (target / "a.csv").read_text() == "x\n1\n"  # the complete old version survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder left


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    target = tmp_path / "report.html"
    atomic_write_bytes(target, b"<html></html>")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def _save_pair(value: dict, folder) -> None:
    (folder / "a.txt").write_text(value["a"])
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text(value["b"])


def _load_pair(folder) -> dict:
    return {"a": (folder / "a.txt").read_text(), "b": (folder / "sub" / "b.txt").read_text()}


@pytest.mark.parametrize("damage", ["flip", "truncate", "extra_file", "missing_file", "drop_sidecar"])
def test_folder_entry_is_verified_and_recomputed_identically(tmp_path, damage):
    cache = ArtifactCache(tmp_path, "lens")
    calls = []

    def compute():
        calls.append(1)
        return {"a": "alpha" * 20, "b": "beta" * 20}

    first = cache.cached("k", compute, _save_pair, _load_pair)
    assert cache.cached("k", compute, _save_pair, _load_pair) == first and len(calls) == 1
    folder = tmp_path / "lens" / "k"
    target = folder / "sub" / "b.txt"
    if damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[3] ^= 0x01
        target.write_bytes(bytes(raw))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:5])
    elif damage == "extra_file":
        (folder / "stray.txt").write_text("not ours")
    elif damage == "missing_file":
        target.unlink()
    else:
        (tmp_path / "lens" / "k.json").unlink()
    assert cache.get_dir("k") is None
    again = cache.cached("k", compute, _save_pair, _load_pair)
    assert again == first and len(calls) == 2
    assert _load_pair(cache.get_dir("k")) == first  # rewritten and valid again


def test_file_entry_that_fails_to_load_is_recomputed(tmp_path):
    cache = ArtifactCache(tmp_path, "finetuned")
    calls = []

    def compute():
        calls.append(1)
        return "weights"

    def load(path):
        text = path.read_text()
        if len(calls) == 1:
            raise ValueError("an older format")
        return text

    assert cache.cached("k", compute, lambda v, p: p.write_text(v), load, ext="pt") == "weights"
    assert cache.cached("k", compute, lambda v, p: p.write_text(v), load, ext="pt") == "weights"
    assert len(calls) == 2  # the unreadable entry was recomputed, not served
    frame = pd.DataFrame({"a": [1.0, 2.0]})
    assert cache.cached_frame("t", lambda: frame).equals(frame)
    assert cache.cached_frame("t", lambda: pytest.fail("recomputed a valid entry")).equals(frame)


def test_step_key_changes_with_the_step_version_and_the_inputs(monkeypatch):
    key = step_key("embeddings", {"x": 1})
    assert key.startswith("embeddings-") and key == step_key("embeddings", {"x": 1})
    assert step_key("embeddings", {"x": 2}) != key
    assert step_key("lens", {"x": 1}) != key
    monkeypatch.setitem(cache_module.STEP_VERSIONS, "embeddings", cache_module.STEP_VERSIONS["embeddings"] + 1)
    assert step_key("embeddings", {"x": 1}) != key
    with pytest.raises(KeyError, match="STEP_VERSIONS"):
        step_key("no such step", {})
