"""Loading ProFound checkpoints (FCMAE pre-training and fine-tuned layouts) and radiolens files."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from radiolens.models import (
    ConvNeXtV2Encoder3D,
    load_encoder,
    load_pretrained,
    load_profound,
    remap_profound_state_dict,
    save_encoder,
)
from radiolens.models import profound as profound_module
from radiolens.models.convnext import _DepthwiseConv3dCPU
from radiolens.models.profound import _kernel_to_weight


# -- MinkowskiEngine conventions, written independently of radiolens's reshaping -----------
# A MinkowskiEngine kernel holds one (C_in, C_out) matrix per kernel tap; the tap index
# enumerates offsets with the FIRST spatial axis varying fastest (this is what ProFound's
# remap_checkpoint_keys encodes). A convolution in that layout is a sum over taps of shifted
# inputs times the tap's matrix.
def taps(k):
    for t in range(k**3):
        yield t, (t % k, (t // k) % k, t // (k * k))


def minkowski_conv(x, kernel, bias, k, stride, pad):
    """Reference conv with a (k^3, C_in, C_out) kernel (or (k^3, C) depthwise)."""
    xp = F.pad(x, (pad,) * 6)
    d, h, w = ((s + 2 * pad - k) // stride + 1 for s in x.shape[2:])
    out = 0
    for t, (a, b, c) in taps(k):
        patch = xp[:, :, a : a + stride * d : stride, b : b + stride * h : stride, c : c + stride * w : stride]
        if kernel.ndim == 3:
            out = out + torch.einsum("bidhw,io->bodhw", patch, kernel[t])
        else:
            out = out + patch * kernel[t][None, :, None, None, None]
    return out + bias.reshape(1, -1, 1, 1, 1)


def test_kernel_reshape_gives_the_same_convolution():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 8, 10, dtype=torch.float64)
    # regular k=2 s=2 downsampling conv
    kernel = torch.randn(8, 3, 5, dtype=torch.float64)
    bias = torch.randn(1, 5, dtype=torch.float64)
    dense = _kernel_to_weight("downsample_layers.1.1.weight", kernel)
    assert dense.shape == (5, 3, 2, 2, 2)
    ref = minkowski_conv(x, kernel, bias, k=2, stride=2, pad=0)
    assert torch.allclose(F.conv3d(x, dense, bias.reshape(-1), stride=2), ref, atol=1e-10)
    # depthwise k=7 'same' conv
    kernel = torch.randn(343, 3, dtype=torch.float64)
    dense = _kernel_to_weight("stages.0.0.dwconv.weight", kernel)
    assert dense.shape == (3, 1, 7, 7, 7)
    ref = minkowski_conv(x, kernel, torch.zeros(3, dtype=torch.float64), k=7, stride=1, pad=3)
    assert torch.allclose(F.conv3d(x, dense, padding=3, groups=3), ref, atol=1e-10)
    # 1x1x1 conv stored as a (C_in, C_out) matrix
    kernel = torch.randn(3, 4, dtype=torch.float64)
    dense = _kernel_to_weight("downsample_layers.3.1.weight", kernel)
    assert torch.allclose(F.conv3d(x, dense), torch.einsum("bidhw,io->bodhw", x, kernel), atol=1e-10)


def test_fast_depthwise_backward_matches_autograd():
    torch.manual_seed(0)
    # exact gradients on a small kernel (gradcheck is cubic in the kernel size)
    x = torch.randn(1, 2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_DepthwiseConv3dCPU.apply, (x, w, b))
    # and the encoder's 7x7x7 case against PyTorch's own backward
    x = torch.randn(2, 3, 4, 6, 5, requires_grad=True)
    w = torch.randn(3, 1, 7, 7, 7, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    g = torch.randn(2, 3, 4, 6, 5)
    ours = torch.autograd.grad(_DepthwiseConv3dCPU.apply(x, w, b), (x, w, b), g)
    theirs = torch.autograd.grad(F.conv3d(x, w, b, padding=3, groups=3), (x, w, b), g)
    for a, c in zip(ours, theirs):
        assert torch.allclose(a, c, atol=1e-4)


# -- checkpoint layouts ----------------------------------------------------------------------
def randomised(preset="micro", seed=0, in_chans=3):
    """An encoder whose every parameter (GRN and norms included) is random."""
    torch.manual_seed(seed)
    enc = ConvNeXtV2Encoder3D.from_preset(preset, in_chans=in_chans)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0, 0.05)
    return enc.eval()


def to_minkowski(weight):
    """Dense Conv3d weight -> MinkowskiEngine kernel (tap t = a + k*b + k*k*c)."""
    c_out, c_in, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    if k == 1:
        return weight[:, :, 0, 0, 0].T.clone()
    depthwise = c_in == 1 and c_out > 1
    kernel = torch.empty((k**3, c_out) if depthwise else (k**3, c_in, c_out))
    for t, (a, b, c) in taps(k):
        kernel[t] = weight[:, 0, a, b, c] if depthwise else weight[:, :, a, b, c].T
    return kernel


def fcmae_state_dict(enc):
    """What ProFound's FCMAE (sparse encoder + decoder) state dict looks like for ``enc``."""
    sd = {}
    for key, value in enc.state_dict().items():
        parts = key.split(".")
        if key.startswith("norm."):
            continue  # the sparse pre-training encoder has no final norm
        if key.startswith("downsample_layers.0."):  # dense stem
            sd["encoder." + key] = value.clone()
        elif key.startswith("downsample_layers."):
            if parts[2] == "0":  # MinkowskiLayerNorm
                sd[f"encoder.{'.'.join(parts[:3])}.ln.{parts[3]}"] = value.clone()
            elif parts[3] == "weight":
                sd[f"encoder.{'.'.join(parts[:3])}.kernel"] = to_minkowski(value)
            else:
                sd["encoder." + key] = value[None].clone()  # (1, C) bias
        else:  # stages.i.j.<layer>.<param>
            layer, param = parts[3], parts[4]
            prefix = "encoder." + ".".join(parts[:4])
            if layer == "dwconv":
                sd[prefix + (".kernel" if param == "weight" else ".bias")] = (
                    to_minkowski(value) if param == "weight" else value[None].clone()
                )
            elif layer == "norm":
                sd[f"{prefix}.ln.{param}"] = value.clone()
            elif layer in ("pwconv1", "pwconv2"):
                sd[f"{prefix}.linear.{param}"] = value.clone()
            elif layer == "grn":
                sd[f"{prefix}.{param}"] = value.reshape(1, -1).clone()
    d = enc.dims[-1]
    sd["proj.weight"] = torch.randn(16, d, 1, 1, 1)
    sd["proj.bias"] = torch.randn(16)
    sd["mask_token"] = torch.randn(1, 16, 1, 1, 1)
    sd["decoder.0.dwconv.weight"] = torch.randn(16, 1, 7, 7, 7)
    sd["pred.weight"] = torch.randn(16**3 * 3, 16, 1, 1, 1)
    return sd


