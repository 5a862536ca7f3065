"""Encoders from elsewhere: one loader for every checkpoint a user may hand radiolens.

:func:`load_encoder_file` reads, safely and by content (never by file name):

* a radiolens encoder file (:func:`~radiolens.models.save_encoder`) or fine-tuned checkpoint
  (:func:`radiolens.finetune.save_finetuned`): the encoder inside;
* a ProFound checkpoint, pre-training (FCMAE) or fine-tuned (:func:`~radiolens.models.load_profound`;
  the size and the input channels are read from the file);
* a ``torch.export`` archive (``torch.export.save(torch.export.export(model, (x,),
  dynamic_shapes=...), "encoder.pt2")``, with the batch and spatial sizes dynamic, e.g.
  ``Dim.AUTO``) or a TorchScript archive (``torch.jit.save(torch.jit.script(model), path)``):
  *any* ``torch.nn.Module`` encoder, wrapped with :func:`~radiolens.models.as_encoder` (the
  adapter protocol: ``(B, C, D, H, W)`` in, ``(B, d)`` or a feature map out).

and returns the encoder with its provenance (path, SHA-256, format) for the report. Anything
else is an :class:`~radiolens.errors.InputFileError` naming the file and the formats accepted.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radiolens.cache import hash_file
from radiolens.errors import InputFileError
from radiolens.models.profound import (
    as_encoder,
    infer_preset,
    load_encoder,
    load_profound,
    load_torch_file,
    remap_profound_state_dict,
)

__all__ = ["FORMATS_ACCEPTED", "load_encoder_file"]

logger = logging.getLogger(__name__)

#: What :func:`load_encoder_file` reads, as error messages list it.
FORMATS_ACCEPTED = (
    "a ProFound checkpoint (pre-training or fine-tuned), a radiolens encoder or fine-tuned checkpoint, "
    "or an archive of any encoder (torch.export.save, or torch.jit.save(torch.jit.script(model), path))"
)
_RADIOLENS_FORMATS = ("radiolens-encoder-v1", "radiolens-finetuned-v1")


def _archive_kind(path: Path) -> str | None:
    """``"torchscript"`` (compiled code under ``<name>/code/``), ``"export"`` (a
    ``torch.export`` program: ``<name>/models/`` and ``archive_format``) or None (e.g. a
    ``torch.save`` file, which is a zip archive too)."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()[:500]
    if any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names):
        return "export"
    if any("/code/" in n for n in names):
        return "torchscript"
    return None


class _Exported(nn.Module):
    """An exported program's module, whose ``train()``/``eval()`` raise: radiolens switches modes
    around inference, so this holder keeps the mode itself (an exported graph has none) while the
    weights stay visible to ``state_dict`` (the embeddings' cache key hashes them)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> _Exported:
        self.training = bool(mode)
        return self

    def forward(self, x: torch.Tensor):
        return self.module(x)


def load_encoder_file(
    path: str | os.PathLike,
    role: str = "encoder",
    preset: str | None = None,
    in_chans: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load an encoder from any checkpoint file radiolens understands (see module doc).

    Parameters
    ----------
    path
        The file.
    role
        How messages name it (``"pre-trained encoder"``, ``"fine-tuned encoder for task 'x'"``).
    preset
        ConvNeXt V2 size to try when a ProFound file's size cannot be read from it.
    in_chans
        Input channels of a TorchScript encoder (default 3); ProFound and radiolens files
        state their own.

    Returns
    -------
    encoder : torch.nn.Module
        In eval mode, following the encoder protocol.
    provenance : dict
        ``path`` (absolute), ``sha256``, ``format`` and, for ProFound files, ``preset``,
        ``layout`` and the number of ``missing`` encoder parameters.

    Raises
    ------
    radiolens.errors.InputFileError
        A missing file, a file none of the formats reads, or an encoder of another size.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputFileError(f"{role} checkpoint {str(path)!r} does not exist: give the path of {FORMATS_ACCEPTED}")
    provenance: dict[str, Any] = {"role": role, "path": str(path), "sha256": hash_file(path)}
    kind = _archive_kind(path)
    if kind is not None:
        try:
            if kind == "export":
                module = _Exported(torch.export.load(str(path)).module())
            else:
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # a damaged archive: name the file
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise InputFileError(f"{role} checkpoint {str(path)!r} is a damaged {kind} archive: {first}") from err
        encoder = as_encoder(module, in_chans=int(in_chans or 3))
        provenance.update(format="torch.export" if kind == "export" else "torchscript", in_chans=int(in_chans or 3))
        return encoder.eval(), provenance
    try:
        obj = load_torch_file(path, f"{role} checkpoint")
    except (FileNotFoundError, ValueError) as err:
        cause = str(err.__cause__ or err)
        why = (
            "it is not a PyTorch file of tensors (torch.load(weights_only=True) refuses it; radiolens never "
            "runs pickled code: save a state_dict, or a TorchScript archive)"
            if "Weights only load failed" in cause or "weights_only" in cause
            else cause.strip().splitlines()[0][:200]
        )
        raise InputFileError(
            f"{role} checkpoint {str(path)!r} cannot be read: {why}; radiolens reads {FORMATS_ACCEPTED}"
        ) from err
    try:
        if isinstance(obj, Mapping) and obj.get("format") in _RADIOLENS_FORMATS and obj.get("config") not in (None, "null"):
            encoder = load_encoder(path)
            provenance.update(format=str(obj["format"]), preset=None)
            return encoder.eval(), provenance
        from radiolens.models.profound import _unwrap

        state, _ = remap_profound_state_dict(_unwrap(obj, path))
        stem = state.get("downsample_layers.0.0.weight")
        if stem is None:
            raise ValueError(f"no ConvNeXt V2 stem (checkpoint keys look like {list(state)[:5]})")
        size = infer_preset(state) or preset
        encoder, report = load_profound(path, in_chans=int(stem.shape[1]), preset=size)
    except InputFileError:
        raise
    except ValueError as err:
        raise InputFileError(
            f"{role} checkpoint {str(path)!r} is not an encoder radiolens can read ({err}); radiolens reads "
            f"{FORMATS_ACCEPTED}"
        ) from err
    provenance.update(format="profound", preset=size, layout=report.layout, missing=len(report.missing))
    if report.missing:
        logger.warning("%s checkpoint %s: %d encoder parameter(s) missing, e.g. %s", role, path,
                       len(report.missing), report.missing[:3])
    return encoder.eval(), provenance
