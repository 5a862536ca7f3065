"""A realistic built-in synthetic prostate mpMRI cohort (the default data everywhere).

These are **simulated** images: no patient is behind them, and nothing learned or measured on
them is a clinical finding. They are built so that the study's demonstration behaves like one
on real data would: labels are read from what the images show, anatomy and intensities are
those of the men who get prostate MRI, and scanners differ as real ones do.

Each case is simulated in physical units (mm) in three steps:

1. **Anatomy** on a grid that is finer along z than the acquisition (thick slices):
   a gland of 20-100 ml (volume grows with age/BPH) with an apex-narrowing, posteriorly
   flattened, irregular outline and a thin dark capsule; a transition zone (TZ) that sits
   anterior/towards the base and enlarges with BPH, filled with stromal (dark) and glandular
   (bright) BPH nodules with dark pseudo-capsules; a peripheral zone (PZ) wrapping it as a
   posterior-lateral crescent with benign patchy hypointensities (prostatitis/atrophy that
   increase with age); anterior fibromuscular stroma; urethra with its sphincter; periprostatic
   fat with septa and an anterior venous plexus; neurovascular bundles; rectum (wall +
   air/gel/stool content); levator ani and obturator muscles; bladder and seminal vesicles
   towards the base; the pubic bone anteriorly. Each tissue carries three physical
   parameters: a relative T2-weighted signal, a diffusion b=0 signal ``S0`` and an ADC in
   1e-6 mm^2/s (PZ ~1500-1900, TZ ~1100-1500, clinically significant cancer ~550-1000).
2. **Lesion** whose appearance is what a PI-RADS v2.1 reader scores (see below): none for
   ``<3``; otherwise one lesion in the PZ (70 %) or TZ.
3. **Acquisition**: diffusion signals ``S(b) = S0 exp(-b ADC)`` for b = 50, 800 and 1400
   s/mm^2; slice-profile averaging over the thick slice (partial volume); an in-plane point
   spread (blurrier for DWI, acquired at lower resolution); smooth multiplicative coil bias
   fields; per-site intensity scale, contrast and noise level; Rician noise on magnitude images.
   The ADC map is computed from the noisy b=50 and b=800 images, as a scanner does, and the
   high-b image is the b=1400 acquisition - so they are consistent, noise included.

Zonal anatomy of the men who get prostate MRI
---------------------------------------------
The textbook "PZ = 70 % of the gland" describes young men. Men referred for prostate MRI are
mostly in their sixties, where benign hyperplasia enlarges the TZ while the PZ keeps its size:
in 503 men imaged at 3T before treatment, whole-gland and central-gland volumes grew with age
but PZ volume did not (Turkbey et al., BJU Int 2012;110:1642-7); in 61 men with symptomatic
BPH (age 64.6 +/- 9.7) a "TZ index" (TZ / whole gland) above 0.5 marked the more obstructed
men (Kaplan et al., J Urol 1995;154:1764-9); and in 247 men with MRI before biopsy the PZ share
of the gland fell with age (r = -0.36) and helped predict the biopsy result (Chang et al.,
Oncotarget 2017;8:34836-43). We do not copy one
study's table (we cannot reproduce their exact numbers here); we build the share from the two
relations these studies agree on: the PZ volume is drawn independently of age
(:data:`PZ_VOLUME_ML`: log-normal, median 15 ml) and the TZ takes the rest of the gland, whose
volume grows with BPH as before. Measured on the written zone masks of the default cohort, the
PZ / (PZ + TZ) share then has a median near 0.32 (a third), an interquartile range of about
0.25-0.45, and it falls with gland volume; small glands (~20 ml) keep the young man's ~0.7.
``tests/test_synthetic.py`` fails if the share leaves that range. The ``zones`` mask labels
PZ 1 and everything else in the gland (TZ, anterior stroma, urethra) 2, as AI zone masks of
public data sets do; ``pz_share`` is the latent target on the fine grid, the masks measure
~0.03 more (thick-slice majority).

PI-RADS groups are read from the images
---------------------------------------
Each lesion's findings follow PI-RADS v2.1's reading rules (:func:`_lesion_findings`): in the
PZ the group is carried by DWI/ADC (3: focal, mild/moderate ADC drop; 4: marked ADC drop and
marked high-b brightness, < 15 mm; 5: as 4 and >= 15 mm), in the TZ by T2W (3: heterogeneous,
obscured margins; 4: homogeneous, moderately dark, lenticular, < 15 mm; 5: as 4 and >= 15 mm),
with margins more irregular in higher groups. A network that learns to find and read the
lesion can therefore learn the label, as on real data; an encoder that only pools the whole
volume sees little of a 1 ml lesion. Older men and smaller glands (higher PSA density) carry
suspicious lesions more often, a weak global cue as in real cohorts.

Masks come from the same fine anatomy (majority over each thick slice). ``gland_volume_ml``
and ``lesion_volume_ml`` are measured from the written masks. Every case is generated from its
own seed (``seed``, case index), so the cohort is identical whatever ``n_jobs`` is, and case
*i* is the same whatever ``n_cases`` is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiolens._utils import progress_bar
from radiolens.cache import STEP_VERSIONS, atomic_write_text, default_cache_dir, hash_json
from radiolens.data.cohort import Cohort, load_cohort, write_manifest
from radiolens.data.contract import MANIFEST_COLUMNS, CohortError, inside, split_cases
from radiolens.data.image_io import write_image

__all__ = [
    "B_VALUE",
    "GENERATOR_VERSION",
    "PRESETS",
    "SITES",
    "default_shape",
    "make_synthetic_cohort",
    "sample_latents",
    "simulate_case",
]

logger = logging.getLogger(__name__)

#: High b-value of the DWI images, s/mm^2.
B_VALUE = 1400
#: b-values the ADC map is computed from, s/mm^2 (as on a scanner).
ADC_B_VALUES = (50, 800)

#: Grid presets: ``shape`` (D, H, W) voxels and ``spacing`` (x, y, z) mm.
PRESETS: dict[str, dict[str, tuple]] = {
    # a gland-centred 76.8 x 76.8 x 64 mm box: fits a 100 ml gland; fast on 2 cores
    "tutorial": {"shape": (32, 96, 96), "spacing": (0.8, 0.8, 2.0)},
    # the paper's grid (0.5 x 0.5 x 1.0 mm) and encoder crop (64 x 224 x 224)
    "paper": {"shape": (64, 224, 224), "spacing": (0.5, 0.5, 1.0)},
}

#: Acquisition sites: scanner name, intensity scales, contrast, noise, resolution, coil bias.
SITES: dict[str, dict[str, Any]] = {
    "A": {"scanner": "Siemens Skyra 3T", "share": 0.45, "t2_scale": 420.0, "t2_gamma": 1.0,
          "dwi_scale": 900.0, "noise": 1.0, "adc_gain": 1.00, "t2_blur": 0.6, "dwi_blur": 1.0,
          "bias": 0.15},
    "B": {"scanner": "Philips Ingenia 3T", "share": 0.35, "t2_scale": 1350.0, "t2_gamma": 1.1,
          "dwi_scale": 2400.0, "noise": 0.8, "adc_gain": 0.97, "t2_blur": 0.75, "dwi_blur": 1.2,
          "bias": 0.2},
    "C": {"scanner": "GE Signa 1.5T", "share": 0.20, "t2_scale": 2600.0, "t2_gamma": 0.9,
          "dwi_scale": 450.0, "noise": 1.6, "adc_gain": 1.03, "t2_blur": 0.9, "dwi_blur": 1.4,
          "bias": 0.25},
}

#: Share of PI-RADS groups <3, 3, 4, 5.
PIRADS_SHARES = (0.35, 0.20, 0.27, 0.18)

#: Peripheral-zone volume in ml: log-normal with this median and log-sd, independent of age
#: (see "Zonal anatomy" in the module docstring).
PZ_VOLUME_ML = {"median": 15.0, "sd_log": 0.25}
#: The PZ share of the gland is kept within these bounds (the smallest glands, ~21 ml, reach
#: the young man's ~0.7; the largest BPH glands compress the PZ to a thin rim).
PZ_SHARE_LIMITS = (0.15, 0.75)

#: The generator's version, recorded on weight cards; bump it as ``STEP_VERSIONS["synthetic"]``
#: in :mod:`radiolens.cache` when the simulation changes (this invalidates cached cohorts).
GENERATOR_VERSION = STEP_VERSIONS["synthetic"]


# --------------------------------------------------------------------------------------------
# latent parameters (one row per case)
# --------------------------------------------------------------------------------------------
def _case_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def _lesion_findings(group: int, zone: str, rng: np.random.Generator) -> dict[str, float]:
    """What a reader sees in a lesion of PI-RADS ``group`` (0..3 = ``<3``, 3, 4, 5) and ``zone``.

    The categories follow PI-RADS v2.1's reading rules, so that the label is carried by the
    features a radiologist scores (and a network can learn):

    * **PZ**, scored on DWI/ADC: 3 = focal, *mild/moderate* ADC drop, at most mildly bright on
      high-b DWI; 4 = focal, *marked* ADC drop and marked high-b hyperintensity, < 15 mm;
      5 = as 4 but >= 15 mm (or invading).
    * **TZ**, scored on T2W: 3 = *heterogeneous* with obscured margins; 4 = lenticular or
      non-circumscribed, *homogeneous*, moderately dark ("erased charcoal"), < 15 mm; 5 = as 4
      but >= 15 mm. Their ADC drop is a little smaller than in the PZ.

    Margins (``lesion_margin``, 0 = circumscribed, 1 = irregular/spiculated) grow more
    irregular with the group. The ranges of neighbouring groups touch, as readers' do.
    """
    diameter = {1: rng.uniform(6, 12), 2: rng.uniform(9, 14.5), 3: rng.uniform(15, 26)}[group]
    lo, hi = {1: (1000, 1250), 2: (720, 950), 3: (550, 820)}[group]
    if zone == "TZ":
        lo, hi = lo + 40, hi + 40
    margin = {1: rng.uniform(0.0, 0.45), 2: rng.uniform(0.3, 0.75), 3: rng.uniform(0.55, 1.0)}[group]
    return {"lesion_diameter_mm": float(diameter), "lesion_adc": float(rng.uniform(lo, hi)),
            "lesion_margin": float(margin)}


def sample_latents(
    n_cases: int,
    seed: int = 0,
    pirads_shares: Sequence[float] = PIRADS_SHARES,
    sites: dict[str, dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Draw each case's latent parameters (the generative "truth" behind its images).

    Parameters
    ----------
    n_cases
        Number of cases.
    seed
        Cohort seed; case *i* depends only on (seed, i).
    pirads_shares
        Probabilities of PI-RADS groups 0..3 in a man of median age and gland volume; older
        men and smaller glands carry more suspicious lesions (see the module docstring).
    sites
        Site table (default :data:`SITES`).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``case_id``: ``age``, ``bph_grade`` (0..1), ``target_volume_ml``,
        ``pz_share`` (target PZ / (PZ + TZ)), ``pirads_group``, ``lesion_zone``
        (``PZ``/``TZ``/empty), ``lesion_diameter_mm``, ``lesion_adc``, ``lesion_margin``
        (0 circumscribed .. 1 irregular; NaN without lesion), ``adc_pz``, ``adc_tz``,
        ``inflammation`` (0..1), ``site``, ``scanner``.
    """
    sites = SITES if sites is None else sites
    site_names = list(sites)
    site_p = np.asarray([sites[s]["share"] for s in site_names], dtype=float)
    site_p /= site_p.sum()
    shares = np.asarray(pirads_shares, dtype=float)
    shares /= shares.sum()
    rows = []
    for i in range(n_cases):
        rng = _case_rng(seed, i, 0)
        age = float(np.clip(rng.normal(66, 7), 48, 84))
        bph = float(np.clip(1 / (1 + np.exp(-(age - 64) / 5)) + rng.normal(0, 0.18), 0, 1))
        volume = float(np.clip(22 + 70 * bph**1.4 + rng.normal(0, 6), 20.5, 97))
        # the PZ keeps its size with age while BPH enlarges the TZ (Turkbey et al. 2012)
        pz_ml = PZ_VOLUME_ML["median"] * float(np.exp(rng.normal(0, PZ_VOLUME_ML["sd_log"])))
        pz_share = float(np.clip(pz_ml / volume, *PZ_SHARE_LIMITS))
        # older men and smaller glands (higher PSA density, larger PZ share): more
        # suspicious lesions (Chang et al. 2017: the PZ share predicts biopsy results)
        risk = (volume / 55.0) ** -0.5
        p = shares * np.array([1.0 - 0.01 * (age - 66), risk, risk * (1.0 + 0.01 * (age - 66)),
                               risk * (1.0 + 0.015 * (age - 66))])
        p = np.clip(p, 1e-3, None)
        group = int(rng.choice(4, p=p / p.sum()))
        zone = ""
        findings = {"lesion_diameter_mm": 0.0, "lesion_adc": np.nan, "lesion_margin": np.nan}
        if group >= 1:
            zone = "PZ" if rng.random() < 0.7 else "TZ"
            findings = _lesion_findings(group, zone, rng)
        adc_pz = float(np.clip(1850 - 9 * (age - 50) + rng.normal(0, 60), 1500, 1950))
        adc_tz = float(np.clip(1430 - 6 * (age - 50) + rng.normal(0, 50), 1100, 1500))
        inflammation = float(np.clip(rng.beta(2, 4) + 0.01 * (age - 60), 0, 1))
        site = str(rng.choice(site_names, p=site_p))
        rows.append(
            {
                "case_id": f"synth_{i:04d}",
                "patient_id": f"synth_{i:04d}",
                "age": round(age, 1),
                "bph_grade": round(bph, 3),
                "target_volume_ml": round(volume, 2),
                "pz_share": round(pz_share, 3),
                "pirads_group": group,
                "lesion_zone": zone,
                "lesion_diameter_mm": round(findings["lesion_diameter_mm"], 2),
                "lesion_adc": round(findings["lesion_adc"], 1) if group else np.nan,
                "lesion_margin": round(findings["lesion_margin"], 3) if group else np.nan,
                "adc_pz": round(adc_pz, 1),
                "adc_tz": round(adc_tz, 1),
                "inflammation": round(inflammation, 3),
                "site": site,
                "scanner": sites[site]["scanner"],
            }
        )
    return pd.DataFrame(rows).set_index("case_id")


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
def _axis_matrix(coords: np.ndarray, scale: float, rng_points: int | None = None) -> np.ndarray:
    """Gaussian interpolation weights from control points every ``scale`` mm to ``coords``.

    Rows are normalised to unit L2 norm so that unit-variance white noise on the control
    points gives (close to) unit-variance smooth noise at every coordinate.
    """
    lo, hi = coords.min() - 2 * scale, coords.max() + 2 * scale
    n = max(3, int(np.ceil((hi - lo) / scale)) + 1)
    points = np.linspace(lo, hi, n)
    w = np.exp(-0.5 * ((coords[:, None] - points[None, :]) / (0.7 * scale)) ** 2)
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return w.astype(np.float32)


