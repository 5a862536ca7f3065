"""The one place where a cohort case becomes a network input, and the one batching path.

Pre-training, fine-tuning and embedding extraction all read cases through a :class:`CaseStore`
(pre-training through its torch ``Dataset`` view, :class:`CohortDataset`), which calls
:func:`case_tensor` once per case and channel set, so every network sees the same
preprocessing and a study reads each case once.

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
masks keep the cohort's grid; :func:`pad_to_multiple` (used by :class:`CaseStore`, on images
and masks alike) zero-pads symmetrically, zero being the normalised mean.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from radiolens.naming import MODALITIES

__all__ = [
    "NORMALISATION_VERSION",
    "CaseStore",
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


class CaseStore:
    """The one batching path: a cohort's cases as normalised, padded network inputs.

    Each case is read from disk once per channel set (:func:`case_tensor`) and kept in memory
    while the total stays under ``cache_mb``; a channel subset of a stack already held (e.g.
    T2W of T2W, DWI, ADC) is cut from it, which is exact because channels are normalised
    independently. A study shares one store between its fine-tuning runs and its embeddings
    (at 200 cases of 3 x 32 x 96 x 96 that is 0.7 GB).

    Parameters
    ----------
    cohort
        A :class:`radiolens.data.Cohort` (anything with ``load_case``).
    pad_multiple
        Zero-pad images and masks to a multiple of this (the encoder's ``total_stride``); None
        for no padding.
    masks
        Mask keys read together with each case's images (e.g. ``("lesion",)``).
    cache_mb
        Memory kept for cases, in MiB; None keeps every case, 0 none (each read streams).
    """

    def __init__(self, cohort, pad_multiple: int | None = None, masks: Sequence[str] = (),
                 cache_mb: float | None = None) -> None:
        self.cohort = cohort
        self.pad_multiple = pad_multiple if pad_multiple and pad_multiple > 1 else None
        self.masks = tuple(masks)
        self.cache_mb = cache_mb
        self._images: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        self._masks: dict[tuple[str, str], np.ndarray | None] = {}
        self._bytes = 0

    def _keep(self, store: dict, key, value) -> None:
        size = 0 if value is None else value.nbytes
        if self.cache_mb is None or self._bytes + size <= self.cache_mb * 2**20:
            store[key] = value
            self._bytes += size

    def _pad(self, array: np.ndarray) -> np.ndarray:
        return array if self.pad_multiple is None else pad_to_multiple(array, self.pad_multiple)

    def _read(self, case_id: str, channels: tuple[str, ...], masks: Sequence[str]) -> np.ndarray:
        case = self.cohort.load_case(case_id, keys=[*channels, *masks])
        image = case_tensor(case, channels, self.pad_multiple).numpy()
        self._keep(self._images, (case_id, channels), image)
        for key in masks:
            mask = case.masks.get(key)
            self._keep(self._masks, (case_id, key), None if mask is None else self._pad(np.asarray(mask, dtype=np.uint8)))
        return image

    def image(self, case_id: str, channels: Sequence[str] = MODALITIES) -> np.ndarray:
        """``(C, D, H, W)`` float32: the case's normalised, padded channels (read-only: copy to modify)."""
        channels = tuple(channels)
        key = (case_id, channels)
        if key in self._images:
            return self._images[key]
        for (cid, have), image in list(self._images.items()):
            if cid == case_id and set(channels) <= set(have):
                # cut, not kept: a subset costs a copy, not a second read or more memory
                return np.ascontiguousarray(image[[have.index(c) for c in channels]])
        masks = [k for k in self.masks if (case_id, k) not in self._masks]
        return self._read(case_id, channels, masks)

    def mask(self, case_id: str, key: str) -> np.ndarray | None:
        """``(D, H, W)`` uint8, padded like the images; None when the case has no such mask."""
        if (case_id, key) not in self._masks:
            case = self.cohort.load_case(case_id, keys=[key])
            mask = case.masks.get(key)
            value = None if mask is None else self._pad(np.asarray(mask, dtype=np.uint8))
            self._keep(self._masks, (case_id, key), value)
            return value
        return self._masks[(case_id, key)]

    def stack(self, case_ids: Sequence[str], channels: Sequence[str] = MODALITIES) -> np.ndarray:
        """``(B, C, D, H, W)`` float32 of these cases: a new array, safe to modify."""
        return np.stack([self.image(c, channels) for c in case_ids]).astype(np.float32, copy=False)

    def batches(self, case_ids: Sequence[str], channels: Sequence[str] = MODALITIES, batch_size: int = 16,
                read_ahead: bool = True) -> Iterator[tuple[list[str], np.ndarray]]:
        """Consecutive batches ``(ids, (B, C, D, H, W) array)`` of at most ``batch_size`` cases.

        A batch ends early where the input shape changes (cases of other sizes cannot be
        stacked). With ``read_ahead``, the next cases (at most two batches) are read in a
        background thread while the caller works on the current batch.
        """
        ids = [str(c) for c in case_ids]
        channels = tuple(channels)
        batch_size = int(batch_size)
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = 2 * batch_size if read_ahead else 0
            futures = [pool.submit(self.image, c, channels) for c in ids[:ahead]]
            pending_ids: list[str] = []
            pending: list[np.ndarray] = []
            for i, case_id in enumerate(ids):
                image = futures[i].result() if i < len(futures) else self.image(case_id, channels)
                if read_ahead:
                    futures[i] = None  # release it once batched
                    if i + ahead < len(ids):
                        futures.append(pool.submit(self.image, ids[i + ahead], channels))
                if pending and (len(pending) == batch_size or image.shape != pending[0].shape):
                    yield pending_ids, np.stack(pending)
                    pending_ids, pending = [], []
                pending_ids.append(case_id)
                pending.append(image)
            if pending:
                yield pending_ids, np.stack(pending)


class CohortDataset(Dataset):
    """A torch ``Dataset`` view of a :class:`CaseStore` over some of a cohort's cases.

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
        Keep loaded cases in memory while their total stays under this many MiB (reading a
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
        self.store = CaseStore(cohort, pad_multiple, masks=self.masks, cache_mb=cache_mb)
        if case_ids is not None:
            self.case_ids = [str(c) for c in case_ids]
        else:
            self.case_ids = [str(c) for c in (cohort.case_ids if split is None else cohort.ids(split))]
        if not self.case_ids:
            raise ValueError(
                f"cohort {getattr(cohort, 'root', '')} has no cases in split {split!r}; "
                "check the manifest's 'split' column"
            )

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        case_id = self.case_ids[index]
        item = {"case_id": case_id, "image": torch.from_numpy(self.store.image(case_id, self.channels))}
        for key in self.masks:
            mask = self.store.mask(case_id, key)
            if mask is None:
                raise ValueError(f"case {case_id!r} has no {key!r} mask")
            item[key] = torch.from_numpy(mask)[None]
        return item
