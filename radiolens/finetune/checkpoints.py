"""Fine-tuned checkpoints: encoder, head and metadata in one ``.pt`` file (and a readable card)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from radiolens._utils import jsonable
from radiolens.cache import atomic_write_bytes, atomic_write_text, hash_file
from radiolens.finetune.train import FineTuneResult
from radiolens.models.heads import adapt_stem_in_chans, encoder_in_chans, head_from_config
from radiolens.models.profound import load_torch_file

__all__ = ["CHECKPOINT_FORMAT", "load_finetuned", "save_finetuned"]

CHECKPOINT_FORMAT = "radiolens-finetuned-v1"


def _card(result: FineTuneResult) -> dict:
    encoder_config = getattr(result.encoder, "config", None)
    return jsonable({
        "format": CHECKPOINT_FORMAT,
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
        From :func:`radiolens.finetune.finetune`.
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
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    if card:
        atomic_write_text(path.with_suffix(".json"), json.dumps({**meta, "sha256": hash_file(path)}, indent=2))
    return path


def load_finetuned(path: str | Path, encoder: nn.Module | None = None) -> FineTuneResult:
    """Load what :func:`save_finetuned` wrote (encoder, head, metrics, history).

    Parameters
    ----------
    path
        The ``.pt`` file.
    encoder
        A template of the same architecture, needed only when the saved encoder is not a
        ``ConvNeXtV2Encoder3D`` (it is copied, never modified; for a T2W-only task its stem is
        adapted to 1 channel first).

    Returns
    -------
    FineTuneResult
        With ``encoder`` and ``head`` in eval mode on the CPU.
    """
    path = Path(path)
    obj = load_torch_file(path, "fine-tuned checkpoint")
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
        if len(card.get("channels", [])) == 1 and encoder_in_chans(model) != 1:
            adapt_stem_in_chans(model, 1, mode=card.get("config", {}).get("stem_mode") or "select")
    try:
        model.load_state_dict(obj["model"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the saved encoder does not fit {type(model).__name__}: {err}") from err
    head = head_from_config(card["config"]["head"])
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
