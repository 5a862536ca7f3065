"""Configuration of a radiolens study: a small YAML file, validated on load.

Every key has a documented default (``radiolens config --show`` prints them); a config file
only names what it changes. The whole configuration is checked before any work: unknown keys,
and every value against its rule in :data:`RULES` (type, range, choices, null, list length,
finite numbers), then files that must exist and keys checked together. Each error names the
key, the value and what is allowed, so a typo never silently falls back to a default.

Example
-------
.. code-block:: yaml

    cohort:
      source: table            # synthetic | table | folder | msd | picai | prostate158
      path: my_cases.csv
    encoder:
      weights: /data/profound_tiny.pth
      preset: tiny
    finetune:
      epochs: 100
      checkpoints:             # fine-tuned elsewhere: compared, not re-trained
        my_task: /data/profound_finetuned.pth
"""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from radiolens.errors import EXIT_CODES, UserError
from radiolens.naming import MODALITIES
from radiolens.tasks import REGIMES, TASKS

__all__ = ["ConfigError", "DEFAULTS", "QUICK", "RULES", "Rule", "check_value", "describe_defaults", "load_config", "merge"]


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key."""

    exit_code = EXIT_CODES["config"]


#: Every parameter of a run with its default. Comments in DOCS below explain each.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "jobs": 2,
    "device": "cpu",
    "cache_dir": None,
    "out": "radiolens-output",
    "cohort": {
        "source": "synthetic",
        "path": None,
        "n_cases": 200,
        "shape": [32, 96, 96],
        "spacing": [0.8, 0.8, 2.0],
        "seed": 0,
        "resample": None,
        "lesion_threshold": None,
    },
    "preprocess": {
        "enabled": False,
        "spacing": [0.5, 0.5, 1.0],
        "crop_shape": [64, 224, 224],
    },
    "radiomics": {
        "modalities": list(MODALITIES),
        "settings": None,
        "lesion_roi": True,
    },
    "encoder": {
        "weights": "micro-synthetic",
        "preset": "micro",
        "pretrain_epochs": 30,
        "in_chans": None,
    },
    "finetune": {
        "tasks": list(TASKS),
        "regimes": list(REGIMES),
        "epochs": 40,
        "lr": 1e-3,
        "batch_size": 8,
        "patience": 10,
        "decoder_channels": 32,
        "decoder_pool_scales": [1, 2, 3, 6],
        "frozen_views": 4,
        "checkpoints": None,
    },
    "lens": {
        "protocol": "cross-fit",
        "n_folds": 2,
        "hidden_dim": None,
        "epochs": 200,
        "lr": 1e-3,
        "batch_size": 64,
        "decoder": "ols",
        "fit_intercept": True,
        "match_ft_moments": None,
        "scale": None,
        "permutation_stat": "combined",
        "l1_grid": [0.0, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5],
        "l2_grid": [0.0, 1e-5, 1e-4, 1e-3],
        "n_bootstrap": 200,
        "n_permutations": 1000,
        "top_k": 10,
    },
}

#: What ``--quick`` changes: small enough for CI and the book, same code paths.
QUICK: dict[str, Any] = {
    "cohort": {"n_cases": 60},
    "encoder": {"pretrain_epochs": 2},
    "finetune": {"epochs": 3, "batch_size": 4, "patience": 3, "decoder_pool_scales": [1, 2, 3]},
    "lens": {
        "epochs": 100,
        "l1_grid": [0.0, 1e-6],
        "l2_grid": [0.0, 1e-5],
        "n_bootstrap": 50,
        "n_permutations": 200,
    },
}

DOCS: dict[str, str] = {
    "seed": "master random seed (cohort split, training, lens)",
    "jobs": "parallel worker processes for radiomics extraction and for fine-tuning runs (one thread each)",
    "device": "torch device for the encoder: cpu, cuda, cuda:1, mps",
    "cache_dir": "cache folder (default: $RADIOLENS_CACHE or ~/.cache/radiolens)",
    "out": "output folder of the report",
    "cohort.source": "synthetic (built-in), table (your CSV of paths), folder (a radiolens "
    "cohort folder), msd, picai or prostate158 (downloaded public data)",
    "cohort.path": "CSV table or cohort folder for source table/folder; data dir for fetchers",
    "cohort.n_cases": "number of synthetic cases",
    "cohort.shape": "synthetic volume shape (D, H, W), multiples of 16 (the encoder's total stride)",
    "cohort.spacing": "synthetic voxel spacing (x, y, z) in mm",
    "cohort.seed": "seed of the synthetic generator",
    "cohort.resample": "source table: images/masks on another grid than the case's first image (DWI and ADC "
    "next to T2W) are resampled onto it (logged per file); null = on, false = such a case is an error",
    "cohort.lesion_threshold": "source table: how a lesion mask with label values (PI-CAI's ISUP grades) becomes "
    "binary: null or 'nonzero' = any non-zero voxel, a number t = voxels >= t (2: ISUP >= 2); recorded in the "
    "manifest's lesion_rule column",
    "preprocess.enabled": "resample and crop around the gland (real data)",
    "preprocess.spacing": "target spacing (x, y, z) mm; the paper uses 0.5 x 0.5 x 1.0",
    "preprocess.crop_shape": "crop box (D, H, W) around the gland; the paper uses 64 x 224 x 224",
    "radiomics.modalities": "modalities to extract radiomics from",
    "radiomics.settings": "PyRadiomics parameter file (YAML); null = the paper's defaults",
    "radiomics.lesion_roi": "also extract lesion-ROI radiomics for the segmentation task",
    "encoder.weights": "shipped weights name, 'pretrain', or a checkpoint file: ProFound, radiolens (encoder or "
    "fine-tuned) or a torch.export/TorchScript archive (any encoder); its sha256 goes into the report",
    "encoder.in_chans": "input channels of an encoder archive (torch.export/TorchScript; null: 3 = T2W, DWI, ADC)",
    "encoder.preset": "ConvNeXt V2 size preset (micro, atto, ..., tiny, ...)",
    "encoder.pretrain_epochs": "epochs of masked pre-training when weights = pretrain",
    "finetune.tasks": "downstream tasks (radiolens.tasks) radiolens fine-tunes: " + ", ".join(TASKS)
    + "; tasks whose labels the cohort lacks are skipped with a warning",
    "finetune.checkpoints": "encoders fine-tuned elsewhere, {task name: checkpoint file} (any name; same formats "
    "as encoder.weights): compared with encoder.weights without fine-tuning in radiolens, no labels needed",
    "finetune.regimes": "frozen (head only) and/or full fine-tuning",
    "finetune.epochs": "maximum fine-tuning epochs, early stopping on validation (the paper: 100; "
    "40 keeps the built-in CPU study within its time budget)",
    "finetune.lr": "AdamW learning rate",
    "finetune.batch_size": "fine-tuning batch size",
    "finetune.patience": "early-stopping patience in epochs",
    "finetune.decoder_channels": "width of the segmentation task's UPerNet decoder (ProFound: 512; "
    "32 keeps the built-in CPU study within its time budget)",
    "finetune.decoder_pool_scales": "output sizes of the decoder's pyramid pooling (UPerNet: 1, 2, 3, 6)",
    "finetune.frozen_views": "frozen regime: augmented views per training case whose encoder outputs are computed "
    "once (the head trains on them in turn); 0 = un-augmented",
    "lens.protocol": "cross-fit (decoders on cases their stage-1 projection never saw; calibrated "
    "intervals and p-values) or paper (stage 1 and decoders on the same cases, as published)",
    "lens.n_folds": "parts of the training cases for protocol cross-fit (>= 2)",
    "lens.hidden_dim": "width of the shared projection (null: chosen below d and n_train)",
    "lens.epochs": "stage-1 training epochs",
    "lens.lr": "stage-1 learning rate",
    "lens.batch_size": "stage-1 mini-batch size (AdamW); the paper does not state it",
    "lens.decoder": "ols (the paper's) or ridge (cross-validated, radiolens's addition)",
    "lens.fit_intercept": "decoders with an intercept (false: the paper's literal R Z^T (Z Z^T)^-1)",
    "lens.match_ft_moments": "shift and scale fine-tuned embedding dims to the pre-trained ones' mean and sd "
    "before the projection (null: true for cross-fit, false for paper)",
    "lens.scale": "units of the importance I: paper (raw Z), standardized, whitened (debiased); null: "
    "whitened for cross-fit, the paper's for paper",
    "lens.permutation_stat": "statistic of the permutation test: combined (held-out delta R2 and delta I), "
    "delta_r2 or delta_I",
    "lens.l1_grid": "L1 penalties of the sweep",
    "lens.l2_grid": "L2 penalties of the sweep",
    "lens.n_bootstrap": "bootstrap refits for confidence intervals of I, delta I and delta R2",
    "lens.n_permutations": "paired permutations for per-feature p-values",
    "lens.top_k": "features per ranking in the report",
}

# --------------------------------------------------------------------------------------------
# one rule per key
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What one configuration key accepts; :func:`check_value` applies it.

    Attributes
    ----------
    kind
        ``"int"``, ``"float"`` (ints accepted), ``"bool"``, ``"str"``, ``"path"`` (a non-empty
        string or :class:`os.PathLike`, stored as a string) or ``"list"``.
    low, high
        Inclusive bounds of a number (of each item of a list of numbers); None = unbounded.
    above
        Exclusive lower bound (e.g. 0 for a learning rate or a spacing).
    choices
        The allowed strings (of each item of a list).
    none
        None (YAML ``null``) is allowed.
    item
        The rule of each item of a list.
    length
        The exact length of a list.
    non_empty
        A list or string must not be empty.
    unique
        A list's items must differ.
    pattern
        A regular expression a string must match in full, with ``pattern_text`` saying it in
        words.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple | None = None
    none: bool = False
    item: Rule | None = None
    length: int | None = None
    non_empty: bool = False
    unique: bool = False
    pattern: str | None = None
    pattern_text: str | None = None

    def allowed(self) -> str:
        """The rule in words, for error messages."""
        if self.kind == "list":
            size = f"a list of {self.length} items" if self.length else (
                "a non-empty list" if self.non_empty else "a list")
            text = size + (" (no repeats)" if self.unique else "") + (f", each {self.item.allowed()}" if self.item else "")
        elif self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.pattern_text:
            text = self.pattern_text
        else:
            text = {"int": "an integer", "float": "a finite number", "bool": "true or false",
                    "str": "a non-empty string" if self.non_empty else "a string",
                    "path": "a file or folder path"}[self.kind]
            bounds = []
            if self.above is not None:
                bounds.append(f"> {self.above:g}")
            if self.low is not None:
                bounds.append(f">= {self.low:g}")
            if self.high is not None:
                bounds.append(f"<= {self.high:g}")
            if bounds:
                text += " " + " and ".join(bounds)
        return text + (", or null" if self.none else "")


def _int(low: float | None = None, high: float | None = None, none: bool = False) -> Rule:
    return Rule("int", low=low, high=high, none=none)


def _positive(kind: str = "float") -> Rule:
    return Rule(kind, above=0)


def _choice(*choices: str, none: bool = False) -> Rule:
    return Rule("str", choices=choices, none=none)


def _list(item: Rule, length: int | None = None, unique: bool = False) -> Rule:
    return Rule("list", item=item, length=length, non_empty=True, unique=unique)


#: The rule of every key that needs more than its default's type. A key without an entry is
#: checked against its default's type (an int default takes integers, a list default lists,
#: a None default anything); to constrain a new key, add one line here.
RULES: dict[str, Rule] = {
    "seed": _int(0),
    "jobs": _int(1),
    "device": Rule("str", pattern=r"cpu|mps|cuda(:\d+)?", pattern_text="cpu, mps, cuda or cuda:N"),
    "cache_dir": Rule("path", none=True),
    "out": Rule("path"),
    "cohort.source": _choice("synthetic", "table", "folder", "msd", "picai", "prostate158"),
    "cohort.path": Rule("path", none=True),
    # the 7:1:2 split needs about ten cases before the validation split gets one
    "cohort.n_cases": _int(10),
    "cohort.shape": _list(_int(16), length=3),
    "cohort.spacing": _list(_positive(), length=3),
    "cohort.seed": _int(0),
    "cohort.resample": Rule("bool", none=True),
    "preprocess.enabled": Rule("bool"),
    "preprocess.spacing": _list(_positive(), length=3),
    "preprocess.crop_shape": _list(_int(1), length=3),
    "radiomics.modalities": _list(_choice(*MODALITIES), unique=True),
    "radiomics.settings": Rule("path", none=True),
    "radiomics.lesion_roi": Rule("bool"),
    "encoder.preset": Rule("str", non_empty=True),
    "encoder.pretrain_epochs": _int(1),
    "encoder.in_chans": _int(1, 3, none=True),  # 2 is refused with the other cross-checks
    # may be empty when finetune.checkpoints names encoders fine-tuned elsewhere (checked below)
    "finetune.tasks": Rule("list", item=_choice(*TASKS), unique=True),
    "finetune.regimes": _list(_choice(*REGIMES), unique=True),
    "finetune.epochs": _int(1),
    "finetune.lr": _positive(),
    "finetune.batch_size": _int(1),
    "finetune.patience": _int(1),
    "finetune.decoder_channels": _int(1),
    "finetune.decoder_pool_scales": _list(_int(1), unique=True),
    "finetune.frozen_views": _int(0),
    "lens.protocol": _choice("cross-fit", "paper"),
    "lens.n_folds": _int(1),
    "lens.hidden_dim": _int(1, none=True),
    "lens.epochs": _int(1),
    "lens.lr": _positive(),
    "lens.batch_size": _int(1),
    "lens.decoder": _choice("ols", "ridge"),
    "lens.fit_intercept": Rule("bool"),
    "lens.match_ft_moments": Rule("bool", none=True),
    "lens.scale": _choice("paper", "standardized", "whitened", none=True),
    "lens.permutation_stat": _choice("combined", "delta_r2", "delta_I"),
    "lens.l1_grid": _list(Rule("float", low=0), unique=True),
    "lens.l2_grid": _list(Rule("float", low=0), unique=True),
    "lens.n_bootstrap": _int(0),
    "lens.n_permutations": _int(0),
    "lens.top_k": _int(1),
}


#: Keys checked in :func:`_validate_paths` instead of by a rule: a mapping, or a value of
#: mixed type (``"nonzero"`` or a number).
CHECKED_TOGETHER: tuple[str, ...] = ("cohort.lesion_threshold", "finetune.checkpoints")


def _rule_from_default(default: Any) -> Rule | None:
    if default is None or isinstance(default, dict):
        return None
    if isinstance(default, bool):
        return Rule("bool")
    if isinstance(default, int):
        return Rule("int")
    if isinstance(default, float):
        return Rule("float")
    if isinstance(default, list):
        return Rule("list", item=_rule_from_default(default[0]) if default else None)
    return Rule("str")


def _problem(rule: Rule, value: Any) -> tuple[str | None, Any]:
    """(what is wrong or None, the value converted: ints stay ints, floats become floats)."""
    if value is None:
        return (None if rule.none else "must not be null"), value
    if rule.kind == "bool":
        return (None if isinstance(value, bool) else "is not true or false"), value
    if rule.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "is not a number", value
        if not math.isfinite(value):
            return "is not finite", value
        if rule.kind == "int":
            if not float(value).is_integer():
                return "is not an integer", value
            value = int(value)
        else:
            value = float(value)
        if (rule.above is not None and not value > rule.above) or (rule.low is not None and value < rule.low) \
                or (rule.high is not None and value > rule.high):
            return "is out of range", value
        return None, value
    if rule.kind == "path":
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
            return "is not a path", value
        return None, os.fspath(value)
    if rule.kind == "str":
        if not isinstance(value, str):
            return "is not a string", value
        if rule.choices and value not in rule.choices:
            return "is not an allowed value", value
        if rule.non_empty and not value.strip():
            return "is empty", value
        if rule.pattern and not re.fullmatch(rule.pattern, value):
            return "is not an allowed value", value
        return None, value
    if rule.kind == "list":
        if not isinstance(value, list):
            return "is not a list", value
        if rule.non_empty and not value:
            return "is empty", value
        if rule.length is not None and len(value) != rule.length:
            return f"has {len(value)} items", value
        items = []
        for i, item in enumerate(value):
            problem, item = _problem(rule.item, item) if rule.item else (None, item)
            if problem:
                return f"item {i} ({item!r}) {problem}", value
            items.append(item)
        if rule.unique and len({repr(v) for v in items}) != len(items):
            return "repeats a value", value
        return None, items
    raise ValueError(f"unknown rule kind {rule.kind!r}")  # pragma: no cover - a bug in RULES


def check_value(name: str, default: Any, value: Any) -> Any:
    """``value`` checked against the key's :data:`RULES` entry (else its default's type).

    Returns the value converted (an integer-valued float for an int key becomes an int).

    Raises
    ------
    ConfigError
        Naming the key, the value and what is allowed.
    """
    rule = RULES.get(name) or _rule_from_default(default)
    if rule is None:
        return value
    problem, converted = _problem(rule, value)
    if problem:
        raise ConfigError(f"config key {name!r}: {value!r} {problem}; allowed: {rule.allowed()}")
    return converted


def merge(base: dict, override: dict, _prefix: str = "") -> dict:
    """Deep-merge ``override`` into a copy of ``base``, rejecting unknown keys and bad values."""
    result = copy.deepcopy(base)
    for key, value in (override or {}).items():
        name = f"{_prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key {name!r} (known here: {known})")
        default = base[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} must be a mapping, got {value!r}")
            result[key] = merge(default, value, f"{name}.")
            continue
        result[key] = check_value(name, default, value)
    return result


def _validate_paths(config: dict, base_dir: Path) -> dict:
    cohort = config["cohort"]
    if cohort["source"] in ("table", "folder"):
        if not cohort["path"]:
            raise ConfigError(f"config key 'cohort.path' is required when cohort.source is {cohort['source']!r}")
        path = Path(cohort["path"]).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        want = "a cohort folder or manifest" if cohort["source"] == "folder" else "a CSV or Parquet table"
        if not path.exists():
            raise ConfigError(f"config key 'cohort.path': {str(path)!r} does not exist; allowed: {want}")
        if cohort["source"] == "table" and not path.is_file():
            raise ConfigError(f"config key 'cohort.path': {str(path)!r} is not a file; allowed: {want}")
        cohort["path"] = str(path)
    settings = config["radiomics"]["settings"]
    if settings:
        path = Path(settings).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise ConfigError(f"config key 'radiomics.settings': {str(path)!r} is not an existing file; "
                              "allowed: a PyRadiomics parameter file (YAML), or null for the paper's settings")
        config["radiomics"]["settings"] = str(path)
    weights = config["encoder"]["weights"]
    if weights and (os.sep in weights or weights.endswith((".pt", ".pth", ".ckpt"))):
        path = Path(weights).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if not path.exists():
            raise ConfigError(f"config key 'encoder.weights': checkpoint {path} does not exist")
        config["encoder"]["weights"] = str(path)
    if any(int(s) % 16 for s in cohort["shape"]):
        raise ConfigError(f"config key 'cohort.shape': {cohort['shape']!r} is not allowed; allowed: "
                          "multiples of 16 (the encoder's total stride)")
    lens = config["lens"]
    if lens["protocol"] == "cross-fit" and lens["n_folds"] < 2:
        raise ConfigError(f"config key 'lens.n_folds': {lens['n_folds']!r} is not allowed; allowed: >= 2 for protocol cross-fit")
    checkpoints = config["finetune"]["checkpoints"]
    if checkpoints is not None:
        if not isinstance(checkpoints, dict) or not all(isinstance(k, str) and k for k in checkpoints):
            raise ConfigError(
                f"config key 'finetune.checkpoints' must map task names to checkpoint files, e.g. "
                f"{{mytask: ft.pt}}, got {checkpoints!r}"
            )
        resolved = {}
        for task, value in checkpoints.items():
            if not isinstance(value, str) or not value:
                raise ConfigError(f"config key 'finetune.checkpoints.{task}' must be a checkpoint file path, got {value!r}")
            path = Path(value).expanduser()
            if not path.is_absolute():
                path = base_dir / path
            if not path.is_file():
                raise ConfigError(f"config key 'finetune.checkpoints.{task}': checkpoint {path} does not exist")
            resolved[task] = str(path)
        config["finetune"]["checkpoints"] = resolved
    threshold = cohort["lesion_threshold"]
    if threshold is not None and not (
        (isinstance(threshold, str) and threshold.strip().lower() in ("nonzero", "non-zero"))
        or (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold))
    ):
        raise ConfigError(
            "config key 'cohort.lesion_threshold' must be null or 'nonzero' (any non-zero voxel is lesion) or a "
            f"number t (voxels >= t are lesion, e.g. 2 for ISUP >= 2), got {threshold!r}"
        )
    if config["encoder"]["in_chans"] is not None and config["encoder"]["in_chans"] not in (1, len(MODALITIES)):
        raise ConfigError(
            f"config key 'encoder.in_chans' must be null, 1 (T2W) or {len(MODALITIES)} ({', '.join(MODALITIES)}), "
            f"got {config['encoder']['in_chans']!r}"
        )
    if not config["finetune"]["tasks"] and not config["finetune"]["checkpoints"]:
        raise ConfigError(
            "config key 'finetune.tasks' must name at least one task (or give finetune.checkpoints: "
            "{task: file} to compare encoders fine-tuned elsewhere)"
        )
    return config


def load_config(path: str | os.PathLike | None = None, quick: bool = False, **overrides: Any) -> dict:
    """Load and validate a run configuration.

    Parameters
    ----------
    path
        YAML file; None for the defaults.
    quick
        Apply :data:`QUICK` (CI and book mode) before the file's own values.
    **overrides
        Top-level values set last (from command-line flags); None values are ignored.

    Returns
    -------
    dict
        The complete configuration (every key present).

    Raises
    ------
    ConfigError
        Naming the offending key.
    """
    config = merge(DEFAULTS, QUICK) if quick else copy.deepcopy(DEFAULTS)
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        config = merge(config, loaded)
        base_dir = path.resolve().parent
    config = merge(config, {k: v for k, v in overrides.items() if v is not None})
    config["quick"] = quick
    return _validate_paths(config, base_dir)


def describe_defaults() -> str:
    """The defaults as commented YAML (for ``radiolens config``)."""
    lines: list[str] = []

    def walk(node: dict, prefix: str, indent: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                lines.append(f"{indent}{key}:")
                walk(value, f"{name}.", indent + "  ")
            else:
                text = yaml.safe_dump(value, default_flow_style=True).strip()
                text = text.removesuffix("\n...").removesuffix("...").strip()
                lines.append(f"{indent}{key}: {text}  # {DOCS.get(name, '')}")

    walk(DEFAULTS, "", "")
    return "\n".join(lines) + "\n"
