"""Fine-tuning an encoder on the paper's three downstream tasks, frozen or in full.

The lens compares an encoder before (``E``) and after (``E_ft``) fine-tuning. This module
produces ``E_ft`` the way the paper does (its Section 3 and appendix):

============  =========================================  ==========  ==========================
task          head                                       channels    loss / test metric
============  =========================================  ==========  ==========================
``pirads``    linear -> batch norm -> linear (4 classes)  T2W,DWI,ADC cross-entropy / quadratic
                                                                      weighted kappa, accuracy
``lesion``    UPerNet decoder over the 4 stage maps        T2W,DWI,ADC soft Dice (+ optional BCE) /
                                                                      mean Dice on lesion cases
``volume``    batch norm -> linear                         T2W         MSE on standardised volume /
                                                                      MSE, MAE in ml
============  =========================================  ==========  ==========================

Two regimes: ``"frozen"`` trains the head only (the encoder's weights and normalisation
statistics never change) and ``"full"`` trains encoder and head together. AdamW, learning
rate 1e-3, cosine or step schedule, early stopping on the validation loss (the best epoch's
weights are kept). The encoder passed in is never modified: fine-tuning works on a copy.

Choices the paper leaves open, made here and exposed as parameters: weight decay 0.05 on
weights only (not on biases and norm parameters, as in ConvNeXt training); batch size 8
(4 in quick mode); model selection on the validation *loss* (the validation metric is
recorded too, but kappa/Dice on a handful of validation cases are too coarse to select on);
the volume target standardised with the training split's mean and standard deviation; for the
T2W-only task a 3-channel encoder keeps the T2W slice of its stem kernel
(:func:`radiolens.models.heads.adapt_stem_in_chans`); the Dice loss is a *batch* soft Dice
(see :func:`soft_dice_loss` for why) with the decoder's output starting at a 1% lesion prior;
the lesion metric thresholds the probability at 0.5 and averages Dice over test cases that
have a lesion; in the frozen regime the encoder's outputs are computed once per case when
there is no augmentation (or in quick mode), which is exact and several times faster.

Determinism: every random choice (head initialisation, batch order, augmentation) derives
from ``seed``; training runs under ``torch.use_deterministic_algorithms`` and a forked torch
RNG, so the same call on the same CPU gives the same history bit for bit.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from radiolens.cache import atomic_write_bytes, atomic_write_text, hash_file
from radiolens.models.augment import AugmentConfig, apply as apply_augment, sample_params
from radiolens.models.heads import (
    PiradsHead,
    UPerNetDecoder3D,
    VolumeHead,
    adapt_stem_in_chans,
    find_stem_conv,
)

__all__ = [
    "TASKS",
    "REGIMES",
    "TASK_CHANNELS",
    "FINETUNE_VERSION",
    "DownstreamResults",
    "EmptySplitError",
    "FineTuneResult",
    "MissingLabelsError",
    "TaskModel",
    "check_task_labels",
    "dice_score",
    "encoder_for_task",
    "finetune",
    "load_finetuned",
    "quadratic_weighted_kappa",
    "run_downstream",
    "save_finetuned",
    "soft_dice_loss",
]

logger = logging.getLogger(__name__)

#: Input channels of each task, in the order the encoder sees them.
TASK_CHANNELS: dict[str, tuple[str, ...]] = {
    "pirads": ("T2W", "DWI", "ADC"),
    "lesion": ("T2W", "DWI", "ADC"),
    "volume": ("T2W",),
}
#: The label each task needs: a manifest column (or mask key for ``lesion``).
TASK_LABEL: dict[str, str] = {"pirads": "pirads_group", "lesion": "lesion", "volume": "gland_volume_ml"}
#: The validation metric recorded in the history, and whether larger is better.
TASK_METRIC: dict[str, tuple[str, bool]] = {"pirads": ("qwk", True), "lesion": ("dice", True), "volume": ("mse", False)}
TASKS = tuple(TASK_CHANNELS)
#: Bumped whenever a change alters fine-tuning results (part of the pipeline's cache key).
FINETUNE_VERSION = "2"
CHECKPOINT_FORMAT = "radiolens-finetuned-v1"
REGIMES = ("frozen", "full")
N_PIRADS_CLASSES = 4

#: Metrics that go into the downstream table (counts stay in ``FineTuneResult.metrics``).
TABLE_METRICS = {"pirads": ("qwk", "accuracy"), "lesion": ("dice",), "volume": ("mse", "mae_ml")}

#: What ``quick=True`` changes (the same code paths, smaller).
QUICK = {"epochs": 3, "batch_size": 4, "decoder_channels": 32, "pool_scales": (1, 2, 3)}


class MissingLabelsError(ValueError):
    """A task's labels are absent from the cohort (the pipeline skips the task with a warning).

    Attributes
    ----------
    task, column
        The task and the manifest column (or mask key) it needs.
    """

    def __init__(self, task: str, column: str, detail: str = ""):
        self.task, self.column = task, column
        msg = f"task {task!r} needs labels in column {column!r}, but the cohort has none"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class EmptySplitError(ValueError):
    """A split that training needs has no usable case."""

    def __init__(self, task: str, split: str, detail: str = ""):
        self.task, self.split = task, split
        msg = f"task {task!r}: the {split!r} split has no usable case"
        super().__init__(msg + (f" ({detail})" if detail else ""))


# --------------------------------------------------------------------------------------------
# metrics and losses
# --------------------------------------------------------------------------------------------
def quadratic_weighted_kappa(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int = N_PIRADS_CLASSES) -> float:
    """Cohen's kappa with quadratic weights (``sklearn.metrics.cohen_kappa_score``).

    Returns NaN when it is undefined (fewer than 2 cases, or both raters constant and equal).
    """
    from sklearn.metrics import cohen_kappa_score

    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if len(y_true) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=list(range(n_classes)))
    return float(value)


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient of two binary masks; NaN when both are empty."""
    pred, target = np.asarray(pred) > 0, np.asarray(target) > 0
    denom = pred.sum() + target.sum()
    if denom == 0:
        return float("nan")
    return float(2.0 * np.logical_and(pred, target).sum() / denom)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, batch: bool = True) -> torch.Tensor:
    """``1 - soft Dice`` of sigmoid probabilities.

    Parameters
    ----------
    logits, target
        ``(B, 1, D, H, W)``; target binary.
    smooth
        Added to numerator and denominator.
    batch
        ``True`` (default): one Dice over all voxels of the batch ("batch Dice", as in
        nnU-Net). ``False``: Dice per case, averaged. With many lesion-free cases the per-case
        form has a trap: predicting nothing scores a perfect ``smooth / smooth = 1`` on every
        empty case, and training collapses to an empty prediction. Batch Dice has no such
        reward (an empty prediction scores 0 as soon as the batch holds a lesion).
    """
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1).to(prob.dtype)
    if batch:
        prob, target = prob.reshape(1, -1), target.reshape(1, -1)
    inter = (prob * target).sum(1)
    dice = (2.0 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)
    return 1.0 - dice.mean()


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _case_image(case, channels: Sequence[str]) -> np.ndarray:
    """(C, D, H, W) float32 network input for one case: the shared preprocessing
    (:func:`radiolens.models.inputs.case_tensor`, which also names NaN voxels)."""
    from radiolens.models.inputs import case_tensor

    out = case_tensor(case, tuple(channels))
    return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float32)


