"""Fine-tuning: heads as in the paper, frozen vs full, metrics, determinism, checkpoints."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from sklearn.metrics import cohen_kappa_score

from radiolens.data.cohort import Case
from radiolens.finetune import (
    EmptySplitError,
    FineTuneConfig,
    dice_score,
    finetune,
    load_finetuned,
    quadratic_weighted_kappa,
    save_finetuned,
    soft_dice_loss,
)
from radiolens.models.heads import PiradsHead, UPerNetDecoder3D, VolumeHead, adapt_stem_in_chans, encoder_for_task
from radiolens.models.inputs import CaseStore
from radiolens.tasks import TASKS, MissingLabelsError, get_task

SHAPE = (8, 16, 16)


# --------------------------------------------------------------------------------------------
# a tiny in-memory cohort and a tiny encoder following the encoder protocol
# --------------------------------------------------------------------------------------------
class MemoryCohort:
    """Duck-typed stand-in for radiolens.data.Cohort with a learnable signal.

    The PI-RADS group and the gland volume set the size/brightness of a blob; the lesion is
    a bright DWI blob.
    """

    def __init__(self, n=16, seed=0, pirads=True, lesion=True, splits=None, nan_case=None):
        rng = np.random.default_rng(seed)
        ids = [f"c{i:02d}" for i in range(n)]
        splits = splits or (["train"] * (n - 6) + ["val"] * 2 + ["test"] * 4)
        self._cases, rows = {}, []
        z, y, x = np.indices(SHAPE)
        for i, case_id in enumerate(ids):
            group = i % 4
            radius = 2.0 + group + rng.uniform(-0.3, 0.3)
            gland = (((y - 8) / radius) ** 2 + ((x - 8) / radius) ** 2 + ((z - 4) / 2.5) ** 2 <= 1).astype(np.uint8)
            les = np.zeros(SHAPE, np.uint8)
            if i % 3:  # two cases in three have a lesion
                cy, cx = rng.integers(4, 12, size=2)
                les = (((y - cy) / 2) ** 2 + ((x - cx) / 2) ** 2 + ((z - 4) / 1.5) ** 2 <= 1).astype(np.uint8)
            images = {
                m: (rng.normal(1.0, 0.1, SHAPE) + (1.0 + 0.5 * k) * gland).astype(np.float32)
                for k, m in enumerate(("T2W", "DWI", "ADC"))
            }
            images["DWI"] = images["DWI"] + 2.0 * les
            if case_id == nan_case:
                images["T2W"][0, 0, 0] = np.nan
            masks = {"gland": gland}
            if lesion:
                masks["lesion"] = les
            self._cases[case_id] = Case(case_id, images, masks, spacing=(1.0, 1.0, 1.0))
            rows.append({
                "case_id": case_id, "split": splits[i],
                "lesion": f"{case_id}_lesion.nii.gz" if lesion else "",
                "pirads_group": group if pirads else pd.NA,
                "gland_volume_ml": float(gland.sum()) / 1000.0 * 40,
                "lesion_volume_ml": float(les.sum()) / 1000.0,
            })
        self.manifest = pd.DataFrame(rows).set_index("case_id")
        self.manifest["pirads_group"] = self.manifest["pirads_group"].astype("Int64")

    def ids(self, split=None):
        m = self.manifest
        return list(m.index if split is None else m.index[m["split"] == split])

    @property
    def labels(self):
        return self.manifest[["pirads_group", "gland_volume_ml", "lesion_volume_ml", "split"]].copy()

    def load_case(self, case_id, keys=None):
        case = self._cases[case_id]
        keys = set(keys) if keys is not None else None
        images = {k: v for k, v in case.images.items() if keys is None or k in keys}
        masks = {k: v for k, v in case.masks.items() if keys is None or k in keys}
        return Case(case_id, images, masks, spacing=case.spacing)


class TinyEncoder(nn.Module):
    """Four stages (strides 2, 4, 8, 8) with a BatchNorm3d so frozen stats can be checked."""

    def __init__(self, in_chans=3, dims=(4, 8, 8, 8)):
        super().__init__()
        self.in_chans, self.dims, self.embed_dim, self.total_stride = in_chans, dims, dims[-1], 8
        self.stem = nn.Conv3d(in_chans, dims[0], 2, stride=2)
        self.bn = nn.BatchNorm3d(dims[0])
        self.downs = nn.ModuleList([
            nn.Conv3d(dims[0], dims[1], 2, stride=2),
            nn.Conv3d(dims[1], dims[2], (1, 2, 2), stride=(1, 2, 2)),
            nn.Conv3d(dims[2], dims[3], 1),
        ])

    def forward_stages(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        out = [x]
        for down in self.downs:
            x = torch.relu(down(x))
            out.append(x)
        return out

    def forward(self, x):
        return self.forward_stages(x)[-1].mean(dim=(2, 3, 4))


@pytest.fixture(autouse=True)
def _one_thread():
    # these volumes are tiny: one thread is as fast, and immune to the busy-waiting of
    # intra-op threads when the machine is oversubscribed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cohort():
    return MemoryCohort()


def _encoder(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyEncoder(**kw)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


FAST = dict(epochs=2, batch_size=4, progress=False, augment=False)


# --------------------------------------------------------------------------------------------
# heads as in the paper
# --------------------------------------------------------------------------------------------
def test_pirads_head_is_linear_batchnorm_linear():
    head = PiradsHead(32)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[1].num_features) == (32, 256, 256)
    assert (head[3].in_features, head[3].out_features) == (256, 4)
    literal = PiradsHead(32, activation=None)
    assert [type(m) for m in literal] == [nn.Linear, nn.BatchNorm1d, nn.Linear]
    assert head(torch.randn(5, 32)).shape == (5, 4)


def test_volume_head_is_batchnorm_then_linear():
    head = VolumeHead(16)
    assert [type(m) for m in head] == [nn.BatchNorm1d, nn.Linear]
    assert (head[1].in_features, head[1].out_features) == (16, 1)
    assert head(torch.randn(3, 16)).shape == (3,)


def test_upernet_decoder_has_ppm_fpn_and_returns_input_size():
    enc = _encoder()
    dec = UPerNetDecoder3D(enc.dims, channels=8, pool_scales=(1, 2))
    assert len(dec.ppm) == 2 and isinstance(dec.ppm[1][0], nn.AdaptiveAvgPool3d)
    assert len(dec.lateral) == 3 and len(dec.fpn) == 3  # FPN over the stages below the top
    assert dec.fuse[0].in_channels == 4 * 8  # all four pyramid levels fused
    x = torch.randn(2, 3, *SHAPE)
    out = dec(enc.forward_stages(x), out_size=x.shape[2:])
    assert out.shape == (2, 1, *SHAPE)
    # lesions are rare: the classifier starts at a 1% foreground prior
    assert float(torch.sigmoid(dec.classifier.bias)) == pytest.approx(0.01)
    # the top-down path carries the PPM output to the finest level: it changes the output
    stages = enc.forward_stages(x)
    stages2 = list(stages)
    stages2[-1] = stages2[-1] + torch.randn_like(stages2[-1])
    assert not torch.allclose(dec(stages, SHAPE), dec(stages2, SHAPE))


@pytest.mark.parametrize("mode", ["select", "sum"])
def test_stem_adaptation_for_t2w_only(mode):
    enc = _encoder()
    w = enc.stem.weight.detach().clone()
    one = adapt_stem_in_chans(copy.deepcopy(enc), 1, mode=mode)
    assert one.in_chans == 1 and one.stem.in_channels == 1
    expected = w[:, :1] if mode == "select" else w.sum(1, keepdim=True)
    torch.testing.assert_close(one.stem.weight, expected)
    if mode == "select":
        # T2W with empty DWI/ADC through the 3-channel stem == T2W through the 1-channel stem
        t2 = torch.randn(1, 1, *SHAPE)
        full = torch.cat([t2, torch.zeros(1, 2, *SHAPE)], 1)
        torch.testing.assert_close(one.stem(t2), enc.stem(full))


def test_encoder_for_task_copies_and_adapts_only_the_volume_task():
    enc = _encoder()
    assert encoder_for_task(enc, "pirads") is enc
    vol = encoder_for_task(enc, "volume")
    assert vol is not enc and vol.in_chans == 1 and enc.in_chans == 3
    with pytest.raises(ValueError, match="feeds 3 channel"):
        encoder_for_task(_encoder(in_chans=1), "lesion")


# --------------------------------------------------------------------------------------------
# metrics and losses
# --------------------------------------------------------------------------------------------
def test_quadratic_weighted_kappa_matches_sklearn_and_a_hand_value():
    y = [0, 1, 2, 3, 3, 2, 1, 0, 2]
    p = [0, 2, 2, 3, 1, 2, 0, 0, 3]
    assert quadratic_weighted_kappa(y, p) == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
    assert quadratic_weighted_kappa(y, y) == pytest.approx(1.0)
    # hand computed: y=[0,3], p=[3,0]: observed weighted disagreement equals 2x expected -> -1
    assert quadratic_weighted_kappa([0, 3], [3, 0]) == pytest.approx(-1.0)


def test_dice_on_known_masks():
    a = np.zeros((4, 4, 4), np.uint8)
    b = np.zeros((4, 4, 4), np.uint8)
    a[0, :2, :2] = 1  # 4 voxels
    b[0, :2, :] = 1  # 8 voxels, 4 shared
    assert dice_score(a, b) == pytest.approx(2 * 4 / 12)
    assert dice_score(a, a) == 1.0
    assert np.isnan(dice_score(np.zeros(3), np.zeros(3)))


def test_soft_dice_loss_is_zero_for_a_confident_correct_prediction():
    target = torch.zeros(2, 1, 4, 4, 4)
    target[:, :, 1:3, 1:3, 1:3] = 1
    good = (target * 2 - 1) * 50
    assert float(soft_dice_loss(good, target)) < 1e-3
    assert float(soft_dice_loss(-good, target)) > 0.9


# --------------------------------------------------------------------------------------------
# regimes
# --------------------------------------------------------------------------------------------
def test_frozen_keeps_encoder_bit_identical_and_full_changes_it(cohort):
    enc = _encoder()
    enc.train()
    before = _state(enc)
    frozen = finetune(enc, cohort, "pirads", "frozen", **FAST)
    full = finetune(enc, cohort, "pirads", "full", **FAST)
    # the input encoder is untouched (weights, BN statistics, mode)
    assert _same_state(_state(enc), before) and enc.training
    # frozen: weights and BatchNorm running statistics identical
    assert _same_state(_state(frozen.encoder), before)
    # full: weights and statistics moved
    after = _state(full.encoder)
    assert not torch.equal(after["stem.weight"], before["stem.weight"])
    assert not torch.equal(after["bn.running_mean"], before["bn.running_mean"])
    assert frozen.encoder is not enc and full.encoder is not enc
    # what comes back is an ordinary module again (a later full run can train it)
    assert all(p.requires_grad for p in frozen.encoder.parameters())
    # frozen still trained the head
    assert len(frozen.history) == 2 and np.isfinite(frozen.history["train_loss"]).all()


def test_frozen_without_precomputed_features_keeps_batchnorm_statistics(cohort):
    enc = _encoder()
    before = _state(enc)
    res = finetune(enc, cohort, "pirads", "frozen", epochs=2, batch_size=4, progress=False,
                   augment=True, precompute_frozen=False)
    assert res.config["augment"] and not res.config["precomputed_features"]
    assert _same_state(_state(res.encoder), before)  # incl. bn.running_mean / running_var


def test_precomputed_frozen_features_give_the_same_training(cohort):
    kw = dict(epochs=2, batch_size=4, progress=False, augment=False)
    a = finetune(_encoder(), cohort, "volume", "frozen", precompute_frozen=True, **kw)
    b = finetune(_encoder(), cohort, "volume", "frozen", precompute_frozen=False, **kw)
    assert a.config["precomputed_features"] and not b.config["precomputed_features"]
    np.testing.assert_allclose(a.history[["train_loss", "val_loss"]], b.history[["train_loss", "val_loss"]], rtol=1e-4)


class CountingEncoder(TinyEncoder):
    """Counts the cases it encodes."""

    cases = 0

    def forward(self, x):
        type(self).cases += len(x)
        return super().forward(x)


def test_frozen_encoder_runs_once_per_case_and_view_whatever_the_epochs(cohort):
    n_train, n_other = len(cohort.ids("train")), len(cohort.ids("val")) + len(cohort.ids("test"))
    for epochs, views in ((2, 0), (5, 0), (5, 2)):
        torch.manual_seed(0)
        CountingEncoder.cases = 0
        res = finetune(CountingEncoder(), cohort, "pirads", "frozen", epochs=epochs, patience=None, frozen_views=views,
                       batch_size=4, progress=False)
        assert CountingEncoder.cases == n_train * (1 + views) + n_other, (epochs, views)
        assert res.config["frozen_views"] == views and res.config["augment"] == (views > 0)
        assert len(res.history) == epochs
    # the views are augmented: another view, another training loss
    a = finetune(_encoder(), cohort, "pirads", "frozen", epochs=2, patience=None, frozen_views=2, batch_size=4,
                 progress=False)
    b = finetune(_encoder(), cohort, "pirads", "frozen", epochs=2, patience=None, frozen_views=1, batch_size=4,
                 progress=False)
    assert a.history["train_loss"].iloc[0] == b.history["train_loss"].iloc[0]  # view 0 in both
    assert a.history["train_loss"].iloc[1] != b.history["train_loss"].iloc[1]  # view 1 vs view 0 again


def test_frozen_segmentation_trains_only_the_decoder(cohort):
    enc = _encoder()
    before = _state(enc)
    res = finetune(enc, cohort, "lesion", "frozen", head_kwargs={"channels": 8, "pool_scales": (1, 2)}, **FAST)
    assert _same_state(_state(res.encoder), before)
    assert isinstance(res.head, UPerNetDecoder3D)
    assert set(res.metrics) >= {"dice", "n_lesion_cases"}
    labels = cohort.labels.loc[cohort.ids("test")]
    assert res.metrics["n_lesion_cases"] == int((labels.lesion_volume_ml > 0).sum()) == 2
    assert 0.0 <= res.metrics["dice"] <= 1.0


def test_volume_task_uses_t2w_only_and_standardises_with_train_stats(cohort):
    enc = _encoder()
    res = finetune(enc, cohort, "volume", "frozen", **FAST)
    assert res.channels == ("T2W",) and res.encoder.in_chans == 1 and enc.in_chans == 3
    torch.testing.assert_close(res.encoder.stem.weight, enc.stem.weight[:, :1])
    train_vol = cohort.labels.loc[cohort.ids("train"), "gland_volume_ml"].astype(float)
    assert res.target_mean == pytest.approx(train_vol.mean())
    assert res.target_std == pytest.approx(train_vol.std(ddof=0))
    pred = res.predictions
    # mse on the standardised scale and MAE in ml agree with the predictions table
    assert res.metrics["mse"] == pytest.approx(((pred.pred_std - pred.true_std) ** 2).mean(), rel=1e-5)
    assert res.metrics["mae_ml"] == pytest.approx((pred.pred_ml - pred.true_ml).abs().mean(), rel=1e-4)


def test_pirads_metrics_are_those_of_the_predictions(cohort):
    res = finetune(_encoder(), cohort, "pirads", "frozen", **FAST)
    pred = res.predictions
    assert res.metrics["qwk"] == pytest.approx(cohen_kappa_score(pred.true, pred.pred, weights="quadratic", labels=[0, 1, 2, 3])) or np.isnan(res.metrics["qwk"])
    assert res.metrics["accuracy"] == pytest.approx((pred.true == pred.pred).mean())
    np.testing.assert_allclose(pred.filter(like="prob_").sum(axis=1), 1.0, rtol=1e-5)


def test_training_loss_decreases_on_a_learnable_problem(cohort):
    res = finetune(_encoder(), cohort, "volume", "full", epochs=12, lr=3e-3, batch_size=4,
                   progress=False, augment=False, patience=None)
    losses = res.history["train_loss"].to_numpy()
    assert losses[-3:].mean() < 0.6 * losses[:2].mean()


def test_segmentation_learns_a_bright_lesion():
    # the lesion is a bright DWI blob: a working decoder finds it on held-out cases
    cohort = MemoryCohort(n=24, splits=["train"] * 16 + ["val"] * 4 + ["test"] * 4)
    res = finetune(_encoder(dims=(16, 16, 16, 16)), cohort, "lesion", "full", epochs=20, lr=3e-3,
                   batch_size=4, progress=False, augment=False, patience=None,
                   head_kwargs={"channels": 16, "pool_scales": (1, 2)})
    assert res.history["val_metric"].max() > 0.5
    assert res.history["train_loss"].iloc[-1] < 0.6 * res.history["train_loss"].iloc[0]


def test_same_seed_same_history_and_other_seed_differs(cohort):
    kw = dict(epochs=2, batch_size=4, progress=False, augment=True)
    a = finetune(_encoder(), cohort, "pirads", "full", seed=3, **kw)
    b = finetune(_encoder(), cohort, "pirads", "full", seed=3, **kw)
    pd.testing.assert_frame_equal(a.history, b.history, check_exact=True)
    assert _same_state(_state(a.encoder), _state(b.encoder))
    # another seed: other head initialisation, batch order and augmentation; and the
    # global torch RNG is neither consumed nor reseeded by fine-tuning
    enc = _encoder()
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    c = finetune(enc, cohort, "pirads", "full", seed=4, **{**kw, "epochs": 1})
    assert torch.equal(torch.rand(1), expected)
    assert a.history["train_loss"].iloc[0] != c.history["train_loss"].iloc[0]


def test_early_stopping_keeps_the_best_epoch(cohort):
    res = finetune(_encoder(), cohort, "pirads", "full", epochs=6, patience=1, lr=0.5,
                   batch_size=4, progress=False, augment=False)
    hist = res.history
    assert res.best_epoch == int(hist.loc[hist.val_loss.idxmin(), "epoch"])
    assert len(hist) == min(6, res.best_epoch + 1)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_missing_labels_raise_a_specific_error():
    no_labels = MemoryCohort(n=12, pirads=False, lesion=False)
    with pytest.raises(MissingLabelsError, match="pirads_group") as err:
        finetune(_encoder(), no_labels, "pirads", **FAST)
    assert (err.value.task, err.value.column) == ("pirads", "pirads_group")
    with pytest.raises(MissingLabelsError, match="lesion") as err:
        get_task("lesion").check_labels(no_labels)
    assert err.value.task == "lesion"
    get_task("volume").check_labels(no_labels)  # that label is there


def test_empty_training_split_is_a_clear_error():
    no_train = MemoryCohort(n=8, splits=["val"] * 4 + ["test"] * 4)
    with pytest.raises(EmptySplitError, match="'train' split"):
        finetune(_encoder(), no_train, "pirads", **FAST)
    with pytest.raises(EmptySplitError, match="'train' split"):
        finetune(_encoder(), no_train, "volume", **FAST)


def test_nan_input_and_wrong_channels_are_named():
    bad = MemoryCohort(n=12, nan_case="c01")
    with pytest.raises(ValueError, match="c01"):
        finetune(_encoder(), bad, "pirads", **FAST)
    with pytest.raises(ValueError, match="feeds 3 channel"):
        finetune(_encoder(in_chans=1), MemoryCohort(n=12), "pirads", **FAST)
    with pytest.raises(ValueError, match="unknown task"):
        finetune(_encoder(), MemoryCohort(n=12), "grading", **FAST)


# --------------------------------------------------------------------------------------------
# table and checkpoints
# --------------------------------------------------------------------------------------------
def test_table2_rows_are_tidy_and_checkpoints_round_trip(cohort, tmp_path):
    enc = _encoder()
    store = CaseStore(cohort, enc.total_stride, masks=("lesion",))  # one store for every run
    results = {(task, regime): finetune(enc, cohort, task, regime, FineTuneConfig(epochs=1, batch_size=4, augment=False),
                                        progress=False, store=store)
               for task in TASKS for regime in ("frozen", "full")}
    table = pd.concat([res.metrics_table() for res in results.values()], ignore_index=True)
    assert list(table.columns) == ["task", "regime", "metric", "value"]
    assert not table.duplicated(["task", "regime", "metric"]).any()
    assert set(table.task) == {"pirads", "lesion", "volume"} and set(table.regime) == {"frozen", "full"}
    assert set(table.metric) == {"qwk", "accuracy", "dice", "mse", "mae_ml"}
    assert len(table) == 2 * (2 + 1 + 2)
    assert table.value.dtype == float

    for (task, regime), res in results.items():
        path = save_finetuned(res, tmp_path / f"{task}_{regime}.pt")
        card = json.loads(path.with_suffix(".json").read_text())
        assert (card["task"], card["regime"], card["seed"], card["epochs"]) == (task, regime, 0, 1)
        assert set(res.metrics) <= set(card["metrics"])
        loaded = load_finetuned(path, encoder=enc)
        assert _same_state(_state(loaded.encoder), _state(res.encoder))
        assert _same_state(_state(loaded.head), _state(res.head))
        pd.testing.assert_frame_equal(loaded.history, res.history)
        pd.testing.assert_frame_equal(loaded.metrics_table(), res.metrics_table())
        # the state dict is in the encoder's own naming
        raw = torch.load(path, weights_only=True)
        assert set(raw["model"]) == set(res.encoder.state_dict())


def test_config_object_and_keyword_settings_are_the_same_run(cohort):
    a = finetune(_encoder(), cohort, "pirads", "full", FineTuneConfig(epochs=2, batch_size=4, augment=False), progress=False)
    b = finetune(_encoder(), cohort, "pirads", "full", **FAST)
    pd.testing.assert_frame_equal(a.history, b.history, check_exact=True)
    with pytest.raises(TypeError, match="epoch"):
        finetune(_encoder(), cohort, "pirads", "full", epoch=2)  # a typo is an error, not a default
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        finetune(_encoder(), cohort, "pirads", "full", batch_size=1)


def test_convnext_checkpoint_loads_without_a_template(tmp_path):
    from radiolens.models import ConvNeXtV2Encoder3D, load_encoder

    torch.manual_seed(0)
    enc = ConvNeXtV2Encoder3D(in_chans=3, depths=(1, 1, 1, 1), dims=(4, 8, 8, 8))
    big = MemoryCohort(n=12)
    res = finetune(enc, big, "volume", "full", **FAST)
    path = save_finetuned(res, tmp_path / "vol.pt")
    loaded = load_finetuned(path)
    assert isinstance(loaded.encoder, ConvNeXtV2Encoder3D) and loaded.encoder.in_chans == 1
    assert _same_state(_state(loaded.encoder), _state(res.encoder))
    # the file is also a radiolens encoder file
    assert _same_state(_state(load_encoder(path)), _state(res.encoder))
    # a corrupted file is a clear error
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a PyTorch checkpoint radiolens can read"):
        load_finetuned(path)


def test_on_the_built_in_synthetic_cohort(synthetic_cohort):
    from radiolens.models import ConvNeXtV2Encoder3D

    torch.manual_seed(0)
    enc = ConvNeXtV2Encoder3D.from_preset("micro", in_chans=3)
    labels = synthetic_cohort.labels
    res = finetune(enc, synthetic_cohort, "volume", "frozen", epochs=3, batch_size=4, progress=False)
    assert res.config["precomputed_features"] and res.config["frozen_views"] == 4
    n_train = int(labels.loc[synthetic_cohort.ids("train"), "gland_volume_ml"].notna().sum())
    assert res.metrics["n_train"] == n_train and len(res.history) == 3
    assert np.isfinite(res.metrics["mse"]) and res.metrics["mae_ml"] > 0
    assert len(res.predictions) == len(synthetic_cohort.ids("test"))


def test_split_inputs_are_stacked_per_batch_never_copied_whole(cohort):
    store = CaseStore(cohort, pad_multiple=None)
    ids = cohort.ids("train")[:3]
    batch = store.stack(ids, ("T2W", "DWI", "ADC"))
    assert batch.shape == (3, 3, *SHAPE)
    np.testing.assert_array_equal(batch[1], store.image(ids[1]))
    batch += 10  # augmenting a batch must not write into the case store
    assert np.abs(store.image(ids[0]) - batch[0]).min() == pytest.approx(10)
    # a channel subset of a stack already read is cut from it, not read again
    assert np.array_equal(store.image(ids[0], ("DWI",))[0], store.image(ids[0])[1])
