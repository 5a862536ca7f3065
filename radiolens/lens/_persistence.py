"""Saving and loading a fitted :class:`~radiolens.lens.RadiomicLens`: JSON metadata and a
torch state dict of float64 tensors (no pickle; loadable with ``weights_only=True``)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from radiolens.cache import atomic_write_bytes, atomic_write_text
from radiolens.lens._validation import torch_module

FORMAT = "radiolens.RadiomicLens/2"
#: Format 1 (before cross-fitting) is read too; its lenses load with protocol="paper".
_OLD_FORMAT = "radiolens.RadiomicLens/1"
_STATE = ("weight_", "bias_", "x_mean_", "x_scale_", "scaler_min_", "scaler_range_", "fold_of_case_",
          "fold_weight_", "fold_bias_", "fold_x_mean_", "fold_x_scale_")
_META = ("columns_", "dropped_columns_", "modalities_", "hidden_dim_", "n_features_in_", "feature_names_in_",
         "n_train_", "train_cases_")


def save_lens(lens, path: str | Path) -> Path:
    """Write ``params.json`` and ``state.pt`` of a fitted lens to the folder ``path`` (atomically)."""
    torch = torch_module()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {name: torch.from_numpy(np.ascontiguousarray(getattr(lens, name), dtype=np.float64)) for name in _STATE}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path / "state.pt", buffer.getvalue())
    meta = {"format": FORMAT, "params": lens._plain_params(), **{name: getattr(lens, name) for name in _META},
            "column_info_": lens.column_info_.to_dict(orient="list"),
            "history_": lens.history_.to_dict(orient="list"),
            "fold_history_": lens.fold_history_.to_dict(orient="list")}
    atomic_write_text(path / "params.json", json.dumps(meta, indent=2))
    return path


def load_lens(cls, path: str | Path):
    """Read a lens written by :func:`save_lens` (or by radiolens before cross-fitting)."""
    torch = torch_module()
    path = Path(path)
    meta = json.loads((path / "params.json").read_text())
    if meta.get("format") not in (FORMAT, _OLD_FORMAT):
        raise ValueError(f"{path / 'params.json'} is not a saved RadiomicLens")
    params = dict(meta["params"])
    if "verbose" in params:  # saved before the progress flag was renamed
        params["progress"] = params.pop("verbose")
    if meta["format"] == _OLD_FORMAT:
        params["protocol"] = "paper"
    lens = cls(**params)
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    for name, tensor in state.items():
        setattr(lens, name, tensor.numpy().copy())
    h, d = lens.weight_.shape
    lens.fold_of_case_ = np.asarray(getattr(lens, "fold_of_case_", np.zeros(0)), dtype=np.int64)
    for name, shape in {"fold_weight_": (0, h, d), "fold_bias_": (0, h), "fold_x_mean_": (0, d),
                        "fold_x_scale_": (0, d)}.items():
        if not hasattr(lens, name):
            setattr(lens, name, np.zeros(shape))
    for name in _META:
        setattr(lens, name, meta[name])
    lens.column_info_ = pd.DataFrame(meta["column_info_"])
    lens.history_ = pd.DataFrame(meta["history_"])
    lens.fold_history_ = pd.DataFrame(meta.get("fold_history_", {"fold": [], "epoch": [], "train_loss": []}))
    return lens