def _labels(cohort) -> pd.DataFrame:
    labels = cohort.labels
    if "case_id" in labels.columns:
        labels = labels.set_index("case_id")
    labels.index = labels.index.astype(str)
    return labels


def _has_lesion_masks(cohort) -> bool:
    manifest = getattr(cohort, "manifest", None)
    if manifest is None or "lesion" not in manifest.columns:
        return False
    col = manifest["lesion"]
    return bool((col.notna() & (col.astype(str).str.strip() != "")).any())


def check_task_labels(cohort, task: str) -> None:
    """Raise :class:`MissingLabelsError` when ``cohort`` has no labels for ``task``."""
    if task not in TASK_CHANNELS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    column = TASK_LABEL[task]
    if task == "lesion":
        if not _has_lesion_masks(cohort):
            raise MissingLabelsError(task, column, "no case has a lesion mask")
        return
    labels = _labels(cohort)
    if column not in labels.columns:
        raise MissingLabelsError(task, column, "the column is absent")
    if labels[column].isna().all():
        raise MissingLabelsError(task, column, "every value is empty")


class _Cases:
    """A split's input volumes as a read-only stack of the case store's arrays.

    Indexing (an index array or a slice) stacks only the chosen cases, e.g. one batch, so a
    split never holds a second copy of the cohort's images (at 200 cases of 3 x 32 x 96 x 96
    that copy was 0.7 GB).
    """

    def __init__(self, arrays: Sequence[np.ndarray]):
        self._arrays = list(arrays)
        first = self._arrays[0].shape if self._arrays else (0, 1, 1, 1)
        self.shape = (len(self._arrays), *first)

    def __len__(self) -> int:
        return len(self._arrays)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = range(*index.indices(len(self._arrays)))
        chosen = [self._arrays[int(i)] for i in np.atleast_1d(index)]
        return np.stack(chosen).astype(np.float32, copy=False)


@dataclass
class _Split:
    case_ids: list[str]
    x: _Cases  # (N, C, D, H, W) float32 when indexed
    y: np.ndarray  # (N,) int / float, or (N, D, H, W) uint8 masks
    feats: Any = None  # frozen encoder outputs, when precomputed: (N, d) or a list of stage maps


class _CaseStore:
    """Loads every case once per channel set (shared across the tasks of one run).

    Images and lesion masks are zero-padded alike to a multiple of ``pad_multiple`` (the
    encoder's total stride), zero being the normalised mean.
    """

    def __init__(self, cohort, pad_multiple: int | None = None):
        self.cohort = cohort
        self.pad_multiple = pad_multiple
        self._images: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        self._lesions: dict[str, np.ndarray | None] = {}

    def _pad(self, array: np.ndarray) -> np.ndarray:
        if not self.pad_multiple or self.pad_multiple <= 1:
            return array
        from radiolens.models.inputs import pad_to_multiple

        return pad_to_multiple(array, self.pad_multiple)

    def _keep_lesion(self, case) -> None:
        mask = case.masks.get("lesion")
        self._lesions[case.case_id] = None if mask is None else self._pad((np.asarray(mask) > 0).astype(np.uint8))

    def image(self, case_id: str, channels: tuple[str, ...]) -> np.ndarray:
        key = (case_id, channels)
        if key not in self._images:
            # channels are normalised independently: a subset of a loaded stack is exact
            for (cid, have), image in list(self._images.items()):
                if cid == case_id and set(channels) <= set(have):
                    self._images[key] = np.ascontiguousarray(image[[have.index(c) for c in channels]])
                    return self._images[key]
            keys = list(channels) + ([] if case_id in self._lesions else ["lesion"])
            case = self.cohort.load_case(case_id, keys=keys)
            image = _case_image(case, channels)
            if not np.isfinite(image).all():
                raise ValueError(f"case {case_id!r}: input volume contains NaN/inf values")
            self._images[key] = self._pad(image)
            if case_id not in self._lesions:
                self._keep_lesion(case)
        return self._images[key]

    def lesion(self, case_id: str) -> np.ndarray | None:
        if case_id not in self._lesions:
            self._keep_lesion(self.cohort.load_case(case_id, keys=["lesion"]))
        return self._lesions[case_id]


