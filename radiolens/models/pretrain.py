"""FCMAE-style masked pre-training: our small, CPU-sized stand-in for ProFound's pre-training.

Method (after ConvNeXt V2's fully convolutional masked autoencoder, as ProFound uses it):

1. Split each normalised input volume (T2W, DWI, ADC; see :mod:`radiolens.models.inputs`)
   into cubes of ``total_stride`` voxels (16), the grid of the encoder's last stage.
2. Hide a random ``mask_ratio`` of the cubes of each volume (exactly that many, as FCMAE
   does) by setting them to zero - the normalised mean.
3. Encode with the dense :class:`~radiolens.models.ConvNeXtV2Encoder3D`. ProFound uses sparse
   convolutions so that hidden cubes never leak into visible ones; with dense convolutions we
   zero the hidden cubes in the input and again after the stem (as ProFound's sparse encoder
   does), which is the usual dense approximation.
4. A light decoder - a 1x1x1 projection, a learned mask token at hidden positions, one
   ConvNeXt V2 block and a 1x1x1 prediction of every voxel of the cube - reconstructs the
   input.
5. The loss is the mean squared error on **hidden cubes only**; with ``norm_pix_loss`` each
   target cube is first standardised by its own mean and standard deviation (ConvNeXt V2's
   default), which rewards texture over brightness.

Everything random (initialisation, case order, masks, flips) draws from generators seeded
by ``seed``, so a run on CPU is reproducible bit for bit.

Command line (produces the shipped weights; see ``radiolens/models/weights/*.json``)::

    python -m radiolens.models.pretrain --cohort-cases 200 --epochs 6 --threads 2 \
        --out radiolens/models/weights/micro-synthetic.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from radiolens._utils import progress_bar
from radiolens.cache import atomic_write_text, hash_file
from radiolens.models.convnext import Block, ConvNeXtV2Encoder3D
from radiolens.models.inputs import NORMALISATION_VERSION, CohortDataset
from radiolens.naming import MODALITIES

__all__ = ["FCMAE3D", "pretrain", "random_patch_mask", "main"]

logger = logging.getLogger(__name__)


def random_patch_mask(
    batch: int, grid: tuple[int, int, int], mask_ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """Random patch masks: ``(batch, *grid)`` floats, 1 = hidden, exactly ``round`` of them.

    Each sample hides ``int(n * mask_ratio)`` of its ``n`` patches (at least one, at most
    ``n - 1``, so there is always something to predict and something to see).
    """
    n = int(np.prod(grid))
    n_hidden = min(max(int(n * mask_ratio), 1), n - 1) if n > 1 else 1
    noise = torch.rand(batch, n, generator=generator)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, n)
    mask.scatter_(1, order[:, :n_hidden], 1.0)
    return mask.reshape(batch, *grid)


def _upsample(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, d, h, w) -> (B, 1, d*f, h*f, w*f) by repetition."""
    for axis in (1, 2, 3):
        mask = mask.repeat_interleave(factor, dim=axis)
    return mask[:, None]


