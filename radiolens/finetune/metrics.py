"""Losses, metrics and predictions of the downstream tasks, per task kind."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from radiolens.tasks import TASKS, Task

__all__ = ["dice_score", "higher_is_better", "metric_label", "metric_names", "predictions", "quadratic_weighted_kappa",
           "soft_dice_loss", "task_loss", "task_metrics"]


def quadratic_weighted_kappa(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int = 4) -> float:
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


def task_loss(task: Task, out: torch.Tensor, y: torch.Tensor, bce_weight: float = 0.0) -> torch.Tensor:
    """The training loss of a task's kind: cross-entropy, MSE on the standardised target, or
    batch soft Dice (+ ``bce_weight`` x binary cross-entropy)."""
    if task.kind == "classification":
        return F.cross_entropy(out, y)
    if task.kind == "regression":
        return F.mse_loss(out, y)
    target = y[:, None].float()
    loss = soft_dice_loss(out, target)
    if bce_weight:
        loss = loss + bce_weight * F.binary_cross_entropy_with_logits(out, target)
    return loss


def metric_names(task: Task) -> list[str]:
    """Every metric :func:`task_metrics` computes for this task."""
    if task.kind == "classification":
        return ["qwk", "accuracy"]
    if task.kind == "regression":
        return ["mse", f"mae_{task.unit}" if task.unit else "mae"]
    return ["dice", f"n_{task.label}_cases"]


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of a Table 2 metric is better (kappa, accuracy, Dice; not MSE/MAE)."""
    return not (metric == "mse" or metric.startswith("mae"))


def metric_label(task: str | Task, metric: str) -> str:
    """How prose names a Table 2 metric: ``"PI-RADS kappa"``, ``"lesion Dice"``, ``"volume MAE (ml)"``."""
    name = task.name if isinstance(task, Task) else str(task)
    spec = task if isinstance(task, Task) else TASKS.get(name)
    words = {"qwk": "kappa", "dice": "Dice", "mse": "MSE", "accuracy": "accuracy"}
    unit = metric[len("mae_"):] if metric.startswith("mae_") else None
    return f"{(spec.short_title if spec else '') or name} {words.get(metric, f'MAE ({unit})' if unit else metric)}"


def task_metrics(task: Task, out: np.ndarray, y: np.ndarray, target_stats=None) -> dict[str, float]:
    """Metrics of raw model outputs against targets.

    Classification: quadratic weighted kappa and accuracy of the arg-max class. Regression: MSE
    on the standardised target and the mean absolute error in the target's unit. Segmentation:
    mean Dice (probability thresholded at 0.5) over the cases that hold a foreground, and their
    number.
    """
    names = metric_names(task)
    if task.kind == "classification":
        pred = out.argmax(1)
        return {names[0]: quadratic_weighted_kappa(y, pred, task.n_classes), names[1]: float((pred == y).mean())}
    if task.kind == "regression":
        std = target_stats[1] if target_stats else 1.0
        return {names[0]: float(np.mean((out - y) ** 2)), names[1]: float(np.mean(np.abs(out - y)) * std)}
    pred = out[:, 0] > 0.0  # logit 0 = probability 0.5
    has = y.reshape(len(y), -1).any(1)
    dices = [dice_score(p, t) for p, t, h in zip(pred, y, has) if h]
    return {names[0]: float(np.mean(dices)) if dices else float("nan"), names[1]: int(has.sum())}


def predictions(task: Task, case_ids: Sequence[str], y: np.ndarray, out: np.ndarray, target_stats) -> pd.DataFrame:
    """Per-case predictions of a split, for people: true and predicted class (with the class
    probabilities), values in the target's unit, or voxel counts and Dice."""
    index = pd.Index(case_ids, name="case_id")
    if task.kind == "classification":
        prob = torch.softmax(torch.from_numpy(out), 1).numpy()
        frame = pd.DataFrame(prob, index=index, columns=[f"prob_{k}" for k in range(prob.shape[1])])
        frame.insert(0, "pred", out.argmax(1))
        frame.insert(0, "true", y)
        return frame
    if task.kind == "regression":
        mean, std = target_stats
        unit = task.unit or "value"
        return pd.DataFrame({f"true_{unit}": y * std + mean, f"pred_{unit}": out * std + mean,
                             "true_std": y, "pred_std": out}, index=index)
    pred = out[:, 0] > 0.0
    return pd.DataFrame({
        f"{task.label}_voxels": y.reshape(len(y), -1).sum(1),
        "pred_voxels": pred.reshape(len(pred), -1).sum(1),
        "dice": [dice_score(p, t) for p, t in zip(pred, y)],
    }, index=index)