def _load_split(store: _CaseStore, task: str, split: str, target_stats: tuple[float, float] | None) -> _Split:
    cohort = store.cohort
    channels = TASK_CHANNELS[task]
    labels = _labels(cohort)
    ids = [str(c) for c in cohort.ids(split)]
    xs, ys, kept = [], [], []
    for case_id in ids:
        if task == "pirads":
            value = labels.at[case_id, "pirads_group"]
            if pd.isna(value):
                continue
            y = int(value)
            if not 0 <= y < N_PIRADS_CLASSES:
                raise ValueError(f"case {case_id!r}: pirads_group {value!r} is not in 0..{N_PIRADS_CLASSES - 1}")
        elif task == "volume":
            value = labels.at[case_id, "gland_volume_ml"]
            if pd.isna(value):
                continue
            mean, std = target_stats
            y = (float(value) - mean) / std
        else:
            image = store.image(case_id, channels)
            mask = store.lesion(case_id)
            if mask is None:
                vol = labels.at[case_id, "lesion_volume_ml"] if "lesion_volume_ml" in labels.columns else np.nan
                if pd.notna(vol) and float(vol) == 0.0:
                    mask = np.zeros(image.shape[1:], dtype=np.uint8)  # known lesion-free case
                else:
                    logger.warning("lesion task: case %r has no lesion mask; left out", case_id)
                    continue
            if mask.shape != image.shape[1:]:
                raise ValueError(
                    f"case {case_id!r}: lesion mask shape {mask.shape} differs from the input's "
                    f"spatial shape {image.shape[1:]}"
                )
            y = mask
        xs.append(store.image(case_id, channels))
        ys.append(y)
        kept.append(case_id)
    if not kept:
        return _Split([], _Cases([]), np.zeros((0,)))
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        first = xs[0].shape
        odd = next(c for c, x in zip(kept, xs) if x.shape != first)
        raise ValueError(
            f"split {split!r}: case {odd!r} has input shape {store.image(odd, channels).shape}, "
            f"case {kept[0]!r} has {first}; crop/resample the cohort to one size"
        )
    x = _Cases(xs)
    y = np.stack(ys) if task == "lesion" else np.asarray(ys, dtype=np.int64 if task == "pirads" else np.float32)
    return _Split(kept, x, y)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    # batch norm cannot train on a batch of one: merge a trailing singleton into its neighbour
    if len(out) > 1 and len(out[-1]) == 1:
        out[-2] = np.concatenate([out[-2], out[-1]])
        out.pop()
    return out


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
class TaskModel(nn.Module):
    """Encoder + task head. In the frozen regime the encoder stays in eval mode and no
    gradient flows into it, so neither its weights nor its normalisation statistics move."""

    def __init__(self, encoder: nn.Module, head: nn.Module, task: str, frozen: bool):
        super().__init__()
        self.encoder, self.head, self.task, self.frozen = encoder, head, task, frozen
        # explicit both ways: an encoder that comes out of a frozen run has no gradients
        self.encoder.requires_grad_(not frozen)
        if frozen:
            self.encoder.eval()

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def encode(self, x: torch.Tensor):
        """Encoder part: the embedding, or the stage maps for the lesion task."""
        fn = self.encoder.forward_stages if self.task == "lesion" else self.encoder
        if self.frozen:
            with torch.no_grad():
                feats = fn(x)
        else:
            feats = fn(x)
        if self.task != "lesion" and isinstance(feats, (tuple, list)):
            feats = feats[0]
        return feats

    def decode(self, feats, out_size) -> torch.Tensor:
        """Head part: class logits, standardised volume, or lesion logits at ``out_size``."""
        if self.task == "lesion":
            return self.head(feats, out_size=out_size)
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x.shape[2:])


def _encoder_in_chans(encoder: nn.Module) -> int:
    value = getattr(encoder, "in_chans", None)
    if value is not None:
        return int(value)
    return int(find_stem_conv(encoder)[1].in_channels)


def encoder_for_task(encoder: nn.Module, task: str, stem_mode: str = "select") -> nn.Module:
    """The encoder as a task sees it: unchanged, or a copy with a 1-channel stem (volume).

    Parameters
    ----------
    encoder
        Any radiolens encoder (not modified).
    task
        One of :data:`TASKS`.
    stem_mode
        See :func:`radiolens.models.heads.adapt_stem_in_chans`.

    Raises
    ------
    ValueError
        The encoder takes fewer channels than the task feeds.
    """
    if task not in TASK_CHANNELS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    channels = TASK_CHANNELS[task]
    have = _encoder_in_chans(encoder)
    if have == len(channels):
        return encoder
    if len(channels) == 1 and have > 1:
        return adapt_stem_in_chans(copy.deepcopy(encoder), 1, mode=stem_mode, channel=0)
    raise ValueError(
        f"task {task!r} feeds {len(channels)} channel(s) {list(channels)} but the encoder takes {have}"
    )


