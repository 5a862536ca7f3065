"""Data augmentation for 3D mpMRI: flips, a small affine, intensity changes.

The *sampling* of random parameters is kept apart from their *application*:

>>> rng = np.random.default_rng(0)
>>> params = sample_params(rng)                  # all randomness happens here
>>> image2, masks2 = apply(params, image, masks)  # a pure, deterministic function

so an augmentation can be logged, replayed, shown in the book, or applied identically to an
image and its masks. Noise is part of the parameters too (as a seed), which makes ``apply``
deterministic.

Conventions: an image is ``(C, D, H, W)`` (channels, z, y, x), a mask ``(D, H, W)``. The
affine rotates in the axial (y, x) plane only and scales isotropically: prostate MRI is
acquired with thick axial slices (about 2x the in-plane spacing after resampling to
0.5 x 0.5 x 1.0 mm), so out-of-plane rotations would mostly interpolate between slices.
Images are resampled trilinearly, masks by nearest neighbour (they stay binary / integer).
Flips default to left-right only: the prostate is roughly symmetric left-right, while flipping
anterior-posterior or head-feet produces anatomy that never occurs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "AugmentParams", "Augmenter", "apply", "sample_params"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation parameters.

    Parameters
    ----------
    p_flip
        Probability of flipping each axis ``(z, y, x)``.
    max_rotation_deg
        In-plane rotation angle drawn uniformly from ``[-max, max]`` degrees.
    scale_range
        Isotropic zoom factor drawn log-uniformly from this range.
    max_translation
        Shift along ``(z, y, x)`` as a fraction of the axis length, uniform in ``[-max, max]``.
    gamma_range
        Gamma exponent (applied per channel to intensities rescaled to [0, 1]), log-uniform.
    intensity_scale_range, intensity_shift_range
        Multiplicative and additive change of the (standardised) intensities, uniform.
    max_noise_std
        Standard deviation of additive Gaussian noise, uniform in ``[0, max]``.
    p_affine, p_intensity
        Probability that the affine / intensity part is applied at all.
    """

    p_flip: tuple[float, float, float] = (0.0, 0.0, 0.5)
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_translation: tuple[float, float, float] = (0.03, 0.05, 0.05)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    intensity_scale_range: tuple[float, float] = (0.9, 1.1)
    intensity_shift_range: tuple[float, float] = (-0.1, 0.1)
    max_noise_std: float = 0.05
    p_affine: float = 0.8
    p_intensity: float = 0.8


@dataclass(frozen=True)
class AugmentParams:
    """One concrete augmentation; :func:`apply` is a pure function of these values.

    ``flip`` is per axis ``(z, y, x)``; ``rotation_deg`` is in the axial plane; ``scale`` is an
    isotropic zoom (> 1 enlarges the content); ``translation`` is a fraction of each axis
    length ``(z, y, x)``; ``noise_seed`` seeds the Gaussian noise so it can be replayed.
    """

    flip: tuple[bool, bool, bool] = (False, False, False)
    rotation_deg: float = 0.0
    scale: float = 1.0
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gamma: float = 1.0
    intensity_scale: float = 1.0
    intensity_shift: float = 0.0
    noise_std: float = 0.0
    noise_seed: int = 0

    @property
    def has_affine(self) -> bool:
        """Whether the spatial transform differs from the identity."""
        return self.rotation_deg != 0.0 or self.scale != 1.0 or any(t != 0.0 for t in self.translation)

    @property
    def has_intensity(self) -> bool:
        """Whether the intensity transform differs from the identity."""
        return (
            self.gamma != 1.0
            or self.intensity_scale != 1.0
            or self.intensity_shift != 0.0
            or self.noise_std != 0.0
        )

    def to_dict(self) -> dict:
        """Plain-JSON form (for logs)."""
        return asdict(self)


