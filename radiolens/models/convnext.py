"""A 3D ConvNeXt V2 encoder whose parameter names and shapes match ProFound's ``convnextv2``.

The network (Woo et al., 2023, extended to 3D by ProFound, Wang et al.) is

* a **stem**: ``Conv3d(k=4, s=4)`` then a channels-first LayerNorm;
* three **downsampling layers**: channels-first LayerNorm then ``Conv3d``. ProFound uses
  kernel/stride 2, 2 and **1** (the last one only changes the width), so the total stride is
  ``4 * 2 * 2 * 1 = 16`` and a 64 x 224 x 224 crop gives a 4 x 14 x 14 final grid. The 2D
  ConvNeXt V2 uses stride 2 there too (total stride 32); pass ``last_stride=2`` for that
  layout (its checkpoints are then *not* ProFound-compatible: the last conv kernel differs);
* four **stages** of blocks: depthwise 7x7x7 conv -> LayerNorm -> pointwise MLP (x4 width)
  with GELU and Global Response Normalisation (GRN) -> residual with drop path;
* the **embedding**: global average pooling over space, then a final LayerNorm, giving a
  ``dims[-1]``-dimensional vector (768 for "tiny", ProFound's size).

State-dict names (``downsample_layers.0.0.weight``, ``stages.2.5.grn.gamma``, ``norm.weight``,
...) and shapes (GRN ``gamma``/``beta`` are ``(1, 1, 1, 1, C)``) are exactly ProFound's, so
their fine-tuned checkpoints load with a plain ``load_state_dict`` and their pre-training
checkpoints after :func:`radiolens.models.profound.remap_profound_state_dict`.

Inputs are ``(B, C, D, H, W)`` tensors (z, y, x order, as :mod:`radiolens.models.inputs`
produces). Each spatial size must be a multiple of :attr:`ConvNeXtV2Encoder3D.total_stride`
(and therefore at least that large); :func:`radiolens.models.inputs.pad_to_multiple` pads a
volume that is not. We raise instead of padding silently because padding shifts the global
average and, for segmentation, the output grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PRESETS", "ConvNeXtV2Encoder3D", "GRN", "LayerNorm", "Block"]

#: Size presets: name -> (depths, dims). atto ... huge are ConvNeXt V2's official sizes (as
#: in ProFound's ``convnextv2.py``); "tiny" is ProFound's encoder. **"micro" is radiolens's
#: own addition** (not an official ConvNeXt V2 size): about 0.8 M parameters, sized so that
#: pre-training and fine-tuning on the built-in synthetic cohort run on a laptop CPU.
PRESETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "micro": ((1, 1, 3, 1), (24, 48, 96, 192)),
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis, for channels-last or channels-first tensors.

    Parameters
    ----------
    num_channels
        Size of the normalised (channel) axis.
    eps
        Added to the variance.
    data_format
        ``"channels_last"`` (``(..., C)``) or ``"channels_first"`` (``(B, C, *spatial)``).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, data_format: str = "channels_last") -> None:
        super().__init__()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        self.data_format = data_format
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return F.layer_norm(x, (self.num_channels,), self.weight, self.bias, self.eps)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, data_format={self.data_format}"


class GRN(nn.Module):
    """Global Response Normalisation for channels-last 3D tensors ``(B, D, H, W, C)``.

    ``gamma`` and ``beta`` have shape ``(1, 1, 1, 1, C)`` as in ProFound, and start at zero so
    that a fresh GRN is the identity.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _DepthwiseConv3dCPU(torch.autograd.Function):
    """Depthwise 'same' 3D convolution whose backward pass uses only forward convolutions.

    PyTorch's CPU backward of a depthwise ``Conv3d`` takes a slow generic path (about 30x
    slower than the forward pass on the stem-resolution maps of the encoder). The gradients
    are themselves convolutions: w.r.t. the input, the same depthwise convolution with the
    kernel flipped; w.r.t. the weight, a grouped convolution of the padded input with the
    output gradient as kernel. Mathematically identical to autograd's (checked by gradcheck
    in the tests).
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return F.conv3d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        channels, pad = weight.shape[0], weight.shape[-1] // 2
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv3d(grad, weight.flip(2, 3, 4), None, padding=pad, groups=channels)
        if ctx.needs_input_grad[1]:
            batch = x.shape[0]
            padded = F.pad(x, (pad,) * 6)
            padded = padded.reshape(1, batch * channels, *padded.shape[2:])
            kernels = grad.reshape(batch * channels, 1, *grad.shape[2:])
            grad_w = F.conv3d(padded, kernels, groups=batch * channels)
            grad_w = grad_w.reshape(batch, channels, *weight.shape[2:]).sum(0)[:, None]
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3, 4))
        return grad_x, grad_w, grad_b


def depthwise_conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Apply a depthwise 'same' ``Conv3d``, with the fast backward on CPU when training."""
    if x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        return _DepthwiseConv3dCPU.apply(x, conv.weight, conv.bias)
    return conv(x)


