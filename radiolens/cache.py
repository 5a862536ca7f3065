"""Content-addressed on-disk cache shared by every pipeline stage.

Each stage stores its artifact (a DataFrame, a NumPy array or a JSON document) under a key
derived from the *content* of its inputs (file bytes, array bytes, settings, library
versions), so a changed input recomputes exactly what depends on it and nothing else.

Writes are atomic: the artifact is written to a temporary name in the same folder and then
renamed, so a killed process never leaves a half-written entry. Every entry carries a small
JSON sidecar with the SHA-256 of its payload; an entry whose payload does not match (truncated,
corrupted) is treated as missing, logged, and recomputed by the caller.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ArtifactCache",
    "atomic_write_bytes",
    "atomic_write_dir",
    "atomic_write_text",
    "default_cache_dir",
    "hash_array",
    "hash_bytes",
    "hash_file",
    "hash_json",
    "hash_frame",
]

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "RADIOLENS_CACHE"


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Resolve the cache folder: the argument, then ``$RADIOLENS_CACHE``, then the user cache.

    Parameters
    ----------
    cache_dir
        Explicit folder; wins over everything else.

    Returns
    -------
    pathlib.Path
        The folder (created if needed).
    """
    if cache_dir is not None:
        path = Path(cache_dir)
    elif os.environ.get(CACHE_ENV_VAR):
        path = Path(os.environ[CACHE_ENV_VAR])
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg else Path.home() / ".cache"
        path = base / "radiolens"
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------------------------
def hash_bytes(data: bytes) -> str:
    """SHA-256 hex digest of raw bytes."""
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_array(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(str(array.dtype).encode())
    digest.update(str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot hash object of type {type(obj).__name__}")


def hash_json(obj: Any) -> str:
    """SHA-256 of a JSON-serialisable object with sorted keys (settings, configs)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hash_bytes(text.encode())


def hash_frame(frame: pd.DataFrame) -> str:
    """SHA-256 of a DataFrame's index, columns and values."""
    digest = hashlib.sha256()
    digest.update(pd.util.hash_pandas_object(frame.index, index=False).values.tobytes())
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    if all(pd.api.types.is_numeric_dtype(t) for t in frame.dtypes):
        # wide numeric tables (radiomics, embeddings): hashing the raw bytes is ~100x faster
        digest.update(hash_array(frame.to_numpy()).encode())
    else:
        digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates owner-only files; give the result the permissions a plain write would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    _atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and an atomic rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_dir(target: str | os.PathLike, save: Callable[[Path], Any]) -> Path:
    """Fill a folder through ``save(tmp_folder)`` and rename it into place.

    The folder at ``target`` therefore exists only when complete; an interrupted write leaves
    at most a hidden temporary folder next to it, never a half-written ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------
class ArtifactCache:
    """A folder of content-addressed artifacts, one namespace per pipeline stage.

    Parameters
    ----------
    root
        Cache folder; resolved with :func:`default_cache_dir`.
    namespace
        Sub-folder for one stage (``"radiomics"``, ``"embeddings"``, ...).

    Notes
    -----
    An entry is ``<key>.<ext>`` plus ``<key>.json`` holding ``{"sha256": ..., "meta": ...}``.
    The sidecar is written last, so an entry without a valid sidecar is incomplete by
    construction and ignored.
    """

    def __init__(self, root: str | os.PathLike | None = None, namespace: str = "") -> None:
        self.root = default_cache_dir(root)
        self.namespace = namespace

    @property
    def folder(self) -> Path:
        path = self.root / self.namespace if self.namespace else self.root
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _paths(self, key: str, ext: str) -> tuple[Path, Path]:
        if not key or any(c in key for c in "/\\"):
            raise ValueError(f"invalid cache key {key!r}")
        return self.folder / f"{key}.{ext}", self.folder / f"{key}.json"

    # -- raw payloads ----------------------------------------------------------------------
    def _put(self, key: str, ext: str, payload: bytes, meta: dict | None) -> None:
        data_path, meta_path = self._paths(key, ext)
        atomic_write_bytes(data_path, payload)
        sidecar = {"sha256": hash_bytes(payload), "meta": meta or {}}
        atomic_write_text(meta_path, json.dumps(sidecar, default=_json_default, indent=1))

    def _get(self, key: str, ext: str) -> tuple[bytes, dict] | None:
        data_path, meta_path = self._paths(key, ext)
        if not (data_path.exists() and meta_path.exists()):
            return None
        try:
            sidecar = json.loads(meta_path.read_text())
            payload = data_path.read_bytes()
        except (OSError, ValueError) as err:
            logger.warning("cache entry %s unreadable (%s); recomputing", data_path, err)
            return None
        if hash_bytes(payload) != sidecar.get("sha256"):
            logger.warning("cache entry %s is corrupt (checksum mismatch); recomputing", data_path)
            return None
        return payload, sidecar.get("meta", {})

    def has(self, key: str, ext: str) -> bool:
        """Whether a *valid* entry exists (payload present and checksum correct)."""
        return self._get(key, ext) is not None

    def meta(self, key: str, ext: str) -> dict | None:
        """The metadata stored with an entry, or None when the entry is missing/invalid."""
        found = self._get(key, ext)
        return None if found is None else found[1]

    def invalidate(self, key: str, ext: str) -> None:
        """Delete an entry (both files); missing files are ignored."""
        for path in self._paths(key, ext):
            path.unlink(missing_ok=True)

    # -- typed helpers ---------------------------------------------------------------------
    def put_json(self, key: str, obj: Any, meta: dict | None = None) -> None:
        """Store a JSON document."""
        text = json.dumps(obj, default=_json_default, sort_keys=True, indent=1)
        self._put(key, "json.data", text.encode(), meta)

    def get_json(self, key: str) -> Any | None:
        """Load a JSON document, or None when absent/corrupt."""
        found = self._get(key, "json.data")
        return None if found is None else json.loads(found[0])

    def put_frame(self, key: str, frame: pd.DataFrame, meta: dict | None = None) -> None:
        """Store a DataFrame as Parquet (index and dtypes preserved)."""
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        self._put(key, "parquet", buffer.getvalue(), meta)

    def get_frame(self, key: str) -> pd.DataFrame | None:
        """Load a DataFrame, or None when absent/corrupt."""
        import io

        found = self._get(key, "parquet")
        if found is None:
            return None
        try:
            return pd.read_parquet(io.BytesIO(found[0]))
        except Exception as err:  # a checksum-valid but unreadable file: still recompute
            logger.warning("cache entry %s/%s unreadable (%s)", self.namespace, key, err)
            return None

    def put_arrays(self, key: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
        """Store named arrays as an uncompressed ``.npz``."""
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self._put(key, "npz", buffer.getvalue(), meta)

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        """Load named arrays, or None when absent/corrupt."""
        import io

        found = self._get(key, "npz")
        if found is None:
            return None
        with np.load(io.BytesIO(found[0]), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}

    def put_file(self, key: str, ext: str, source: str | os.PathLike, meta: dict | None = None) -> Path:
        """Copy a file (e.g. a checkpoint) into the cache; return its cached path."""
        payload = Path(source).read_bytes()
        self._put(key, ext, payload, meta)
        return self._paths(key, ext)[0]

    def get_file(self, key: str, ext: str) -> Path | None:
        """Path of a valid cached file, or None."""
        return self._paths(key, ext)[0] if self.has(key, ext) else None
