"""Encoder -> one embedding vector per case, as a tidy DataFrame, cached on disk.

:func:`extract` runs an encoder over every case of a cohort (inputs from
:func:`radiolens.models.inputs.case_tensor`, the same preprocessing as pre-training and
fine-tuning) under ``torch.inference_mode``, in batches, and returns a DataFrame indexed by
``case_id`` with columns ``emb_000 .. emb_{d-1}``.

Per-stage embeddings
--------------------
``stages`` selects what is pooled:

* ``"last"`` - the encoder's own output: global average pooling of the last stage followed
  by the final LayerNorm (the paper's ``X = E(x)``);
* ``"stage1"`` .. ``"stage4"`` - global average pooling of that stage's feature map, without
  a norm (ConvNeXt V2 has a final norm only after stage 4), so the lens can be run stage by
  stage: *where in the network does fine-tuning act?*

With one stage the columns are ``emb_000..``; with several, each stage's columns carry its
name as a prefix (``stage1_emb_000``, ..., ``last_emb_000``) in one wide frame; split it with
:func:`stage_columns`.

Caching
-------
Results are stored in :class:`radiolens.cache.ArtifactCache` (namespace ``"embeddings"``)
under a key built from the encoder's weights (SHA-256 of every state-dict tensor) and class,
the cohort's fingerprint and case list, the channels, the input normalisation version, the
stages and the padding, with the step's version (:func:`radiolens.cache.step_key`). ``batch_size``, ``device`` and ``progress`` are not part of the key:
they change the numbers by float rounding at most (batched == per-case to about 1e-6).

Any encoder following radiolens's adapter protocol (see :mod:`radiolens.models.profound`)
is accepted; plain modules are wrapped with :func:`radiolens.models.as_encoder`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from radiolens._utils import progress_bar
from radiolens.cache import ArtifactCache, step_key
from radiolens.models.inputs import NORMALISATION_VERSION, CaseStore
from radiolens.models.profound import as_encoder, encoder_hash
from radiolens.naming import MODALITIES

__all__ = ["extract", "stage_columns"]

logger = logging.getLogger(__name__)

_STAGES = ("last", "stage1", "stage2", "stage3", "stage4")


def stage_columns(frame: pd.DataFrame, stage: str) -> pd.DataFrame:
    """The columns of one stage of a multi-stage frame, renamed to ``emb_000..``."""
    prefix = f"{stage}_"
    cols = [c for c in frame.columns if c.startswith(prefix)]
    if not cols:
        raise KeyError(f"no columns for stage {stage!r} (columns look like {list(frame.columns[:3])})")
    return frame[cols].rename(columns=lambda c: c[len(prefix) :])


def _check_stages(stages: Sequence[str], encoder: nn.Module) -> tuple[str, ...]:
    if isinstance(stages, str):
        stages = (stages,)
    stages = tuple(stages)
    if not stages:
        raise ValueError("stages must name at least one of " + ", ".join(_STAGES))
    bad = [s for s in stages if s not in _STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; expected some of {list(_STAGES)}")
    if len(set(stages)) != len(stages):
        raise ValueError(f"stages {stages} repeat a stage")
    has_stages = hasattr(encoder, "forward_stages") and getattr(encoder, "stages_fn", True) is not None
    if any(s != "last" for s in stages) and not has_stages:
        raise ValueError(f"{type(encoder).__name__} has no forward_stages; only stages=('last',) is possible")
    return stages


def _embed_batch(encoder: nn.Module, x: torch.Tensor, stages: tuple[str, ...]) -> list[np.ndarray]:
    """One array (B, d_stage) per requested stage."""
    if stages == ("last",):
        return [encoder(x).float().cpu().numpy()]
    features = encoder.forward_stages(x)
    out = []
    for stage in stages:
        if stage == "last":
            pooled = encoder.pool(features[-1]) if hasattr(encoder, "pool") else encoder(x)
        else:
            pooled = features[int(stage[-1]) - 1].flatten(2).mean(-1)
        out.append(pooled.float().cpu().numpy())
    return out


def extract(
    encoder: nn.Module,
    cohort,
    channels: Sequence[str] = MODALITIES,
    batch_size: int = 16,
    stages: Sequence[str] = ("last",),
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    case_ids: Iterable[str] | None = None,
    use_cache: bool = True,
    store: CaseStore | None = None,
) -> pd.DataFrame:
    """Embed every case of a cohort.

    Parameters
    ----------
    encoder
        A :class:`~radiolens.models.ConvNeXtV2Encoder3D` or any module following the adapter
        protocol (wrapped with :func:`~radiolens.models.as_encoder` if needed). It is put in
        eval mode for the extraction and its mode restored afterwards; it is moved to
        ``device``.
    cohort
        A :class:`radiolens.data.Cohort`.
    channels
        Image keys in the channel order the encoder expects.
    batch_size
        Cases per forward pass (cases of different shapes go to different batches). On a
        2-core CPU with the "micro" encoder, 16 is about 5x faster than one case at a time
        and 8 about 4.7x (``benchmarks/bench_embeddings.py``).
    stages
        ``("last",)`` (default), or any of ``"stage1".."stage4"``, ``"last"`` (see module doc).
    device
        ``"cpu"`` or ``"cuda"``.
    cache_dir
        Cache folder (:func:`radiolens.cache.default_cache_dir` when None).
    progress
        Show a progress bar.
    case_ids
        Embed only these cases (default: all, in manifest order).
    use_cache
        Read and write the cache (False: always compute, store nothing).
    store
        The :class:`~radiolens.models.inputs.CaseStore` to read cases through (a study shares
        one between fine-tuning and embeddings); by default cases are streamed, not kept.

    Returns
    -------
    pandas.DataFrame
        Index ``case_id``; columns ``emb_000..`` (one stage) or ``<stage>_emb_000..``.

    Raises
    ------
    ValueError
        Bad stages/batch size, no cases, an encoder whose channel count does not match
        ``channels``, or a bad case (named by :func:`~radiolens.models.inputs.case_tensor`).
    """
    channels = tuple(channels)
    encoder = as_encoder(encoder, in_chans=len(channels))
    stages = _check_stages(stages, encoder)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    in_chans = getattr(encoder, "in_chans", None)
    if in_chans is not None and in_chans != len(channels):
        raise ValueError(
            f"encoder takes {in_chans} input channel(s) but channels={channels} gives {len(channels)}"
        )
    ids = [str(c) for c in (cohort.case_ids if case_ids is None else case_ids)]
    if not ids:
        raise ValueError("no cases to embed")
    stride = int(getattr(encoder, "total_stride", 1) or 1)

    key = None
    cache = None
    if use_cache:
        key = step_key(
            "embeddings",
            {
                "encoder": encoder_hash(encoder),
                "cohort": cohort.fingerprint,
                "case_ids": ids,
                "channels": channels,
                "normalisation": NORMALISATION_VERSION,
                "stages": stages,
                "pad_multiple": stride,
            },
            length=32,
        )
        # the cohort's cache unless told otherwise: one cache root for the whole study
        cache = ArtifactCache(cache_dir if cache_dir is not None else cohort.cache_dir, "embeddings")

    def compute() -> pd.DataFrame:
        return _embed_all(encoder, cohort, ids, channels, stages, stride, int(batch_size), device, progress, store)

    if cache is None:
        return compute()
    # the one verify-or-recompute path: a corrupt or unreadable entry is recomputed
    return cache.cached_frame(key, compute, meta={"n_cases": len(ids), "stages": list(stages), "channels": list(channels)})


def _embed_all(encoder, cohort, ids, channels, stages, stride, batch_size, device, progress, store) -> pd.DataFrame:
    """Every case's embedding (the uncached body of :func:`extract`)."""
    if store is None:
        store = CaseStore(cohort, pad_multiple=stride, cache_mb=0)
    elif (store.pad_multiple or 1) != stride:
        raise ValueError(f"the case store pads to a multiple of {store.pad_multiple}, the encoder needs {stride}")
    was_training = encoder.training
    encoder.eval().to(device)
    chunks: dict[str, list[np.ndarray]] = {s: [] for s in stages}
    done: list[str] = []
    try:
        with progress_bar(total=len(ids), desc="embeddings", progress=progress) as bar:
            for batch_ids, batch in store.batches(ids, channels, batch_size):
                x = torch.from_numpy(batch).to(device)
                if x.device.type == "cpu":
                    # oneDNN's 3D convolutions run about 1.4x faster on channels-last inputs on CPU
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                with torch.inference_mode():
                    arrays = _embed_batch(encoder, x, stages)
                for stage, arr in zip(stages, arrays):
                    chunks[stage].append(arr)
                done.extend(batch_ids)
                bar.update(len(batch_ids))
    finally:
        encoder.train(was_training)

    frames = []
    for stage in stages:
        values = np.concatenate(chunks[stage]).astype(np.float64)
        prefix = "" if len(stages) == 1 else f"{stage}_"
        columns = [f"{prefix}emb_{i:03d}" for i in range(values.shape[1])]
        frames.append(pd.DataFrame(values, index=pd.Index(done, name="case_id"), columns=columns))
    return pd.concat(frames, axis=1) if len(frames) > 1 else frames[0]
