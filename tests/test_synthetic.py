"""The built-in synthetic cohort: contract, anatomy, physics, labels, determinism, figure."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radiolens.data import CohortError, load_cohort, make_synthetic_cohort
from radiolens.data.synthetic import (
    PRESETS,
    PZ_SHARE_LIMITS,
    default_shape,
    sample_latents,
    simulate_case,
)
from radiolens.plotting import plot_cases

OUTPUT = Path(__file__).parent / "_output"


@pytest.fixture(scope="module")
def stats(synthetic_cohort) -> pd.DataFrame:
    """Per-case measurements inside the masks (read once for the whole module)."""
    rows = []
    for case_id in synthetic_cohort.case_ids:
        case = synthetic_cohort.load_case(case_id)
        im, m = case.images, case.masks
        lesion = m["lesion"] > 0
        pz = (m["zones"] == 1) & ~lesion
        tz = (m["zones"] == 2) & ~lesion
        gland = m["gland"] > 0
        n_pz, n_tz = np.count_nonzero(m["zones"] == 1), np.count_nonzero(m["zones"] == 2)
        row = {
            "case_id": case_id,
            "group": case.labels["pirads_group"],
            "zone": case.labels["lesion_zone"],
            "site": case.labels["site"],
            "latent_adc_pz": case.labels["adc_pz"],
            "adc_pz": np.median(im["ADC"][pz]),
            "adc_tz": np.median(im["ADC"][tz]),
            "t2_pz": np.median(im["T2W"][pz]),
            "t2_tz": np.median(im["T2W"][tz]),
            "dwi_pz": np.median(im["DWI"][pz]),
            "t2_gland": np.median(im["T2W"][gland]),
            "gland_ml": gland.sum() * case.voxel_volume_ml,
            "pz_share": n_pz / (n_pz + n_tz),
            "latent_pz_share": case.labels["pz_share"],
            "lesion_ml": lesion.sum() * case.voxel_volume_ml,
            "log_dwi_adc_corr": np.corrcoef(np.log(im["DWI"][gland] + 1e-3), im["ADC"][gland])[0, 1],
        }
        if lesion.any():
            zz, yy, xx = np.nonzero(lesion)
            sx, sy, sz = case.spacing
            row.update(
                adc_lesion=np.median(im["ADC"][lesion]),
                dwi_lesion=np.median(im["DWI"][lesion]),
                t2_lesion=np.median(im["T2W"][lesion]),
                extent_mm=max(np.ptp(xx) * sx, np.ptp(yy) * sy, np.ptp(zz) * sz) + min(sx, sy),
                lesion_in_gland=bool(np.all(m["gland"][lesion] == 1)),
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("case_id")


def test_contract_and_default_grid(synthetic_cohort):
    cohort = load_cohort(synthetic_cohort.root)  # full validation, voxel checks included
    assert len(cohort) == 24
    case = cohort.load_case(cohort.case_ids[0])
    assert case.shape == PRESETS["tutorial"]["shape"] == (32, 96, 96)
    assert case.spacing == pytest.approx(PRESETS["tutorial"]["spacing"])
    assert all(d % 32 == 0 for d in case.shape)  # the encoder downsamples by 32
    counts = cohort.manifest["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (17, 2, 5)
    extra = {"age", "bph_grade", "pz_share", "lesion_zone", "lesion_diameter_mm", "lesion_margin", "adc_pz", "adc_tz",
             "patient_id"}
    assert extra <= set(cohort.manifest.columns)
    assert set(cohort.manifest["site"]) == {"A", "B", "C"}
    assert cohort.manifest["source"].eq("synthetic").all()


def test_volumes_are_measured_from_masks(synthetic_cohort, stats):
    labels = synthetic_cohort.labels
    assert labels["gland_volume_ml"].to_numpy() == pytest.approx(stats["gland_ml"].to_numpy(), abs=1e-3)
    assert labels["lesion_volume_ml"].to_numpy() == pytest.approx(stats["lesion_ml"].to_numpy(), abs=1e-3)
    assert labels["gland_volume_ml"].between(20, 100).all()
    assert labels["gland_volume_ml"].std() > 10  # varies with age/BPH
    bph = synthetic_cohort.manifest["bph_grade"].astype(float)
    assert np.corrcoef(bph, labels["gland_volume_ml"])[0, 1] > 0.8


def test_labels_drive_lesions(synthetic_cohort, stats):
    no_lesion = stats["group"] == 0
    assert (stats.loc[no_lesion, "lesion_ml"] == 0).all()
    assert (stats.loc[~no_lesion, "lesion_ml"] > 0).all()
    assert stats.loc[~no_lesion, "lesion_in_gland"].all()
    group5 = stats["group"] == 3
    assert group5.sum() >= 2
    assert (synthetic_cohort.manifest.loc[group5, "lesion_diameter_mm"] >= 15).all()
    assert (stats.loc[group5, "extent_mm"] >= 14).all()
    # larger PI-RADS group, larger and more restricted lesions
    by_group = stats[~no_lesion].groupby("group")
    assert by_group["lesion_ml"].median().is_monotonic_increasing
    assert by_group["adc_lesion"].median().is_monotonic_decreasing
    assert set(synthetic_cohort.manifest.loc[~no_lesion, "lesion_zone"]) == {"PZ", "TZ"}


def test_zonal_share_is_that_of_older_men(stats):
    """PZ / (PZ + TZ) as in men referred for MRI (see "Zonal anatomy" in radiolens.data.synthetic):
    the PZ keeps its ~15 ml with age (Turkbey et al. 2012) while BPH enlarges the TZ, so the PZ
    is about a third of the gland and usually the smaller zone (Kaplan et al. 1995; Chang et
    al. 2017), not the young man's 70 %."""
    # the latent targets over many men: cheap, no images
    latents = sample_latents(2000, seed=0)
    share = latents["pz_share"]
    assert 0.25 <= share.median() <= 0.32
    assert 0.17 <= share.quantile(0.25) and share.quantile(0.75) <= 0.45
    assert 0.10 <= share.std() <= 0.20
    assert share.between(*PZ_SHARE_LIMITS).all()
    assert (share < 0.5).mean() > 0.75  # the PZ is usually the smaller zone
    pz_ml = share * latents["target_volume_ml"]
    assert abs(np.corrcoef(pz_ml, latents["age"])[0, 1]) < 0.2  # PZ volume does not grow with age
    assert np.corrcoef(share, latents["target_volume_ml"])[0, 1] < -0.7  # BPH takes the gland's growth
    # the written zone masks follow the targets (thick-slice majority adds ~0.03)
    measured = stats["pz_share"]
    assert (measured - stats["latent_pz_share"]).abs().max() < 0.07
    assert 0.25 <= measured.median() <= 0.40
    assert np.corrcoef(measured, stats["gland_ml"])[0, 1] < -0.6


