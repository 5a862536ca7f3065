"""Task heads of the paper's three downstream tasks, and the stem adaptation for 1 channel.

* :class:`PiradsHead` - PI-RADS group classification (4 classes): linear -> batch norm ->
  linear on the pooled embedding. The paper says "linear, batch norm, linear"; the authors'
  public code (ProFound ``models/classifier.py``) puts a ReLU after the batch norm, with a
  bottleneck of 256. We follow the code (``activation="relu"``, ``hidden=256``); pass
  ``activation=None`` for the literal, purely linear reading.
* :class:`VolumeHead` - gland volume regression: batch norm -> linear -> one number.
* :class:`UPerNetDecoder3D` - lesion segmentation: a UPerNet decoder over the encoder's four
  stage maps: a pyramid pooling module (PPM) on the last stage, an FPN (lateral 1x1 convs,
  top-down addition, 3x3 convs) over all stages, fusion of the upsampled pyramid, a 1x1
  classifier and trilinear upsampling to the input size. Each stage map is normalised before
  decoding (as in ProFound's ``models/upernet_module.py``); conv blocks use BatchNorm + ReLU
  as in the original UPerNet (``norm="layer"`` gives ProFound's LayerNorm + GELU; see the
  class for why batch norm is the default here).
* :func:`adapt_stem_in_chans` - give a pre-trained 3-channel encoder a 1-channel (T2W) stem;
  :func:`encoder_for_task` - the encoder as a task sees it (that stem for the T2W-only task).
* :func:`head_for_task` - the head of a task's kind, sized from the encoder;
  :func:`head_from_config` - the same head rebuilt from its recorded configuration.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from radiolens.tasks import Task, get_task

__all__ = [
    "ChannelLayerNorm3d",
    "PiradsHead",
    "SegmentationModel",
    "UPerNetDecoder3D",
    "VolumeHead",
    "adapt_stem_in_chans",
    "encoder_for_task",
    "encoder_in_chans",
    "find_stem_conv",
    "head_config",
    "head_for_task",
    "head_from_config",
]

logger = logging.getLogger(__name__)


class PiradsHead(nn.Sequential):
    """Linear -> BatchNorm1d (-> activation) -> Linear, producing class logits.

    Parameters
    ----------
    in_dim
        Embedding width ``d`` of the encoder.
    n_classes
        Number of classes (4 PI-RADS groups: <3, 3, 4, 5).
    hidden
        Bottleneck width (256 in ProFound's code).
    activation
        ``"relu"`` (ProFound's code) or ``None`` (the paper's literal description).
    """

    def __init__(self, in_dim: int, n_classes: int = 4, hidden: int = 256, activation: str | None = "relu"):
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden)]
        if activation == "relu":
            layers.append(nn.ReLU())
        elif activation is not None:
            raise ValueError(f"activation must be 'relu' or None, got {activation!r}")
        layers.append(nn.Linear(hidden, n_classes))
        super().__init__(*layers)
        self.in_dim, self.n_classes, self.hidden, self.activation = in_dim, n_classes, hidden, activation


class VolumeHead(nn.Sequential):
    """BatchNorm1d -> Linear(d, 1): a standardised gland volume per case.

    Parameters
    ----------
    in_dim
        Embedding width ``d`` of the encoder.
    """

    def __init__(self, in_dim: int):
        super().__init__(nn.BatchNorm1d(in_dim), nn.Linear(in_dim, 1))
        self.in_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B,)
        return super().forward(x).squeeze(1)


class ChannelLayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, D, H, W)`` tensor (per voxel)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 4, 1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 4, 1, 2, 3)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "layer":
        return ChannelLayerNorm3d(channels)
    raise ValueError(f"norm must be 'batch' or 'layer', got {kind!r}")


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, norm: str = "batch"):
        super().__init__(
            nn.Conv3d(cin, cout, kernel, padding=kernel // 2, bias=norm == "none"),
            _norm(norm, cout),
            nn.GELU() if norm == "layer" else nn.ReLU(),
        )


class UPerNetDecoder3D(nn.Module):
    """UPerNet-style decoder over the four stage maps of a hierarchical 3D encoder.

    Parameters
    ----------
    in_dims
        Channel widths of the stage maps (``encoder.dims``), finest first.
    n_classes
        Output channels (1 for a binary lesion mask: logits, sigmoid later).
    channels
        Width of the decoder (512 in ProFound's code; smaller on a CPU).
    pool_scales
        Output sizes of the pyramid pooling module's adaptive average pools.
    norm
        ``"batch"`` (default; UPerNet's BatchNorm + ReLU conv blocks and a BatchNorm of each
        stage map) or ``"layer"`` (ProFound's channels-first LayerNorm + GELU). A per-voxel
        LayerNorm removes the *magnitude* of each voxel's feature vector, which in narrow
        CPU-sized decoders is much of the signal (e.g. "this voxel is bright"); batch
        statistics over a 3D batch pool ~10^4-10^5 voxels per channel, so they are stable
        even with 2-4 cases per batch.
    prior_prob
        Initial foreground probability: the classifier's bias starts at
        ``log(p / (1 - p))`` (as in RetinaNet). Lesions fill well under 1% of a volume; starting
        at 0.5 everywhere, the soft Dice gradient is spread over ~10^5 false-positive voxels and
        training barely moves in the first epochs. ``None`` keeps PyTorch's default init.

    Notes
    -----
    ``forward(stages, out_size)`` returns logits of shape ``(B, n_classes, *out_size)``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        n_classes: int = 1,
        channels: int = 64,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        prior_prob: float | None = 0.01,
        norm: str = "batch",
    ):
        super().__init__()
        in_dims = [int(c) for c in in_dims]
        self.in_dims, self.n_classes, self.channels = in_dims, n_classes, channels
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.norm = norm
        self.stage_norms = nn.ModuleList(_norm(norm, c) for c in in_dims)
        # a 1x1x1 pooled map cannot be batch-normalised (one value per channel and case):
        # with batch norm, the PPM convs get a bias and no norm
        ppm_norm = "none" if norm == "batch" else norm
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool3d(s), _ConvBlock(in_dims[-1], channels, 1, ppm_norm))
            for s in self.pool_scales
        )
        self.ppm_bottleneck = _ConvBlock(in_dims[-1] + len(self.pool_scales) * channels, channels, 3, norm)
        self.lateral = nn.ModuleList(_ConvBlock(c, channels, 1, norm) for c in in_dims[:-1])
        self.fpn = nn.ModuleList(_ConvBlock(channels, channels, 3, norm) for _ in in_dims[:-1])
        self.fuse = _ConvBlock(len(in_dims) * channels, channels, 3, norm)
        self.classifier = nn.Conv3d(channels, n_classes, 1)
        if prior_prob is not None:
            if not 0.0 < prior_prob < 1.0:
                raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
            nn.init.constant_(self.classifier.bias, math.log(prior_prob / (1.0 - prior_prob)))

    def _up(self, x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)

    def forward(self, stages: Sequence[torch.Tensor], out_size=None) -> torch.Tensor:
        if len(stages) != len(self.in_dims):
            raise ValueError(f"expected {len(self.in_dims)} stage maps, got {len(stages)}")
        feats = [norm(s) for norm, s in zip(self.stage_norms, stages)]
        top = feats[-1]
        psp = [top] + [self._up(p(top), top.shape[2:]) for p in self.ppm]
        laterals = [lat(f) for lat, f in zip(self.lateral, feats[:-1])]
        laterals.append(self.ppm_bottleneck(torch.cat(psp, dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + self._up(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        size0 = outs[0].shape[2:]
        outs = [outs[0]] + [self._up(o, size0) for o in outs[1:]]
        logits = self.classifier(self.fuse(torch.cat(outs, dim=1)))
        if out_size is not None:
            logits = self._up(logits, out_size)
        return logits


class SegmentationModel(nn.Module):
    """An encoder exposing ``forward_stages`` plus a :class:`UPerNetDecoder3D`."""

    def __init__(self, encoder: nn.Module, decoder: UPerNetDecoder3D):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder.forward_stages(x), out_size=x.shape[2:])


# --------------------------------------------------------------------------------------------
# 1-channel stem for the T2W-only task
# --------------------------------------------------------------------------------------------
def find_stem_conv(encoder: nn.Module) -> tuple[str, nn.Conv3d]:
    """The first ``Conv3d`` of ``encoder`` (its stem), as ``(qualified name, module)``."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Conv3d):
            return name, module
    raise TypeError(f"{type(encoder).__name__} has no Conv3d stem to adapt")


def adapt_stem_in_chans(encoder: nn.Module, in_chans: int = 1, mode: str = "select", channel: int = 0) -> nn.Module:
    """Make an encoder pre-trained on several channels accept ``in_chans=1`` (in place).

    Parameters
    ----------
    encoder
        The encoder to change (pass a copy to keep the original).
    in_chans
        Must be 1 (the gland volume task uses T2W only).
    mode
        ``"select"`` (default): keep only the stem kernel slice of input channel ``channel``
        (T2W is channel 0 of T2W/DWI/ADC). With the other channels absent, the stem's response
        to T2W is then exactly what the pre-trained network computed from T2W.
        ``"sum"``: sum the kernel over input channels, the usual RGB -> grey conversion; it is
        right only when all channels carry the same image, which mpMRI modalities do not
        (ADC has the opposite lesion contrast of high-b DWI), so it is offered, not the default.
    channel
        Input channel kept by ``"select"``.

    Returns
    -------
    torch.nn.Module
        ``encoder``, with its stem replaced and ``encoder.in_chans`` set to 1.
    """
    if in_chans != 1:
        raise ValueError(f"only adaptation to in_chans=1 is supported, got {in_chans}")
    name, conv = find_stem_conv(encoder)
    if conv.in_channels == 1:
        return encoder
    with torch.no_grad():
        if mode == "select":
            if not 0 <= channel < conv.in_channels:
                raise ValueError(f"channel {channel} out of range for a {conv.in_channels}-channel stem")
            weight = conv.weight[:, channel : channel + 1].clone()
        elif mode == "sum":
            weight = conv.weight.sum(dim=1, keepdim=True)
        else:
            raise ValueError(f"mode must be 'select' or 'sum', got {mode!r}")
        new = nn.Conv3d(
            1, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=1, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent = encoder
    *path, leaf = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, leaf, new)
    if hasattr(encoder, "in_chans"):
        try:
            encoder.in_chans = 1
        except AttributeError:  # a read-only property: the stem is what matters
            pass
    logger.info("adapted stem %r from %d to 1 input channel (mode=%s)", name, conv.in_channels, mode)
    return encoder


def encoder_in_chans(encoder: nn.Module) -> int:
    """The number of input channels an encoder takes (its ``in_chans``, else its stem's)."""
    value = getattr(encoder, "in_chans", None)
    if value is not None:
        return int(value)
    return int(find_stem_conv(encoder)[1].in_channels)


def encoder_for_task(encoder: nn.Module, task: str | Task, stem_mode: str = "select") -> nn.Module:
    """The encoder as a task sees it: unchanged, or a copy with a 1-channel stem (T2W-only tasks).

    Parameters
    ----------
    encoder
        Any radiolens encoder (not modified).
    task
        A task of :data:`radiolens.tasks.TASKS` (or a :class:`~radiolens.tasks.Task`).
    stem_mode
        See :func:`adapt_stem_in_chans`.

    Raises
    ------
    ValueError
        The encoder takes fewer channels than the task feeds.
    """
    task = get_task(task)
    channels = task.channels
    have = encoder_in_chans(encoder)
    if have == len(channels):
        return encoder
    if len(channels) == 1 and have > 1:
        return adapt_stem_in_chans(copy.deepcopy(encoder), 1, mode=stem_mode, channel=0)
    raise ValueError(
        f"task {task.name!r} feeds {len(channels)} channel(s) {list(channels)} but the encoder takes {have}"
    )


def head_for_task(task: str | Task, encoder: nn.Module, sample: torch.Tensor, **head_kwargs) -> nn.Module:
    """The head of a task's kind, its input widths read from ``encoder`` (one forward pass of
    ``sample`` when the encoder does not state them).

    Classification: :class:`PiradsHead` on the pooled embedding; regression:
    :class:`VolumeHead`; segmentation: :class:`UPerNetDecoder3D` over the stage maps.
    ``head_kwargs`` go to the head (``hidden``, ``activation``; ``channels``, ``pool_scales``).
    """
    task = get_task(task)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            if task.kind == "segmentation":
                if not hasattr(encoder, "forward_stages"):
                    raise TypeError(
                        f"the {task.name} task needs per-stage feature maps: {type(encoder).__name__} has no "
                        "forward_stages (wrap it with radiolens.models.as_encoder(..., stages_fn=...))"
                    )
                dims = [int(s.shape[1]) for s in encoder.forward_stages(sample)]
                return UPerNetDecoder3D(dims, n_classes=1, **head_kwargs)
            d = getattr(encoder, "embed_dim", None)
            if d is None:
                out = encoder(sample)
                d = int((out[0] if isinstance(out, (tuple, list)) else out).shape[1])
    finally:
        encoder.train(was_training)
    if task.kind == "classification":
        return PiradsHead(int(d), n_classes=task.n_classes, **head_kwargs)
    if task.kind == "regression":
        return VolumeHead(int(d), **head_kwargs)
    raise ValueError(f"task {task.name!r} of kind {task.kind!r} has no head")


_HEAD_FIELDS = ("in_dim", "in_dims", "hidden", "activation", "channels", "pool_scales", "n_classes", "norm")


def head_config(head: nn.Module) -> dict:
    """What :func:`head_from_config` needs to rebuild ``head`` (its class and widths)."""
    return {"class": type(head).__name__, **{k: getattr(head, k) for k in _HEAD_FIELDS if hasattr(head, k)}}


def head_from_config(config: dict) -> nn.Module:
    """Rebuild a head (untrained) from :func:`head_config`'s record."""
    config = dict(config)
    cls = config.pop("class")
    if cls == "PiradsHead":
        return PiradsHead(config["in_dim"], config.get("n_classes", 4), config.get("hidden", 256),
                          config.get("activation", "relu"))
    if cls == "VolumeHead":
        return VolumeHead(config["in_dim"])
    if cls == "UPerNetDecoder3D":
        return UPerNetDecoder3D(config["in_dims"], config.get("n_classes", 1), config["channels"],
                                tuple(config["pool_scales"]), norm=config.get("norm", "batch"))
    raise ValueError(f"unknown head class {cls!r}")