def _build_head(task: str, encoder: nn.Module, sample: torch.Tensor, quick: bool, head_kwargs: dict) -> nn.Module:
    """Build the head; widths come from attributes or from one forward pass of ``sample``."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            if task == "lesion":
                if not hasattr(encoder, "forward_stages"):
                    raise TypeError(
                        f"the lesion task needs per-stage feature maps: {type(encoder).__name__} has no "
                        "forward_stages (wrap it with radiolens.models.as_encoder(..., stages_fn=...))"
                    )
                dims = [int(s.shape[1]) for s in encoder.forward_stages(sample)]
                kwargs = {"channels": QUICK["decoder_channels"] if quick else 64, "pool_scales": QUICK["pool_scales"] if quick else (1, 2, 3, 6)}
                kwargs.update(head_kwargs)
                return UPerNetDecoder3D(dims, n_classes=1, **kwargs)
            d = getattr(encoder, "embed_dim", None)
            if d is None:
                out = encoder(sample)
                d = int((out[0] if isinstance(out, (tuple, list)) else out).shape[1])
    finally:
        encoder.train(was_training)
    if task == "pirads":
        return PiradsHead(int(d), n_classes=N_PIRADS_CLASSES, **head_kwargs)
    return VolumeHead(int(d), **head_kwargs)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@contextmanager
def _deterministic(seed: int, device: torch.device):
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        # warn_only: a few CUDA kernels (trilinear upsampling backward) have no deterministic
        # version; on the CPU every op used here is deterministic.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass
class FineTuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    encoder
        The fine-tuned encoder (a copy; in the frozen regime equal to the input, but for the
        volume task with a 1-channel stem), in eval mode, on the CPU.
    head
        The trained head (``UPerNetDecoder3D`` for the lesion task), in eval mode, on the CPU.
    history
        One row per epoch: ``epoch, train_loss, val_loss, val_metric, lr``.
    metrics
        Test-split metrics: ``qwk, accuracy`` (pirads), ``dice`` (lesion: mean over test cases
        with a lesion), ``mse, mae_ml`` (volume; MSE on the standardised volume); plus counts.
    predictions
        Test-split predictions per case.
    """

    task: str
    regime: str
    encoder: nn.Module
    head: nn.Module
    history: pd.DataFrame
    metrics: dict[str, float]
    predictions: pd.DataFrame
    best_epoch: int
    seed: int
    epochs: int
    channels: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)
    target_mean: float | None = None
    target_std: float | None = None
    elapsed_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def metric_name(self) -> str:
        """Name of the validation metric in :attr:`history`."""
        return TASK_METRIC[self.task][0]

    def metrics_table(self) -> pd.DataFrame:
        """Tidy test metrics: one row per ``(task, regime, metric, value)``."""
        rows = [{"task": self.task, "regime": self.regime, "metric": m, "value": float(self.metrics[m])}
                for m in TABLE_METRICS[self.task]]
        return pd.DataFrame(rows, columns=["task", "regime", "metric", "value"])


