"""Cohorts on disk: a folder of images plus one manifest table, read and validated.

Every data source in radiolens (the built-in synthetic cohort, the public data sets, a user's
own files) produces the same thing, a *cohort*: a folder holding 3D images and masks and one
manifest (``manifest.csv`` or ``manifest.parquet``) with one row per case, following the
contract of :mod:`radiolens.data.contract`. Every later step (radiomics, embeddings,
fine-tuning, the lens) reads a :class:`Cohort` and nothing else.

Validation happens in two layers:

* :func:`load_cohort` always checks the table (columns, unique ids, splits, label ranges), that
  every file exists, and every file's *header* (readable, 3D, same size/spacing/origin/direction
  as the case's other files). With ``check_pixels=True`` (the default) it also reads every
  voxel once: images must be finite, masks integer-valued with the allowed labels, the gland
  non-empty. A passed pixel check is remembered in the radiolens cache, keyed by each file's
  path, size and modification time, so re-loading an unchanged cohort is fast.
* :meth:`Cohort.load_case` repeats the pixel checks on what it reads, so even a cohort loaded
  with ``check_pixels=False`` never hands bad arrays to a later step.

Every problem raises :class:`~radiolens.data.contract.CohortError` naming the case, the file and
the problem.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiolens._utils import progress_bar
from radiolens.cache import ArtifactCache, atomic_write_bytes, atomic_write_text, hash_file, hash_json, step_key
from radiolens.data.contract import (
    FILE_KEYS,
    LABEL_COLUMNS,
    MANIFEST_COLUMNS,
    MASK_VALUES,
    PROVENANCE_COLUMNS,
    SPLITS,
    CohortError,
    cohort_error,
    combine_problems,
    is_missing,
    normalise_manifest,
    split_cases,
)
from radiolens.data.image_io import (
    error_text,
    geometry,
    geometry_mismatch,
    read_array,
    read_header,
    read_image,
    volume_ml,
)
from radiolens.naming import MODALITIES

__all__ = ["Case", "Cohort", "load_cohort", "write_manifest"]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Case
# --------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One case's arrays, geometry and labels.

    Attributes
    ----------
    case_id
        The manifest's ``case_id``.
    images
        ``{"T2W" | "DWI" | "ADC": float32 array (z, y, x)}`` for the images that exist.
    masks
        ``{"gland" | "zones" | "lesion": uint8 array (z, y, x)}`` for the masks that exist.
        A mask missing from the cohort is *absent* from this dict (never faked as zeros);
        its key is listed in :attr:`missing`.
    spacing, origin
        Voxel size and physical position of the first voxel, (x, y, z) in mm (SimpleITK order).
    direction
        Direction cosines, 9 floats, row-major (SimpleITK order).
    labels
        The manifest row's non-file columns (``pirads_group``, volumes, split, provenance,
        extras). ``pirads_group`` is an ``int`` or ``None`` when unknown.
    missing
        Requested file keys that the cohort does not have for this case.
    """

    case_id: str
    images: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    labels: dict[str, Any] = field(default_factory=dict)
    missing: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        for array in (*self.images.values(), *self.masks.values()):
            return tuple(array.shape)
        raise ValueError(f"case {self.case_id!r} holds no arrays")

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0

    def stack(self, keys: Sequence[str] = MODALITIES) -> np.ndarray:
        """Images as one float32 array (channel, z, y, x); raises if one is missing."""
        absent = [k for k in keys if k not in self.images]
        if absent:
            raise CohortError(f"case {self.case_id!r}: image(s) {absent} missing", self.case_id)
        return np.stack([self.images[k] for k in keys]).astype(np.float32, copy=False)


def _check_pixels(key: str, array: np.ndarray) -> tuple[str | None, np.ndarray]:
    """Pixel-level checks; returns (problem or None, converted array)."""
    if key in MODALITIES:
        array = array.astype(np.float32, copy=False)
        bad = ~np.isfinite(array)
        if bad.any():
            return f"{int(bad.sum())} NaN/infinite voxel(s)", array
        return None, array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            return "mask holds NaN/infinite voxels", array
        if not np.all(array == np.round(array)):
            return "mask is not integer-valued (non-binary mask: fractional values)", array
    values = set(np.unique(array).astype(np.int64).tolist())
    allowed = MASK_VALUES[key]
    if not values <= allowed:
        extra = sorted(values - allowed)[:5]
        kind = "non-binary mask" if allowed == {0, 1} else "mask"
        return f"{kind}: values {extra} not in {sorted(allowed)}", array
    array = array.astype(np.uint8, copy=False)
    if key == "gland" and not array.any():
        return "empty gland mask (no voxel is 1)", array
    return None, array