class FCMAE3D(nn.Module):
    """Masked autoencoder around a :class:`ConvNeXtV2Encoder3D` (encoder + light decoder).

    Parameters
    ----------
    encoder
        The encoder to pre-train (its ``total_stride`` is the patch size).
    decoder_dim
        Width of the decoder.
    norm_pix_loss
        Standardise each target patch before the loss.
    mask_patch
        Side of the hidden cubes in voxels (default: the encoder's total stride, as FCMAE).
        A smaller cube (a divisor of the total stride and a multiple of the stem's stride)
        hides parts of a last-stage cell, so that what is left visible of a small structure
        (a lesion) must be encoded to fill in the rest; the loss is then taken on the hidden
        voxels.
    """

    def __init__(self, encoder: ConvNeXtV2Encoder3D, decoder_dim: int = 64, norm_pix_loss: bool = True,
                 mask_patch: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.patch = encoder.total_stride
        self.mask_patch = int(mask_patch or self.patch)
        stem = encoder.stage_strides[0]
        if self.patch % self.mask_patch or self.mask_patch % stem:
            raise ValueError(
                f"mask_patch must divide the total stride {self.patch} and be a multiple of the stem's stride "
                f"{stem}, got {self.mask_patch}"
            )
        self.norm_pix_loss = norm_pix_loss
        self.proj = nn.Conv3d(encoder.dims[-1], decoder_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1, 1))
        self.decoder = nn.Sequential(Block(decoder_dim))
        self.pred = nn.Conv3d(decoder_dim, self.patch**3 * encoder.in_chans, kernel_size=1)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.proj, self.pred):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, L, p^3 * C) with L = number of patches."""
        b, c, d, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, d // p, p, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (d // p) * (h // p) * (w // p), p**3 * c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss on hidden patches and the prediction ``(B, L, p^3 C)``.

        Parameters
        ----------
        x
            ``(B, C, D, H, W)`` normalised volumes.
        mask
            ``(B, D/q, H/q, W/q)`` with ``q = mask_patch``, 1 = hidden.
        """
        enc = self.encoder
        if enc.check_inputs:
            enc.check_input(x)
        q = self.mask_patch
        visible_in = 1.0 - _upsample(mask, q)
        h = enc.downsample_layers[0](x * visible_in)
        h = h * (1.0 - _upsample(mask, q // enc.stage_strides[0]))
        h = enc.stages[0](h)
        for down, stage in zip(list(enc.downsample_layers)[1:], list(enc.stages)[1:]):
            h = stage(down(h))
        z = self.proj(h)
        # the mask token marks last-stage cells that are hidden entirely
        hidden_cells = mask if q == self.patch else -F.max_pool3d(-mask[:, None], self.patch // q)[:, 0]
        m = hidden_cells[:, None].to(z.dtype)
        z = z * (1.0 - m) + self.mask_token * m
        pred = self.pred(self.decoder(z))  # (B, p^3 C, d, h, w)
        pred = pred.flatten(2).transpose(1, 2)  # (B, L, p^3 C), patches in (d, h, w) order
        target = self.patchify(x)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        if q == self.patch:
            per_patch = (pred - target).pow(2).mean(dim=-1)
            flat = mask.flatten(1)
            loss = (per_patch * flat).sum() / flat.sum()
        else:  # hidden voxels only; patchify orders channels fastest
            weight = self.patchify(_upsample(mask, q)).repeat_interleave(x.shape[1], dim=-1)
            loss = ((pred - target).pow(2) * weight).sum() / weight.sum()
        return loss, pred


def _random_crop(x: torch.Tensor, size, generator: torch.Generator) -> torch.Tensor:
    """A random ``size`` box of each volume of a ``(B, C, D, H, W)`` batch (whole axis when
    the volume is not larger)."""
    boxes = []
    for volume in x:
        slices = []
        for length, want in zip(volume.shape[1:], size):
            want = min(int(want), length)
            start = int(torch.randint(0, length - want + 1, (1,), generator=generator))
            slices.append(slice(start, start + want))
        boxes.append(volume[:, slices[0], slices[1], slices[2]])
    return torch.stack(boxes)


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def pretrain(
    cohort,
    preset: str = "micro",
    epochs: int = 10,
    mask_ratio: float = 0.6,
    batch_size: int = 4,
    lr: float = 1.5e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    device: str = "cpu",
    quick: bool = False,
    out: str | Path | None = None,
    channels: tuple[str, ...] = MODALITIES,
    decoder_dim: int = 64,
    norm_pix_loss: bool = True,
    max_cases: int | None = None,
    progress: bool = True,
    encoder: ConvNeXtV2Encoder3D | None = None,
    crop: tuple[int, int, int] | None = None,
    mask_patch: int | None = None,
) -> tuple[ConvNeXtV2Encoder3D, pd.DataFrame]:
    """Pre-train an encoder by masked autoencoding on a cohort's training split.

    Parameters
    ----------
    cohort
        A :class:`radiolens.data.Cohort`; its ``train`` cases are used for training and its
        ``val`` cases (if any) for a validation loss with fixed masks.
    preset
        Encoder size (:data:`radiolens.models.PRESETS`).
    epochs
        Passes over the training cases.
    mask_ratio
        Fraction of patches hidden per volume (FCMAE: 0.6).
    batch_size, lr, weight_decay
        AdamW with a linear warm-up (one epoch, at most 10 % of the steps) and cosine decay.
    seed
        Seeds initialisation, case order, masks and flips.
    device
        ``"cpu"`` or ``"cuda"``.
    quick
        Smoke-test mode for the book and CI: 1 epoch on at most 8 training cases.
    out
        Where to save the encoder (:func:`radiolens.models.save_encoder`, atomic).
    channels
        Input channels, in order.
    decoder_dim, norm_pix_loss, mask_patch
        See :class:`FCMAE3D`.
    max_cases
        Use at most this many training cases (first ones, in manifest order).
    progress
        Show a progress bar.
    encoder
        Start from this encoder (a copy is trained; e.g. ProFound weights from
        :func:`radiolens.models.load_profound`) instead of a fresh ``preset``.
    crop
        Train on a random ``(D, H, W)`` box of each training volume (each side a multiple of
        the encoder's total stride) instead of the whole volume: a step costs less in
        proportion to the voxels, and every epoch sees other parts of each case. Validation
        always uses whole volumes. ``None``: whole volumes.

    Returns
    -------
    encoder : ConvNeXtV2Encoder3D
        The pre-trained encoder, in eval mode, on the CPU.
    history : pandas.DataFrame
        One row per epoch: ``epoch``, ``train_loss``, ``val_loss`` (NaN without val cases),
        ``lr`` (at the epoch's end), ``seconds``.

    Raises
    ------
    ValueError
        The cohort has no training cases, or bad parameters.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if crop is not None and (len(crop) != 3 or min(crop) < 1):
        raise ValueError(f"crop must be three positive sizes (D, H, W), got {crop}")
    if quick:
        epochs, max_cases = 1, min(max_cases or 8, 8)
    train_ids = list(cohort.ids("train"))
    if not train_ids:
        raise ValueError(f"cohort {getattr(cohort, 'root', '')} has an empty training split; pre-training needs 'train' cases")
    if max_cases is not None:
        train_ids = train_ids[: int(max_cases)]
    val_ids = list(cohort.ids("val"))
    if max_cases is not None:  # keep validation proportionate in small runs
        val_ids = val_ids[: max(2, int(max_cases) // 4)]

    torch.manual_seed(seed)
    if encoder is None:
        encoder = ConvNeXtV2Encoder3D.from_preset(preset, in_chans=len(channels))
    else:
        if encoder.in_chans != len(channels):
            raise ValueError(f"encoder takes {encoder.in_chans} channel(s) but channels={channels}")
        encoder = copy.deepcopy(encoder)
        preset = "custom"
    model = FCMAE3D(encoder, decoder_dim=decoder_dim, norm_pix_loss=norm_pix_loss, mask_patch=mask_patch).to(device)
    stride = encoder.total_stride
    if crop is not None and any(int(c) % stride for c in crop):
        raise ValueError(f"crop {tuple(crop)} must be a multiple of the encoder's total stride {stride} on every side")
    train_set = CohortDataset(cohort, channels=channels, pad_multiple=stride, case_ids=train_ids)
    val_set = CohortDataset(cohort, channels=channels, pad_multiple=stride, case_ids=val_ids) if val_ids else None

    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "mask_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "mask_token" in n]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, min(steps_per_epoch, total // 10))
    gen = torch.Generator().manual_seed(seed)

    def batch_of(dataset, ids):
        return torch.stack([dataset[i]["image"] for i in ids]).to(device)

    rows = []
    step = 0
    bar = progress_bar(total=total, desc=f"pre-training {preset}", progress=progress)
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_set), generator=gen).tolist()
        losses = []
        for first in range(0, len(order), batch_size):
            ids = order[first : first + batch_size]
            x = batch_of(train_set, ids)
            if crop is not None:
                x = _random_crop(x, crop, gen)
            # left-right flips (the x axis) as the only augmentation: anatomy is ~symmetric
            flip = torch.rand(len(ids), generator=gen) < 0.5
            if flip.any():
                x = torch.where(flip.to(device)[:, None, None, None, None], x.flip(-1), x)
            grid = tuple(s // model.mask_patch for s in x.shape[2:])
            mask = random_patch_mask(len(ids), grid, mask_ratio, gen).to(device)
            for group in optimiser.param_groups:
                group["lr"] = _lr_at(step, total, warmup, lr)
            loss, _ = model(x, mask)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        val_loss = float("nan")
        if val_set is not None:
            model.eval()
            val_gen = torch.Generator().manual_seed(seed + 1)  # the same masks every epoch
            val_losses = []
            with torch.no_grad():
                for first in range(0, len(val_set), batch_size):
                    ids = list(range(first, min(first + batch_size, len(val_set))))
                    x = batch_of(val_set, ids)
                    grid = tuple(s // model.mask_patch for s in x.shape[2:])
                    mask = random_patch_mask(len(ids), grid, mask_ratio, val_gen).to(device)
                    val_losses.append(float(model(x, mask)[0]) * len(ids))
            val_loss = sum(val_losses) / len(val_set)
        rows.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "lr": optimiser.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start,
            }
        )
        logger.info("pre-training epoch %d/%d: %s", epoch + 1, epochs, rows[-1])
    bar.close()
    history = pd.DataFrame(rows)
    encoder = model.encoder.cpu().eval()
    if out is not None:
        from radiolens.models.profound import save_encoder

        meta = {
            "preset": preset,
            "epochs": epochs,
            "mask_ratio": mask_ratio,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "seed": seed,
            "channels": list(channels),
            "normalisation": NORMALISATION_VERSION,
            "n_train_cases": len(train_set),
            "norm_pix_loss": norm_pix_loss,
            "mask_patch": model.mask_patch,
            "crop": None if crop is None else [int(c) for c in crop],
            "cohort_fingerprint": getattr(cohort, "fingerprint", None),
        }
        save_encoder(encoder, out, meta=meta)
    return encoder, history


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Pre-train on the built-in synthetic cohort (or a cohort folder) and write a weight card."""
    parser = argparse.ArgumentParser(prog="python -m radiolens.models.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", help="cohort folder (default: make the built-in synthetic cohort)")
    parser.add_argument("--cohort-cases", type=int, default=200, help="size of the synthetic cohort")
    parser.add_argument("--cohort-seed", type=int, default=0, help="seed of the synthetic cohort")
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--mask-ratio", type=float, default=0.6)
    parser.add_argument("--no-norm-pix-loss", action="store_true",
                        help="reconstruct the normalised intensities themselves, not each patch standardised")
    parser.add_argument("--mask-patch", type=int, default=None,
                        help="side of the hidden cubes in voxels (default: the total stride, 16)")
    parser.add_argument("--crop", type=int, nargs=3, metavar=("D", "H", "W"), default=None,
                        help="train on random boxes of this size (multiples of 16) instead of whole volumes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", required=True, help="encoder file to write (.pt); a .json card is written next to it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    from radiolens import __version__

    if args.cohort:
        from radiolens.data import load_cohort

        cohort = load_cohort(args.cohort)
        cohort_desc = {"path": str(args.cohort)}
    else:
        from radiolens.data import make_synthetic_cohort
        from radiolens.data.synthetic import GENERATOR_VERSION

        # default out_dir: the radiolens cache, so the book and the pipeline reuse the cohort
        cohort = make_synthetic_cohort(n_cases=args.cohort_cases, seed=args.cohort_seed, n_jobs=args.threads or 1)
        cohort_desc = {"synthetic": True, "generator_version": GENERATOR_VERSION, "n_cases": args.cohort_cases,
                       "seed": args.cohort_seed}
    started, started_cpu = time.perf_counter(), time.process_time()
    settings = {"epochs": args.epochs, "mask_ratio": args.mask_ratio, "batch_size": args.batch_size, "lr": args.lr,
                "seed": args.seed, "norm_pix_loss": not args.no_norm_pix_loss, "mask_patch": args.mask_patch,
                "crop": None if args.crop is None else list(args.crop)}
    encoder, history = pretrain(
        cohort, preset=args.preset, epochs=args.epochs, mask_ratio=args.mask_ratio, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, device=args.device, quick=args.quick, out=args.out,
        norm_pix_loss=not args.no_norm_pix_loss, crop=None if args.crop is None else tuple(args.crop),
        mask_patch=args.mask_patch,
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    out = Path(args.out)
    card = {
        "name": out.stem,
        "file": out.name,
        "sha256": hash_file(out),
        "bytes": out.stat().st_size,
        "command": "python -m radiolens.models.pretrain " + " ".join(sys.argv[1:] if argv is None else argv),
        "radiolens_version": __version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "wall_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "pretraining": settings,
        "encoder": encoder.config,
        "preset": args.preset,
        "n_parameters": sum(p.numel() for p in encoder.parameters()),
        "normalisation": NORMALISATION_VERSION,
        "channels": list(MODALITIES),
        "cohort": {**cohort_desc, "fingerprint": cohort.fingerprint, "n_train": len(cohort.ids("train"))},
        "note": f"radiolens's own {args.preset!r} preset pre-trained by masked autoencoding on "
        + ("radiolens's synthetic prostate MRI cohort" if not args.cohort else "the cohort above")
        + ": a teaching stand-in for ProFound, not a clinical model and not ProFound's weights.",
        "history": history.round(6).to_dict(orient="records"),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(card, indent=1, default=str) + "\n")
    print(history.to_string(index=False))
    print(f"wrote {out} ({card['bytes'] / 1e6:.2f} MB, sha256 {card['sha256'][:12]}...) in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