# --------------------------------------------------------------------------------------------
# fine-tuning
# --------------------------------------------------------------------------------------------
def finetune(
    encoder: nn.Module,
    cohort,
    task: str = "pirads",
    regime: str = "frozen",
    *,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    batch_size: int | None = None,
    schedule: str = "cosine",
    patience: int | None = 15,
    seed: int = 0,
    device: str | torch.device = "cpu",
    augment: bool = True,
    augment_config: AugmentConfig | None = None,
    quick: bool = False,
    progress: bool = True,
    stem_mode: str = "select",
    bce_weight: float = 0.0,
    head_kwargs: dict | None = None,
    precompute_frozen: bool | None = None,
    _store: _CaseStore | None = None,
) -> FineTuneResult:
    """Fine-tune a copy of ``encoder`` on one downstream task of ``cohort``.

    Parameters
    ----------
    encoder
        A radiolens encoder (``ConvNeXtV2Encoder3D`` or anything following the encoder
        protocol: ``encoder(x) -> (B, d)``; ``forward_stages`` for the lesion task). Not
        modified.
    cohort
        A :class:`radiolens.data.Cohort` with ``train``/``val``/``test`` splits.
    task
        ``"pirads"``, ``"lesion"`` or ``"volume"``.
    regime
        ``"frozen"`` (head only) or ``"full"`` (encoder and head).
    epochs
        Maximum number of epochs (100 in the paper; 3 with ``quick=True``).
    lr, weight_decay
        AdamW parameters (weight decay on weights only, not on biases/norms).
    batch_size
        Cases per step (default 8; 4 when quick).
    schedule
        ``"cosine"`` (cosine annealing to 0 over ``epochs``) or ``"step"`` (x0.1 at 1/3 and 2/3).
    patience
        Stop after this many epochs without a lower validation loss; ``None``: run all
        epochs. Either way the weights of the best validation epoch are kept.
    seed
        Seeds head initialisation, batch order and augmentation.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    augment, augment_config
        Random flips / small affine / intensity changes of training cases
        (:mod:`radiolens.models.augment`).
    quick
        Few epochs, smaller batches and a narrower segmentation decoder (:data:`QUICK`).
    progress
        Show a progress bar over epochs.
    stem_mode
        How a multi-channel encoder gets a 1-channel stem for the T2W-only volume task
        (:func:`radiolens.models.heads.adapt_stem_in_chans`).
    bce_weight
        Lesion task: add ``bce_weight x`` binary cross-entropy to the Dice loss (0 = the
        paper's pure Dice loss).
    head_kwargs
        Extra arguments of the head (``hidden``, ``activation``; ``channels``,
        ``pool_scales`` for the decoder).
    precompute_frozen
        Frozen regime only: run the (unchanging, eval-mode) encoder once per case and train
        the head on the stored outputs. Exact without augmentation; with it, the frozen
        regime then trains on un-augmented cases. Default: when ``quick`` or not ``augment``
        (several times faster: the encoder's forward pass dominates the cost).

    Returns
    -------
    FineTuneResult

    Raises
    ------
    MissingLabelsError
        The cohort has no labels for ``task``.
    EmptySplitError
        No training case with a label.
    """
    if task not in TASK_CHANNELS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose one of {list(REGIMES)}")
    if schedule not in ("cosine", "step"):
        raise ValueError(f"unknown schedule {schedule!r}; choose 'cosine' or 'step'")
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    if quick:
        epochs = min(int(epochs), QUICK["epochs"])
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    batch_size = int(batch_size or (QUICK["batch_size"] if quick else 8))
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (the heads use batch norm), got {batch_size}")
    if patience is not None and int(patience) < 1:
        raise ValueError(f"patience must be >= 1 or None (no early stopping), got {patience}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch.cuda.is_available() is False")
    head_kwargs = dict(head_kwargs or {})
    channels = TASK_CHANNELS[task]
    started, started_cpu = time.perf_counter(), time.process_time()

    # a copy of the encoder: the caller's object is never touched
    enc = copy.deepcopy(encoder_for_task(encoder, task, stem_mode)).cpu()
    check_task_labels(cohort, task)
    store = _store or _CaseStore(cohort, getattr(encoder, "total_stride", None))
    target_stats = None
    if task == "volume":
        labels = _labels(cohort)
        train_vol = labels.loc[[str(c) for c in cohort.ids("train")], "gland_volume_ml"].dropna().astype(float)
        if train_vol.empty:
            raise EmptySplitError(task, "train", "no training case has gland_volume_ml")
        std = float(train_vol.std(ddof=0))
        target_stats = (float(train_vol.mean()), std if std > 0 else 1.0)
    train = _load_split(store, task, "train", target_stats)
    if len(train.case_ids) < 2:
        raise EmptySplitError(
            task, "train", f"{len(train.case_ids)} labelled training case(s); at least 2 are needed"
        )
    val = _load_split(store, task, "val", target_stats)
    test = _load_split(store, task, "test", target_stats)
    if not val.case_ids:
        logger.warning("task %r: empty validation split; selecting the epoch on the training loss", task)

    if precompute_frozen is None:
        precompute_frozen = quick or not augment
    precompute = regime == "frozen" and bool(precompute_frozen)
    use_augment = bool(augment) and not precompute
    cfg = {
        "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
        "schedule": schedule, "patience": patience, "augment": use_augment, "quick": quick,
        "precomputed_features": precompute,
        "stem_mode": stem_mode if task == "volume" else None, "bce_weight": bce_weight,
        "device": str(device),
    }
    metric_name = TASK_METRIC[task][0]
    with _deterministic(seed, device):
        head = _build_head(task, enc, torch.from_numpy(train.x[:2]), quick, head_kwargs)
        cfg["head"] = {"class": type(head).__name__, **{k: getattr(head, k) for k in ("in_dim", "in_dims", "hidden", "activation", "channels", "pool_scales", "n_classes", "norm") if hasattr(head, k)}}
        model = TaskModel(enc, head, task, frozen=(regime == "frozen")).to(device)
        params = _param_groups(model, weight_decay)
        optimizer = torch.optim.AdamW(params, lr=lr)
        if schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        else:
            step = max(1, math.ceil(epochs / 3))
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=0.1)

        def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if task == "pirads":
                return F.cross_entropy(out, y)
            if task == "volume":
                return F.mse_loss(out, y)
            target = y[:, None].float()
            loss = soft_dice_loss(out, target)
            if bce_weight:
                loss = loss + bce_weight * F.binary_cross_entropy_with_logits(out, target)
            return loss

        def encode_split(split: _Split):
            """The frozen encoder's outputs for every case of a split, on the CPU."""
            chunks = []
            with torch.no_grad():
                for idx in _batches(len(split.case_ids), batch_size, None):
                    chunks.append(model.encode(torch.from_numpy(split.x[idx]).to(device)))
            if task == "lesion":
                return [torch.cat([c[i] for c in chunks]).cpu() for i in range(len(chunks[0]))]
            return torch.cat(chunks).cpu()

        def forward_batch(split: _Split, idx: np.ndarray, rng: np.random.Generator | None):
            """Model outputs and targets for some cases (augmented when ``rng`` is given)."""
            if split.feats is not None:
                if task == "lesion":
                    feats = [f[idx].to(device) for f in split.feats]
                else:
                    feats = split.feats[idx].to(device)
                y = torch.from_numpy(np.ascontiguousarray(split.y[idx])).to(device)
                return model.decode(feats, split.x.shape[2:]), y
            xs, ys = split.x[idx], split.y[idx]
            if rng is not None:
                xs, ys = xs.copy(), ys.copy()
                for j in range(len(idx)):
                    params_j = sample_params(rng, augment_config)
                    mask = ys[j] if task == "lesion" else None
                    xs[j], mask = apply_augment(params_j, xs[j], mask)
                    if task == "lesion":
                        ys[j] = mask
            x = torch.from_numpy(np.ascontiguousarray(xs)).to(device)
            y = torch.from_numpy(np.ascontiguousarray(ys)).to(device)
            return model(x), y

        def evaluate(split: _Split) -> tuple[float, float, np.ndarray]:
            """Loss (case-weighted), validation metric and raw outputs on a split."""
            model.eval()
            outs, total = [], 0.0
            with torch.no_grad():
                for idx in _batches(len(split.case_ids), batch_size, None):
                    out, y = forward_batch(split, idx, None)
                    total += float(loss_fn(out, y)) * len(idx)
                    outs.append(out.float().cpu().numpy())
            out = np.concatenate(outs)
            return total / len(split.case_ids), _metric(task, out, split.y)[metric_name], out

        if precompute:
            model.eval()
            for split in (train, val, test):
                if split.case_ids:
                    split.feats = encode_split(split)

        rows, best = [], (math.inf, 0, None)
        bar = _tqdm(range(1, epochs + 1), desc=f"{task}/{regime}", disable=not progress)
        for epoch in bar:
            model.train()
            rng = np.random.default_rng([seed, epoch])
            aug_rng = np.random.default_rng([seed, epoch, 1]) if use_augment else None
            total, count = 0.0, 0
            for idx in _batches(len(train.case_ids), batch_size, rng):
                out, y = forward_batch(train, idx, aug_rng)
                loss = loss_fn(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            lr_now = optimizer.param_groups[0]["lr"]
            scheduler.step()
            train_loss = total / count
            if val.case_ids:
                val_loss, val_metric, _ = evaluate(val)
            else:
                val_loss, val_metric = float("nan"), float("nan")
            rows.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                         "val_metric": val_metric, "lr": lr_now})
            select = val_loss if val.case_ids else train_loss
            if select < best[0]:
                best = (select, epoch, copy.deepcopy({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}))
            if progress:
                bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
            if patience is not None and epoch - best[1] >= patience:
                logger.info("%s/%s: early stop at epoch %d (best %d)", task, regime, epoch, best[1])
                break
        if best[2] is not None:
            model.load_state_dict(best[2])

        if test.case_ids:
            _, _, out = evaluate(test)
            metrics = _metric(task, out, test.y, target_stats)
            predictions = _predictions(task, test, out, target_stats)
        else:
            logger.warning("task %r: empty test split; metrics are NaN", task)
            metrics = {k: float("nan") for k in _metric_names(task)}
            predictions = pd.DataFrame()
    metrics.update(n_train=len(train.case_ids), n_val=len(val.case_ids), n_test=len(test.case_ids))
    model.cpu().eval()
    model.encoder.requires_grad_(True)  # hand back an ordinary module
    history = pd.DataFrame(rows, columns=["epoch", "train_loss", "val_loss", "val_metric", "lr"])
    return FineTuneResult(
        task=task, regime=regime, encoder=model.encoder, head=model.head, history=history,
        metrics=metrics, predictions=predictions, best_epoch=int(best[1]), seed=seed,
        epochs=epochs, channels=channels, config=cfg,
        target_mean=None if target_stats is None else target_stats[0],
        target_std=None if target_stats is None else target_stats[1],
        elapsed_s=time.perf_counter() - started, cpu_s=time.process_time() - started_cpu,
    )