# --------------------------------------------------------------------------------------------
# manifest parsing
# --------------------------------------------------------------------------------------------
def _read_manifest_file(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        # contract text columns stay text ("007" is a case id, not 7); extra columns are
        # inferred; only empty cells mean missing ("NA" may be a real site name)
        text = {c: str for c in ("case_id", "split", *FILE_KEYS, *PROVENANCE_COLUMNS, "patient_id")}
        return pd.read_csv(path, dtype=text, keep_default_na=False, na_values=[""])
    except Exception as err:  # any parser error: name the file
        raise CohortError(f"manifest {str(path)!r} cannot be read: {err}", path=path) from err


def _find_manifest(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("manifest.csv", "manifest.parquet"):
            if (path / name).exists():
                return path / name
        raise CohortError(
            f"folder {str(path)!r} holds no manifest.csv or manifest.parquet", path=path
        )
    if not path.exists():
        raise CohortError(f"manifest {str(path)!r} does not exist", path=path)
    return path


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------
class Cohort:
    """A validated cohort: a folder of images plus a manifest table.

    Usually made by :func:`load_cohort`, :func:`write_manifest`,
    :func:`radiolens.data.make_synthetic_cohort` or :func:`radiolens.data.cohort_from_table`.

    Parameters
    ----------
    root
        Folder that relative paths are resolved against (the manifest's folder).
    manifest
        The manifest, indexed by ``case_id`` (as made by :func:`load_cohort`).
    manifest_path
        Where the manifest lives, if it was read from / written to disk.

    Attributes
    ----------
    root : pathlib.Path
    manifest : pandas.DataFrame
        One row per case, indexed by ``case_id``; missing files are ``None``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        manifest: pd.DataFrame,
        manifest_path: str | os.PathLike | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.manifest = manifest
        self.manifest_path = None if manifest_path is None else Path(manifest_path)

    # -- basic access ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        counts = self.manifest["split"].value_counts().to_dict()
        return f"Cohort({len(self)} cases, splits={counts}, root={str(self.root)!r})"

    @property
    def case_ids(self) -> list[str]:
        """All case ids, in manifest order."""
        return [str(c) for c in self.manifest.index]

    def ids(self, split: str | Iterable[str] | None = None) -> list[str]:
        """Case ids of one split (``"train"``, ``"val"``, ``"test"``), several, or all."""
        if split is None:
            return self.case_ids
        wanted = {split} if isinstance(split, str) else set(split)
        unknown = wanted - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; expected {list(SPLITS)}")
        return [str(c) for c in self.manifest.index[self.manifest["split"].isin(wanted)]]

    def _row(self, case_id: str) -> pd.Series:
        try:
            return self.manifest.loc[str(case_id)]
        except KeyError:
            raise KeyError(f"case {case_id!r} is not in this cohort ({len(self)} cases)") from None

    def path(self, case_id: str, key: str) -> Path | None:
        """Absolute path of a case's file, or None when the cohort does not have it."""
        if key not in FILE_KEYS:
            raise KeyError(f"unknown file key {key!r}; expected one of {list(FILE_KEYS)}")
        value = self._row(case_id)[key]
        if is_missing(value):
            return None
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else self.root / path

    def has(self, case_id: str, key: str) -> bool:
        """Whether the case has this file."""
        return self.path(case_id, key) is not None

    @property
    def labels(self) -> pd.DataFrame:
        """``pirads_group``, ``gland_volume_ml``, ``lesion_volume_ml``, ``split`` per case."""
        return self.manifest[[*LABEL_COLUMNS, "split"]].copy()

    def subset(self, case_ids: Iterable[str]) -> Cohort:
        """A cohort with only these cases (same root, same files; no re-validation)."""
        case_ids = [str(c) for c in case_ids]
        for case_id in case_ids:
            self._row(case_id)
        return Cohort(self.root, self.manifest.loc[case_ids].copy(), None)

    # -- reading -----------------------------------------------------------------------------
    def read_image(self, case_id: str, key: str):
        """Read one file as a ``SimpleITK.Image`` (raises CohortError when missing/corrupt)."""
        path = self.path(case_id, key)
        if path is None:
            raise cohort_error(case_id, key, None, f"the cohort has no {key} file for this case")
        if not path.exists():
            raise cohort_error(case_id, key, path, "file does not exist")
        try:
            return read_image(path)
        except RuntimeError as err:
            raise cohort_error(
                case_id, key, path, f"cannot read image (corrupted or unsupported file): {error_text(err)}"
            ) from err

    def load_case(self, case_id: str, keys: Iterable[str] | None = None) -> Case:
        """Read a case's images and masks as arrays, checked voxel by voxel.

        Parameters
        ----------
        case_id
            The case.
        keys
            File keys to read (default: every file the case has). A requested key the case
            does not have is listed in ``Case.missing``, not raised.

        Returns
        -------
        Case
            Images float32 and masks uint8, all (z, y, x), sharing one geometry.

        Raises
        ------
        CohortError
            A file is unreadable, not 3D, NaN-holding, a non-binary or empty mask, or its
            geometry differs from the case's other files.
        """
        row = self._row(case_id)
        keys = list(FILE_KEYS if keys is None else keys)
        for key in keys:
            if key not in FILE_KEYS:
                raise KeyError(f"unknown file key {key!r}; expected one of {list(FILE_KEYS)}")
        images: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        missing = []
        ref: dict | None = None
        ref_key = None
        for key in keys:
            path = self.path(case_id, key)
            if path is None:
                missing.append(key)
                continue
            if not path.exists():
                raise cohort_error(case_id, key, path, "file does not exist")
            try:
                header = read_header(path)
            except RuntimeError as err:
                raise cohort_error(case_id, key, path, f"cannot read image header (corrupted or "
                             f"unsupported file): {error_text(err)}") from err
            if header.GetDimension() != 3 or header.GetNumberOfComponents() != 1:
                raise cohort_error(
                    case_id, key, path,
                    f"expected a 3D single-channel image, got {header.GetDimension()}D "
                    f"with {header.GetNumberOfComponents()} component(s)",
                )
            geo = geometry(header)
            if ref is None:
                ref, ref_key = geo, key
            else:
                problem = geometry_mismatch(ref, geo)
                if problem:
                    raise cohort_error(case_id, key, path, f"geometry mismatch with {ref_key}: {problem}")
            try:
                array = read_array(path)
            except Exception as err:  # truncated or damaged voxel data
                raise cohort_error(case_id, key, path, f"cannot read image (corrupted file): {error_text(err)}") from err
            if array.ndim != 3 or min(array.shape) < 2:
                raise cohort_error(case_id, key, path, f"expected a 3D image, got voxel array of shape {array.shape}")
            problem, array = _check_pixels(key, array)
            if problem:
                raise cohort_error(case_id, key, path, problem)
            (images if key in MODALITIES else masks)[key] = array
        if ref is None:
            raise CohortError(f"case {case_id!r}: none of {keys} exist", case_id)
        labels = {
            k: (None if is_missing(v) else v)
            for k, v in row.items()
            if k not in FILE_KEYS
        }
        labels["case_id"] = str(case_id)
        if labels.get("pirads_group") is not None:
            labels["pirads_group"] = int(labels["pirads_group"])
        return Case(
            case_id=str(case_id),
            images=images,
            masks=masks,
            spacing=ref["spacing"],
            origin=ref["origin"],
            direction=ref["direction"],
            labels=labels,
            missing=tuple(missing),
        )

    def iter_cases(self, case_ids: Iterable[str] | None = None, keys: Iterable[str] | None = None):
        """Yield :class:`Case` objects one by one (memory stays flat)."""
        for case_id in self.case_ids if case_ids is None else case_ids:
            yield self.load_case(case_id, keys)

    # -- validation ----------------------------------------------------------------------------
    def _files(self) -> list[tuple[str, str, Path]]:
        out = []
        for case_id in self.case_ids:
            for key in FILE_KEYS:
                path = self.path(case_id, key)
                if path is not None:
                    out.append((case_id, key, path))
        return out

    def validate(self, check_pixels: bool = True, progress: bool = False) -> Cohort:
        """Check every file against the contract; raise :class:`CohortError` on the first case
        with problems (listing all of that pass's problems). Returns self."""
        files = self._files()
        problems: list[tuple] = []
        for case_id, key, path in files:
            if not path.exists():
                problems.append((case_id, key, path, "file does not exist"))
            elif path.is_dir():
                # hashing and radiomics read files: a table's DICOM folders are converted once
                problems.append((case_id, key, path, "is a folder (a DICOM series?); a cohort manifest lists image "
                                 "files: make the cohort from a table (cohort_from_table, cohort.source: table), "
                                 "which converts DICOM series"))
        if problems:
            raise combine_problems(problems, "cohort")

        # headers: readable, 3D, one geometry per case
        refs: dict[str, tuple[str, dict]] = {}
        for case_id, key, path in files:
            try:
                reader = read_header(path)
            except RuntimeError as err:
                problems.append((case_id, key, path, f"cannot read image header (corrupted or "
                                 f"unsupported file): {error_text(err)}"))
                continue
            if reader.GetDimension() != 3:
                problems.append((case_id, key, path, f"expected a 3D image, got a "
                                 f"{reader.GetDimension()}D image of size {reader.GetSize()}"))
                continue
            geo = geometry(reader)
            if min(geo["size"]) < 2:
                problems.append((case_id, key, path, f"image is 2D in disguise (size {geo['size']})"))
                continue
            if reader.GetNumberOfComponents() != 1:
                problems.append((case_id, key, path, "expected a single-channel image"))
                continue
            if case_id not in refs:
                refs[case_id] = (key, geo)
            else:
                ref_key, ref = refs[case_id]
                mismatch = geometry_mismatch(ref, geo)
                if mismatch:
                    problems.append((case_id, key, path, f"geometry mismatch with {ref_key}: {mismatch}"))
        if problems:
            raise combine_problems(problems, "cohort")
        self._geometry = {c: g for c, (_, g) in refs.items()}

        if check_pixels:
            self._validate_pixels(files, progress)
        return self

    def _validate_pixels(self, files, progress: bool) -> None:
        stats = []
        for case_id, key, path in files:
            st = path.stat()
            stats.append((case_id, key, str(path.resolve()), st.st_size, st.st_mtime_ns))
        cache = ArtifactCache(namespace="cohort_checks")
        check_key = step_key("cohort_checks", {"files": stats})
        if cache.get_json(check_key) is not None:
            logger.debug("pixel checks of %d files remembered from an earlier load", len(files))
            return
        problems: list[tuple] = []
        for case_id, key, path in progress_bar(files, desc="checking voxels", progress=progress, leave=True):
            try:
                array = read_array(path)
            except Exception as err:  # truncated or damaged voxel data
                problems.append((case_id, key, path, f"cannot read image (corrupted file): "
                                 f"{error_text(err)}"))
                continue
            problem, _ = _check_pixels(key, array)
            if problem:
                problems.append((case_id, key, path, problem))
        if problems:
            raise combine_problems(problems, "cohort")
        cache.put_json(check_key, {"n_files": len(files)})

    # -- content hash ------------------------------------------------------------------------
    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the manifest content and every file's bytes (a cache key for later
        stages). Independent of where the cohort folder lives."""
        rows = []
        for case_id, row in self.manifest.iterrows():
            record = {}
            for col, value in row.items():
                if col in FILE_KEYS:
                    path = self.path(case_id, col)
                    record[col] = None if path is None else hash_file(path)
                else:
                    record[col] = None if is_missing(value) else _plain(value)
            rows.append([str(case_id), record])
        return hash_json({"cohort": rows})


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    return value if isinstance(value, (int, str)) else str(value)


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------
def load_cohort(
    path: str | os.PathLike,
    check_pixels: bool = True,
    progress: bool = False,
) -> Cohort:
    """Load and validate a cohort.

    Parameters
    ----------
    path
        The cohort folder (holding ``manifest.csv`` or ``manifest.parquet``) or the manifest.
    check_pixels
        Also read every voxel once (NaN voxels, non-binary or empty masks, truncated files).
        Passed checks are remembered in the radiolens cache keyed by path, size and
        modification time. With ``False`` only headers are checked here and
        :meth:`Cohort.load_case` still checks each case's voxels when it reads them.
    progress
        Show a progress bar for the voxel checks.

    Returns
    -------
    Cohort

    Raises
    ------
    CohortError
        Naming the case, the file and the problem. Checked: required columns; unique,
        non-empty case ids; splits in ``train/val/test``; ``pirads_group`` in 0..3 or empty;
        non-negative volumes; every listed file exists and is a readable 3D single-channel
        image; per case, all files share size, spacing (relative tolerance 1e-3), origin
        (within 5% of the smallest voxel side) and direction (1e-3); with ``check_pixels``,
        images are finite and masks integer-valued (gland/lesion 0/1, zones 0/1/2) with a
        non-empty gland.
    """
    manifest_path = _find_manifest(path)
    frame = _read_manifest_file(manifest_path)
    manifest = normalise_manifest(frame, repr(str(manifest_path)))
    cohort = Cohort(manifest_path.parent, manifest, manifest_path)
    cohort.validate(check_pixels=check_pixels, progress=progress)
    logger.info("loaded %r", cohort)
    return cohort


def _relative(value: Any, root: Path) -> Any:
    if is_missing(value):
        return None
    path = Path(str(value)).expanduser()
    if path.is_absolute():
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            return str(path)
    return path.as_posix()


def write_manifest(
    frame: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    fmt: str = "csv",
    check_pixels: bool = True,
    fill_volumes: bool = True,
    split_seed: int = 0,
    progress: bool = False,
) -> Cohort:
    """Validate a manifest table and write it atomically into the cohort folder.

    Call this *after* the images and masks are written (e.g. with :func:`write_image`). The
    manifest is written only when validation passes, so a failed conversion never leaves a
    manifest pointing to bad files.

    Parameters
    ----------
    frame
        One row per case with the contract's columns (``case_id`` may be the index). Optional
        columns that are absent are added empty (``source``, ``site``, ``scanner``, masks,
        volumes, ``pirads_group``); ``split`` absent or entirely empty is filled by
        :func:`split_cases` (7:1:2, stratified by PI-RADS group, seed ``split_seed``).
        File paths may be absolute; those under ``out_dir`` are stored relative to it.
    out_dir
        The cohort folder.
    fmt
        ``"csv"`` (``manifest.csv``) or ``"parquet"`` (``manifest.parquet``).
    check_pixels
        Check every voxel (see :func:`load_cohort`).
    fill_volumes
        Fill empty ``gland_volume_ml`` / ``lesion_volume_ml`` from the masks (voxel count x
        voxel volume; ``lesion_volume_ml`` = 0 for an empty lesion mask, stays empty when the
        lesion mask is missing).
    split_seed
        Seed for filling missing splits.
    progress
        Progress bar for the voxel checks.

    Returns
    -------
    Cohort
        The validated cohort, as :func:`load_cohort` would return it.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = frame.copy()
    if frame.index.name == "case_id":
        frame = frame.reset_index()
    if "case_id" not in frame.columns:
        raise CohortError("manifest table has no 'case_id' column")
    for col in MANIFEST_COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    if frame["split"].map(is_missing).all():
        frame["split"] = split_cases(frame, seed=split_seed).to_numpy()
    for key in FILE_KEYS:
        if key in frame.columns:
            frame[key] = [_relative(v, out_dir) for v in frame[key]]
    manifest = normalise_manifest(frame, "table")
    cohort = Cohort(out_dir, manifest, None)
    cohort.validate(check_pixels=check_pixels, progress=progress)

    if fill_volumes:
        for case_id in cohort.case_ids:
            for key, col in (("gland", "gland_volume_ml"), ("lesion", "lesion_volume_ml")):
                if np.isnan(manifest.at[case_id, col]) and cohort.has(case_id, key):
                    case = cohort.load_case(case_id, keys=[key])
                    manifest.at[case_id, col] = volume_ml(case.masks[key], case.spacing)

    ordered = [*MANIFEST_COLUMNS, *[c for c in manifest.reset_index().columns if c not in MANIFEST_COLUMNS]]
    table = manifest.reset_index()[ordered]
    target = out_dir / f"manifest.{fmt}"
    if fmt == "csv":
        atomic_write_text(target, table.to_csv(index=False, float_format="%.6g"))
    else:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        atomic_write_bytes(target, buffer.getvalue())
    # a stale manifest of the other format would shadow or confuse later loads
    other = out_dir / ("manifest.parquet" if fmt == "csv" else "manifest.csv")
    if other.exists():
        other.unlink()
    cohort.manifest_path = target
    return cohort
