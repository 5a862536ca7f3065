"""Embedding extraction: batched == per-case, stages, caching, adapters, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from radiolens.embeddings import extract, stage_columns
from radiolens.models import ConvNeXtV2Encoder3D, as_encoder, encoder_hash
from radiolens.models.inputs import case_tensor

from _encoder_helpers import make_tiny_cohort


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("tiny_emb"), n_cases=5, seed=3)


def small_encoder(seed=0, in_chans=3):
    torch.manual_seed(seed)
    enc = ConvNeXtV2Encoder3D(in_chans=in_chans, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    with torch.no_grad():  # non-trivial GRN and norms
        for name, p in enc.named_parameters():
            if "grn" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return enc


class Counter:
    """Counts forward calls of a module."""

    def __init__(self, module):
        self.n = 0
        module.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))


def test_batched_equals_per_case_loop(tiny, tmp_path):
    enc = small_encoder()
    frame = extract(enc, tiny, batch_size=3, cache_dir=tmp_path, progress=False)
    assert list(frame.index) == tiny.case_ids and frame.index.name == "case_id"
    assert list(frame.columns) == [f"emb_{i:03d}" for i in range(32)]
    enc.eval()
    with torch.inference_mode():
        for case_id in tiny.case_ids:
            x = case_tensor(tiny.load_case(case_id))[None]
            np.testing.assert_allclose(frame.loc[case_id].to_numpy(), enc(x)[0].numpy(), atol=1e-5)
    # different cases give different embeddings
    assert frame.std(axis=0).mean() > 1e-3


def test_cache_hit_and_key_follows_the_weights(tiny, tmp_path):
    enc = small_encoder(seed=1)
    calls = Counter(enc.stages[0])
    first = extract(enc, tiny, batch_size=8, cache_dir=tmp_path, progress=False)
    n = calls.n
    assert n == 1  # all five cases in one batch
    second = extract(enc, tiny, batch_size=2, cache_dir=tmp_path, progress=False)
    assert calls.n == n  # served from the cache
    assert second.equals(first)
    assert len(list((tmp_path / "embeddings").glob("embeddings-*.parquet"))) == 1
    h = encoder_hash(enc)
    with torch.no_grad():
        enc.stages[3][0].pwconv2.bias.add_(0.5)
    assert encoder_hash(enc) != h
    third = extract(enc, tiny, batch_size=8, cache_dir=tmp_path, progress=False)
    assert calls.n == n + 1
    assert not np.allclose(third.to_numpy(), first.to_numpy())
    # other channels or stages are other entries
    extract(enc, tiny, channels=("T2W", "ADC", "DWI"), cache_dir=tmp_path, progress=False)
    assert len(list((tmp_path / "embeddings").glob("embeddings-*.parquet"))) == 3
    # use_cache=False computes and stores nothing
    extract(enc, tiny, cache_dir=tmp_path, progress=False, use_cache=False)
    assert calls.n == n + 3
    assert len(list((tmp_path / "embeddings").glob("embeddings-*.parquet"))) == 3


def test_several_stages_and_eval_mode_restored(tiny, tmp_path):
    enc = small_encoder(seed=2).train()
    frame = extract(enc, tiny, stages=("stage1", "stage4", "last"), cache_dir=tmp_path, progress=False)
    assert enc.training
    assert frame.shape == (5, 8 + 32 + 32)
    s4, last = stage_columns(frame, "stage4"), stage_columns(frame, "last")
    assert list(last.columns) == [f"emb_{i:03d}" for i in range(32)]
    # "last" is the final LayerNorm of the pooled stage 4
    ref = nn.functional.layer_norm(torch.tensor(s4.to_numpy()), (32,), enc.norm.weight.double(), enc.norm.bias.double(), 1e-6)
    np.testing.assert_allclose(last.to_numpy(), ref.detach().numpy(), atol=1e-5)
    only_last = extract(enc, tiny, cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(only_last.to_numpy(), last.to_numpy(), atol=1e-6)
    with pytest.raises(KeyError, match="stage2"):
        stage_columns(frame, "stage2")


def test_plain_torch_encoder_through_the_adapter(tiny, tmp_path):
    torch.manual_seed(5)
    cnn = nn.Sequential(nn.Conv3d(1, 6, 3, stride=2), nn.ReLU())
    frame = extract(cnn, tiny, channels=("T2W",), batch_size=2, cache_dir=tmp_path, progress=False)
    assert frame.shape == (5, 6)
    x = case_tensor(tiny.load_case(tiny.case_ids[0]), ("T2W",))[None]
    with torch.inference_mode():
        np.testing.assert_allclose(frame.iloc[0].to_numpy(), cnn(x).mean((2, 3, 4))[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="no forward_stages"):
        extract(as_encoder(cnn, in_chans=1), tiny, channels=("T2W",), stages=("stage2",), progress=False)


def test_bad_input_is_named(tiny, tmp_path):
    enc = small_encoder()
    with pytest.raises(ValueError, match="encoder takes 3 input channel.*gives 1"):
        extract(enc, tiny, channels=("T2W",), cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown stage"):
        extract(enc, tiny, stages=("stage5",), cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract(enc, tiny, batch_size=0, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="no cases"):
        extract(enc, tiny, case_ids=[], cache_dir=tmp_path, progress=False)


def test_builtin_cohort_with_the_micro_encoder(synthetic_cohort, tmp_path):
    torch.manual_seed(0)
    enc = ConvNeXtV2Encoder3D.from_preset("micro")
    ids = synthetic_cohort.case_ids[:6]
    frame = extract(enc, synthetic_cohort, case_ids=ids, batch_size=4, cache_dir=tmp_path, progress=False)
    assert frame.shape == (6, 192) and list(frame.index) == ids
    assert np.isfinite(frame.to_numpy()).all()
    # LayerNorm output: zero mean, unit variance across the 192 dimensions (unit weights)
    np.testing.assert_allclose(frame.mean(axis=1), 0, atol=1e-4)