class _Grid:
    """Physical coordinates of a (z, y, x) grid, plus smooth random fields on it."""

    def __init__(self, shape: tuple[int, int, int], step: tuple[float, float, float], rng, center):
        self.shape = shape
        self.step = step  # (z, y, x) mm
        self.rng = rng
        zc, yc, xc = ((np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, step))
        # coordinates relative to the gland centre (the box is centred on it up to a jitter)
        self.z = (zc - center[2]).astype(np.float32)[:, None, None]
        self.y = (yc - center[1]).astype(np.float32)[None, :, None]
        self.x = (xc - center[0]).astype(np.float32)[None, None, :]

    def noise(self, scale: float | Sequence[float]) -> np.ndarray:
        """Smooth Gaussian noise, unit variance, correlation length ~``scale`` mm (z, y, x)."""
        sz, sy, sx = (scale, scale, scale) if np.isscalar(scale) else scale
        mz = _axis_matrix(self.z[:, 0, 0], sz)
        my = _axis_matrix(self.y[0, :, 0], sy)
        mx = _axis_matrix(self.x[0, 0, :], sx)
        g = self.rng.standard_normal((mz.shape[1], my.shape[1], mx.shape[1]), dtype=np.float32)
        # separable contraction as three plain 2D matrix products (BLAS): far cheaper than
        # zooming a 3D volume, einsum or a broadcast matmul
        cz, cy, cx = g.shape
        D, H, W = mz.shape[0], my.shape[0], mx.shape[0]
        out = (g.reshape(-1, cx) @ mx.T).reshape(cz, cy, W)
        out = np.ascontiguousarray(out.transpose(1, 0, 2)).reshape(cy, -1)
        out = (my @ out).reshape(H, cz, W)
        out = np.ascontiguousarray(out.transpose(1, 0, 2)).reshape(cz, -1)
        return (mz @ out).reshape(D, H, W)