def test_fcmae_pretraining_checkpoint_loads_exactly(tmp_path):
    ref = randomised()
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": fcmae_state_dict(ref), "epoch": 799, "args": argparse.Namespace(model="fcmae")}, path)
    enc, report = load_profound(path, in_chans=3, preset="micro")
    assert report.layout == "fcmae-pretrain"
    assert report.missing == ["norm.weight", "norm.bias"]
    assert report.unexpected == []
    assert set(report.dropped) == {"proj.weight", "proj.bias", "mask_token", "decoder.0.dwconv.weight", "pred.weight"}
    assert report.remapped["encoder.stages.0.0.dwconv.kernel"] == "stages.0.0.dwconv.weight"
    assert report.remapped["encoder.stages.1.0.pwconv1.linear.weight"] == "stages.1.0.pwconv1.weight"
    assert report.remapped["encoder.downsample_layers.2.0.ln.bias"] == "downsample_layers.2.0.bias"
    got, want = enc.state_dict(), ref.state_dict()
    for key in want:
        if not key.startswith("norm."):
            assert torch.equal(got[key], want[key]), key
    # identical stage features (the final norm is not part of pre-training)
    x = torch.randn(1, 3, 16, 32, 32)
    with torch.inference_mode():
        for a, b in zip(enc.forward_stages(x), ref.forward_stages(x)):
            assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="strict loading .* failed"):
        load_profound(path, in_chans=3, preset="micro", strict=True)


def test_profound_tiny_pretraining_names_all_map():
    # the full ProFound-size key set, in memory (no 120 MB file)
    with torch.device("meta"):
        ref = ConvNeXtV2Encoder3D.from_preset("tiny")
    fake = {}
    for key, value in ref.state_dict().items():
        fake[key] = torch.zeros(value.shape)
    sd = fcmae_state_dict(_Holder(fake, ref))
    remapped, report = remap_profound_state_dict(sd)
    own = ref.state_dict()
    assert set(own) - set(remapped) == {"norm.weight", "norm.bias"}
    assert set(remapped) <= set(own)
    assert all(remapped[k].shape == own[k].shape for k in remapped)


class _Holder:
    """Duck-typed stand-in offering state_dict() and dims for fcmae_state_dict."""

    def __init__(self, sd, enc):
        self._sd, self.dims = sd, enc.dims

    def state_dict(self):
        return self._sd