def test_pirads_groups_are_read_from_lesion_findings():
    """PI-RADS v2.1: PZ groups differ on DWI/ADC (3 mild, 4-5 marked), TZ groups on T2W
    (3 heterogeneous, 4-5 homogeneous and dark); 5 differs from 4 by size (>= 15 mm)."""
    base = sample_latents(1, seed=3).reset_index().iloc[0].to_dict()
    base.update(target_volume_ml=40.0, pz_share=0.4, site="A")

    def read(group, zone, diameter, adc, margin=0.3):
        latent = {**base, "pirads_group": group, "lesion_zone": zone, "lesion_diameter_mm": diameter,
                  "lesion_adc": adc, "lesion_margin": margin}
        images, masks = simulate_case(latent, shape=(32, 64, 64), seed=4)
        lesion = masks["lesion"] > 0
        host = (masks["zones"] == (1 if zone == "PZ" else 2)) & ~lesion
        t2 = images["T2W"][lesion]
        return {
            "adc": np.median(images["ADC"][lesion]) / np.median(images["ADC"][host]),
            "dwi": np.median(images["DWI"][lesion]) / np.median(images["DWI"][host]),
            "t2": np.median(t2) / np.median(images["T2W"][host]),
            "t2_cv": t2.std() / t2.mean(),
            "ml": lesion.sum() * 0.8 * 0.8 * 2.0 / 1000,
        }

    pz3, pz4, pz5 = read(1, "PZ", 11.0, 1150.0), read(2, "PZ", 11.0, 800.0), read(3, "PZ", 20.0, 700.0)
    assert pz3["adc"] > 0.65 and pz4["adc"] < 0.6  # mild/moderate vs marked ADC drop
    assert pz4["dwi"] > 1.3 * pz3["dwi"] and pz4["dwi"] > 2.0  # markedly bright at high b
    assert pz5["ml"] > 2.5 * pz4["ml"]  # 5 = 4 and >= 15 mm
    tz3, tz4 = read(1, "TZ", 11.0, 1100.0), read(2, "TZ", 11.0, 850.0)
    assert tz3["t2_cv"] > 1.2 * tz4["t2_cv"]  # heterogeneous vs homogeneous ("erased charcoal")
    assert tz4["t2"] < 0.8  # moderately dark on T2W


