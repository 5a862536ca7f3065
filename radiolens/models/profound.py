"""Loading encoder weights: ProFound checkpoints, radiolens's own files, and any PyTorch encoder.

ProFound checkpoints
--------------------
ProFound (github.com/pipiwang/ProFound) saves ``{"model": state_dict, "optimizer": ...,
"epoch": ..., "args": argparse.Namespace}``. Two layouts occur:

* **pre-training (FCMAE)**: the state dict of the masked autoencoder. Encoder keys start
  with ``encoder.``; the sparse (MinkowskiEngine) encoder stores convolutions as ``...kernel``
  tensors of shape ``(k**3, C_in, C_out)`` (``(C_in, C_out)`` for a 1x1x1 kernel, and
  ``(k**3, C)`` for depthwise convs), LayerNorms and Linears under an extra ``.ln.`` /
  ``.linear.`` level, GRN parameters as ``(1, C)`` and conv biases as ``(1, C)``. The
  decoder (``proj``, ``mask_token``, ``decoder.*``, ``pred``) is dropped and the final
  ``norm`` is absent (FCMAE has none), so it is reported missing and keeps its identity
  initialisation.
* **fine-tuned**: ``Classifier``/``UperNet`` state dicts whose encoder keys start with
  ``encoder.`` (dense names, no reshaping); head/decoder keys are dropped. A ``module.``
  prefix (DistributedDataParallel) is stripped wherever it occurs.

:func:`remap_profound_state_dict` turns either into our names; the reshaping of ``kernel``
tensors follows ProFound's own ``remap_checkpoint_keys`` (the kernel's flattened spatial
index is reversed relative to PyTorch's (D, H, W) order). Files are read with
``torch.load(weights_only=True)`` (``argparse.Namespace`` is allow-listed because ProFound
stores its arguments in every checkpoint).

Any other encoder: the adapter protocol
---------------------------------------
radiolens's embedding and fine-tuning code accept any ``torch.nn.Module`` that maps a
``(B, C, D, H, W)`` float tensor to either

* a ``(B, d)`` embedding, or
* a ``(B, d, *spatial)`` feature map, which is global-average-pooled to ``(B, d)``

(a tuple/list output uses its first element). Wrap it with :func:`as_encoder` to get the
attributes the rest of radiolens reads (``embed_dim``, ``in_chans``, ``total_stride``) -
e.g. ``as_encoder(monai.networks.nets.resnet18(spatial_dims=3, n_input_channels=3,
feed_forward=False), in_chans=3)``. Per-stage features (``forward_stages``) exist only for
:class:`~radiolens.models.convnext.ConvNeXtV2Encoder3D`, or when you pass ``stages_fn``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from radiolens.cache import atomic_write_bytes, hash_file
from radiolens.errors import InputFileError
from radiolens.models.convnext import PRESETS, ConvNeXtV2Encoder3D

__all__ = [
    "EncoderAdapter",
    "LoadReport",
    "as_encoder",
    "encoder_hash",
    "infer_preset",
    "load_encoder",
    "load_pretrained",
    "weight_card",
    "load_profound",
    "CheckpointError",
    "load_torch_file",
    "read_checkpoint",
    "remap_profound_state_dict",
    "save_encoder",
    "SHIPPED_WEIGHTS",
]

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
#: Weights shipped inside the package: name -> file in ``radiolens/models/weights``. Each has
#: a ``<name>.json`` card with the command that produced it, its sha256 and the history.
SHIPPED_WEIGHTS = {"micro-synthetic": "micro-synthetic.pt"}

# top-level keys of an FCMAE state dict that belong to its decoder, not the encoder
_FCMAE_DECODER = ("decoder.", "proj.", "pred.", "mask_token")
# wrappers used by training scripts around the state dict
_WRAPPERS = ("model", "state_dict", "model_state_dict", "encoder_state_dict", "network")


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded into an encoder.

    Attributes
    ----------
    missing : list of str
        Encoder parameters the checkpoint did not provide (left at their initial value).
    unexpected : list of str
        Checkpoint entries (after remapping) that match no encoder parameter.
    remapped : dict
        Original checkpoint key -> encoder key, for every key whose name or shape changed.
    dropped : list of str
        Checkpoint keys outside the encoder (FCMAE decoder, task heads), ignored on purpose.
    layout : str
        ``"fcmae-pretrain"`` (sparse kernels found), ``"prefixed"`` (``encoder.``/``module.``
        prefixes) or ``"plain"``.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    remapped: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    layout: str = "plain"

    @property
    def ok(self) -> bool:
        """True when nothing is missing or unexpected."""
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        return (
            f"LoadReport(layout={self.layout}, missing={len(self.missing)} {self.missing[:5]}, "
            f"unexpected={len(self.unexpected)} {self.unexpected[:5]}, remapped={len(self.remapped)}, "
            f"dropped={len(self.dropped)})"
        )


# --------------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------------
class CheckpointError(InputFileError):
    """A checkpoint that is not a readable PyTorch file or holds more than tensors."""


class _MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint path that names no file (still a ``FileNotFoundError`` for callers)."""


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint", hint: str = ""):
    """``torch.load`` a file safely: tensors and plain containers only, never pickled code.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming ``what`` and the file (and adding ``hint``); a file that needs unsafe unpickling
        is refused, never loaded another way.
    """
    path = Path(path)
    if not path.is_file():
        raise _MissingCheckpointError(f"{what} {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's own message advises weights_only=False, i.e. running the file's code: never
        # pass that on; say what the file is instead
        text = str(err)
        if "Unsupported global" in text or "GLOBAL" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            name = f" ({found.group(1)})" if found else ""
            message = (f"{what} {str(path)!r} holds pickled Python objects other than tensors{name}; radiolens "
                       "reads checkpoints with torch.load(weights_only=True) and never runs code from one. "
                       "Re-save the weights as a plain state dict: torch.save(model.state_dict(), path).")
        else:
            message = (f"{what} {str(path)!r} is not a PyTorch checkpoint radiolens can read (truncated, corrupt "
                       f"or another format; {type(err).__name__}). Pass the .pt/.pth file the model was saved to.")
        raise CheckpointError(message + hint) from None


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely and return its (unwrapped) state dict.

    Parameters
    ----------
    path
        A ``.pt``/``.pth``/``.pth.tar`` file written by ``torch.save``.

    Returns
    -------
    dict
        Parameter name -> tensor, after removing ``{"model": ...}``-style wrappers.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file; a file that needs unsafe unpickling; no state dict inside.
    """
    obj = load_torch_file(
        path, "checkpoint", " radiolens only reads checkpoints safely; if you trust the file, load it "
        "yourself and pass the state dict to remap_profound_state_dict().",
    )
    return _unwrap(obj, Path(path))


def _unwrap(obj, source) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        raise ValueError(
            f"checkpoint {source} holds no state dict (top-level keys: {sorted(map(str, obj))[:10]})"
        )
    raise ValueError(f"checkpoint {source} holds a {type(obj).__name__}, not a state dict")


# --------------------------------------------------------------------------------------------
# remapping ProFound names
# --------------------------------------------------------------------------------------------
def _kernel_to_weight(new_key: str, value: torch.Tensor) -> torch.Tensor:
    """Reshape a MinkowskiEngine kernel to a dense ``Conv3d`` weight (as ProFound does)."""
    if value.ndim == 3:  # regular conv: (k^3, C_in, C_out)
        volume, c_in, c_out = value.shape
        k = round(volume ** (1 / 3))
        if k**3 != volume:
            raise ValueError(f"kernel {new_key} has {volume} taps, not a cubic kernel")
        return value.permute(2, 1, 0).reshape(c_out, c_in, k, k, k).permute(0, 1, 4, 3, 2).contiguous()
    if value.ndim == 2:
        if new_key.startswith("downsample_layers."):  # a 1x1x1 regular conv: (C_in, C_out)
            return value.permute(1, 0)[:, :, None, None, None].contiguous()
        volume, channels = value.shape  # depthwise conv: (k^3, C)
        k = round(volume ** (1 / 3))
        if k**3 != volume:
            raise ValueError(f"kernel {new_key} has {volume} taps, not a cubic kernel")
        return value.permute(1, 0).reshape(channels, 1, k, k, k).permute(0, 1, 4, 3, 2).contiguous()
    raise ValueError(f"cannot convert kernel {new_key} of shape {tuple(value.shape)}")


def remap_profound_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[OrderedDict, LoadReport]:
    """Translate a ProFound (or radiolens) state dict into :class:`ConvNeXtV2Encoder3D` names.

    Parameters
    ----------
    state_dict
        Parameter name -> tensor, already unwrapped (see :func:`read_checkpoint`).

    Returns
    -------
    state_dict : OrderedDict
        Encoder parameters under our names and shapes.
    report : LoadReport
        With ``remapped``, ``dropped`` and ``layout`` filled in (``missing``/``unexpected``
        are filled when the dict is loaded into a model).
    """
    report = LoadReport()
    # DistributedDataParallel inserts "module." (at the front or after a wrapper's name)
    keys = [".".join(p for p in k.split(".") if p != "module") for k in state_dict]
    has_encoder_prefix = any(k.startswith(("encoder.", "backbone.")) for k in keys)
    has_kernels = any(k.endswith(".kernel") for k in keys)
    report.layout = "fcmae-pretrain" if has_kernels else ("prefixed" if has_encoder_prefix else "plain")

    out: OrderedDict = OrderedDict()
    for original, key in zip(state_dict, keys):
        value = state_dict[original]
        if has_encoder_prefix:
            if key.startswith(("encoder.", "backbone.")):
                key = key.split(".", 1)[1]
            else:  # heads, decoders, FCMAE's proj/pred/mask_token
                report.dropped.append(original)
                continue
        elif key.startswith(_FCMAE_DECODER):
            report.dropped.append(original)
            continue
        parts = key.split(".")
        if parts[-1] == "kernel":
            key = ".".join(parts[:-1]) + ".weight"
            value = _kernel_to_weight(key, value)
        elif "ln" in parts[:-1] or "linear" in parts[:-1]:
            key = ".".join(p for i, p in enumerate(parts) if i == len(parts) - 1 or p not in ("ln", "linear"))
        if key.endswith(".bias") and value.ndim != 1:
            value = value.reshape(-1)
        elif key.endswith((".grn.gamma", ".grn.beta")) and value.ndim != 5:
            value = value.reshape(1, 1, 1, 1, -1)
        if key != original or value.shape != state_dict[original].shape:
            report.remapped[original] = key
        out[key] = value
    return out, report


def infer_preset(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the preset whose depths and widths match a (remapped) state dict, if any."""
    try:
        dims = tuple(int(state_dict[f"stages.{i}.0.dwconv.weight"].shape[0]) for i in range(4))
    except KeyError:
        return None
    depths = tuple(
        len({k.split(".")[2] for k in state_dict if k.startswith(f"stages.{i}.") and k.count(".") >= 3})
        for i in range(4)
    )
    for name, (p_depths, p_dims) in PRESETS.items():
        if p_dims == dims and p_depths == depths:
            return name
    return None


def _adapt_stem(state_dict: OrderedDict, in_chans: int, stem_channels: Sequence[int] | None) -> None:
    key = "downsample_layers.0.0.weight"
    if key not in state_dict:
        return
    have = state_dict[key].shape[1]
    if have == in_chans:
        return
    if stem_channels is None:
        raise ValueError(
            f"checkpoint's stem takes {have} input channel(s) but the encoder was asked for "
            f"in_chans={in_chans}; pass stem_channels=... to pick which of the checkpoint's "
            "channels to keep (e.g. stem_channels=(0,) keeps T2W for a T2W-only model)"
        )
    stem_channels = [int(c) for c in stem_channels]
    if len(stem_channels) != in_chans or not all(0 <= c < have for c in stem_channels):
        raise ValueError(f"stem_channels={stem_channels} must name {in_chans} of the checkpoint's {have} channels")
    # keeping a subset of the stem's input channels is exactly the original network fed
    # with zeros (the normalised mean) on the dropped channels
    state_dict[key] = state_dict[key][:, stem_channels].clone()


def _load_into(
    encoder: nn.Module, state_dict: OrderedDict, report: LoadReport, source: str
) -> LoadReport:
    own = encoder.state_dict()
    guess = infer_preset(state_dict)
    if guess is not None and isinstance(encoder, ConvNeXtV2Encoder3D):
        depths, dims = PRESETS[guess]
        if (depths, dims) != (encoder.depths, encoder.dims):
            raise ValueError(
                f"{source} holds a ConvNeXt V2 of another size: it looks like preset {guess!r} "
                f"(depths {depths}, dims {dims}) but the encoder has depths {encoder.depths}, dims "
                f"{encoder.dims}; pass preset={guess!r} (or preset=None to infer it)"
            )
    matched = [k for k in state_dict if k in own]
    if len(matched) < 0.5 * len(own):
        sample = list(state_dict)[:6]
        raise ValueError(
            f"{source} is not a ConvNeXt V2 (ProFound) encoder checkpoint: only {len(matched)} of the "
            f"encoder's {len(own)} parameters were found (checkpoint keys look like {sample})"
        )
    for key in matched:
        if state_dict[key].shape != own[key].shape:
            guess = infer_preset(state_dict)
            hint = f"; it looks like preset {guess!r}" if guess else ""
            raise ValueError(
                f"{source}: parameter {key} has shape {tuple(state_dict[key].shape)} in the checkpoint "
                f"but {tuple(own[key].shape)} in the encoder - another architecture or size{hint}"
            )
    report.missing = [k for k in own if k not in state_dict]
    report.unexpected = [k for k in state_dict if k not in own]
    encoder.load_state_dict({k: state_dict[k] for k in matched}, strict=False)
    return report


def load_profound(
    path: str | os.PathLike,
    in_chans: int = 3,
    preset: str | None = "tiny",
    stem_channels: Sequence[int] | None = None,
    strict: bool = False,
    **encoder_kwargs,
) -> tuple[ConvNeXtV2Encoder3D, LoadReport]:
    """Build a ConvNeXt V2 encoder and load a ProFound checkpoint into it.

    Parameters
    ----------
    path
        ProFound pre-training (FCMAE) or fine-tuned checkpoint, or a radiolens encoder file.
    in_chans
        Input channels of the returned encoder.
    preset
        Encoder size; ``"tiny"`` is ProFound's. ``None`` infers it from the checkpoint.
    stem_channels
        When ``in_chans`` differs from the checkpoint's, which checkpoint channels to keep in
        the stem (e.g. ``(0,)`` = T2W for a T2W-only encoder).
    strict
        Raise if any parameter is missing or unexpected. The final ``norm`` is always
        missing from FCMAE pre-training checkpoints, so strict loading of those fails.
    **encoder_kwargs
        Passed to :class:`ConvNeXtV2Encoder3D` (``drop_path_rate``, ...).

    Returns
    -------
    encoder : ConvNeXtV2Encoder3D
        In eval mode.
    report : LoadReport
        Missing, unexpected, remapped and dropped keys (also logged).

    Raises
    ------
    ValueError
        The file is not a ConvNeXt V2 encoder checkpoint, has another size, or strict
        loading failed.
    """
    state_dict, report = remap_profound_state_dict(read_checkpoint(path))
    if preset is None:
        preset = infer_preset(state_dict)
        if preset is None:
            raise ValueError(f"{path}: could not infer the encoder size; pass preset=...")
    _adapt_stem(state_dict, in_chans, stem_channels)
    encoder = ConvNeXtV2Encoder3D.from_preset(preset, in_chans=in_chans, **encoder_kwargs)
    _load_into(encoder, state_dict, report, str(path))
    logger.info("loaded %s: %s", path, report)
    if report.missing:
        logger.warning("%s: %d encoder parameter(s) not in checkpoint: %s", path, len(report.missing), report.missing)
    if report.unexpected:
        logger.warning("%s: %d unused checkpoint entr(ies): %s", path, len(report.unexpected), report.unexpected)
    if strict and not report.ok:
        raise ValueError(f"strict loading of {path} failed: {report}")
    return encoder.eval(), report


def encoder_hash(encoder: nn.Module) -> str:
    """SHA-256 of an encoder's class and every state-dict entry (names, shapes, bytes)."""
    digest = hashlib.sha256()
    digest.update(type(encoder).__qualname__.encode())
    inner = getattr(encoder, "module", None)
    if inner is not None:
        digest.update(type(inner).__qualname__.encode())
    for name, tensor in encoder.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# radiolens's own encoder files and shipped weights
# --------------------------------------------------------------------------------------------
def save_encoder(encoder: ConvNeXtV2Encoder3D, path: str | os.PathLike, meta: dict | None = None) -> str:
    """Save an encoder atomically as ``{"model": state_dict, "config": ..., "meta": ...}``.

    The state dict uses ProFound's names, so :func:`load_profound` also reads the file.

    Returns
    -------
    str
        SHA-256 of the written file.
    """
    payload = {
        "model": {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()},
        "config": json.dumps(encoder.config),
        "meta": json.dumps(meta or {}, default=str),
        "format": "radiolens-encoder-v1",
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return hash_file(path)


def load_encoder(
    path: str | os.PathLike, in_chans: int | None = None, stem_channels: Sequence[int] | None = None
) -> ConvNeXtV2Encoder3D:
    """Load an encoder written by :func:`save_encoder` (architecture read from the file).

    Parameters
    ----------
    path
        File written by :func:`save_encoder`.
    in_chans, stem_channels
        Optionally change the number of input channels (see :func:`load_profound`).
    """
    path = Path(path)
    obj = load_torch_file(path, "encoder file")
    if not isinstance(obj, Mapping) or "config" not in obj or "model" not in obj:
        raise ValueError(f"{path} is not a radiolens encoder file (use load_profound for ProFound checkpoints)")
    config = json.loads(obj["config"])
    if in_chans is not None:
        config["in_chans"] = int(in_chans)
    state_dict = OrderedDict(obj["model"])
    _adapt_stem(state_dict, config["in_chans"], stem_channels)
    encoder = ConvNeXtV2Encoder3D(**config)
    report = _load_into(encoder, state_dict, LoadReport(), str(path))
    if not report.ok:
        raise ValueError(f"{path} does not match its own configuration: {report}")
    return encoder.eval()


def weight_card(name: str = "micro-synthetic") -> dict:
    """The JSON card of shipped weights: the command that produced them, sha256, history."""
    if name not in SHIPPED_WEIGHTS:
        raise ValueError(f"unknown shipped weights {name!r}; available: {sorted(SHIPPED_WEIGHTS)}")
    card_path = (WEIGHTS_DIR / SHIPPED_WEIGHTS[name]).with_suffix(".json")
    return json.loads(card_path.read_text())


def load_pretrained(
    name: str = "micro-synthetic", in_chans: int = 3, stem_channels: Sequence[int] | None = None
) -> ConvNeXtV2Encoder3D:
    """Load weights shipped with radiolens, after checking their SHA-256 against the card.

    Parameters
    ----------
    name
        One of :data:`SHIPPED_WEIGHTS` (``"micro-synthetic"``: the "micro" preset pre-trained
        by :mod:`radiolens.models.pretrain` on the built-in synthetic cohort).
    in_chans, stem_channels
        See :func:`load_profound`; e.g. ``in_chans=1, stem_channels=(0,)`` for T2W only.
    """
    if name not in SHIPPED_WEIGHTS:
        raise ValueError(f"unknown shipped weights {name!r}; available: {sorted(SHIPPED_WEIGHTS)}")
    path = WEIGHTS_DIR / SHIPPED_WEIGHTS[name]
    card_path = path.with_suffix(".json")
    if not path.is_file() or not card_path.is_file():
        raise FileNotFoundError(f"shipped weights {name!r} are missing from the installation ({path})")
    card = json.loads(card_path.read_text())
    digest = hash_file(path)
    if digest != card.get("sha256"):
        raise ValueError(
            f"shipped weights {path} are corrupt: sha256 {digest} != {card.get('sha256')} recorded in {card_path.name}"
        )
    return load_encoder(path, in_chans=in_chans, stem_channels=stem_channels)


# --------------------------------------------------------------------------------------------
# adapter for other encoders
# --------------------------------------------------------------------------------------------
class EncoderAdapter(nn.Module):
    """Wrap any module so it follows radiolens's encoder protocol (see module docstring).

    Parameters
    ----------
    module
        Maps ``(B, C, D, H, W)`` to ``(B, d)`` or ``(B, d, *spatial)`` (or a tuple whose
        first element is either).
    in_chans
        Number of input channels the module expects (checked on every call).
    embed_dim
        Embedding size; inferred on the first forward pass when None.
    total_stride
        Spatial sizes must be multiples of this (1 = any size).
    stages_fn
        Optional callable ``module, x -> list of feature maps`` providing ``forward_stages``.
    """

    def __init__(
        self,
        module: nn.Module,
        in_chans: int,
        embed_dim: int | None = None,
        total_stride: int = 1,
        stages_fn: Callable[[nn.Module, torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.in_chans = int(in_chans)
        self.embed_dim = embed_dim
        self.total_stride = int(total_stride)
        self.stages_fn = stages_fn

    def check_input(self, x: torch.Tensor) -> None:
        """Same checks as :meth:`ConvNeXtV2Encoder3D.check_input`."""
        ConvNeXtV2Encoder3D.check_input(self, x)  # uses only in_chans and total_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim < 2:
            raise ValueError(
                f"wrapped encoder {type(self.module).__name__} returned "
                f"{getattr(out, 'shape', type(out).__name__)}; expected (B, d) or (B, d, *spatial)"
            )
        if out.ndim > 2:
            out = out.flatten(2).mean(-1)  # global average pooling of a feature map
        if self.embed_dim is None:
            self.embed_dim = int(out.shape[1])
        elif out.shape[1] != self.embed_dim:
            raise ValueError(f"wrapped encoder returned {out.shape[1]} features, expected embed_dim={self.embed_dim}")
        return out

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.stages_fn is None:
            raise NotImplementedError(
                f"{type(self.module).__name__} wrapped without stages_fn; per-stage features need "
                "as_encoder(module, ..., stages_fn=lambda m, x: [...])"
            )
        self.check_input(x)
        return list(self.stages_fn(self.module, x))


def as_encoder(
    module: nn.Module,
    in_chans: int | None = None,
    embed_dim: int | None = None,
    total_stride: int = 1,
    stages_fn: Callable[[nn.Module, torch.Tensor], list[torch.Tensor]] | None = None,
) -> nn.Module:
    """Return ``module`` unchanged if it already follows the encoder protocol, else wrap it.

    A module follows the protocol when it has ``in_chans`` and ``embed_dim`` attributes and
    returns ``(B, embed_dim)`` (as :class:`ConvNeXtV2Encoder3D` does).

    Parameters
    ----------
    module
        Any PyTorch module mapping ``(B, C, D, H, W)`` to a vector or feature map.
    in_chans
        Input channels; required when wrapping.
    embed_dim, total_stride, stages_fn
        See :class:`EncoderAdapter`.
    """
    if isinstance(module, (ConvNeXtV2Encoder3D, EncoderAdapter)):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if in_chans is None:
        in_chans = getattr(module, "in_chans", None)
        if in_chans is None:
            raise ValueError(f"as_encoder({type(module).__name__}) needs in_chans=...")
    return EncoderAdapter(module, in_chans, embed_dim or getattr(module, "embed_dim", None), total_stride, stages_fn)
