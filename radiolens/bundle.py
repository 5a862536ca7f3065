"""Results bundles: a study's tables and lens reports, small enough to ship with the package.

A *results bundle* is a folder holding what a finished study computed that the book and the
report read - Table 2 (the fine-tuning metrics), every penalty sweep, every lens report, the
stage-by-stage tables and the planted-truth table - but no images, embeddings or weights (a few MB in all). :class:`Study
<radiolens.pipeline.Study>` loads those steps from a matching bundle instead of recomputing them
(``Study(config, use_bundle=True)``, which the book's chapters use), so a reader who opens one
chapter, or a Binder session with an empty cache, sees the study's results in seconds.

A bundle matches a configuration when its *fingerprint* is equal: the SHA-256 of the
configuration (without the keys that do not change results: ``jobs``, ``device``, ``cache_dir``,
``out``) and of :data:`radiolens.cache.STEP_VERSIONS`. A bundle therefore goes stale exactly when
a cache entry would, and a stale bundle is ignored, never used. Its ``manifest.json`` lists the
SHA-256 of every file; :func:`load_bundle` verifies them all before anything is read.

Each report's tables are stored once per distinct content under ``tables/`` (indexed by the
report folder's ``tables.json``); the wide per-case and per-weight tables are kept in single
precision, the statistics exactly (see ``_WIDE``).

The shipped bundles live in ``radiolens/results/<label>/`` (``quick`` and ``full``); write one
with ``radiolens bundle`` (see ``CONTRIBUTING.md``). Every bundle carries :data:`NOTE`: its
numbers were computed by radiolens on the built-in synthetic cohort, not taken from the paper.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from radiolens import __version__
from radiolens.cache import STEP_VERSIONS, atomic_write_bytes, atomic_write_dir, atomic_write_text, hash_file, hash_json
from radiolens.errors import CacheIntegrityError

__all__ = [
    "BUNDLE_FORMAT",
    "NOTE",
    "PACKAGE_BUNDLES",
    "BundleError",
    "ResultsBundle",
    "bundle_label",
    "find_bundle",
    "load_bundle",
    "study_fingerprint",
    "write_bundle",
]

logger = logging.getLogger(__name__)

#: Version of the folder layout; a bundle of another format is not read.
BUNDLE_FORMAT = 3
#: Where the package's own bundles live, one folder per study (``quick``, ``full``).
PACKAGE_BUNDLES = Path(__file__).resolve().parent / "results"
#: Configuration keys that change how a study runs, not what it computes.
RUNTIME_KEYS = ("jobs", "device", "cache_dir", "out")
NOTE = (
    "These results were computed by radiolens {version} on its built-in synthetic prostate mpMRI "
    "cohort ({n_cases} generated cases), with its own small encoder. They demonstrate the method; "
    "they are not the results of Wang et al. (MIDL 2026), which come from ProFound and real "
    "patients, and they are not clinical findings."
)
_MANIFEST = "manifest.json"
_FRAMES = ("downstream", "downstream_comparison", "planted")
#: Lens-report tables with a column per radiomic feature (per-case predictions and decoder
#: weights). They are most of a bundle's bytes and feed plots and checks, so they are stored in
#: single precision (7 significant digits) and read back as float64; every statistic (importance,
#: scores, tests, Table 2, sweeps) is stored exactly. Stored transposed (a feature per row), since
#: Parquet's per-column metadata makes a 2,511-column table ten times its data.
_WIDE = ("observed", "decoded_pre", "decoded_ft", "decoder_pre", "decoder_ft")
#: Parquet compression of every bundle table.
_PARQUET = {"compression": "zstd", "compression_level": 19}
#: Where report tables live: one file per distinct table, named by its content, so a table that
#: several reports share (the test radiomics, the pre-trained side of two tasks on one encoder)
#: is stored once.
_TABLES = "tables"
_TABLE_INDEX = "tables.json"


def _frame_bytes(frame: pd.DataFrame, single_precision: bool = False) -> bytes:
    floats = [str(c) for c, dtype in frame.dtypes.items() if pd.api.types.is_float_dtype(dtype)]
    if single_precision:
        frame = frame.astype({c: "float32" for c in frame.columns if str(c) in floats})
    options = dict(_PARQUET)
    if floats:
        # floats' bytes regrouped by position compress about 20-35% better (exactly)
        options.update(use_byte_stream_split=floats,
                       use_dictionary=[str(c) for c in frame.columns if str(c) not in floats] or False)
    return frame.to_parquet(index=True, **options)


def _write_frame(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, _frame_bytes(frame))


def _write_report(report, folder: Path, root: Path) -> None:
    """A lens report: its JSON fields in ``folder``, its tables content-addressed under ``root/tables``
    and indexed by ``folder/tables.json``."""
    from radiolens.lens.report import LensReport

    index = {}
    for name in LensReport.__dataclass_fields__:
        value = getattr(report, name)
        if isinstance(value, pd.DataFrame):
            wide = name in _WIDE
            data = _frame_bytes(value.T if wide else value, single_precision=wide)
            relative = f"{_TABLES}/{hashlib.sha256(data).hexdigest()[:32]}.parquet"
            if not (root / relative).exists():
                atomic_write_bytes(root / relative, data)
            index[name] = {"file": relative, "transposed": wide, "single_precision": wide}
        else:
            atomic_write_text(folder / f"{name}.json", json.dumps(value, indent=1, sort_keys=True, default=str))
    atomic_write_text(folder / _TABLE_INDEX, json.dumps(index, indent=1, sort_keys=True))


def _read_report(root: Path, folder: Path, files: Mapping[str, str]):
    from radiolens.lens.report import LensReport

    try:
        index = json.loads((folder / _TABLE_INDEX).read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"results bundle {root}: cannot read {folder.name}/{_TABLE_INDEX} ({err}); "
                          "write it again with `radiolens bundle`") from err
    values: dict[str, Any] = {}
    for name in LensReport.__dataclass_fields__:
        if name in index:
            entry = index[name]
            if entry.get("file") not in files:
                raise BundleError(f"results bundle {root}: {folder.name}/{_TABLE_INDEX} names {entry.get('file')!r}, "
                                  "which its manifest does not list; write it again with `radiolens bundle`")
            frame = pd.read_parquet(_inside(root, entry["file"]))
            if entry.get("single_precision"):
                frame = frame.astype({c: "float64" for c, t in frame.dtypes.items() if t == "float32"})
            values[name] = frame.T if entry.get("transposed") else frame
        elif (folder / f"{name}.json").exists():
            values[name] = json.loads((folder / f"{name}.json").read_text())
    return LensReport(**values)


class BundleError(CacheIntegrityError):
    """A results bundle that is incomplete, altered or unsafe; the message names the file."""


def study_fingerprint(config: Mapping[str, Any]) -> str:
    """What a bundle must match: the configuration's result-changing keys and the step versions."""
    relevant = {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
    return hash_json({"config": relevant, "steps": STEP_VERSIONS, "format": BUNDLE_FORMAT})


def bundle_label(config: Mapping[str, Any]) -> str:
    """The folder name of a study's bundle: ``quick``, ``full`` or ``custom-<fingerprint>``."""
    from radiolens.config import load_config

    for label, quick in (("quick", True), ("full", False)):
        if study_fingerprint(load_config(quick=quick)) == study_fingerprint(config):
            return label
    return "custom-" + study_fingerprint(config)[:12]


def _slug(name: str) -> str:
    """A report name (``"lesion (lesion ROI)"``) as a portable file name (``"lesion-lesion-roi"``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"cannot name a bundle file after {name!r}")
    return slug


@dataclass
class ResultsBundle:
    """A verified results bundle (:func:`load_bundle`); its tables are read on first use.

    Attributes
    ----------
    path : Path
        The bundle's folder.
    manifest : dict
        ``format``, ``radiolens``, ``created``, ``fingerprint``, ``config``, ``step_versions``,
        ``note``, ``reports`` (report name -> folder), ``sweeps`` (report name -> file) and
        ``files`` (relative path -> SHA-256).
    """

    path: Path
    manifest: dict
    _loaded: dict = field(default_factory=dict, repr=False)

    @property
    def note(self) -> str:
        """Where the numbers come from (computed by radiolens on the synthetic cohort)."""
        return self.manifest["note"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def report_names(self) -> list[str]:
        """The lens reports it holds, in the study's order (``"pirads"``, ..., ``"lesion (lesion ROI)"``)."""
        return list(self.manifest["reports"])

    def matches(self, config: Mapping[str, Any]) -> bool:
        """Whether this bundle holds the results of ``config`` with the current step versions."""
        return self.fingerprint == study_fingerprint(config)

    def _frame(self, name: str) -> pd.DataFrame:
        if name not in self._loaded:
            self._loaded[name] = pd.read_parquet(self.path / f"{name}.parquet")
        return self._loaded[name].copy()

    def downstream(self) -> pd.DataFrame:
        """Table 2: ``task, regime, metric, value``."""
        return self._frame("downstream")

    def downstream_comparison(self) -> pd.DataFrame:
        """Table 2's frozen-vs-full differences, tested (:func:`radiolens.finetune.compare_regimes`)."""
        return self._frame("downstream_comparison")

    def planted(self) -> pd.DataFrame:
        """The planted-truth table of :meth:`Study.planted_truth <radiolens.pipeline.Study.planted_truth>`."""
        return self._frame("planted")

    def sweep(self, name: str) -> pd.DataFrame:
        """The penalty sweep behind one report."""
        if name not in self.manifest["sweeps"]:
            raise KeyError(f"bundle {self.path} has no penalty sweep for {name!r}; it has {list(self.manifest['sweeps'])}")
        return pd.read_parquet(self.path / self.manifest["sweeps"][name])

    @property
    def stage_names(self) -> list[str]:
        """The reports whose stage-by-stage table it holds (:meth:`stages`)."""
        return list(self.manifest.get("stages", {}))

    def stages(self, name: str) -> pd.DataFrame:
        """Where in the network fine-tuning acts, for one report (:func:`radiolens.lens.stage_shift_table`)."""
        if name not in self.manifest.get("stages", {}):
            raise KeyError(f"bundle {self.path} has no stage table for {name!r}; it has {self.stage_names}")
        return pd.read_parquet(self.path / self.manifest["stages"][name])

    def report_dir(self, name: str) -> Path:
        if name not in self.manifest["reports"]:
            raise KeyError(f"bundle {self.path} has no lens report {name!r}; it has {self.report_names}")
        return self.path / self.manifest["reports"][name]

    def report(self, name: str):
        """One lens report (:class:`~radiolens.lens.LensReport`), e.g. ``"pirads"``."""
        key = ("report", name)
        if key not in self._loaded:
            self._loaded[key] = _read_report(self.path, self.report_dir(name), self.manifest["files"])
        return self._loaded[key]


def write_bundle(
    path: str | Path,
    config: Mapping[str, Any],
    downstream: pd.DataFrame,
    comparison: pd.DataFrame,
    planted: pd.DataFrame,
    sweeps: Mapping[str, pd.DataFrame],
    reports: Mapping[str, Any],
    n_cases: int | None = None,
    stages: Mapping[str, pd.DataFrame] | None = None,
) -> Path:
    """Write a results bundle (atomically: the folder appears only when complete).

    Usually called through :meth:`Study.write_bundle <radiolens.pipeline.Study.write_bundle>`
    or ``radiolens bundle``, which collect the study's artifacts from its cache.

    Parameters
    ----------
    path
        The bundle's folder; replaced if it exists.
    config
        The study's configuration (its fingerprint decides which studies may load the bundle).
    downstream, comparison, planted
        Table 2, its frozen-vs-full tests (:meth:`Study.downstream_comparison
        <radiolens.pipeline.Study.downstream_comparison>`) and the planted-truth table.
    sweeps, reports
        ``{report name: penalty sweep}`` and ``{report name: LensReport}``.
    n_cases
        Cases in the study's cohort, for the note (default: the configuration's).
    stages
        ``{report name: stage-by-stage table}`` (optional; names among ``reports``).

    Returns
    -------
    Path
        The bundle's folder.
    """
    stages = dict(stages or {})
    if not set(stages) <= set(reports):
        raise ValueError(f"stage tables {sorted(stages)} name reports that are not in {sorted(reports)}")
    if set(sweeps) != set(reports):
        raise ValueError(f"sweeps {sorted(sweeps)} and reports {sorted(reports)} must name the same reports")
    slugs = {name: _slug(name) for name in reports}
    if len(set(slugs.values())) != len(slugs):
        raise ValueError(f"report names {sorted(reports)} collide as file names {sorted(slugs.values())}")
    n_cases = int(config["cohort"]["n_cases"] if n_cases is None else n_cases)

    def save(folder: Path) -> None:
        _write_frame(folder / "downstream.parquet", downstream)
        _write_frame(folder / "downstream_comparison.parquet", comparison)
        _write_frame(folder / "planted.parquet", planted)
        for name, slug in slugs.items():
            _write_frame(folder / "sweeps" / f"{slug}.parquet", sweeps[name])
            _write_report(reports[name], folder / "reports" / slug, folder)
        for name, table in stages.items():
            _write_frame(folder / "stages" / f"{slugs[name]}.parquet", table)
        note = NOTE.format(version=__version__, n_cases=n_cases)
        atomic_write_text(folder / "README.md", f"# radiolens results bundle\n\n{note}\n\nWritten by `radiolens bundle`; "
                          "verified against manifest.json (SHA-256 of every file) before use.\n")
        files = {p.relative_to(folder).as_posix(): hash_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
        manifest = {
            "format": BUNDLE_FORMAT,
            "radiolens": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fingerprint": study_fingerprint(config),
            "config": {k: v for k, v in config.items() if k not in RUNTIME_KEYS},
            "step_versions": dict(STEP_VERSIONS),
            "note": note,
            "reports": {name: f"reports/{slug}" for name, slug in slugs.items()},
            "sweeps": {name: f"sweeps/{slug}.parquet" for name, slug in slugs.items()},
            "stages": {name: f"stages/{slugs[name]}.parquet" for name in stages},
            "files": files,
        }
        # not sort_keys: the reports keep the study's order
        atomic_write_text(folder / _MANIFEST, json.dumps(manifest, indent=1, default=str))

    out = atomic_write_dir(path, save)
    logger.info("results bundle written to %s", out)
    return out


def _inside(folder: Path, relative: str) -> Path:
    """``folder / relative``, refusing a path that leaves the folder (an altered manifest)."""
    target = (folder / relative).resolve()
    if Path(relative).is_absolute() or folder.resolve() not in target.parents:
        raise BundleError(f"results bundle {folder}: manifest names {relative!r}, which is outside the bundle; "
                          "the bundle is altered - delete it or write it again with `radiolens bundle`")
    return target


def load_bundle(path: str | Path) -> ResultsBundle:
    """Read and verify a results bundle: every file its manifest lists, with its SHA-256.

    Raises
    ------
    BundleError
        The manifest is missing or unreadable, of another format, names a path outside the
        folder, or a file is missing, altered or not listed; the message names the file.
    """
    folder = Path(path)
    manifest_path = folder / _MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"results bundle {folder}: cannot read {_MANIFEST} ({err}); "
                          "write it again with `radiolens bundle`") from err
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"results bundle {folder}: format {manifest.get('format')!r}, this radiolens reads "
                          f"format {BUNDLE_FORMAT}; write it again with `radiolens bundle`")
    files = manifest.get("files", {})
    listed = {_inside(folder, name) for name in files}
    for name, digest in files.items():
        target = _inside(folder, name)
        if not target.is_file():
            raise BundleError(f"results bundle {folder}: {name} is missing; write it again with `radiolens bundle`")
        if hash_file(target) != digest:
            raise BundleError(f"results bundle {folder}: {name} does not match its checksum in {_MANIFEST} "
                              "(altered or truncated); write it again with `radiolens bundle`")
    extra = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.is_file() and p.name != _MANIFEST and p.resolve() not in listed]
    if extra:
        raise BundleError(f"results bundle {folder}: files not in its manifest: {sorted(extra)[:5]}")
    needed = [f"{name}.parquet" for name in _FRAMES] + list(manifest.get("sweeps", {}).values()) \
        + list(manifest.get("stages", {}).values())
    missing = [name for name in needed if name not in files]
    if missing:
        raise BundleError(f"results bundle {folder}: incomplete, no {missing[:5]}")
    return ResultsBundle(folder, manifest)


def find_bundle(config: Mapping[str, Any], folders: Iterable[str | Path] | None = None) -> ResultsBundle | None:
    """The verified bundle that holds ``config``'s results, or None.

    Parameters
    ----------
    config
        A study's configuration.
    folders
        Where to look: bundle folders, or folders of bundle folders. Default: the package's own
        bundles (:data:`PACKAGE_BUNDLES`).

    A bundle that fails verification is skipped with a warning (the study then computes).
    """
    candidates: list[Path] = []
    for folder in [PACKAGE_BUNDLES] if folders is None else folders:
        folder = Path(folder)
        if (folder / _MANIFEST).is_file():
            candidates.append(folder)
        elif folder.is_dir():
            candidates.extend(sorted(p.parent for p in folder.glob(f"*/{_MANIFEST}")))
    wanted = study_fingerprint(config)
    for candidate in candidates:
        try:
            fingerprint = json.loads((candidate / _MANIFEST).read_text()).get("fingerprint")
        except (OSError, ValueError):
            fingerprint = None
        if fingerprint != wanted:
            continue
        try:
            return load_bundle(candidate)
        except BundleError as err:
            logger.warning("%s; computing instead", err)
    return None