def sample_params(rng: np.random.Generator, config: AugmentConfig | None = None) -> AugmentParams:
    """Draw one set of augmentation parameters.

    Parameters
    ----------
    rng
        The only source of randomness; the same generator state gives the same parameters.
    config
        Parameter ranges; the defaults of :class:`AugmentConfig` when omitted.

    Returns
    -------
    AugmentParams
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    cfg = config or AugmentConfig()
    # Draw every number in a fixed order, whether or not it is used, so that changing one
    # probability does not reshuffle the other parameters.
    flip_u = rng.random(3)
    affine_u = rng.random()
    rot = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
    log_scale = rng.uniform(math.log(cfg.scale_range[0]), math.log(cfg.scale_range[1]))
    trans = rng.uniform(-1.0, 1.0, size=3) * np.asarray(cfg.max_translation, dtype=float)
    int_u = rng.random()
    log_gamma = rng.uniform(math.log(cfg.gamma_range[0]), math.log(cfg.gamma_range[1]))
    i_scale = rng.uniform(*cfg.intensity_scale_range)
    i_shift = rng.uniform(*cfg.intensity_shift_range)
    noise_std = rng.uniform(0.0, cfg.max_noise_std)
    noise_seed = int(rng.integers(0, 2**31 - 1))

    flip = tuple(bool(u < p) for u, p in zip(flip_u, cfg.p_flip))
    params = {"flip": flip, "noise_seed": noise_seed}
    if affine_u < cfg.p_affine:
        params.update(
            rotation_deg=float(rot),
            scale=float(math.exp(log_scale)),
            translation=tuple(float(t) for t in trans),
        )
    if int_u < cfg.p_intensity:
        params.update(
            gamma=float(math.exp(log_gamma)),
            intensity_scale=float(i_scale),
            intensity_shift=float(i_shift),
            noise_std=float(noise_std),
        )
    return AugmentParams(**params)


# --------------------------------------------------------------------------------------------
# application
# --------------------------------------------------------------------------------------------
def _affine_theta(params: AugmentParams, shape: tuple[int, int, int]) -> torch.Tensor:
    """3x4 matrix for ``F.affine_grid``: output normalised coords -> input normalised coords.

    The transform is built in voxel units (so an in-plane rotation stays a rotation when
    H != W) and then conjugated by the voxel->normalised scaling. affine_grid orders
    coordinates (x, y, z).
    """
    d, h, w = shape
    a = math.radians(params.rotation_deg)
    s = params.scale
    # voxel-space map from output to input: rotate by -a and zoom by 1/s (inverse mapping)
    c, si = math.cos(a) / s, math.sin(a) / s
    m_vox = np.array([[c, -si, 0.0], [si, c, 0.0], [0.0, 0.0, 1.0 / s]])
    half = np.array([w / 2.0, h / 2.0, d / 2.0])
    m_norm = (m_vox * half[None, :]) / half[:, None]  # diag(1/half) @ m_vox @ diag(half)
    tz, ty, tx = params.translation
    # a positive translation moves content towards larger indices: sample from minus the shift
    t_norm = -2.0 * np.array([tx, ty, tz])
    theta = np.concatenate([m_norm, t_norm[:, None]], axis=1)
    return torch.as_tensor(theta, dtype=torch.float32)[None]


def _slice_grid(theta: torch.Tensor, channels: int, h: int, w: int) -> torch.Tensor:
    """The in-plane sampling grid of ``theta`` for one axial slice, ``(1, H, W, 2)``."""
    theta2 = theta[:, :2][:, :, [0, 1, 3]]
    return F.affine_grid(theta2, [1, channels, h, w], align_corners=False)


def _spatial(volume: torch.Tensor, theta: torch.Tensor, mode: str, padding: str,
             grid: torch.Tensor | None = None) -> torch.Tensor:
    """Resample a (C, D, H, W) tensor on the grid given by ``theta``.

    Our transforms never mix z with (y, x) (in-plane rotation, isotropic zoom, shifts), so the
    3D resampling separates into a 2D resampling of every axial slice plus a 1D resampling
    along z - several times faster on a CPU than a 3D ``grid_sample``, and identical in result
    for such block-diagonal transforms. Every slice shares one in-plane grid (``grid``, from
    :func:`_slice_grid`; computed here when not given).
    """
    c, d, h, w = volume.shape
    theta = theta.to(volume.device)
    if grid is None:
        grid = _slice_grid(theta, c, h, w)
    # in-plane: slices as the batch, all on the same grid
    slices = volume.permute(1, 0, 2, 3)  # (D, C, H, W)
    slices = F.grid_sample(slices, grid.to(volume.device).expand(d, h, w, 2), mode=mode, padding_mode=padding,
                           align_corners=False)
    out = slices.permute(1, 0, 2, 3)  # (C, D, H, W)
    # along z: z_in = a * z_out + b in normalised coordinates (align_corners=False)
    a, b = float(theta[0, 2, 2]), float(theta[0, 2, 3])
    if a == 1.0 and b == 0.0:
        return out.contiguous()
    u_out = (2.0 * torch.arange(d, dtype=torch.float64) + 1.0) / d - 1.0
    idx = ((a * u_out + b + 1.0) * d - 1.0) / 2.0
    if mode == "nearest":
        near = torch.round(idx).long()
        valid = (near >= 0) & (near <= d - 1)
        res = out[:, near.clamp(0, d - 1)]
        if padding == "zeros":
            res = res * valid.view(1, d, 1, 1).to(res.dtype)
        return res.contiguous()
    idx = idx.clamp(0.0, d - 1.0) if padding == "border" else idx
    i0 = torch.floor(idx).long()
    frac = (idx - i0).to(out.dtype).view(1, d, 1, 1)
    i1 = i0 + 1
    lo = out[:, i0.clamp(0, d - 1)]
    hi = out[:, i1.clamp(0, d - 1)]
    res = lo * (1 - frac) + hi * frac
    if padding == "zeros":
        w0 = ((i0 >= 0) & (i0 <= d - 1)).to(out.dtype).view(1, d, 1, 1)
        w1 = ((i1 >= 0) & (i1 <= d - 1)).to(out.dtype).view(1, d, 1, 1)
        res = lo * w0 * (1 - frac) + hi * w1 * frac
    return res.contiguous()


def _intensity(image: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    # in place on a new tensor: the same operations in the same order as
    # ((x - lo) / span).clamp(0, 1) ** gamma * span + lo, then * scale + shift, then + std * noise
    if params.gamma != 1.0:
        lo, hi = torch.aminmax(image.reshape(image.shape[0], -1), dim=1)
        lo, hi = lo.view(-1, 1, 1, 1), hi.view(-1, 1, 1, 1)
        span = (hi - lo).clamp_min(1e-8)
        out = image - lo
        out.div_(span).clamp_(0.0, 1.0).pow_(params.gamma).mul_(span).add_(lo)
        out.mul_(params.intensity_scale).add_(params.intensity_shift)
    else:
        out = image * params.intensity_scale
        out.add_(params.intensity_shift)
    if params.noise_std > 0:
        noise = np.random.default_rng(params.noise_seed).standard_normal(tuple(out.shape), dtype=np.float32)
        out.add_(torch.as_tensor(noise, dtype=out.dtype, device=out.device).mul_(params.noise_std))
    return out


def apply(params: AugmentParams, image, masks=None):
    """Apply one augmentation to an image and (optionally) its masks, consistently.

    Parameters
    ----------
    params
        From :func:`sample_params` (or built by hand).
    image
        ``(C, D, H, W)`` float array (NumPy or torch).
    masks
        ``None``, one ``(D, H, W)`` array, or a mapping name -> ``(D, H, W)`` array. Masks get
        the same flips and affine as the image (nearest-neighbour, so values stay in their
        original set) and no intensity change.

    Returns
    -------
    image, masks
        Same types and structure as the inputs (NumPy in, NumPy out).
    """
    is_numpy = isinstance(image, np.ndarray)
    img = torch.as_tensor(np.ascontiguousarray(image) if is_numpy else image)
    if img.ndim != 4:
        raise ValueError(f"image must be (C, D, H, W); got shape {tuple(img.shape)}")
    img = img.float()
    spatial_shape = tuple(img.shape[1:])

    single = masks is not None and not isinstance(masks, Mapping)
    mask_items = {"_": masks} if single else dict(masks or {})
    mask_t: dict[str, tuple[torch.Tensor, object]] = {}
    for name, m in mask_items.items():
        if m is None:
            mask_t[name] = (None, None)
            continue
        m_np = isinstance(m, np.ndarray)
        mt = torch.as_tensor(np.ascontiguousarray(m) if m_np else m)
        if tuple(mt.shape) != spatial_shape:
            raise ValueError(
                f"mask {name!r} has shape {tuple(mt.shape)}, image spatial shape is {spatial_shape}"
            )
        mask_t[name] = (mt, m.dtype if m_np else mt.dtype)

    flip_dims = [i + 1 for i, f in enumerate(params.flip) if f]
    if flip_dims:
        img = torch.flip(img, flip_dims)
        mask_t = {
            k: (None if t is None else torch.flip(t, [d - 1 for d in flip_dims]), dt)
            for k, (t, dt) in mask_t.items()
        }
    if params.has_affine:
        theta = _affine_theta(params, spatial_shape)
        grid = _slice_grid(theta, img.shape[0], *spatial_shape[1:])  # one grid for the image and its masks
        img = _spatial(img, theta, mode="bilinear", padding="border", grid=grid)
        new = {}
        for k, (t, dt) in mask_t.items():
            if t is None:
                new[k] = (None, dt)
                continue
            out = _spatial(t[None].float(), theta, mode="nearest", padding="zeros", grid=grid)[0]
            new[k] = (out.round().to(t.dtype), dt)
        mask_t = new
    if params.has_intensity:
        img = _intensity(img, params)

    def _back(t, dt, was_np):
        if t is None:
            return None
        return t.cpu().numpy().astype(dt, copy=False) if was_np else t

    out_img = img.cpu().numpy().astype(image.dtype if image.dtype.kind == "f" else np.float32) if is_numpy else img
    out_masks = {
        k: _back(t, dt, isinstance(mask_items[k], np.ndarray)) for k, (t, dt) in mask_t.items()
    }
    if masks is None:
        return out_img, None
    if single:
        return out_img, out_masks["_"]
    return out_img, out_masks


@dataclass
class Augmenter:
    """Convenience wrapper: a config plus a seeded generator.

    Parameters
    ----------
    config
        Parameter ranges.
    seed
        Seed of the internal :class:`numpy.random.Generator`.
    """

    config: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng_ = np.random.default_rng(self.seed)

    def sample(self) -> AugmentParams:
        """Draw the next parameters from the internal generator."""
        return sample_params(self.rng_, self.config)

    def __call__(self, image, masks=None):
        """Sample parameters and apply them; returns ``(image, masks, params)``."""
        params = self.sample()
        out_img, out_masks = apply(params, image, masks)
        return out_img, out_masks, params
