"""A task's training data: the labelled cases of each split and their targets.

Inputs are not copied here: a :class:`Split` holds case ids and targets and stacks the cases'
inputs from the shared :class:`~radiolens.models.inputs.CaseStore` one batch at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from radiolens.errors import NotEnoughDataError
from radiolens.models.inputs import CaseStore
from radiolens.tasks import Task

__all__ = ["EmptySplitError", "Split", "batches", "load_split", "target_stats"]

logger = logging.getLogger(__name__)


class EmptySplitError(NotEnoughDataError):
    """A split that training needs has no usable case."""

    def __init__(self, task: str, split: str, detail: str = ""):
        self.task, self.split = task, split
        msg = f"task {task!r}: the {split!r} split has no usable case"
        super().__init__(msg + (f" ({detail})" if detail else ""))


@dataclass
class Split:
    """The labelled cases of one split.

    Attributes
    ----------
    case_ids
        The cases kept (those with a label).
    y
        Targets: ``(N,)`` class indices or standardised values, or ``(N, D, H, W)`` uint8 masks.
    store, channels
        Where the inputs come from, and which.
    feats
        The frozen encoder's outputs when they were computed once: ``(N, d)`` or one tensor per
        stage map.
    """

    case_ids: list[str]
    y: np.ndarray
    store: CaseStore | None = None
    channels: tuple[str, ...] = ()
    feats: Any = None

    def inputs(self, index) -> np.ndarray:
        """``(B, C, D, H, W)`` float32 inputs of the cases at ``index``: a new array (safe to augment)."""
        return self.store.stack([self.case_ids[int(i)] for i in np.atleast_1d(index)], self.channels)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """The (padded) input size (D, H, W)."""
        return tuple(self.store.image(self.case_ids[0], self.channels).shape[1:])


def _labels(cohort) -> pd.DataFrame:
    labels = cohort.labels
    if "case_id" in labels.columns:
        labels = labels.set_index("case_id")
    labels.index = labels.index.astype(str)
    return labels


def target_stats(cohort, task: Task) -> tuple[float, float] | None:
    """Mean and standard deviation of a regression target on the training split (None otherwise).

    Raises
    ------
    EmptySplitError
        No training case has the target.
    """
    if task.kind != "regression":
        return None
    labels = _labels(cohort)
    train = labels.loc[[str(c) for c in cohort.ids("train")], task.label].dropna().astype(float)
    if train.empty:
        raise EmptySplitError(task.name, "train", f"no training case has {task.label}")
    std = float(train.std(ddof=0))
    return float(train.mean()), std if std > 0 else 1.0


def load_split(store: CaseStore, task: Task, split: str, stats: tuple[float, float] | None) -> Split:
    """The cases of ``split`` that have ``task``'s label, with their targets.

    A segmentation case without a mask counts as foreground-free when its
    ``<label>_volume_ml`` is 0 (and is left out, with a warning, when that is unknown).

    Raises
    ------
    ValueError
        A class label outside ``0 .. n_classes - 1``, a mask whose shape differs from its
        image, or cases of different input shapes in one split.
    """
    cohort = store.cohort
    labels = _labels(cohort)
    ids = [str(c) for c in cohort.ids(split)]
    ys, kept = [], []
    for case_id in ids:
        if task.kind == "classification":
            value = labels.at[case_id, task.label]
            if pd.isna(value):
                continue
            y = int(value)
            if not 0 <= y < task.n_classes:
                raise ValueError(f"case {case_id!r}: {task.label} {value!r} is not in 0..{task.n_classes - 1}")
        elif task.kind == "regression":
            value = labels.at[case_id, task.label]
            if pd.isna(value):
                continue
            mean, std = stats
            y = (float(value) - mean) / std
        else:
            image = store.image(case_id, task.channels)
            mask = store.mask(case_id, task.label)
            if mask is None:
                volume_column = f"{task.label}_volume_ml"
                vol = labels.at[case_id, volume_column] if volume_column in labels.columns else np.nan
                if pd.notna(vol) and float(vol) == 0.0:
                    mask = np.zeros(image.shape[1:], dtype=np.uint8)  # known foreground-free case
                else:
                    logger.warning("%s task: case %r has no %s mask; left out", task.name, case_id, task.label)
                    continue
            mask = (mask > 0).astype(np.uint8)
            if mask.shape != image.shape[1:]:
                raise ValueError(
                    f"case {case_id!r}: {task.label} mask shape {mask.shape} differs from the input's "
                    f"spatial shape {image.shape[1:]}"
                )
            y = mask
        ys.append(y)
        kept.append(case_id)
    if not kept:
        return Split([], np.zeros((0,)), store, task.channels)
    shapes = {store.image(c, task.channels).shape for c in kept}
    if len(shapes) > 1:
        first = store.image(kept[0], task.channels).shape
        odd = next(c for c in kept if store.image(c, task.channels).shape != first)
        raise ValueError(
            f"split {split!r}: case {odd!r} has input shape {store.image(odd, task.channels).shape}, "
            f"case {kept[0]!r} has {first}; crop/resample the cohort to one size"
        )
    if task.kind == "segmentation":
        y = np.stack(ys)
    else:
        y = np.asarray(ys, dtype=np.int64 if task.kind == "classification" else np.float32)
    return Split(kept, y, store, task.channels)


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Index batches over ``n`` cases, shuffled by ``rng`` (None: in order).

    Batch norm cannot train on a batch of one: a trailing singleton joins its neighbour.
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) == 1:
        out[-2] = np.concatenate([out[-2], out[-1]])
        out.pop()
    return out
