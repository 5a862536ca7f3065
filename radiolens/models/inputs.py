"""The one place where a cohort case becomes a network input.

Pre-training, fine-tuning and embedding extraction all call :func:`case_tensor` (or iterate
a :class:`CohortDataset`), so every network sees the same preprocessing.

Intensity normalisation (``NORMALISATION_VERSION = "zscore-nonzero-v1"``)
--------------------------------------------------------------------------
Each channel is z-scored *within its own volume* over its **non-zero voxels**:
``(x - mean) / std`` where mean and std are taken over ``x != 0``; zero voxels stay zero.
This is exactly ProFound's preprocessing (MONAI ``NormalizeIntensityd(nonzero=True,
channel_wise=True)`` in their data loaders), which matters most: a real ProFound checkpoint
only produces meaningful embeddings for inputs distributed as in its pre-training. We apply
it to ADC as well, although ADC is quantitative (mm^2/s) and a fixed physical scaling would
keep absolute diffusivity; the price of our choice is that the encoder sees ADC *contrast*
within a volume, not its absolute level - the same as ProFound. A constant channel (std 0)
is only centred.

Spatial size
------------
The encoder needs each spatial size to be a multiple of its total stride (16 for ProFound's
layout) and raises otherwise. :func:`case_tensor` does not pad by default, so images and
masks keep the cohort's grid; :func:`pad_to_multiple` (used by :class:`CohortDataset`, on
images and masks alike) zero-pads symmetrically, zero being the normalised mean.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from radiolens.naming import MODALITIES

__all__ = [
    "NORMALISATION_VERSION",
    "CohortDataset",
    "case_tensor",
    "normalise_channel",
    "pad_to_multiple",
]

logger = logging.getLogger(__name__)

#: Bump when :func:`case_tensor` changes its output; part of every embedding cache key.
NORMALISATION_VERSION = "zscore-nonzero-v1"


def normalise_channel(volume: np.ndarray) -> np.ndarray:
    """Z-score one volume over its non-zero voxels (zeros stay zero), as float32."""
    volume = np.asarray(volume, dtype=np.float32)
    nonzero = volume != 0
    if not nonzero.any():
        return np.zeros_like(volume)
    values = volume[nonzero].astype(np.float64)
    mean, std = values.mean(), values.std()
    out = np.zeros_like(volume)
    out[nonzero] = (volume[nonzero] - mean) / (std if std > 0 else 1.0)
    return out


def pad_to_multiple(array, multiple: int, value: float = 0.0):
    """Zero-pad the last three axes symmetrically up to a multiple of ``multiple``.

    Parameters
    ----------
    array
        NumPy array or torch tensor whose last three axes are (D, H, W).
    multiple
        E.g. the encoder's ``total_stride``. Sizes smaller than it are padded up to it.
    value
        Fill value.

    Returns
    -------
    Same type as ``array``; unchanged (same object) when no padding is needed.
    """
    multiple = int(multiple)
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    spatial = array.shape[-3:]
    target = [max(multiple, -(-s // multiple) * multiple) for s in spatial]
    if list(spatial) == target:
        return array
    before = [(t - s) // 2 for s, t in zip(spatial, target)]
    after = [t - s - b for s, t, b in zip(spatial, target, before)]
    if isinstance(array, torch.Tensor):
        pad = []
        for b, a in zip(reversed(before), reversed(after)):  # F.pad wants last axis first
            pad += [b, a]
        return torch.nn.functional.pad(array, pad, value=value)
    widths = [(0, 0)] * (array.ndim - 3) + list(zip(before, after))
    return np.pad(array, widths, constant_values=value)


def case_tensor(
    case, channels: Sequence[str] = MODALITIES, pad_multiple: int | None = None
) -> torch.Tensor:
    """Stack and normalise a case's images into a ``(C, D, H, W)`` float32 tensor.

    Parameters
    ----------
    case
        A :class:`radiolens.data.Case` (its ``images`` dict of (z, y, x) arrays is used).
    channels
        Image keys in channel order, e.g. ``("T2W", "DWI", "ADC")`` or ``("T2W",)``.
    pad_multiple
        Zero-pad D, H, W symmetrically to a multiple of this (see :func:`pad_to_multiple`).

    Returns
    -------
    torch.Tensor
        ``(len(channels), D, H, W)``, each channel z-scored over its non-zero voxels.

    Raises
    ------
    ValueError
        No channels, an unknown or missing channel, channels of different shapes, a
        non-3D image, or NaN/inf voxels (naming the case and the channel).
    """
    channels = tuple(channels)
    case_id = getattr(case, "case_id", "?")
    if not channels:
        raise ValueError(f"case {case_id!r}: at least one channel is needed")
    unknown = [c for c in channels if c not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown channel(s) {unknown}; expected some of {list(MODALITIES)}")
    images = getattr(case, "images", {})
    absent = [c for c in channels if c not in images]
    if absent:
        raise ValueError(f"case {case_id!r} has no {absent} image(s) (it has {sorted(images)})")
    arrays = []
    for channel in channels:
        volume = np.asarray(images[channel])
        if volume.ndim != 3:
            raise ValueError(f"case {case_id!r}, channel {channel}: expected a 3D (z, y, x) array, got shape {volume.shape}")
        if arrays and volume.shape != arrays[0].shape:
            raise ValueError(
                f"case {case_id!r}: channel {channel} has shape {volume.shape}, "
                f"{channels[0]} has {arrays[0].shape}"
            )
        finite = np.isfinite(volume)
        if not finite.all():
            raise ValueError(f"case {case_id!r}, channel {channel}: {int((~finite).sum())} NaN/inf voxel(s)")
        arrays.append(normalise_channel(volume))
    out = torch.from_numpy(np.stack(arrays))
    if pad_multiple is not None:
        out = pad_to_multiple(out, pad_multiple)
    return out.contiguous()


class CohortDataset(Dataset):
    """A torch ``Dataset`` of normalised case tensors over some of a cohort's cases.

    Parameters
    ----------
    cohort
        A :class:`radiolens.data.Cohort`.
    split
        ``"train"``, ``"val"``, ``"test"``, several of them, or None for every case.
    channels
        Image keys in channel order.
    masks
        Mask keys to return too (``"gland"``, ``"lesion"``, ``"zones"``), padded like the image.
    pad_multiple
        Pad images and masks to a multiple of this (16: ProFound's total stride); None: no padding.
    cache_mb
        Keep loaded tensors in memory while their total stays under this many MiB (reading a
        case costs far more than a forward pass of a small encoder); 0 disables caching.
    case_ids
        Explicit case list (overrides ``split``).

    Items are dicts ``{"case_id": str, "image": (C, D, H, W) float32, <mask>: (1, D, H, W)
    uint8}``, which torch's default collate batches.

    Raises
    ------
    ValueError
        The selection holds no case.
    """

    def __init__(
        self,
        cohort,
        split: str | Iterable[str] | None = None,
        channels: Sequence[str] = MODALITIES,
        masks: Sequence[str] = (),
        pad_multiple: int | None = 16,
        cache_mb: float = 1024.0,
        case_ids: Sequence[str] | None = None,
    ) -> None:
        self.cohort = cohort
        self.split = split
        self.channels = tuple(channels)
        self.masks = tuple(masks)
        self.pad_multiple = pad_multiple
        self.cache_mb = float(cache_mb)
        if case_ids is not None:
            self.case_ids = [str(c) for c in case_ids]
        else:
            self.case_ids = [str(c) for c in (cohort.case_ids if split is None else cohort.ids(split))]
        if not self.case_ids:
            raise ValueError(
                f"cohort {getattr(cohort, 'root', '')} has no cases in split {split!r}; "
                "check the manifest's 'split' column"
            )
        self._cache: dict[int, dict] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.case_ids)

    def _load(self, index: int) -> dict:
        case_id = self.case_ids[index]
        case = self.cohort.load_case(case_id, keys=list(self.channels) + list(self.masks))
        item = {"case_id": case_id, "image": case_tensor(case, self.channels, self.pad_multiple)}
        for key in self.masks:
            if key not in case.masks:
                raise ValueError(f"case {case_id!r} has no {key!r} mask")
            mask = torch.from_numpy(np.ascontiguousarray(case.masks[key], dtype=np.uint8))[None]
            item[key] = mask if self.pad_multiple is None else pad_to_multiple(mask, self.pad_multiple)
        return item

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if index in self._cache:
            return self._cache[index]
        item = self._load(index)
        size = sum(v.element_size() * v.nelement() for v in item.values() if isinstance(v, torch.Tensor))
        if self._cached_bytes + size <= self.cache_mb * 2**20:
            self._cache[index] = item
            self._cached_bytes += size
        return item