def test_adc_in_physical_ranges(stats):
    assert stats["adc_pz"].between(1400, 1950).all()
    assert stats["adc_tz"].between(1050, 1550).all()
    assert (stats["adc_pz"] > stats["adc_tz"] + 150).all()
    significant = stats[stats["group"] >= 2]
    assert significant["adc_lesion"].median() < 1000
    assert significant["adc_lesion"].between(550, 1200).all()  # blurred edges lift a few
    # the latent per-patient PZ ADC shows up in the measured map
    assert np.corrcoef(stats["adc_pz"], stats["latent_adc_pz"])[0, 1] > 0.6


def test_modality_appearance(stats):
    assert (stats["t2_pz"] > 1.3 * stats["t2_tz"]).all()  # bright PZ crescent on T2W
    lesions = stats[stats["group"] >= 2]
    pz_lesions = lesions[lesions["zone"] == "PZ"]
    assert (pz_lesions["t2_lesion"] < pz_lesions["t2_pz"]).all()  # dark on T2W
    assert (lesions["dwi_lesion"] > 1.5 * lesions["dwi_pz"]).all()  # bright at high b
    assert (stats["log_dwi_adc_corr"] < 0).all()  # S = S0 exp(-b ADC)
    tz_lesions = lesions[lesions["zone"] == "TZ"]
    assert (tz_lesions["t2_lesion"] < 0.8 * tz_lesions["t2_tz"]).all()  # "erased charcoal"


def test_sites_differ_in_intensity_scale(stats):
    medians = stats.groupby("site")["t2_gland"].median()
    assert medians.max() / medians.min() > 3


def test_simulation_physics_and_noise():
    latent = sample_latents(1, seed=11).reset_index().iloc[0].to_dict()
    latent.update(pirads_group=3, lesion_zone="PZ", lesion_diameter_mm=18.0, lesion_adc=700.0,
                  target_volume_ml=30.0)
    images, masks = simulate_case(latent, shape=(32, 64, 64), seed=5)
    for key, array in images.items():
        assert array.dtype == np.float32 and np.isfinite(array).all() and (array >= 0).all(), key
    # Rician magnitude noise: even air and the background are positive, never exactly zero
    assert (images["T2W"] > 0).mean() > 0.999
    assert images["ADC"].max() <= 4000
    # thick slices: masks are made per acquired slice, not per sub-slice
    assert masks["gland"].shape == (32, 64, 64)
    assert set(np.unique(masks["zones"])) == {0, 1, 2}
    lesion = masks["lesion"] > 0
    assert lesion.sum() * 0.8 * 0.8 * 2.0 / 1000 > 0.8  # an 18 mm lesion
    assert np.median(images["ADC"][lesion]) < 950


