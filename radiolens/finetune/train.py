"""The training loop: an encoder copy plus a task head, frozen or in full, with early stopping."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from radiolens._utils import progress_bar
from radiolens.finetune.data import EmptySplitError, Split, batches, load_split, target_stats
from radiolens.finetune.metrics import metric_names, predictions, task_loss, task_metrics
from radiolens.models.augment import AugmentConfig, sample_params
from radiolens.models.augment import apply as apply_augment
from radiolens.models.heads import encoder_for_task, head_config, head_for_task
from radiolens.models.inputs import CaseStore
from radiolens.tasks import REGIMES, Task, get_task

__all__ = ["FineTuneConfig", "FineTuneResult", "TaskModel", "finetune"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneConfig:
    """How to fine-tune: every training choice in one place (:func:`finetune` takes one).

    Parameters
    ----------
    epochs
        Maximum number of epochs (100 in the paper).
    lr, weight_decay
        AdamW parameters (weight decay on weights only, not on biases/norms).
    batch_size
        Cases per step (at least 2: the heads use batch norm).
    schedule
        ``"cosine"`` (cosine annealing to 0 over ``epochs``) or ``"step"`` (x0.1 at 1/3 and 2/3).
    patience
        Stop after this many epochs without a lower validation loss; ``None``: run all
        epochs. Either way the weights of the best validation epoch are kept.
    augment, augment_config
        Random flips / small affine / intensity changes of training cases
        (:mod:`radiolens.models.augment`).
    precompute_frozen
        Frozen regime only (default): run the unchanging, eval-mode encoder once per case and
        augmented view (see ``frozen_views``) and train the head on the stored outputs. Running
        it on every augmented batch of every epoch instead (``False``) was most of the frozen
        runs' cost, for outputs of one fixed encoder.
    frozen_views
        With ``precompute_frozen`` and ``augment``: augmented views of each training case whose
        encoder outputs are computed once; epoch ``e`` trains on view ``(e - 1) % frozen_views``
        (the head still sees augmented cases, a few fixed draws of them). 0: un-augmented.
    stem_mode
        How a multi-channel encoder gets a 1-channel stem for a T2W-only task
        (:func:`radiolens.models.heads.adapt_stem_in_chans`).
    bce_weight
        Segmentation: add ``bce_weight x`` binary cross-entropy to the Dice loss (0 = the
        paper's pure Dice loss).
    head_kwargs
        Extra arguments of the head (``hidden``, ``activation``; ``channels``, ``pool_scales``
        for the decoder).
    """

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 8
    schedule: str = "cosine"
    patience: int | None = 15
    augment: bool = True
    augment_config: AugmentConfig | None = None
    precompute_frozen: bool = True
    frozen_views: int = 4
    stem_mode: str = "select"
    bce_weight: float = 0.0
    head_kwargs: dict = field(default_factory=dict)

    def check(self) -> FineTuneConfig:
        """Raise ValueError naming the first bad setting; return self."""
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose 'cosine' or 'step'")
        if int(self.epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if int(self.batch_size) < 2:
            raise ValueError(f"batch_size must be >= 2 (the heads use batch norm), got {self.batch_size}")
        if self.patience is not None and int(self.patience) < 1:
            raise ValueError(f"patience must be >= 1 or None (no early stopping), got {self.patience}")
        if int(self.frozen_views) < 0:
            raise ValueError(f"frozen_views must be >= 0, got {self.frozen_views}")
        return self

    def key(self) -> dict:
        """JSON-able description of every setting (part of a fine-tuned encoder's cache key)."""
        out = dataclasses.asdict(self)
        out["augment_config"] = None if self.augment_config is None else dataclasses.asdict(self.augment_config)
        return out


class TaskModel(nn.Module):
    """Encoder + task head. In the frozen regime the encoder stays in eval mode and no
    gradient flows into it, so neither its weights nor its normalisation statistics move."""

    def __init__(self, encoder: nn.Module, head: nn.Module, task: str | Task, frozen: bool):
        super().__init__()
        self.encoder, self.head, self.task, self.frozen = encoder, head, get_task(task), frozen
        # explicit both ways: an encoder that comes out of a frozen run has no gradients
        self.encoder.requires_grad_(not frozen)
        if frozen:
            self.encoder.eval()

    def train(self, mode: bool = True) -> TaskModel:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def encode(self, x: torch.Tensor):
        """Encoder part: the embedding, or the stage maps for segmentation."""
        segmentation = self.task.kind == "segmentation"
        fn = self.encoder.forward_stages if segmentation else self.encoder
        if self.frozen:
            with torch.no_grad():
                feats = fn(x)
        else:
            feats = fn(x)
        if not segmentation and isinstance(feats, (tuple, list)):
            feats = feats[0]
        return feats

    def decode(self, feats, out_size) -> torch.Tensor:
        """Head part: class logits, standardised target, or segmentation logits at ``out_size``."""
        if self.task.kind == "segmentation":
            return self.head(feats, out_size=out_size)
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x.shape[2:])


@dataclass
class FineTuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    encoder
        The fine-tuned encoder (a copy; in the frozen regime equal to the input, but for a
        T2W-only task with a 1-channel stem), in eval mode, on the CPU.
    head
        The trained head (``UPerNetDecoder3D`` for segmentation), in eval mode, on the CPU.
    history
        One row per epoch: ``epoch, train_loss, val_loss, val_metric, lr``.
    metrics
        Test-split metrics (:func:`radiolens.finetune.metrics.task_metrics`): ``qwk, accuracy``
        (pirads), ``dice`` (lesion: mean over test cases with a lesion), ``mse, mae_ml``
        (volume; MSE on the standardised volume); plus counts.
    predictions
        Test-split predictions per case.
    config
        The settings used (:class:`FineTuneConfig` plus the head's configuration).
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
        return get_task(self.task).validation_metric

    def metrics_table(self) -> pd.DataFrame:
        """Tidy test metrics (Table 2 rows): one row per ``(task, regime, metric, value)``."""
        rows = [{"task": self.task, "regime": self.regime, "metric": m, "value": float(self.metrics[m])}
                for m in get_task(self.task).metrics]
        return pd.DataFrame(rows, columns=["task", "regime", "metric", "value"])


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


def finetune(
    encoder: nn.Module,
    cohort,
    task: str | Task = "pirads",
    regime: str = "frozen",
    config: FineTuneConfig | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    store: CaseStore | None = None,
    **settings: Any,
) -> FineTuneResult:
    """Fine-tune a copy of ``encoder`` on one downstream task of ``cohort``.

    Parameters
    ----------
    encoder
        A radiolens encoder (``ConvNeXtV2Encoder3D`` or anything following the encoder
        protocol: ``encoder(x) -> (B, d)``; ``forward_stages`` for segmentation). Not modified.
    cohort
        A :class:`radiolens.data.Cohort` with ``train``/``val``/``test`` splits.
    task
        A task of :data:`radiolens.tasks.TASKS` (``"pirads"``, ``"lesion"``, ``"volume"``).
    regime
        ``"frozen"`` (head only) or ``"full"`` (encoder and head).
    config
        The training settings (:class:`FineTuneConfig`; its defaults when None).
    seed
        Seeds head initialisation, batch order and augmentation.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    progress
        Show a progress bar over epochs.
    store
        The :class:`~radiolens.models.inputs.CaseStore` to read cases through (shared by the
        runs of a study); a new one by default.
    **settings
        Fields of :class:`FineTuneConfig` set here, e.g. ``finetune(enc, cohort, epochs=3)``.

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
    task = get_task(task)
    if not task.trainable:
        raise ValueError(f"task {task.name!r} has no label radiolens could train on")
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose one of {list(REGIMES)}")
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    cfg = dataclasses.replace(config or FineTuneConfig(), **settings).check()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch.cuda.is_available() is False")
    epochs, batch_size = int(cfg.epochs), int(cfg.batch_size)
    started, started_cpu = time.perf_counter(), time.process_time()

    # a copy of the encoder: the caller's object is never touched
    enc = copy.deepcopy(encoder_for_task(encoder, task, cfg.stem_mode)).cpu()
    task.check_labels(cohort)
    store = store or CaseStore(cohort, getattr(encoder, "total_stride", None), masks=_masks(task))
    stats = target_stats(cohort, task)
    train = load_split(store, task, "train", stats)
    if len(train.case_ids) < 2:
        raise EmptySplitError(
            task.name, "train", f"{len(train.case_ids)} labelled training case(s); at least 2 are needed"
        )
    val = load_split(store, task, "val", stats)
    test = load_split(store, task, "test", stats)
    if not val.case_ids:
        logger.warning("task %r: empty validation split; selecting the epoch on the training loss", task.name)

    precompute = regime == "frozen" and bool(cfg.precompute_frozen)
    views = int(cfg.frozen_views) if precompute and cfg.augment else 0
    use_augment = bool(cfg.augment) and not precompute  # augmentation per batch
    record = {
        "epochs": epochs, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "batch_size": batch_size,
        "schedule": cfg.schedule, "patience": cfg.patience, "augment": use_augment or views > 0,
        "precomputed_features": precompute, "frozen_views": views,
        "stem_mode": cfg.stem_mode if len(task.channels) == 1 else None, "bce_weight": cfg.bce_weight,
        "device": str(device),
    }
    metric_name = task.validation_metric
    with _deterministic(seed, device):
        head = head_for_task(task, enc, torch.from_numpy(train.inputs([0, 1])), **cfg.head_kwargs)
        record["head"] = head_config(head)
        model = TaskModel(enc, head, task, frozen=(regime == "frozen")).to(device)
        optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
        if cfg.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        else:
            step = max(1, math.ceil(epochs / 3))
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=0.1)

        def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return task_loss(task, out, y, cfg.bce_weight)

        def augment_cases(split: Split, idx: np.ndarray, params: list) -> tuple[np.ndarray, np.ndarray]:
            """Inputs and targets of some cases, case ``j`` augmented with ``params[j]``."""
            xs, ys = split.inputs(idx), split.y[idx].copy()
            for j in range(len(idx)):
                mask = ys[j] if task.kind == "segmentation" else None
                xs[j], mask = apply_augment(params[j], xs[j], mask)
                if task.kind == "segmentation":
                    ys[j] = mask
            return xs, ys

        def encode_split(split: Split, view: int | None = None):
            """The frozen encoder's outputs for every case of a split, on the CPU, and the
            targets: of the cases as they are, or of augmented view ``view`` of each case."""
            chunks, targets = [], []
            with torch.no_grad():
                for idx in batches(len(split.case_ids), batch_size, None):
                    if view is None:
                        xs, ys = split.inputs(idx), split.y[idx]
                    else:  # one draw per (view, case), whatever the batches
                        params = [sample_params(np.random.default_rng([seed, 2, view, int(i)]), cfg.augment_config)
                                  for i in idx]
                        xs, ys = augment_cases(split, idx, params)
                    chunks.append(model.encode(torch.from_numpy(np.ascontiguousarray(xs)).to(device)))
                    targets.append(ys)
            if task.kind == "segmentation":
                feats = [torch.cat([c[i] for c in chunks]).cpu() for i in range(len(chunks[0]))]
            else:
                feats = torch.cat(chunks).cpu()
            return feats, np.concatenate(targets)

        def forward_batch(split: Split, idx: np.ndarray, rng: np.random.Generator | None):
            """Model outputs and targets for some cases (augmented when ``rng`` is given)."""
            if split.feats is not None:
                if task.kind == "segmentation":
                    feats = [f[idx].to(device) for f in split.feats]
                else:
                    feats = split.feats[idx].to(device)
                y = torch.from_numpy(np.ascontiguousarray(split.y[idx])).to(device)
                return model.decode(feats, split.spatial_shape), y
            if rng is not None:
                xs, ys = augment_cases(split, idx, [sample_params(rng, cfg.augment_config) for _ in idx])
            else:
                xs, ys = split.inputs(idx), split.y[idx]
            x = torch.from_numpy(np.ascontiguousarray(xs)).to(device)
            y = torch.from_numpy(np.ascontiguousarray(ys)).to(device)
            return model(x), y

        def evaluate(split: Split) -> tuple[float, float, np.ndarray]:
            """Loss (case-weighted), validation metric and raw outputs on a split."""
            model.eval()
            outs, total = [], 0.0
            with torch.no_grad():
                for idx in batches(len(split.case_ids), batch_size, None):
                    out, y = forward_batch(split, idx, None)
                    total += float(loss_fn(out, y)) * len(idx)
                    outs.append(out.float().cpu().numpy())
            out = np.concatenate(outs)
            return total / len(split.case_ids), task_metrics(task, out, split.y)[metric_name], out

        train_views = []
        if precompute:
            model.eval()
            for split in (train, val, test):
                if split.case_ids:
                    split.feats = encode_split(split)[0]
            train_views = [encode_split(train, view) for view in range(views)]

        rows, best = [], (math.inf, 0, None)
        bar = progress_bar(range(1, epochs + 1), desc=f"{task.name}/{regime}", progress=progress)
        for epoch in bar:
            model.train()
            rng = np.random.default_rng([seed, epoch])
            aug_rng = np.random.default_rng([seed, epoch, 1]) if use_augment else None
            if train_views:
                train.feats, train.y = train_views[(epoch - 1) % len(train_views)]
            total, count = 0.0, 0
            for idx in batches(len(train.case_ids), batch_size, rng):
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
            if cfg.patience is not None and epoch - best[1] >= cfg.patience:
                logger.info("%s/%s: early stop at epoch %d (best %d)", task.name, regime, epoch, best[1])
                break
        if best[2] is not None:
            model.load_state_dict(best[2])

        if test.case_ids:
            _, _, out = evaluate(test)
            metrics = task_metrics(task, out, test.y, stats)
            table = predictions(task, test.case_ids, test.y, out, stats)
        else:
            logger.warning("task %r: empty test split; metrics are NaN", task.name)
            metrics = {k: float("nan") for k in metric_names(task)}
            table = pd.DataFrame()
    metrics.update(n_train=len(train.case_ids), n_val=len(val.case_ids), n_test=len(test.case_ids))
    model.cpu().eval()
    model.encoder.requires_grad_(True)  # hand back an ordinary module
    history = pd.DataFrame(rows, columns=["epoch", "train_loss", "val_loss", "val_metric", "lr"])
    return FineTuneResult(
        task=task.name, regime=regime, encoder=model.encoder, head=model.head, history=history,
        metrics=metrics, predictions=table, best_epoch=int(best[1]), seed=seed,
        epochs=epochs, channels=task.channels, config=record,
        target_mean=None if stats is None else stats[0],
        target_std=None if stats is None else stats[1],
        elapsed_s=time.perf_counter() - started, cpu_s=time.process_time() - started_cpu,
    )


def _masks(task: Task) -> tuple[str, ...]:
    """Masks a task reads with each case (its segmentation label)."""
    return (task.label,) if task.kind == "segmentation" else ()