def _ellipsoid_r(grid: _Grid, c, radii) -> np.ndarray:
    """Normalised radius of an axis-aligned ellipsoid (1 on its surface)."""
    cx, cy, cz = c
    rx, ry, rz = radii
    return np.sqrt(((grid.x - cx) / rx) ** 2 + ((grid.y - cy) / ry) ** 2 + ((grid.z - cz) / rz) ** 2)


def _box(grid: _Grid, c, radii) -> tuple[slice, slice, slice]:
    """Index box (z, y, x slices) covering an ellipsoid, to work on a small sub-volume."""
    out = []
    for coords, centre, radius in zip((grid.z[:, 0, 0], grid.y[0, :, 0], grid.x[0, 0, :]), c[::-1], radii[::-1]):
        inside = np.flatnonzero(np.abs(coords - centre) <= radius + 1e-3)
        out.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
    return tuple(out)


def _paint(maps: dict[str, np.ndarray], where: np.ndarray, **values) -> None:
    """Set tissue parameters where ``where`` is true (values: scalars or arrays)."""
    for name, value in values.items():
        if np.isscalar(value):
            maps[name][where] = value
        else:
            maps[name][where] = np.broadcast_to(value, where.shape)[where]


def _blend(maps: dict[str, np.ndarray], weight: np.ndarray, **values) -> None:
    """Mix tissue parameters in with a soft weight in [0, 1] (soft lesion/nodule borders)."""
    for name, value in values.items():
        maps[name] += weight * (value - maps[name])