def test_paper_grid_is_available():
    latent = sample_latents(1, seed=2).reset_index().iloc[0].to_dict()
    latent["target_volume_ml"] = 25.0  # small gland: fits a small box of the paper's spacing
    images, masks = simulate_case(latent, shape=(64, 96, 96), spacing=(0.5, 0.5, 1.0), seed=1)
    assert images["T2W"].shape == (64, 96, 96)
    volume = masks["gland"].sum() * 0.5 * 0.5 * 1.0 / 1000
    assert volume == pytest.approx(25.0, rel=0.12)
    assert PRESETS["paper"] == {"shape": (64, 224, 224), "spacing": (0.5, 0.5, 1.0)}
    # spacing alone keeps the tutorial field of view (76.8 x 76.8 x 64 mm), sides of 32k voxels
    assert default_shape((0.5, 0.5, 1.0)) == (64, 160, 160)
    assert default_shape((0.8, 0.8, 2.0)) == PRESETS["tutorial"]["shape"]


def test_deterministic_whatever_n_jobs_and_reused(tmp_path):
    kwargs = {"n_cases": 2, "shape": (32, 64, 64), "seed": 3}
    one = make_synthetic_cohort(out_dir=tmp_path / "one", n_jobs=1, **kwargs)
    two = make_synthetic_cohort(out_dir=tmp_path / "two", n_jobs=2, **kwargs)
    assert one.fingerprint == two.fingerprint
    # case i does not depend on how many cases are made; default folder: the radiolens cache
    first = make_synthetic_cohort(n_jobs=1, **{**kwargs, "n_cases": 1})
    assert Path(os.environ["RADIOLENS_CACHE"]) in first.root.parents
    np.testing.assert_array_equal(
        first.load_case("synth_0000").images["DWI"], one.load_case("synth_0000").images["DWI"]
    )
    # another seed, other images
    assert not np.array_equal(
        first.load_case("synth_0000").images["T2W"],
        make_synthetic_cohort(out_dir=tmp_path / "other", **{**kwargs, "n_cases": 1, "seed": 4})
        .load_case("synth_0000").images["T2W"],
    )
    # same settings, same folder: reused, not regenerated
    stamp = os.stat(one.path("synth_0001", "T2W")).st_mtime_ns
    again = make_synthetic_cohort(out_dir=tmp_path / "one", n_jobs=1, **kwargs)
    assert again.fingerprint == one.fingerprint
    assert os.stat(one.path("synth_0001", "T2W")).st_mtime_ns == stamp
    with pytest.raises(CohortError, match="different cohort"):
        make_synthetic_cohort(out_dir=tmp_path / "one", n_cases=1, shape=(32, 64, 64), seed=3)


def test_bad_settings():
    with pytest.raises(ValueError, match="preset"):
        make_synthetic_cohort(n_cases=1, preset="huge")
    with pytest.raises(ValueError, match="spacing"):
        make_synthetic_cohort(n_cases=1, spacing=(0.8, 0.8))
    with pytest.raises(ValueError, match="n_cases"):
        make_synthetic_cohort(n_cases=0)


def test_figure_of_cases(synthetic_cohort, stats):
    import matplotlib

    matplotlib.use("Agg")
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / "synthetic_cases.png"
    path.unlink(missing_ok=True)
    # one case per PI-RADS group, preferring a TZ lesion for group 5 when there is one
    picks = []
    for group in range(4):
        members = stats[stats["group"] == group]
        if group == 3 and (members["zone"] == "TZ").any():
            members = members[members["zone"] == "TZ"]
        picks.append(members.index[0])
    fig = plot_cases(synthetic_cohort, picks, path=path)
    assert path.stat().st_size > 50_000
    assert len(fig.axes) == 12
    assert [ax.get_title() for ax in fig.axes[:3]] == ["T2W", "DWI", "ADC (1e-6 mm²/s)"]
    import matplotlib.pyplot as plt

    plt.close(fig)