def _tqdm(iterable, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, **kwargs)


def _metric_names(task: str) -> list[str]:
    return {"pirads": ["qwk", "accuracy"], "lesion": ["dice", "n_lesion_cases"], "volume": ["mse", "mae_ml"]}[task]


def _metric(task: str, out: np.ndarray, y: np.ndarray, target_stats=None) -> dict[str, float]:
    """Metrics of raw model outputs against targets (see :class:`FineTuneResult`)."""
    if task == "pirads":
        pred = out.argmax(1)
        return {"qwk": quadratic_weighted_kappa(y, pred), "accuracy": float((pred == y).mean())}
    if task == "volume":
        res = {"mse": float(np.mean((out - y) ** 2))}
        std = target_stats[1] if target_stats else 1.0
        res["mae_ml"] = float(np.mean(np.abs(out - y)) * std)
        return res
    pred = out[:, 0] > 0.0  # logit 0 = probability 0.5
    has = y.reshape(len(y), -1).any(1)
    dices = [dice_score(p, t) for p, t, h in zip(pred, y, has) if h]
    return {"dice": float(np.mean(dices)) if dices else float("nan"), "n_lesion_cases": int(has.sum())}


def _predictions(task: str, split: _Split, out: np.ndarray, target_stats) -> pd.DataFrame:
    index = pd.Index(split.case_ids, name="case_id")
    if task == "pirads":
        prob = torch.softmax(torch.from_numpy(out), 1).numpy()
        frame = pd.DataFrame(prob, index=index, columns=[f"prob_{k}" for k in range(prob.shape[1])])
        frame.insert(0, "pred", out.argmax(1))
        frame.insert(0, "true", split.y)
        return frame
    if task == "volume":
        mean, std = target_stats
        return pd.DataFrame({"true_ml": split.y * std + mean, "pred_ml": out * std + mean,
                             "true_std": split.y, "pred_std": out}, index=index)
    pred = out[:, 0] > 0.0
    return pd.DataFrame({
        "lesion_voxels": split.y.reshape(len(split.y), -1).sum(1),
        "pred_voxels": pred.reshape(len(pred), -1).sum(1),
        "dice": [dice_score(p, t) for p, t in zip(pred, split.y)],
    }, index=index)