# --------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------
def simulate_case(
    latent: dict[str, Any],
    shape: Sequence[int] = PRESETS["tutorial"]["shape"],
    spacing: Sequence[float] = PRESETS["tutorial"]["spacing"],
    seed: int | np.random.SeedSequence = 0,
    sites: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Simulate one case from its latent parameters.

    Parameters
    ----------
    latent
        One row of :func:`sample_latents` as a dict.
    shape
        Output grid (D, H, W) voxels.
    spacing
        Output voxel size (x, y, z) in mm.
    seed
        Seed of this case's anatomy, texture and noise.
    sites
        Site table (default :data:`SITES`).

    Returns
    -------
    images, masks
        ``{"T2W", "DWI", "ADC"}`` float32 and ``{"gland", "zones", "lesion"}`` uint8 arrays,
        (z, y, x).
    """
    from scipy import ndimage as ndi

    sites = SITES if sites is None else sites
    site = sites[latent["site"]]
    rng = np.random.default_rng(seed)
    D, H, W = (int(s) for s in shape)
    sx, sy, sz = (float(s) for s in spacing)
    # thick slices: simulate k sub-slices per acquired slice, average them (partial volume)
    k = 2 if sz > 1.5 * min(sx, sy) else 1
    center = rng.normal(0, [1.5, 1.5, 1.0 * sz / 2])  # gland not exactly at the box centre
    g = _Grid((D * k, H, W), (sz / k, sy, sx), rng, center)
    fine = (D * k, H, W)
    X, Y, Z = g.x, g.y, g.z

    # ---- gland ---------------------------------------------------------------------------
    bph = float(latent["bph_grade"])
    volume = float(latent["target_volume_ml"]) * 1000.0
    ratio_ap = rng.uniform(0.72, 0.84)
    ratio_cc = rng.uniform(0.82, 0.95)
    shape_noise = g.noise(9.0)
    taper = rng.uniform(0.3, 0.45)

    def gland_radius(a: float, step: int = 1) -> np.ndarray:
        x, y, sn = X[..., ::step], Y[:, ::step], shape_noise[:, ::step, ::step]
        b, c = a * ratio_ap, a * ratio_cc
        zn = Z / c
        # apex (inferior, z<0) narrower than the base; base a little flattened
        s = 1.0 - taper * np.clip(-zn, 0, 1) ** 1.6 - 0.08 * np.clip(zn, 0, 1) ** 2
        # posterior surface flattened, with a shallow midline indentation by the rectum
        post = 1.0 / (1.0 + np.exp(-y / 2.0))
        by = b * (1.0 - post * (0.14 + 0.12 * np.exp(-((x / (0.35 * a)) ** 2))))
        # a flatter (super-elliptic) top: the base is the broadest part, resting on the bladder
        zterm = np.where(zn > 0, np.abs(zn) ** 3.5, zn**2)
        return np.sqrt((x / (a * s)) ** 2 + (y / (by * s)) ** 2 + zterm) * (1.0 + 0.045 * sn)

    a = (volume / (4.0 / 3.0 * np.pi * ratio_ap * ratio_cc * 0.85)) ** (1 / 3)
    voxel = sx * sy * sz / k * 4  # calibration runs on every 2nd voxel in-plane
    for _ in range(2):  # calibrate the size so the measured volume matches the target
        measured = np.count_nonzero(gland_radius(a, 2) < 1) * voxel
        a *= (volume / max(measured, 1.0)) ** (1 / 3)
    rg = gland_radius(a)
    b, c = a * ratio_ap, a * ratio_cc
    gland = rg < 1.0

    # transition zone: an ellipsoid anterior and towards the base, grown (BPH) until the PZ
    # keeps the case's share of the gland; the PZ is what remains, a posterior-lateral rim
    tz_c = (rng.normal(0, 1), -0.12 * b, 0.2 * c)
    rt = _ellipsoid_r(g, tz_c, (a * 0.95, b * 0.8, c * 0.85)) * (1 + 0.06 * g.noise(6.0))
    # anterior fibromuscular stroma: a cap in front of the TZ, thinning laterally and at the apex
    afms_edge = -0.45 * b - 0.6 * b * (X / (0.55 * a)) ** 2 - 0.15 * b * np.clip(-Z / c, 0, 1)
    front = gland & (Y < afms_edge)
    candidates = rt[gland & ~front]
    pz_share = latent.get("pz_share", np.nan)
    if not np.isfinite(pz_share):  # a hand-made latent: the median man's PZ volume
        pz_share = np.clip(PZ_VOLUME_ML["median"] * 1000.0 / volume, *PZ_SHARE_LIMITS)
    n_tz = (1.0 - float(pz_share)) * np.count_nonzero(gland) - np.count_nonzero(front)
    kth = int(np.clip(n_tz, 1, candidates.size - 1))
    ft = float(np.partition(candidates, kth)[kth]) if candidates.size > 1 else 0.0
    tz = gland & (rt < ft)
    afms = front & ~tz
    pz = gland & ~tz & ~afms
    capsule = gland & (rg > 1.0 - 1.1 / a)

    # ---- tissue parameter maps (start as periprostatic fat) ------------------------------
    maps = {
        "t2": (1.45 * (1 + 0.06 * g.noise(4.0))).astype(np.float32),
        "s0": np.full(fine, 0.05, np.float32),  # fat-suppressed diffusion
        "adc": np.full(fine, 700.0, np.float32),
    }
    # fibrous septa: long, broken strands of varying thickness
    strands, gate = g.noise((10.0, 7.0, 7.0)), g.noise(5.0)
    septa = (np.abs(strands) < 0.05 + 0.03 * gate) & (gate > -0.2)
    _paint(maps, septa & ~gland, t2=0.6, s0=0.2, adc=1600.0)
    # anterior venous plexus (slow flow: bright on T2) hugging the gland
    plexus = (~gland) & (rg < 1.3) & (Y < -0.25 * b) & (gate > 1.0)
    _paint(maps, plexus, t2=1.9, s0=0.8, adc=2100.0)

    # pubic bone anteriorly (fatty marrow, dark cortex)
    pubic_y = -(b + rng.uniform(12, 18))
    bone_r = np.sqrt((X / 22.0) ** 2 + ((Y - (pubic_y - 12)) / 12.0) ** 2) * (1 + 0.04 * shape_noise)
    bone_z = Z < 0.4 * c
    _paint(maps, (bone_r < 1.0) & bone_z, t2=1.2 * (1 + 0.1 * gate), s0=0.05, adc=450.0)
    _paint(maps, (bone_r >= 0.85) & (bone_r < 1.0) & bone_z, t2=0.08, s0=0.02, adc=300.0)

    # rectum posterior to the gland: flattened, with mucosal folds
    r_out = rng.uniform(11, 16)
    wall = rng.uniform(2.5, 4.0)
    ry0 = 0.84 * b + rng.uniform(3, 6) + 0.8 * r_out
    rect_y = ry0 + 0.12 * Z + 1.0 * g.noise(20.0)
    fold = g.noise((6.0, 3.0, 3.0))
    dr = np.sqrt((X / (1.35 * r_out)) ** 2 + ((Y - rect_y) / (0.8 * r_out)) ** 2) * (1 + 0.03 * fold)
    d_in = dr * (1 + 0.1 * fold)
    rectum = dr < 1.0
    lumen = rectum & (d_in < 1.0 - wall / r_out)

    # levator ani: a U-shaped sling around gland and rectum (below the mid-gland);
    # obturator internus laterally, medial edge bowing in
    fibres = 1 + 0.08 * g.noise((12.0, 1.5, 1.5))  # striation along the muscle fibres
    muscle_t2, muscle_adc = 0.42 * fibres, 1450.0 * (1 + 0.04 * gate)
    lateral = a * (1 - taper * np.clip(-Z / c, 0, 1) ** 1.6)
    obt_x = lateral + rng.uniform(14, 20) + 0.012 * (Y - 0.3 * b) ** 2 + 2.0 * g.noise(10.0)
    obturator = np.abs(X) > obt_x
    _paint(maps, obturator, t2=muscle_t2, s0=0.3, adc=muscle_adc)
    _paint(maps, obturator & (np.abs(X) < obt_x + 0.8), t2=0.3)  # fascia
    sling_yc = 0.5 * (-0.3 * b + ry0 + r_out)
    sling_ax = lateral + rng.uniform(3.5, 6.5) + 1.2 * g.noise(8.0)
    sling_ay = 0.5 * (ry0 + r_out + 0.3 * b) + rng.uniform(3, 6)
    d_sling = np.sqrt((X / sling_ax) ** 2 + ((Y - sling_yc) / sling_ay) ** 2)
    thick_l = rng.uniform(3, 5.5)
    levator = (d_sling >= 1.0) & (d_sling < 1.0 + thick_l / sling_ax) & (Y > -0.3 * b) & (Z < 0.3 * c)
    _paint(maps, levator & ~obturator & ~rectum, t2=muscle_t2, s0=0.3, adc=muscle_adc)

    _paint(maps, rectum & ~lumen, t2=0.5 * fibres, s0=0.55, adc=1250.0)
    mucosa = lumen & (d_in >= 1.0 - (wall + 1.3) / r_out)
    _paint(maps, mucosa, t2=0.95, s0=0.8, adc=1300.0)
    content = rng.choice(["air", "gel", "stool"], p=[0.45, 0.2, 0.35])
    inner = lumen & ~mucosa
    if content == "air":
        _paint(maps, inner, t2=0.03, s0=0.0, adc=0.0)
    elif content == "gel":
        _paint(maps, inner, t2=1.7, s0=1.1, adc=2300.0)
    else:
        stool = g.noise(2.5)
        _paint(maps, inner, t2=0.55 + 0.25 * stool, s0=0.45, adc=900.0 + 150 * stool)
        _paint(maps, inner & (stool > 1.0), t2=0.03, s0=0.0, adc=0.0)  # gas bubbles

    # bladder above the base and seminal vesicles posterior-superior
    rb = rng.uniform(20, 38)
    bladder_r = _ellipsoid_r(g, (0.0, -0.2 * b, 0.82 * c + rb), (rb * 1.2, rb * 0.9, rb))
    bladder = (bladder_r < 1.0) & ~gland
    _paint(maps, bladder, t2=2.3, s0=1.9, adc=3000.0)
    _paint(maps, bladder & (bladder_r > 1.0 - 2.0 / rb), t2=0.45, s0=0.4, adc=1500.0)
    for side in (-1, 1):
        sv_r = _ellipsoid_r(g, (side * (0.3 * a + 8), 0.8 * b, 0.85 * c), (13.0, 4.5, 7.0))
        sv = (sv_r < 1.0) & ~gland & ~bladder
        _paint(maps, sv, t2=0.6, s0=0.5, adc=1500.0)
        _paint(maps, sv & (fold > -0.2), t2=1.9, s0=1.4, adc=2500.0)

    # neurovascular bundles, posterolateral to the capsule
    for side in (-1, 1):
        theta = np.deg2rad(rng.uniform(45, 60))
        nx, ny = side * a * np.sin(theta) * 1.08, 0.84 * b * np.cos(theta) * 1.12
        d_nvb = np.sqrt((X - nx) ** 2 + (Y - ny) ** 2)
        _paint(maps, (d_nvb < 1.8) & (np.abs(Z) < 0.9 * c) & ~gland, t2=0.35, s0=0.5, adc=1900.0)

    # ---- the gland ---------------------------------------------------------------------------
    age = float(latent["age"])
    adc_pz, adc_tz = float(latent["adc_pz"]), float(latent["adc_tz"])
    pz_t2 = (1.6 - 0.006 * (age - 50)) * (1 + 0.06 * g.noise(1.6))
    _paint(maps, pz, t2=pz_t2, s0=1.0, adc=adc_pz * (1 + 0.04 * g.noise(2.0)))
    # benign patchy / band-like PZ hypointensity (prostatitis, atrophy): more with age
    infl = float(latent["inflammation"])
    patch = g.noise((5.0, 3.5, 3.5))
    patch_w = np.clip((patch - (1.6 - 1.3 * infl)) / 0.5, 0, 1) * pz
    _blend(maps, patch_w * 0.8, t2=0.75, s0=0.85, adc=1350.0)

    tz_tex = g.noise(2.0)
    tz_t2 = 0.82 * (1 + 0.1 * tz_tex + 0.08 * strands)
    _paint(maps, tz, t2=tz_t2, s0=0.78, adc=adc_tz * (1 + 0.05 * tz_tex))
    _paint(maps, afms, t2=0.38, s0=0.35, adc=1050.0)
    # BPH nodules: stromal (dark, lower ADC) or glandular (bright, higher ADC), encapsulated
    n_nodules = int(rng.poisson(1 + 14 * bph))
    tz_idx = np.flatnonzero(tz)
    micro = g.noise(1.2)
    for _ in range(n_nodules if tz_idx.size else 0):
        zi, yi, xi = np.unravel_index(tz_idx[rng.integers(tz_idx.size)], fine)
        ncen = (float(X[0, 0, xi]), float(Y[0, yi, 0]), float(Z[zi, 0, 0]))
        rad = rng.uniform(2.0, 3.5 + 6.0 * bph)
        radii = rad * rng.uniform(0.8, 1.2, size=3)
        box = _box(g, ncen, radii * 1.05)
        local = {name: m[box] for name, m in maps.items()}  # views: painting writes through
        rn = np.sqrt(((X[..., box[2]] - ncen[0]) / radii[0]) ** 2 + ((Y[:, box[1]] - ncen[1]) / radii[1]) ** 2
                     + ((Z[box[0]] - ncen[2]) / radii[2]) ** 2) * (1 + 0.1 * tz_tex[box])
        tz_local = tz[box]
        inside = (rn < 1.0) & tz_local
        if not inside.any():
            continue
        if rng.random() < 0.5:  # stromal
            _paint(local, inside, t2=0.55 * (1 + 0.05 * micro[box]), s0=0.6, adc=rng.uniform(1000, 1150))
        else:  # glandular, with microcysts
            _paint(local, inside, t2=1.15 * (1 + 0.15 * micro[box]), s0=0.95,
                   adc=rng.uniform(1450, 1700) * (1 + 0.06 * micro[box]))
        _paint(local, (rn >= 0.85) & (rn < 1.05) & tz_local, t2=0.45, s0=0.5, adc=1100.0)
    _paint(maps, capsule & pz, t2=0.6, s0=0.6)

    # urethra (curving anteriorly towards the base) and its sphincter
    uy = -0.05 * b - 0.22 * b * np.clip(Z / c, -1, 1)
    du = np.sqrt((X - 0.0) ** 2 + (Y - uy) ** 2)
    in_gland_z = rg < 1.05
    _paint(maps, (du < 2.6) & in_gland_z, t2=0.6, s0=0.6, adc=1300.0)
    _paint(maps, (du < 1.0) & in_gland_z, t2=1.0, s0=0.9, adc=1900.0)

    # ---- lesion ------------------------------------------------------------------------------
    group = int(latent["pirads_group"])
    lesion = np.zeros(fine, bool)
    if group >= 1:
        zone = latent["lesion_zone"]
        host = pz if zone == "PZ" else (tz & (du > 5.0))
        if zone == "PZ":  # mostly mid-gland and apex, posterior-lateral
            preferred = host & (Z < 0.5 * c) & (Y > -0.3 * b)
            host = preferred if preferred.any() else host
        idx = np.flatnonzero(host)
        if idx.size == 0:
            idx = np.flatnonzero(gland)
        zi, yi, xi = np.unravel_index(idx[rng.integers(idx.size)], fine)
        lc = (float(X[0, 0, xi]), float(Y[0, yi, 0]), float(Z[zi, 0, 0]))
        half = float(latent["lesion_diameter_mm"]) / 2.0
        if zone == "PZ":  # follows the crescent: flat antero-posteriorly
            radii = (half, half * 0.7, half * 0.85)
        else:  # lenticular
            radii = (half, half * 0.6, half * 0.8)
        margin = float(latent.get("lesion_margin", np.nan))
        if not np.isfinite(margin):  # a hand-made latent without margins: the group's typical one
            margin = {1: 0.2, 2: 0.5, 3: 0.8}[group]
        rl = _ellipsoid_r(g, lc, radii)
        rl = rl * (1 + (0.04 + 0.1 * margin) * g.noise(3.0))  # irregular, spiculated margins
        lesion = (rl < 1.0) & gland
        soft = np.clip((1.25 - rl) / 0.3, 0, 1) * gland  # ill-defined margins, just outside the mask
        ladc = float(latent["lesion_adc"]) * (1 + 0.05 * g.noise(1.5))
        if zone == "PZ":  # scored on DWI/ADC; moderately dark on T2W
            t2_level = {1: 0.95, 2: 0.72, 3: 0.6}[group]
            _blend(maps, soft, t2=t2_level * (1 + 0.05 * micro), s0=0.85, adc=ladc)
        elif group == 1:  # TZ, PI-RADS 3: heterogeneous, margins obscured
            t2_tex = g.noise(2.5)
            soft = np.clip((1.4 - rl) / 0.6, 0, 1) * gland
            _blend(maps, soft, t2=0.56 * (1 + 0.35 * t2_tex), s0=0.72, adc=ladc * (1 + 0.05 * t2_tex))
        else:  # TZ, PI-RADS 4-5: "erased charcoal", homogeneous and moderately dark on T2W
            t2_level = {2: 0.5, 3: 0.44}[group]
            _blend(maps, soft, t2=t2_level * (1 + 0.02 * micro), s0=0.7, adc=ladc)

    # ---- acquisition ---------------------------------------------------------------------------
    maps["adc"] *= float(site["adc_gain"])

    def thick(a3: np.ndarray) -> np.ndarray:
        return a3.reshape(D, k, H, W).mean(axis=1)

    t2 = thick(maps["t2"])
    dwi = {
        bv: thick(maps["s0"] * np.exp(-bv * 1e-6 * np.clip(maps["adc"], 0, None)))
        for bv in (*ADC_B_VALUES, B_VALUE)
    }
    t2 = ndi.gaussian_filter(t2, (0, site["t2_blur"], site["t2_blur"]))
    dwi = {bv: ndi.gaussian_filter(s, (0, site["dwi_blur"], site["dwi_blur"])) for bv, s in dwi.items()}

    out_grid = _Grid((D, H, W), (sz, sy, sx), rng, center)
    amp = float(site["bias"])
    t2_bias = np.exp(amp * out_grid.noise(60.0) - 0.004 * amp * out_grid.y)
    dwi_bias = np.exp(amp * out_grid.noise(60.0) + 0.004 * amp * out_grid.y)

    def rician(signal: np.ndarray, sigma: float) -> np.ndarray:
        real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        return np.sqrt(real**2 + imag**2)

    noise = float(site["noise"])
    t2w = rician(t2 * t2_bias, 0.035 * noise) ** float(site["t2_gamma"]) * float(site["t2_scale"])
    acq = {bv: rician(s * dwi_bias, (0.012 if bv == B_VALUE else 0.02) * noise) for bv, s in dwi.items()}
    b_lo, b_hi = ADC_B_VALUES
    with np.errstate(divide="ignore", invalid="ignore"):
        adc = np.log(acq[b_lo] / acq[b_hi]) / (b_hi - b_lo) * 1e6
    adc = np.nan_to_num(adc, nan=0.0, posinf=0.0, neginf=0.0).clip(0, 4000)
    # like a scanner, blank the ADC where the low-b signal is lost in the noise (air, fat)
    adc[acq[b_lo] < 5.0 * 0.02 * noise] = 0.0
    images = {
        "T2W": t2w.astype(np.float32),
        "DWI": (acq[B_VALUE] * float(site["dwi_scale"])).astype(np.float32),
        "ADC": adc.astype(np.float32),
    }

    # ---- masks: majority over each thick slice ----------------------------------------------
    gland_m = thick(gland.astype(np.float32)) >= 0.5
    pz_m = thick(pz.astype(np.float32)) >= 0.5
    zones = np.where(gland_m, np.where(pz_m, 1, 2), 0).astype(np.uint8)
    lesion_m = (thick(lesion.astype(np.float32)) >= 0.5) & gland_m
    if group >= 1 and not lesion_m.any():  # a tiny lesion lost between slices: keep its core
        lesion_m = (thick(lesion.astype(np.float32)) > 0) & gland_m
    masks = {
        "gland": gland_m.astype(np.uint8),
        "zones": zones,
        "lesion": lesion_m.astype(np.uint8),
    }
    return images, masks


# --------------------------------------------------------------------------------------------
# the cohort
# --------------------------------------------------------------------------------------------
def _generate_one(index: int, latent: dict, shape, spacing, seed: int, out_dir: str) -> dict:
    from threadpoolctl import threadpool_limits

    case_id = latent["case_id"]
    # the matrix products are small: multi-threaded BLAS only adds contention
    with threadpool_limits(limits=1, user_api="blas"):
        images, masks = simulate_case(latent, shape, spacing, _case_rng(seed, index, 1))
    sx, sy, sz = spacing
    D, H, W = shape
    # the box is centred on the scanner's origin; geometry identical for all files of a case
    origin = (-(W - 1) / 2 * sx, -(H - 1) / 2 * sy, -(D - 1) / 2 * sz)
    # stored as scanners do: integers (ADC in 1e-6 mm^2/s), which also halves the files
    images = {k: np.clip(np.rint(v), 0, np.iinfo(np.int16).max).astype(np.int16) for k, v in images.items()}
    paths = {}
    for key, array in (*images.items(), *masks.items()):
        rel = f"images/{case_id}_{key}.nii.gz"
        write_image(array, inside(out_dir, rel), spacing=spacing, origin=origin)
        paths[key] = rel
    voxel_ml = sx * sy * sz / 1000.0
    return {
        **paths,
        "gland_volume_ml": round(float(masks["gland"].sum()) * voxel_ml, 3),
        "lesion_volume_ml": round(float(masks["lesion"].sum()) * voxel_ml, 3),
    }


def default_shape(spacing: Sequence[float], preset: str = "tutorial") -> tuple[int, int, int]:
    """Grid (D, H, W) covering a preset's field of view at ``spacing`` (x, y, z) mm, each
    side rounded up to a multiple of 32 (the encoder's total downsampling)."""
    fov = np.asarray(PRESETS[preset]["shape"]) * np.asarray(PRESETS[preset]["spacing"])[::-1]
    return tuple(int(np.ceil(f / s / 32.0 - 1e-9) * 32) for f, s in zip(fov, np.asarray(spacing)[::-1]))


def make_synthetic_cohort(
    n_cases: int = 200,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    n_jobs: int = 1,
    preset: str = "tutorial",
    pirads_shares: Sequence[float] = PIRADS_SHARES,
    overwrite: bool = False,
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Cohort:
    """Generate (or reuse) the built-in synthetic prostate mpMRI cohort.

    Parameters
    ----------
    n_cases
        Number of cases (patients; one study each).
    shape
        Grid (D, H, W) voxels; default from ``preset`` ((32, 96, 96) for ``"tutorial"``), or,
        when only ``spacing`` is given, the preset's field of view on that grid rounded up to
        multiples of 32. Keep every dimension a multiple of 32 for the encoder.
    spacing
        Voxel size (x, y, z) mm; default from ``preset`` ((0.8, 0.8, 2.0) for
        ``"tutorial"``; ``preset="paper"`` gives the paper's 0.5 x 0.5 x 1.0 mm grid with a
        64 x 224 x 224 box).
    seed
        Cohort seed: same seed, same cohort, whatever ``n_jobs``.
    out_dir
        Cohort folder. Default: ``<radiolens cache>/synthetic/<hash of the settings>``, so a
        second call with the same settings returns the existing cohort.
    n_jobs
        Worker processes (joblib); ``-1`` for all cores.
    preset
        ``"tutorial"`` or ``"paper"`` (see :data:`PRESETS`).
    pirads_shares
        Probabilities of PI-RADS groups ``<3``, ``3``, ``4``, ``5``.
    overwrite
        Regenerate even when ``out_dir`` holds a cohort made with the same settings; needed
        to write into a folder that holds a different cohort.
    progress
        Progress bar.
    cache_dir
        The radiolens cache (default :func:`radiolens.cache.default_cache_dir`): the default
        ``out_dir`` and the record of passed voxel checks live there.

    Returns
    -------
    Cohort
        Manifest columns of the contract plus the latent parameters (``patient_id``, ``age``,
        ``bph_grade``, ``target_volume_ml``, ``lesion_zone``, ``lesion_diameter_mm``,
        ``lesion_adc``, ``adc_pz``, ``adc_tz``, ``inflammation``). Split 7:1:2 stratified by
        PI-RADS group.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {list(PRESETS)}")
    spacing = tuple(float(s) for s in (spacing or PRESETS[preset]["spacing"]))
    if shape is None:
        shape = default_shape(spacing, preset) if len(spacing) == 3 else PRESETS[preset]["shape"]
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be (D, H, W) with every side >= 8, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values (x, y, z), got {spacing}")
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    settings = {
        "version": GENERATOR_VERSION,
        "n_cases": int(n_cases),
        "shape": list(shape),
        "spacing": list(spacing),
        "seed": int(seed),
        "pirads_shares": [float(p) for p in pirads_shares],
        "sites": SITES,
    }
    key = hash_json(settings)[:16]
    out = Path(out_dir) if out_dir is not None else default_cache_dir(cache_dir) / "synthetic" / key
    out = out.expanduser().resolve()
    stamp = out / "synthetic.json"
    has_manifest = (out / "manifest.csv").exists() or (out / "manifest.parquet").exists()
    if has_manifest and not overwrite:
        same = stamp.exists() and json.loads(stamp.read_text()).get("key") == key
        if same:
            logger.info("reusing synthetic cohort in %s", out)
            try:
                # voxels are checked again for every file changed since its last check
                return load_cohort(out, check_pixels=True, cache_dir=cache_dir)
            except CohortError as err:  # a damaged file of ours: the seed makes it again
                logger.warning("synthetic cohort in %s is damaged (%s); regenerating it", out, err)
                overwrite = True
        else:
            raise CohortError(
                f"{str(out)!r} already holds a different cohort; pass overwrite=True to replace it",
                path=out,
            )
    if has_manifest:
        for name in ("manifest.csv", "manifest.parquet", "synthetic.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "images", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    latents = sample_latents(n_cases, seed, pirads_shares)
    records = [{"case_id": cid, **row} for cid, row in latents.to_dict(orient="index").items()]

    jobs = [(i, rec, shape, spacing, int(seed), str(out)) for i, rec in enumerate(records)]
    if n_jobs == 1:
        results = [_generate_one(*job) for job in progress_bar(jobs, desc="synthetic cases", progress=progress)]
    else:
        from joblib import Parallel, delayed

        # results come back in order; the bar counts finished cases, not dispatched ones
        done = Parallel(n_jobs=n_jobs, batch_size=4, return_as="generator")(
            delayed(_generate_one)(*job) for job in jobs
        )
        results = list(progress_bar(done, total=len(jobs), desc="synthetic cases", progress=progress))

    frame = latents.reset_index()
    for col in ("T2W", "DWI", "ADC", "gland", "zones", "lesion", "gland_volume_ml", "lesion_volume_ml"):
        frame[col] = [r[col] for r in results]
    frame["source"] = "synthetic"
    frame["split"] = split_cases(frame, seed=seed).to_numpy()
    extras = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    frame = frame[[*MANIFEST_COLUMNS, *extras]]
    # pixel checks are skipped: the generator's arrays are checked by construction, and
    # load_case checks voxels on every read anyway
    cohort = write_manifest(frame, out, check_pixels=False, fill_volumes=False, cache_dir=cache_dir)
    atomic_write_text(stamp, json.dumps({"key": key, "settings": settings}, indent=1, default=str))
    return cohort