def test_finetuned_checkpoint_with_prefixes_loads_exactly(tmp_path):
    ref = randomised(seed=1)
    sd = {"module.encoder." + k: v for k, v in ref.state_dict().items()}
    sd["module.head.0.weight"] = torch.randn(256, 192)
    sd["module.head.1.running_mean"] = torch.zeros(256)
    path = tmp_path / "best.pth.tar"
    torch.save({"model": sd, "optimizer": {"state": {}}, "epoch": 3, "args": argparse.Namespace(lr=1e-3)}, path)
    enc, report = load_profound(path, preset=None)  # size inferred: micro
    assert report.ok and report.layout == "prefixed"
    assert report.dropped == ["module.head.0.weight", "module.head.1.running_mean"]
    x = torch.randn(2, 3, 16, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(enc(x), ref(x), atol=1e-6)


def test_state_dict_wrapper_and_plain_names(tmp_path):
    ref = randomised(seed=2)
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": ref.state_dict()}, path)
    enc, report = load_profound(path, preset="micro", strict=True)
    assert report.ok and report.layout == "plain" and not report.remapped
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_other_architecture_is_refused(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3), torch.nn.BatchNorm3d(8), torch.nn.Linear(8, 2))
    path = tmp_path / "resnet.pt"
    torch.save({"model": net.state_dict()}, path)
    with pytest.raises(ValueError, match="not a ConvNeXt V2 .*encoder checkpoint"):
        load_profound(path)


def test_other_size_is_named(tmp_path):
    path = tmp_path / "micro.pt"
    torch.save(randomised().state_dict(), path)
    with pytest.raises(ValueError, match="another size: it looks like preset 'micro'.*pass preset='micro'"):
        load_profound(path, preset="atto")
    with pytest.raises(ValueError, match="another size: it looks like preset 'micro'"):
        load_profound(path, preset="tiny")
    # a width that no preset has: the shape check names the parameter
    odd = ConvNeXtV2Encoder3D(in_chans=3, depths=(1, 1, 3, 1), dims=(24, 48, 96, 200))
    torch.save(odd.state_dict(), tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="downsample_layers.3.1.weight has shape .* another architecture or size"):
        load_profound(tmp_path / "odd.pt", preset="micro")


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": randomised().state_dict(), "extra": _Holder({}, randomised())}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_profound(path, preset="micro")
    with pytest.raises(FileNotFoundError):
        load_profound(tmp_path / "absent.pt")


def test_fewer_input_channels_keep_the_chosen_stem_channels(tmp_path):
    ref = randomised(seed=3)
    path = tmp_path / "ft.pt"
    torch.save({"model": ref.state_dict()}, path)
    with pytest.raises(ValueError, match="stem_channels"):
        load_profound(path, in_chans=1, preset="micro")
    t2w_only, _ = load_profound(path, in_chans=1, preset="micro", stem_channels=(0,))
    x = torch.randn(1, 1, 16, 32, 32)
    padded = torch.cat([x, torch.zeros_like(x), torch.zeros_like(x)], dim=1)
    with torch.inference_mode():
        assert torch.allclose(t2w_only(x), ref(padded), atol=1e-5)


def test_save_and_load_encoder_round_trip(tmp_path):
    ref = randomised(seed=4)
    digest = save_encoder(ref, tmp_path / "enc.pt", meta={"note": "test"})
    assert len(digest) == 64
    enc = load_encoder(tmp_path / "enc.pt")
    assert enc.config == ref.config
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in ref.state_dict().items())
    # our files are also readable as ProFound-style checkpoints
    enc2, report = load_profound(tmp_path / "enc.pt", preset=None, strict=True)
    assert report.ok
    with pytest.raises(ValueError, match="not a radiolens encoder file"):
        torch.save({"model": ref.state_dict()}, tmp_path / "bare.pt")
        load_encoder(tmp_path / "bare.pt")


def test_load_pretrained_checks_the_sha256(tmp_path, monkeypatch):
    ref = randomised(seed=5)
    digest = save_encoder(ref, tmp_path / "micro-synthetic.pt")
    (tmp_path / "micro-synthetic.json").write_text(json.dumps({"sha256": digest}))
    monkeypatch.setattr(profound_module, "WEIGHTS_DIR", tmp_path)
    enc = load_pretrained("micro-synthetic")
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in ref.state_dict().items())
    (tmp_path / "micro-synthetic.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ValueError, match="corrupt: sha256"):
        load_pretrained("micro-synthetic")
    with pytest.raises(ValueError, match="unknown shipped weights"):
        load_pretrained("giant-real")


def test_shipped_weights_load_and_match_their_card():
    card_path = profound_module.WEIGHTS_DIR / "micro-synthetic.json"
    if not card_path.exists():
        pytest.skip("shipped weights not built yet")
    card = json.loads(card_path.read_text())
    assert (profound_module.WEIGHTS_DIR / card["file"]).stat().st_size < 5e6
    assert card["command"].startswith("python -m radiolens.models.pretrain")
    assert card["history"][-1]["val_loss"] < card["history"][0]["val_loss"]
    enc = load_pretrained("micro-synthetic")
    assert enc.config == card["encoder"] and enc.embed_dim == 192
    # pre-training moved the weights away from their initial values (GRN starts at zero)
    assert float(enc.stages[0][0].grn.gamma.detach().abs().sum()) > 0
    t2w = load_pretrained("micro-synthetic", in_chans=1, stem_channels=(0,))
    assert t2w.in_chans == 1