# --------------------------------------------------------------------------------------------
# all tasks x regimes, checkpoints
# --------------------------------------------------------------------------------------------
@dataclass
class DownstreamResults:
    """What :func:`run_downstream` returns.

    Attributes
    ----------
    table
        Tidy: one row per ``(task, regime, metric)`` with its ``value`` (our Table 2).
    results
        ``{(task, regime): FineTuneResult}``.
    checkpoints
        ``{(task, regime): path of the saved encoder}`` (empty without ``out_dir``).
    skipped
        ``{task: reason}`` for tasks whose labels the cohort lacks.
    timings
        Tidy: ``task, regime, seconds, cpu_seconds, epochs_run`` (wall and process CPU time,
        the first run including reading the cohort).
    """

    table: pd.DataFrame
    results: dict[tuple[str, str], FineTuneResult]
    checkpoints: dict[tuple[str, str], Path]
    skipped: dict[str, str]
    timings: pd.DataFrame

    def wide(self) -> pd.DataFrame:
        """The table with one column per regime (frozen -> full), as the paper prints it."""
        return self.table.pivot_table(index=["task", "metric"], columns="regime", values="value", sort=False)



def run_downstream(
    encoder: nn.Module,
    cohort,
    tasks: Iterable[str] = TASKS,
    regimes: Iterable[str] = REGIMES,
    *,
    out_dir: str | Path | None = None,
    skip_missing: bool = True,
    progress: bool = True,
    **finetune_kwargs,
) -> DownstreamResults:
    """Fine-tune ``encoder`` on every task x regime and collect the paper's Table 2.

    Parameters
    ----------
    encoder
        The pre-trained encoder (not modified).
    cohort
        The cohort.
    tasks, regimes
        Subsets of :data:`TASKS` and :data:`REGIMES`.
    out_dir
        Where to save each fine-tuned encoder (``{task}_{regime}.pt``, ProFound state-dict
        names), its head (``{task}_{regime}_head.pt``), a JSON card and the table
        (``downstream.csv``). All writes are atomic. Nothing is written when None.
    skip_missing
        Skip a task whose labels the cohort lacks, with a warning (else raise
        :class:`MissingLabelsError`).
    progress
        Progress bars.
    **finetune_kwargs
        Passed to :func:`finetune` (``epochs``, ``lr``, ``seed``, ``device``, ``quick``, ...).

    Returns
    -------
    DownstreamResults
    """
    tasks, regimes = list(tasks), list(regimes)
    for t in tasks:
        if t not in TASK_CHANNELS:
            raise ValueError(f"unknown task {t!r}; choose from {list(TASKS)}")
    for r in regimes:
        if r not in REGIMES:
            raise ValueError(f"unknown regime {r!r}; choose from {list(REGIMES)}")
    store = _CaseStore(cohort, getattr(encoder, "total_stride", None))
    results, checkpoints, skipped, rows, timing = {}, {}, {}, [], []
    for task in tasks:
        try:
            check_task_labels(cohort, task)
        except MissingLabelsError as err:
            if not skip_missing:
                raise
            warnings.warn(f"skipping downstream task: {err}", stacklevel=2)
            logger.warning("skipping task %r: %s", task, err)
            skipped[task] = str(err)
            continue
        for regime in regimes:
            res = finetune(encoder, cohort, task, regime, progress=progress, _store=store, **finetune_kwargs)
            results[(task, regime)] = res
            for metric in TABLE_METRICS[task]:
                rows.append({"task": task, "regime": regime, "metric": metric, "value": float(res.metrics[metric])})
            timing.append({"task": task, "regime": regime, "seconds": res.elapsed_s, "cpu_seconds": res.cpu_s,
                           "epochs_run": len(res.history)})
            if out_dir is not None:
                checkpoints[(task, regime)] = save_finetuned(res, Path(out_dir) / f"{task}_{regime}.pt")
    table = pd.DataFrame(rows, columns=["task", "regime", "metric", "value"])
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / "downstream.csv", table.to_csv(index=False))
    return DownstreamResults(table, results, checkpoints, skipped,
                             pd.DataFrame(timing, columns=["task", "regime", "seconds", "cpu_seconds", "epochs_run"]))


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return _json_safe(float(value))
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (tuple, list)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value


