"""Stage 1 of the lens: the shared non-linear projection, trained on pre-fine-tuning embeddings.

``Z = act(W x + b)`` feeds one temporary linear head per modality; the loss is the L1
reconstruction error of the min-max scaled radiomics (the mean absolute error over cases and
features of each modality, summed over modalities) plus ``l1 * sum|w| + l2 * sum w**2`` over the
*weights* of the projection and the heads (not the biases). After training the projection is
frozen and the heads are discarded (PAPER.md stage 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from radiolens.lens._validation import torch_module

ACTIVATIONS = ("gelu", "relu", "tanh", "silu")
OPTIMIZERS = ("adamw", "adam", "sgd")


def activation(torch, name: str):
    return {
        "gelu": torch.nn.functional.gelu,
        "relu": torch.relu,
        "tanh": torch.tanh,
        "silu": torch.nn.functional.silu,
    }[name]


def project(Xs: np.ndarray, weight: np.ndarray, bias: np.ndarray, act: str) -> np.ndarray:
    """The frozen projection of standardised embeddings, in float64 (exact and reproducible)."""
    torch = torch_module()
    pre = torch.from_numpy(Xs @ weight.T + bias)
    return activation(torch, act)(pre).numpy()


@dataclass
class Stage1Settings:
    """How stage 1 is trained (the :class:`~radiolens.lens.RadiomicLens` parameters it uses)."""

    hidden_dim: int
    l1: float
    l2: float
    epochs: int
    lr: float
    random_state: int
    activation: str
    optimizer: str
    batch_size: int
    device: str
    n_threads: int | None
    progress: bool


@dataclass
class Stage1Result:
    """A trained projection (kept) and its temporary heads (discarded by the lens, kept here so
    tests can check the loss that was minimised)."""

    weight: np.ndarray  # (h, d)
    bias: np.ndarray  # (h,)
    head_weight: np.ndarray  # (p, h)
    head_bias: np.ndarray  # (p,)
    history: pd.DataFrame


def modality_mix(mod_index: np.ndarray) -> np.ndarray:
    """Features x modalities matrix whose column m averages modality m's features."""
    counts = np.bincount(mod_index)
    mix = np.zeros((len(mod_index), len(counts)), dtype=np.float32)
    mix[np.arange(len(mod_index)), mod_index] = 1.0 / counts[mod_index]
    return mix


def reconstruction_loss(pred, target, mix):
    """Stage 1's reconstruction term: the mean absolute error over cases and features of each
    modality, summed over modalities. ``pred`` and ``target`` are cases x features (torch
    tensors or numpy arrays), ``mix`` is :func:`modality_mix` (a tensor for tensors)."""
    err = abs(pred - target).mean(0)  # per feature, mean over cases
    return (err @ mix).sum()


def train_projection(Xs: np.ndarray, Rn: np.ndarray, mod_index: np.ndarray, settings: Stage1Settings,
                     val: tuple[np.ndarray, np.ndarray] | None = None) -> Stage1Result:
    """Train the projection with temporary per-modality heads.

    Parameters
    ----------
    Xs
        Standardised embeddings, cases x d.
    Rn
        Min-max scaled radiomics, cases x p.
    mod_index
        Modality (head) number of every radiomic column.
    settings
        Width, penalties, optimiser, seed, ...
    val
        Optional standardised ``(X_val, R_val)``, scored after every epoch.

    Returns
    -------
    Stage1Result
        The frozen projection (float64 copies of the float32 weights), the temporary heads and
        ``history``: ``epoch, train_loss`` (+ ``val_loss``), the reconstruction term only (the
        training loss is the mean over the epoch's mini-batches, weighted by their size).
    """
    torch = torch_module()
    n, d = Xs.shape
    h = settings.hidden_dim
    p = Rn.shape[1]
    device = torch.device(settings.device)
    act = activation(torch, settings.activation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(settings.random_state))
        share = torch.nn.Linear(d, h).to(device)
        heads = torch.nn.Linear(h, p).to(device)
        generator = torch.Generator().manual_seed(int(settings.random_state))
    # Start the temporary heads at the per-feature median, the best constant under the L1
    # loss: with few cases there are few optimiser steps, and they should be spent on the
    # shared projection, not on learning offsets.
    with torch.no_grad():
        heads.bias.copy_(torch.as_tensor(np.median(Rn, axis=0), dtype=torch.float32))
    params = list(share.parameters()) + list(heads.parameters())
    if settings.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    elif settings.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=settings.lr)
    else:
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=0.9)
    x = torch.as_tensor(Xs, dtype=torch.float32, device=device)
    r = torch.as_tensor(Rn, dtype=torch.float32, device=device)
    weights = [share.weight, heads.weight]  # the penalties act on weights, not biases
    mix = torch.as_tensor(modality_mix(mod_index), device=device)

    def recon(xb, rb):
        # one linear head per modality: head m is the block of `heads` rows of modality m
        return reconstruction_loss(heads(act(share(xb))), rb, mix)

    bs = min(int(settings.batch_size), n)
    # Small models train faster on one thread: intra-op threads only add start-up and
    # contention cost below ~5e7 multiply-adds per step.
    threads = torch.get_num_threads()
    if settings.n_threads is not None:
        torch.set_num_threads(int(settings.n_threads))
    elif device.type == "cpu" and 6 * bs * (d * h + h * p) < 5e7:
        torch.set_num_threads(1)
    try:
        history = _epochs(torch, settings, x, r, recon, opt, weights, generator, n, bs, val, device)
    finally:
        torch.set_num_threads(threads)
    columns = ["epoch", "train_loss"] + (["val_loss"] if val is not None else [])

    def array(t):
        return t.detach().cpu().double().numpy().copy()

    return Stage1Result(array(share.weight), array(share.bias), array(heads.weight), array(heads.bias),
                        pd.DataFrame(history, columns=columns))


def _epochs(torch, settings: Stage1Settings, x, r, recon, opt, weights, generator, n, bs, val, device) -> list[dict]:
    from tqdm.auto import tqdm

    history = []
    for epoch in tqdm(range(int(settings.epochs)), desc="lens stage 1", disable=not settings.progress, leave=False):
        order = torch.randperm(n, generator=generator).to(device)
        total = 0.0
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            loss = recon(x[idx], r[idx])
            objective = loss
            if settings.l1:
                objective = objective + settings.l1 * sum(w.abs().sum() for w in weights)
            if settings.l2:
                objective = objective + settings.l2 * sum((w * w).sum() for w in weights)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        row = {"epoch": epoch + 1, "train_loss": total / n}
        if val is not None:
            with torch.no_grad():
                row["val_loss"] = float(
                    recon(torch.as_tensor(val[0], dtype=torch.float32, device=device),
                          torch.as_tensor(val[1], dtype=torch.float32, device=device))
                )
        history.append(row)
    return history