class Block(nn.Module):
    """One ConvNeXt V2 block (ProFound names: dwconv, norm, pwconv1, act, grn, pwconv2)."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv3d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        # pointwise convs as Linear layers on channels-last tensors (ProFound's layout)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = depthwise_conv3d(self.dwconv, x)
        x = x.permute(0, 2, 3, 4, 1)  # (B, C, D, H, W) -> (B, D, H, W, C)
        x = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(x)))))
        x = x.permute(0, 4, 1, 2, 3)
        return shortcut + self.drop_path(x)


class ConvNeXtV2Encoder3D(nn.Module):
    """3D ConvNeXt V2 encoder producing a ``dims[-1]``-dimensional embedding per volume.

    Parameters
    ----------
    in_chans
        Number of input channels (3 for T2W + DWI + ADC, 1 for T2W only).
    depths
        Number of blocks in each of the four stages.
    dims
        Width of each of the four stages; the embedding has ``dims[-1]`` dimensions.
    drop_path_rate
        Stochastic-depth rate, increasing linearly from 0 to this value over all blocks.
    last_stride
        Kernel and stride of the last downsampling layer: 1 as in ProFound (total stride 16,
        default), 2 as in the 2D ConvNeXt V2 (total stride 32).
    check_inputs
        Validate shape, channel count and finiteness of every input (cheap; keep on).

    Attributes
    ----------
    embed_dim : int
        Embedding size, ``dims[-1]``.
    total_stride : int
        Ratio between input size and final-stage grid size along each axis.
    stage_strides : tuple of int
        Cumulative stride of each stage's feature map, e.g. ``(4, 8, 16, 16)``.

    Examples
    --------
    >>> enc = ConvNeXtV2Encoder3D.from_preset("micro", in_chans=3)
    >>> enc(torch.zeros(2, 3, 32, 96, 96)).shape
    torch.Size([2, 192])
    """

    def __init__(
        self,
        in_chans: int = 3,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        last_stride: int = 1,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        depths, dims = tuple(int(d) for d in depths), tuple(int(d) for d in dims)
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims need 4 entries each, got {depths} and {dims}")
        if int(in_chans) < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 (ProFound) or 2 (2D ConvNeXt V2), got {last_stride}")
        self.in_chans = int(in_chans)
        self.depths = depths
        self.dims = dims
        self.drop_path_rate = float(drop_path_rate)
        self.last_stride = int(last_stride)
        self.check_inputs = check_inputs
        self.embed_dim = dims[-1]
        strides = (4, 2, 2, self.last_stride)
        self.stage_strides = tuple(int(math.prod(strides[: i + 1])) for i in range(4))
        self.total_stride = self.stage_strides[-1]

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                nn.Conv3d(self.in_chans, dims[0], kernel_size=4, stride=4),
                LayerNorm(dims[0], eps=1e-6, data_format="channels_first"),
            )
        )
        for i in range(3):
            stride = strides[i + 1]
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                    nn.Conv3d(dims[i], dims[i + 1], kernel_size=stride, stride=stride),
                )
            )

        n_blocks = sum(depths)
        # linear ramp 0 -> drop_path_rate; plain Python so building on the "meta" device works
        rates = [self.drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.stages = nn.ModuleList()
        start = 0
        for i in range(4):
            self.stages.append(nn.Sequential(*[Block(dims[i], rates[start + j]) for j in range(depths[i])]))
            start += depths[i]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_preset(cls, name: str, in_chans: int = 3, **kwargs) -> ConvNeXtV2Encoder3D:
        """Build an encoder of a named size (see :data:`PRESETS`).

        Parameters
        ----------
        name
            One of ``PRESETS`` ("micro", "atto", ..., "tiny", ..., "huge").
        in_chans
            Number of input channels.
        **kwargs
            Passed to the constructor (``drop_path_rate``, ``last_stride``, ...).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown encoder preset {name!r}; choose one of {sorted(PRESETS)}")
        depths, dims = PRESETS[name]
        return cls(in_chans=in_chans, depths=depths, dims=dims, **kwargs)

    @property
    def config(self) -> dict:
        """Constructor arguments, JSON-serialisable (stored next to saved weights)."""
        return {
            "in_chans": self.in_chans,
            "depths": list(self.depths),
            "dims": list(self.dims),
            "drop_path_rate": self.drop_path_rate,
            "last_stride": self.last_stride,
        }

    # -- input checks ----------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the problem if ``x`` is not a valid input."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (B, C, D, H, W), got {type(x).__name__}")
        if x.ndim != 5:
            raise ValueError(
                f"expected a 5D input (B, C, D, H, W), got shape {tuple(x.shape)}; "
                "add a batch axis with x[None] for a single volume"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"encoder expects {self.in_chans} input channel(s), got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        spatial = tuple(x.shape[2:])
        stride = self.total_stride
        if any(s < stride for s in spatial):
            raise ValueError(
                f"volume of size (D, H, W) = {spatial} is smaller than the encoder's total "
                f"stride {stride} along at least one axis; pad or resample it to >= {stride}"
            )
        if any(s % stride for s in spatial):
            raise ValueError(
                f"volume of size (D, H, W) = {spatial} is not a multiple of the encoder's total "
                f"stride {stride}; pad it with radiolens.models.inputs.pad_to_multiple"
            )
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            n_bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"input contains {n_bad} NaN/inf value(s); clean the volume first")

    # -- forward ---------------------------------------------------------------------------
    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each of the four stages.

        Returns
        -------
        list of torch.Tensor
            ``[(B, dims[i], D / s_i, H / s_i, W / s_i) for i in 0..3]`` with
            ``s_i = stage_strides[i]`` (4, 8, 16, 16 by default). No final norm applied.
        """
        if self.check_inputs:
            self.check_input(x)
        features = []
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
            features.append(x)
        return features

    def pool(self, feature: torch.Tensor) -> torch.Tensor:
        """Global average pooling + final LayerNorm of the last stage's feature map."""
        return self.norm(feature.mean(dim=(-3, -2, -1)))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The embedding and every stage's feature map, in one pass."""
        features = self.forward_stages(x)
        return self.pool(features[-1]), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of volumes: ``(B, C, D, H, W) -> (B, dims[-1])``."""
        return self.pool(self.forward_stages(x)[-1])