def _card(result: FineTuneResult) -> dict:
    encoder_config = getattr(result.encoder, "config", None)
    return _json_safe({
        "format": CHECKPOINT_FORMAT, "finetune_version": FINETUNE_VERSION,
        "task": result.task, "regime": result.regime, "metrics": result.metrics, "seed": result.seed,
        "epochs": result.epochs, "epochs_run": len(result.history), "best_epoch": result.best_epoch,
        "channels": list(result.channels), "target_mean": result.target_mean, "target_std": result.target_std,
        "config": result.config, "elapsed_s": result.elapsed_s,
        "encoder_class": type(result.encoder).__name__,
        "encoder_config": encoder_config if isinstance(encoder_config, dict) else None,
        "history": result.history.to_dict(orient="list"),
        "predictions": None if result.predictions.empty else result.predictions.reset_index().to_dict(orient="list"),
    })


def save_finetuned(result: FineTuneResult, path: str | Path, card: bool = True) -> Path:
    """Save a fine-tuned encoder with its head and metadata in one file, atomically.

    Parameters
    ----------
    result
        From :func:`finetune`.
    path
        The ``.pt`` file to write. It holds ``{"model": encoder state dict (the encoder's own
        names - ProFound's for ``ConvNeXtV2Encoder3D``), "config": encoder configuration (JSON),
        "head": head state dict, "card": JSON metadata, "format": ...}``, so
        :func:`radiolens.models.load_encoder` and :func:`radiolens.models.load_profound` read
        the encoder from it too.
    card
        Also write the metadata as a readable ``.json`` next to it (task, regime, metrics,
        seed, epochs, history, ...).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    meta = _card(result)
    payload = {
        "model": {k: v.detach().cpu().clone() for k, v in result.encoder.state_dict().items()},
        "config": json.dumps(meta["encoder_config"]) if meta["encoder_config"] is not None else "null",
        "head": {k: v.detach().cpu().clone() for k, v in result.head.state_dict().items()},
        "card": json.dumps(meta),
        "format": CHECKPOINT_FORMAT,
    }
    atomic_write_bytes(path, _torch_bytes(payload))
    if card:
        atomic_write_text(path.with_suffix(".json"), json.dumps({**meta, "sha256": hash_file(path)}, indent=2))
    return path


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _head_from_card(card: dict) -> nn.Module:
    head_cfg = dict(card["config"]["head"])
    cls = head_cfg.pop("class")
    if cls == "PiradsHead":
        return PiradsHead(head_cfg["in_dim"], head_cfg.get("n_classes", N_PIRADS_CLASSES),
                          head_cfg.get("hidden", 256), head_cfg.get("activation", "relu"))
    if cls == "VolumeHead":
        return VolumeHead(head_cfg["in_dim"])
    if cls == "UPerNetDecoder3D":
        return UPerNetDecoder3D(head_cfg["in_dims"], head_cfg.get("n_classes", 1), head_cfg["channels"],
                                tuple(head_cfg["pool_scales"]), norm=head_cfg.get("norm", "batch"))
    raise ValueError(f"unknown head class {cls!r} in the checkpoint card")


def load_finetuned(path: str | Path, encoder: nn.Module | None = None) -> FineTuneResult:
    """Load what :func:`save_finetuned` wrote (encoder, head, metrics, history).

    Parameters
    ----------
    path
        The ``.pt`` file.
    encoder
        A template of the same architecture, needed only when the saved encoder is not a
        ``ConvNeXtV2Encoder3D`` (it is copied, never modified; for the volume task its stem is
        adapted to 1 channel first).

    Returns
    -------
    FineTuneResult
        With ``encoder`` and ``head`` in eval mode on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fine-tuned checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"could not read fine-tuned checkpoint {path}: {err}") from err
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a radiolens fine-tuned checkpoint (format {CHECKPOINT_FORMAT!r})")
    card = json.loads(obj["card"])
    if encoder is None:
        if card.get("encoder_config") is None:
            raise ValueError(
                f"{path} holds a {card.get('encoder_class')} state dict; pass encoder=<a module of that "
                "architecture> to load it"
            )
        from radiolens.models import ConvNeXtV2Encoder3D

        model = ConvNeXtV2Encoder3D(**card["encoder_config"])
    else:
        model = copy.deepcopy(encoder).cpu()
        if len(card.get("channels", [])) == 1 and _encoder_in_chans(model) != 1:
            adapt_stem_in_chans(model, 1, mode=card.get("config", {}).get("stem_mode") or "select")
    try:
        model.load_state_dict(obj["model"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the saved encoder does not fit {type(model).__name__}: {err}") from err
    head = _head_from_card(card)
    head.load_state_dict(obj["head"], strict=True)
    predictions = pd.DataFrame(card["predictions"]).set_index("case_id") if card.get("predictions") else pd.DataFrame()
    history = pd.DataFrame(card["history"], columns=["epoch", "train_loss", "val_loss", "val_metric", "lr"])
    history = history.astype({"epoch": int}).astype({c: float for c in history.columns if c != "epoch"})
    metrics = {k: (float("nan") if v is None else v) for k, v in card["metrics"].items()}
    return FineTuneResult(
        task=card["task"], regime=card["regime"], encoder=model.eval(), head=head.eval(), history=history,
        metrics=metrics, predictions=predictions, best_epoch=int(card["best_epoch"]), seed=int(card["seed"]),
        epochs=int(card["epochs"]), channels=tuple(card["channels"]), config=card["config"],
        target_mean=card.get("target_mean"), target_std=card.get("target_std"),
        elapsed_s=float(card.get("elapsed_s") or 0.0),
    )
