"""Configuration of a radiolens study: a small YAML file, validated on load.

Every key has a documented default (``radiolens config --show`` prints them); a config file
only names what it changes. Unknown keys and wrong types are errors that name the key, so a
typo never silently falls back to a default.

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
import os
from pathlib import Path
from typing import Any

import yaml

from radiolens.errors import EXIT_CODES, UserError
from radiolens.naming import MODALITIES
from radiolens.tasks import REGIMES, TASKS

__all__ = ["ConfigError", "DEFAULTS", "QUICK", "describe_defaults", "load_config", "merge"]


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

_CHOICES: dict[str, tuple] = {
    "cohort.source": ("synthetic", "table", "folder", "msd", "picai", "prostate158"),
    "lens.decoder": ("ols", "ridge"),
    "lens.protocol": ("cross-fit", "paper"),
    "lens.permutation_stat": ("combined", "delta_r2", "delta_I"),
}
_LIST_CHOICES: dict[str, tuple] = {
    "finetune.tasks": tuple(TASKS),
    "finetune.regimes": REGIMES,
    "radiomics.modalities": MODALITIES,
}


def merge(base: dict, override: dict, _prefix: str = "") -> dict:
    """Deep-merge ``override`` into a copy of ``base``, rejecting unknown keys and bad types."""
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
        result[key] = _check_value(name, default, value)
    return result


def _check_value(name: str, default: Any, value: Any) -> Any:
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {name!r} must be true or false, got {value!r}")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {name!r} must be a number, got {value!r}")
        if isinstance(default, int):
            if not float(value).is_integer():
                raise ConfigError(f"config key {name!r} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"config key {name!r} must be a list, got {value!r}")
        allowed = _LIST_CHOICES.get(name)
        if allowed:
            bad = [v for v in value if v not in allowed]
            if bad:
                raise ConfigError(f"config key {name!r}: unknown value(s) {bad}; allowed {list(allowed)}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config key {name!r} must be a string, got {value!r}")
        allowed = _CHOICES.get(name)
        if allowed and value not in allowed:
            raise ConfigError(f"config key {name!r} must be one of {list(allowed)}, got {value!r}")
    return value


def _validate_paths(config: dict, base_dir: Path) -> dict:
    cohort = config["cohort"]
    if cohort["source"] in ("table", "folder"):
        if not cohort["path"]:
            raise ConfigError(f"config key 'cohort.path' is required when cohort.source is {cohort['source']!r}")
        path = Path(cohort["path"]).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if not path.exists():
            raise ConfigError(f"config key 'cohort.path': {path} does not exist")
        cohort["path"] = str(path)
    settings = config["radiomics"]["settings"]
    if settings:
        path = Path(settings).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if not path.exists():
            raise ConfigError(f"config key 'radiomics.settings': {path} does not exist")
        config["radiomics"]["settings"] = str(path)
    weights = config["encoder"]["weights"]
    if weights and (os.sep in weights or weights.endswith((".pt", ".pth", ".ckpt"))):
        path = Path(weights).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if not path.exists():
            raise ConfigError(f"config key 'encoder.weights': checkpoint {path} does not exist")
        config["encoder"]["weights"] = str(path)
    for key in ("shape", "spacing"):
        if len(cohort[key]) != 3:
            raise ConfigError(f"config key 'cohort.{key}' must have 3 numbers, got {cohort[key]!r}")
    if any(int(s) % 16 for s in cohort["shape"]):
        raise ConfigError(f"config key 'cohort.shape' must be multiples of 16 (the encoder's stride), got {cohort['shape']!r}")
    if config["finetune"]["decoder_channels"] < 1:
        raise ConfigError(f"config key 'finetune.decoder_channels' must be >= 1, got {config['finetune']['decoder_channels']!r}")
    if config["finetune"]["frozen_views"] < 0:
        raise ConfigError(f"config key 'finetune.frozen_views' must be >= 0, got {config['finetune']['frozen_views']!r}")
    scales = config["finetune"]["decoder_pool_scales"]
    if not scales or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in scales):
        raise ConfigError(f"config key 'finetune.decoder_pool_scales' must be positive integers, got {scales!r}")
    lens = config["lens"]
    if lens["protocol"] == "cross-fit" and lens["n_folds"] < 2:
        raise ConfigError(f"config key 'lens.n_folds' must be >= 2 for protocol cross-fit, got {lens['n_folds']!r}")
    if lens["scale"] not in (None, "paper", "standardized", "whitened"):
        raise ConfigError(f"config key 'lens.scale' must be null, paper, standardized or whitened, got {lens['scale']!r}")
    if lens["match_ft_moments"] not in (None, True, False):
        raise ConfigError(f"config key 'lens.match_ft_moments' must be null, true or false, got {lens['match_ft_moments']!r}")
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
        or (isinstance(threshold, (int, float)) and not isinstance(threshold, bool))
    ):
        raise ConfigError(
            "config key 'cohort.lesion_threshold' must be null or 'nonzero' (any non-zero voxel is lesion) or a "
            f"number t (voxels >= t are lesion, e.g. 2 for ISUP >= 2), got {threshold!r}"
        )
    if cohort["resample"] not in (None, True, False):
        raise ConfigError(f"config key 'cohort.resample' must be null, true or false, got {cohort['resample']!r}")
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
