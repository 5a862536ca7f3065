"""The one cache of every study step: content-addressed keys, verified entries, atomic writes.

Keys
    :func:`step_key` names a step's artifact by the *content* of its inputs (file bytes, array
    bytes, settings, library versions) plus the step's version in :data:`STEP_VERSIONS`. A
    changed input recomputes exactly what depends on it; a change to what a step computes bumps
    its version, which changes every key of that step (and, through content hashes, of every
    step after it). This is the one versioning rule (see ``CONTRIBUTING.md``).

Entries
    An entry is a payload - one file (``<key>.<ext>``: a table, arrays, a JSON document, a
    checkpoint) or one folder (``<key>/``: a saved lens or lens report) - plus a sidecar
    ``<key>.json`` holding the SHA-256 of every payload file. The sidecar is written last, so an
    entry without one is incomplete by construction. :meth:`ArtifactCache.cached` is the one
    verify-or-recompute path: it checks the payload against the sidecar (and that it loads)
    before using it, and recomputes and rewrites a missing, truncated or corrupted entry.

Writes
    Atomic: payloads are written under a temporary name in the same folder and renamed, so a
    killed process never leaves a half-written entry.
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
    "STEP_VERSIONS",
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
    "step_key",
]

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "RADIOLENS_CACHE"

#: The version of what each cached step computes. Bump a step's number when a change alters
#: its output (not for a refactor that leaves it bit-identical): every key of that step changes,
#: so its old entries are never used again, and the steps after it follow through their
#: inputs' content hashes.
STEP_VERSIONS: dict[str, int] = {
    "synthetic": 2,  # data.synthetic: a generated cohort (2: PZ share, PI-RADS reading features)
    "cohort_checks": 2,  # data.cohort: remembered voxel checks (2: the checked reader, gzip CRC and length)
    "preprocess": 1,  # data.preprocess: resampled and cropped cohorts
    "datasets": 1,  # data.datasets: public data sets converted to cohorts
    "radiomics": 1,  # radiomics: one PyRadiomics work unit
    "pretrain": 1,  # models.pretrain: an encoder pre-trained on the cohort
    "finetune": 2,  # finetune: a fine-tuned encoder, its head and test metrics
    "downstream_comparison": 1,  # finetune.comparison: Table 2's paired tests (computed, not cached; bundled)
    "embeddings": 1,  # embeddings: an encoder's embedding of every case
    "penalty_sweep": 3,  # lens: validation loss per penalty pair (3: each fit on one thread)
    "lens": 2,  # lens: a fitted lens
    "lens_report": 2,  # lens: a comparison of pre-trained and fine-tuned encoders
    "planted_truth": 2,  # lens: the planted-truth simulation table
    "stage_shift": 1,  # lens.stages: the lens run on every encoder stage's embedding
}


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


def step_key(step: str, inputs: Any, length: int = 24) -> str:
    """The cache key of one step's artifact: ``"<step>-<hash>"``.

    Parameters
    ----------
    step
        A step of :data:`STEP_VERSIONS`; its version is part of the hash.
    inputs
        JSON-able description of everything the artifact depends on: content hashes of the
        input data, settings, library versions.
    length
        Hex digits of the SHA-256 kept.
    """
    if step not in STEP_VERSIONS:
        raise KeyError(f"unknown cache step {step!r}; add it to radiolens.cache.STEP_VERSIONS")
    return f"{step}-" + hash_json({"step": step, "version": STEP_VERSIONS[step], "inputs": inputs})[:length]


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
    """A folder of content-addressed artifacts, one namespace per study step.

    Parameters
    ----------
    root
        Cache folder; resolved with :func:`default_cache_dir`.
    namespace
        Sub-folder for one step (``"radiomics"``, ``"embeddings"``, ...).

    Notes
    -----
    A file entry is ``<key>.<ext>`` plus ``<key>.json`` holding ``{"sha256": ..., "meta": ...}``;
    a folder entry is ``<key>/`` plus ``<key>.json`` holding ``{"files": {relative path:
    sha256}, "meta": ...}``. The sidecar is written last, so an entry without a valid sidecar
    is incomplete by construction and ignored; an entry whose payload does not match its
    sidecar (truncated, corrupted, a file added or removed) is treated as missing, logged, and
    recomputed by :meth:`cached`.
    """

    def __init__(self, root: str | os.PathLike | None = None, namespace: str = "") -> None:
        self.root = default_cache_dir(root)
        self.namespace = namespace

    @property
    def folder(self) -> Path:
        path = self.root / self.namespace if self.namespace else self.root
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _sidecar(self, key: str) -> Path:
        if not key or key.startswith(".") or any(c in key for c in "/\\"):
            raise ValueError(f"invalid cache key {key!r}")
        return self.folder / f"{key}.json"

    def _paths(self, key: str, ext: str) -> tuple[Path, Path]:
        sidecar = self._sidecar(key)
        return self.folder / f"{key}.{ext}", sidecar

    def _write_sidecar(self, key: str, content: dict, meta: dict | None) -> None:
        sidecar = {**content, "meta": meta or {}}
        atomic_write_text(self._sidecar(key), json.dumps(sidecar, default=_json_default, indent=1))

    def _read_sidecar(self, key: str) -> dict | None:
        path = self._sidecar(key)
        if not path.exists():
            return None
        try:
            sidecar = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            logger.warning("cache sidecar %s unreadable (%s); recomputing", path, err)
            return None
        return sidecar if isinstance(sidecar, dict) else None

    # -- file entries ----------------------------------------------------------------------
    def _put(self, key: str, ext: str, payload: bytes, meta: dict | None) -> None:
        data_path, _ = self._paths(key, ext)
        atomic_write_bytes(data_path, payload)
        self._write_sidecar(key, {"sha256": hash_bytes(payload)}, meta)

    def _get(self, key: str, ext: str) -> tuple[bytes, dict] | None:
        data_path, _ = self._paths(key, ext)
        sidecar = self._read_sidecar(key)
        if sidecar is None or not data_path.exists():
            return None
        try:
            payload = data_path.read_bytes()
        except OSError as err:
            logger.warning("cache entry %s unreadable (%s); recomputing", data_path, err)
            return None
        if hash_bytes(payload) != sidecar.get("sha256"):
            logger.warning("cache entry %s is corrupt (checksum mismatch); recomputing", data_path)
            return None
        return payload, sidecar.get("meta", {})

    def has(self, key: str, ext: str) -> bool:
        """Whether a *valid* file entry exists (payload present and checksum correct)."""
        return self._get(key, ext) is not None

    def meta(self, key: str, ext: str) -> dict | None:
        """The metadata stored with a file entry, or None when the entry is missing/invalid."""
        found = self._get(key, ext)
        return None if found is None else found[1]

    def invalidate(self, key: str, ext: str | None = None) -> None:
        """Delete an entry (a file entry with ``ext``, else a folder entry); missing parts are ignored."""
        sidecar = self._sidecar(key)
        sidecar.unlink(missing_ok=True)  # first: the payload is invalid from here on
        if ext is None:
            shutil.rmtree(self.folder / key, ignore_errors=True)
        else:
            (self.folder / f"{key}.{ext}").unlink(missing_ok=True)

    def put_file(self, key: str, ext: str, source: str | os.PathLike, meta: dict | None = None) -> Path:
        """Copy a file (e.g. a checkpoint) into the cache; return its cached path."""
        data_path, _ = self._paths(key, ext)
        atomic_write_bytes(data_path, Path(source).read_bytes())
        self._write_sidecar(key, {"sha256": hash_file(data_path)}, meta)
        return data_path

    def get_file(self, key: str, ext: str) -> Path | None:
        """Path of a verified cached file, or None."""
        data_path, _ = self._paths(key, ext)
        sidecar = self._read_sidecar(key)
        if sidecar is None or not data_path.is_file():
            return None
        if hash_file(data_path) != sidecar.get("sha256"):
            logger.warning("cache entry %s is corrupt (checksum mismatch); recomputing", data_path)
            return None
        return data_path

    # -- folder entries ----------------------------------------------------------------------
    def put_dir(self, key: str, save: Callable[[Path], Any], meta: dict | None = None) -> Path:
        """Fill the folder entry ``key`` through ``save(folder)``, atomically; return its path.

        Every file ``save`` writes is hashed into the sidecar, which is written last.
        """
        sidecar = self._sidecar(key)
        sidecar.unlink(missing_ok=True)  # the old folder is invalid from here on
        target = atomic_write_dir(self.folder / key, save)
        self._write_sidecar(key, {"files": _folder_hashes(target)}, meta)
        return target

    def get_dir(self, key: str) -> Path | None:
        """Path of a verified folder entry (every file present, none extra, checksums right), or None."""
        folder = self.folder / key
        sidecar = self._read_sidecar(key)
        if sidecar is None or not folder.is_dir():
            return None
        expected = sidecar.get("files")
        try:
            found = _folder_hashes(folder)
        except OSError as err:
            logger.warning("cache entry %s unreadable (%s); recomputing", folder, err)
            return None
        if not isinstance(expected, dict) or found != expected:
            logger.warning("cache entry %s is corrupt (its files differ from their checksums); recomputing", folder)
            return None
        return folder

    # -- verify or recompute -----------------------------------------------------------------
    def cached(
        self,
        key: str,
        compute: Callable[[], Any],
        save: Callable[[Any, Path], Any],
        load: Callable[[Path], Any],
        ext: str | None = None,
        meta: dict | None = None,
    ) -> Any:
        """The one verify-or-recompute path: the verified, loadable entry, else ``compute()``.

        Parameters
        ----------
        key
            The entry (see :func:`step_key`).
        compute
            Makes the artifact when the entry is missing, corrupt or unloadable.
        save
            ``save(artifact, path)`` writes it: to the file ``path`` (``ext`` given) or into the
            folder ``path`` (``ext`` None).
        load
            ``load(path)`` reads a verified entry back; an exception counts as a corrupt entry.
        ext
            File extension of a file entry; None for a folder entry.
        meta
            JSON-able metadata kept in the sidecar.

        Returns
        -------
        The loaded or newly computed artifact (the computed object itself, not re-read).
        """
        path = self.get_dir(key) if ext is None else self.get_file(key, ext)
        if path is not None:
            try:
                return load(path)
            except Exception as err:  # checksum-valid but unreadable (e.g. an older format)
                logger.warning("cache entry %s unreadable (%s); recomputing", path, err)
        artifact = compute()
        if ext is None:
            self.put_dir(key, lambda folder: save(artifact, folder), meta)
        else:
            data_path, _ = self._paths(key, ext)
            self._sidecar(key).unlink(missing_ok=True)
            _atomic_write(data_path, lambda tmp: save(artifact, tmp))
            self._write_sidecar(key, {"sha256": hash_file(data_path)}, meta)
        return artifact

    def cached_frame(self, key: str, compute: Callable[[], pd.DataFrame], meta: dict | None = None) -> pd.DataFrame:
        """:meth:`cached` for a DataFrame stored as Parquet (index and dtypes preserved)."""
        return self.cached(key, compute, lambda frame, path: frame.to_parquet(path), pd.read_parquet, "parquet", meta)

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


def _folder_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by path relative to it (POSIX)."""
    return {
        path.relative_to(folder).as_posix(): hash_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
