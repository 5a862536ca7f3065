"""Network inputs (normalisation, padding, dataset) and FCMAE-style masked pre-training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radiolens.data import Case
from radiolens.models import ConvNeXtV2Encoder3D, load_encoder
from radiolens.models.inputs import CohortDataset, case_tensor, normalise_channel, pad_to_multiple
from radiolens.models.pretrain import FCMAE3D, main, pretrain, random_patch_mask

from _encoder_helpers import make_tiny_cohort


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("tiny"), n_cases=6)


def fake_case(shape=(16, 32, 32), **overrides):
    rng = np.random.default_rng(0)
    images = {k: rng.uniform(1, 100, shape).astype(np.float32) for k in ("T2W", "DWI", "ADC")}
    images.update(overrides)
    return Case(case_id="c1", images=images, masks={}, spacing=(1.0, 1.0, 2.0))


# -- inputs ------------------------------------------------------------------------------------
def test_normalisation_is_zscore_over_nonzero_voxels():
    vol = np.array([0, 0, 2, 4, 6, 8], dtype=np.float32).reshape(1, 2, 3)
    out = normalise_channel(vol)
    nz = vol != 0
    assert np.all(out[~nz] == 0)
    assert np.isclose(out[nz].mean(), 0, atol=1e-6) and np.isclose(out[nz].std(), 1, atol=1e-6)
    # invariant to the scanner's scale and offset of the non-zero voxels
    assert np.allclose(normalise_channel(np.where(nz, 3 * vol + 7, 0)), out, atol=1e-5)
    assert np.all(normalise_channel(np.full((2, 2, 2), 5.0)) == 0)


def test_case_tensor_stacks_channels_in_order():
    case = fake_case()
    t = case_tensor(case, ("ADC", "T2W"))
    assert t.shape == (2, 16, 32, 32) and t.dtype == torch.float32
    assert torch.allclose(t[0], torch.from_numpy(normalise_channel(case.images["ADC"])))
    assert case_tensor(case, ("T2W",)).shape == (1, 16, 32, 32)


def test_case_tensor_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"case 'c1' has no \['DWI', 'ADC'\] image"):
        case_tensor(Case("c1", {"T2W": np.ones((4, 4, 4), np.float32)}, {}, (1, 1, 1)))
    bad = fake_case()
    bad.images["DWI"][3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="case 'c1', channel DWI: 1 NaN/inf"):
        case_tensor(bad)
    with pytest.raises(ValueError, match="channel ADC has shape"):
        case_tensor(fake_case(ADC=np.ones((8, 32, 32), np.float32)))
    with pytest.raises(ValueError, match="unknown channel"):
        case_tensor(fake_case(), ("T1",))
    with pytest.raises(ValueError, match="at least one channel"):
        case_tensor(fake_case(), ())


def test_pad_to_multiple_centres_the_volume():
    x = torch.ones(2, 10, 33, 32)
    y = pad_to_multiple(x, 16)
    assert y.shape == (2, 16, 48, 32)
    assert y[:, 3:13, 7:40].min() == 1 and y.sum() == x.sum()
    arr = np.ones((1, 10, 33, 32), np.uint8)
    assert pad_to_multiple(arr, 16).shape == (1, 16, 48, 32)
    assert pad_to_multiple(x[:, :, :32], 16).shape == (2, 16, 32, 32)
    same = torch.ones(1, 16, 16, 16)
    assert pad_to_multiple(same, 16) is same
    assert case_tensor(fake_case(shape=(10, 20, 30)), pad_multiple=16).shape == (3, 16, 32, 32)


def test_dataset_items_cache_and_errors(tiny):
    ds = CohortDataset(tiny, split="train", masks=("gland",))
    assert len(ds) == 4 and ds.case_ids == tiny.ids("train")
    item = ds[1]
    assert item["case_id"] == tiny.ids("train")[1]
    assert item["image"].shape == (3, 16, 32, 32) and item["gland"].shape == (1, 16, 32, 32)
    assert item["gland"].dtype == torch.uint8 and int(item["gland"].sum()) > 0
    assert ds[1]["image"].data_ptr() == item["image"].data_ptr()  # kept in memory, not read again
    assert CohortDataset(tiny, split="train", cache_mb=0)[1] is not CohortDataset(tiny, split="train", cache_mb=0)[1]
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 16, 32, 32)
    with pytest.raises(ValueError, match="has no cases in split None"):
        CohortDataset(tiny, case_ids=[])


# -- masking and the FCMAE model ----------------------------------------------------------------
def test_random_patch_mask_hides_the_requested_share():
    gen = torch.Generator().manual_seed(0)
    mask = random_patch_mask(5, (2, 6, 6), 0.6, gen)
    assert mask.shape == (5, 2, 6, 6)
    assert torch.all(mask.flatten(1).sum(1) == int(72 * 0.6))
    assert not torch.equal(mask[0], mask[1])  # independent per sample
    again = random_patch_mask(5, (2, 6, 6), 0.6, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    assert random_patch_mask(1, (1, 1, 2), 0.99, gen).sum() == 1  # never hides everything


def test_loss_counts_hidden_patches_only():
    torch.manual_seed(0)
    enc = ConvNeXtV2Encoder3D(in_chans=1, depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))
    model = FCMAE3D(enc, decoder_dim=8, norm_pix_loss=False)
    x = torch.randn(1, 1, 16, 16, 32)
    mask = torch.tensor([[[[1.0, 0.0]]]])  # hide the first of two patches
    loss, pred = model(x, mask)
    target = model.patchify(x)
    assert pred.shape == target.shape == (1, 2, 16**3)
    assert torch.allclose(loss, (pred[0, 0] - target[0, 0]).pow(2).mean(), atol=1e-6)
    # what is hidden cannot be seen: changing the hidden patch does not change the prediction
    x2 = x.clone()
    x2[..., :16] = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        _, pred2 = model(x2, mask)
    assert torch.allclose(pred, pred2, atol=1e-6)


# -- pre-training ----------------------------------------------------------------------------
TINY_RUN = dict(epochs=5, batch_size=2, lr=3e-3, seed=0, decoder_dim=16, progress=False)


def small_encoder():
    torch.manual_seed(0)
    return ConvNeXtV2Encoder3D(in_chans=3, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "enc.pt"
    start = small_encoder()
    encoder, history = pretrain(tiny, out=out, encoder=start, **TINY_RUN)
    # the encoder passed in is copied, not trained in place
    assert all(torch.equal(v, small_encoder().state_dict()[k]) for k, v in start.state_dict().items())
    return encoder, history, out


def test_pretraining_loss_decreases(run):
    _, history, _ = run
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "lr", "seconds"]
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5]
    # per-patch normalised targets start at loss ~1 (predicting the patch mean)
    assert history["train_loss"].iloc[0] > 0.98
    assert history["train_loss"].iloc[-2:].mean() < 0.98 * history["train_loss"].iloc[0]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0] - 0.01
    assert history["val_loss"].notna().all()


def test_pretraining_is_deterministic_and_saves_the_encoder(run, tiny):
    encoder, history, out = run
    saved = load_encoder(out)
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in encoder.state_dict().items())
    short = {**TINY_RUN, "epochs": 1, "max_cases": 2}
    a, ha = pretrain(tiny, encoder=small_encoder(), **short)
    b, hb = pretrain(tiny, encoder=small_encoder(), **short)
    assert np.array_equal(ha["train_loss"].to_numpy(), hb["train_loss"].to_numpy())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    c, _ = pretrain(tiny, encoder=small_encoder(), **{**short, "seed": 1})
    assert not torch.equal(c.stages[0][0].dwconv.weight, a.stages[0][0].dwconv.weight)


def test_pretraining_bad_input(tiny, tmp_path):
    test_only = make_tiny_cohort(tmp_path / "c", n_cases=2, splits=["test", "test"])
    with pytest.raises(ValueError, match="has no cases in split 'train'"):
        CohortDataset(test_only, split="train")
    with pytest.raises(ValueError, match="empty training split"):
        pretrain(test_only, progress=False)
    with pytest.raises(ValueError, match="mask_ratio"):
        pretrain(tiny, mask_ratio=1.0, progress=False)


def test_command_line_writes_weights_and_card(tiny, tmp_path):
    import json

    out = tmp_path / "w.pt"
    assert main(["--cohort", str(tiny.root), "--quick", "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    from radiolens.cache import hash_file

    assert card["sha256"] == hash_file(out)
    assert card["command"] == f"python -m radiolens.models.pretrain --cohort {tiny.root} --quick --out {out}"
    assert len(card["history"]) == 1 and card["encoder"]["dims"] == [24, 48, 96, 192]
    assert load_encoder(out).embed_dim == 192
