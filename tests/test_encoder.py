"""The 3D ConvNeXt V2 encoder: shapes, presets, ProFound names, input checks, adapter."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from radiolens.models import PRESETS, ConvNeXtV2Encoder3D, as_encoder
from radiolens.models.convnext import GRN, LayerNorm

# Names and shapes of ProFound's convnextv2_tiny(in_chans=3), read off
# pipiwang/ProFound@demo models/convnextv2.py + models/util.py (LayerNorm, GRN).
PROFOUND_TINY = {
    "downsample_layers.0.0.weight": (96, 3, 4, 4, 4),
    "downsample_layers.0.0.bias": (96,),
    "downsample_layers.0.1.weight": (96,),
    "downsample_layers.0.1.bias": (96,),
    "downsample_layers.1.0.weight": (96,),
    "downsample_layers.1.0.bias": (96,),
    "downsample_layers.1.1.weight": (192, 96, 2, 2, 2),
    "downsample_layers.1.1.bias": (192,),
    "downsample_layers.2.1.weight": (384, 192, 2, 2, 2),
    # ProFound's last "downsampling" has kernel and stride 1
    "downsample_layers.3.0.weight": (384,),
    "downsample_layers.3.1.weight": (768, 384, 1, 1, 1),
    "downsample_layers.3.1.bias": (768,),
    "stages.0.0.dwconv.weight": (96, 1, 7, 7, 7),
    "stages.0.0.dwconv.bias": (96,),
    "stages.0.0.norm.weight": (96,),
    "stages.0.0.norm.bias": (96,),
    "stages.0.0.pwconv1.weight": (384, 96),
    "stages.0.0.pwconv1.bias": (384,),
    "stages.0.0.grn.gamma": (1, 1, 1, 1, 384),
    "stages.0.0.grn.beta": (1, 1, 1, 1, 384),
    "stages.0.0.pwconv2.weight": (96, 384),
    "stages.0.0.pwconv2.bias": (96,),
    "stages.2.8.dwconv.weight": (384, 1, 7, 7, 7),
    "stages.2.8.grn.gamma": (1, 1, 1, 1, 1536),
    "stages.3.2.pwconv2.weight": (768, 3072),
    "norm.weight": (768,),
    "norm.bias": (768,),
}
# 4 downsampling layers x 4 tensors + 18 blocks x 10 tensors + final norm
PROFOUND_TINY_N_KEYS = 16 + 18 * 10 + 2


def test_tiny_state_dict_matches_profound_names_and_shapes():
    sd = ConvNeXtV2Encoder3D.from_preset("tiny", in_chans=3).state_dict()
    for key, shape in PROFOUND_TINY.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    assert len(sd) == PROFOUND_TINY_N_KEYS
    assert "stages.2.9.dwconv.weight" not in sd and "stages.3.3.dwconv.weight" not in sd


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_its_stage_widths_and_depths(name):
    depths, dims = PRESETS[name]
    with torch.device("meta"):  # shapes only: "huge" would allocate 2.7 GB
        enc = ConvNeXtV2Encoder3D.from_preset(name, in_chans=2)
    sd = enc.state_dict()
    assert enc.embed_dim == dims[-1] and enc.dims == dims and enc.in_chans == 2
    assert sd["downsample_layers.0.0.weight"].shape == (dims[0], 2, 4, 4, 4)
    for i in range(4):
        assert sd[f"stages.{i}.0.dwconv.weight"].shape[0] == dims[i]
        assert f"stages.{i}.{depths[i] - 1}.norm.weight" in sd
        assert f"stages.{i}.{depths[i]}.norm.weight" not in sd
    assert sd["norm.weight"].shape == (dims[-1],)


def test_parameter_counts_of_reference_sizes():
    n = {name: sum(p.numel() for p in ConvNeXtV2Encoder3D.from_preset(name).parameters()) for name in ("micro", "tiny")}
    # hand count for micro: stem + downsampling + blocks (343 C + 8 C^2 + 14 C each) + norm
    def block(c):
        return 343 * c + c + 2 * c + 4 * c * c + 4 * c + 8 * c + 4 * c * c + c

    dims, depths = (24, 48, 96, 192), (1, 1, 3, 1)
    expected = 24 * 3 * 64 + 24 + 2 * 24
    expected += (2 * 24 + 48 * 24 * 8 + 48) + (2 * 48 + 96 * 48 * 8 + 96) + (2 * 96 + 192 * 96 + 192)
    expected += sum(d * block(c) for d, c in zip(depths, dims)) + 2 * 192
    assert n["micro"] == expected
    assert n["micro"] * 4 < 3.5e6  # < 3.5 MB in float32
    assert 29.0e6 < n["tiny"] < 29.6e6


@pytest.mark.parametrize("name", ["micro", "atto"])
def test_forward_shapes_on_small_presets(name):
    torch.manual_seed(0)
    enc = ConvNeXtV2Encoder3D.from_preset(name, in_chans=3).eval()
    x = torch.randn(2, 3, 32, 64, 48)
    with torch.inference_mode():
        emb, feats = enc.forward_features(x)
        assert torch.equal(enc(x), emb)
    dims = PRESETS[name][1]
    assert emb.shape == (2, dims[-1])
    assert enc.total_stride == 16 and enc.stage_strides == (4, 8, 16, 16)
    for f, c, s in zip(feats, dims, enc.stage_strides):
        assert f.shape == (2, c, 32 // s, 64 // s, 48 // s)
    # the embedding is LayerNorm(mean of last stage): zero mean, unit variance per sample
    ref = nn.functional.layer_norm(feats[-1].mean((2, 3, 4)), (dims[-1],), eps=1e-6)
    assert torch.allclose(emb, ref, atol=1e-5)


def test_last_stride_two_gives_stride_32():
    enc = ConvNeXtV2Encoder3D(in_chans=1, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), last_stride=2)
    assert enc.total_stride == 32
    assert enc.state_dict()["downsample_layers.3.1.weight"].shape == (64, 32, 2, 2, 2)
    feats = enc.forward_stages(torch.randn(1, 1, 32, 64, 64))
    assert feats[-1].shape == (1, 64, 1, 2, 2)


def test_samples_in_a_batch_are_independent():
    torch.manual_seed(1)
    enc = ConvNeXtV2Encoder3D.from_preset("micro").eval()
    x = torch.randn(3, 3, 16, 32, 32)
    with torch.inference_mode():
        together = enc(x)
        alone = torch.cat([enc(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_grn_and_layernorm_match_their_definitions():
    torch.manual_seed(2)
    grn = GRN(6)
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(2, 3, 4, 5, 6)
    gx = x.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
    nx = gx / (gx.mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(grn(x), grn.gamma * x * nx + grn.beta + x, atol=1e-6)
    # a fresh GRN is the identity
    assert torch.equal(GRN(6)(x), x)

    ln = LayerNorm(3, data_format="channels_first")
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    y = torch.randn(2, 3, 4, 5, 6)
    ref = nn.functional.layer_norm(y.permute(0, 2, 3, 4, 1), (3,), ln.weight, ln.bias, 1e-6).permute(0, 4, 1, 2, 3)
    assert torch.allclose(ln(y), ref, atol=1e-5)


def test_drop_path_is_identity_in_eval_and_random_in_train():
    torch.manual_seed(3)
    enc = ConvNeXtV2Encoder3D(in_chans=1, depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), drop_path_rate=0.5)
    x = torch.randn(4, 1, 16, 32, 32)
    enc.eval()
    assert torch.equal(enc(x), enc(x))
    enc.train()
    assert not torch.allclose(enc(x), enc(x))


def test_seeded_construction_is_reproducible():
    torch.manual_seed(0)
    a = ConvNeXtV2Encoder3D.from_preset("micro").state_dict()
    torch.manual_seed(0)
    b = ConvNeXtV2Encoder3D.from_preset("micro").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- bad input --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def micro():
    return ConvNeXtV2Encoder3D.from_preset("micro", in_chans=3).eval()


def test_wrong_channel_count_is_named(micro):
    with pytest.raises(ValueError, match="expects 3 input channel.*got 1"):
        micro(torch.zeros(1, 1, 32, 32, 32))


def test_volume_smaller_than_stride_is_named(micro):
    with pytest.raises(ValueError, match="smaller than the encoder's total stride 16"):
        micro(torch.zeros(1, 3, 8, 32, 32))


def test_volume_not_multiple_of_stride_is_named(micro):
    with pytest.raises(ValueError, match="not a multiple of the encoder's total stride 16.*pad_to_multiple"):
        micro(torch.zeros(1, 3, 16, 40, 32))


def test_nan_input_is_named(micro):
    x = torch.zeros(1, 3, 16, 32, 32)
    x[0, 1, 3, 4, 5] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/inf"):
        micro(x)


def test_missing_batch_axis_is_named(micro):
    with pytest.raises(ValueError, match="5D input"):
        micro(torch.zeros(3, 16, 32, 32))


def test_unknown_preset_and_bad_config():
    with pytest.raises(ValueError, match="unknown encoder preset 'tinyy'"):
        ConvNeXtV2Encoder3D.from_preset("tinyy")
    with pytest.raises(ValueError, match="4 entries"):
        ConvNeXtV2Encoder3D(depths=(1, 1, 1), dims=(8, 16, 32))


# -- adapter protocol ---------------------------------------------------------------------------
class PlainCNN(nn.Module):
    """A plain 3D CNN returning a feature map (no radiolens attributes)."""

    def __init__(self, in_ch=2, width=5):
        super().__init__()
        self.conv = nn.Conv3d(in_ch, width, 3, stride=2, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class VectorNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 7)

    def forward(self, x):
        return self.fc(x.mean((2, 3, 4))), "extra"


def test_as_encoder_pools_feature_maps_and_passes_vectors():
    torch.manual_seed(4)
    cnn = PlainCNN()
    enc = as_encoder(cnn, in_chans=2)
    x = torch.randn(3, 2, 8, 10, 12)
    out = enc(x)
    assert out.shape == (3, 5) and enc.embed_dim == 5 and enc.in_chans == 2
    assert torch.allclose(out, cnn(x).mean((2, 3, 4)))
    vec = as_encoder(VectorNet(), in_chans=2)
    assert vec(x).shape == (3, 7) and vec.embed_dim == 7
    with pytest.raises(ValueError, match="expects 2 input channel"):
        enc(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(NotImplementedError, match="stages_fn"):
        enc.forward_stages(x)
    # our own encoder passes through unchanged; a non-module is refused
    native = ConvNeXtV2Encoder3D.from_preset("micro")
    assert as_encoder(native) is native
    with pytest.raises(ValueError, match="needs in_chans"):
        as_encoder(PlainCNN())
    with pytest.raises(TypeError):
        as_encoder(lambda x: x, in_chans=1)


def test_weight_card_describes_the_shipped_weights():
    import hashlib

    from radiolens.models import weight_card
    from radiolens.models.profound import SHIPPED_WEIGHTS, WEIGHTS_DIR

    card = weight_card("micro-synthetic")
    assert "radiolens.models.pretrain" in card["command"]
    data = (WEIGHTS_DIR / SHIPPED_WEIGHTS["micro-synthetic"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() in json.dumps(card)
    with pytest.raises(ValueError, match="unknown shipped weights"):
        weight_card("nope")
