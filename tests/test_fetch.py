"""Fetchers for public prostate MRI data sets (radiolens.data.datasets), with the network mocked.

Small archives in each data set's real layout (tests/fake_archives.py) are served by a fake web:
pooch's HTTP downloader is replaced by a copy from local files, and pooch's DOI resolution by a
fake Zenodo record that declares md5 checksums. pooch's own checksum verification still runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from radiolens.cache import default_cache_dir
from radiolens.data.cohort import load_cohort
from radiolens.data.datasets import (
    ChecksumError,
    DownloadError,
    fetch_msd_prostate,
    fetch_picai,
    fetch_prostate158,
    msd,
    picai,
    pirads_group_from_scores,
    prostate158,
    resolve_data_dir,
)

from fake_archives import (
    PICAI_CASES,
    FakeWeb,
    make_msd_tar,
    make_picai,
    make_prostate158_zip,
)


@pytest.fixture
def web(monkeypatch):
    return FakeWeb().install(monkeypatch.setattr)


@pytest.fixture(scope="module")
def msd_archive(tmp_path_factory):
    return make_msd_tar(tmp_path_factory.mktemp("msd"))


@pytest.fixture(scope="module")
def picai_archives(tmp_path_factory):
    return make_picai(tmp_path_factory.mktemp("picai"), picai.PICAI_LABELS_URL)


@pytest.fixture(scope="module")
def p158_archive(tmp_path_factory):
    return make_prostate158_zip(tmp_path_factory.mktemp("p158"))


def serve_msd(web: FakeWeb, fake, monkeypatch) -> None:
    web.files[msd.MSD_URL] = fake.archive
    monkeypatch.setattr(msd, "MSD_MD5", fake.md5)


def serve_picai(web: FakeWeb, fake, monkeypatch) -> None:
    web.files.update(fake.urls)
    web.zenodo[picai.PICAI_IMAGES_DOI] = {fake.fold_zip.name: (fake.fold_zip, fake.fold_md5)}
    monkeypatch.setattr(picai, "_PICAI_REGISTRY_PATH", fake.registry)


def array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# --------------------------------------------------------------------------------------------
# where the data live
# --------------------------------------------------------------------------------------------
def test_data_dir_resolution_order(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    monkeypatch.setenv("RADIOLENS_DATA", str(env))
    assert resolve_data_dir(explicit) == explicit and explicit.is_dir()
    assert resolve_data_dir() == env and env.is_dir()
    monkeypatch.delenv("RADIOLENS_DATA")
    cache = resolve_data_dir()
    # one cache root: the data sets live in the radiolens cache unless told otherwise
    assert cache == default_cache_dir() / "datasets"
    assert cache.is_dir()
    # the test isolation points the user cache into the temporary home
    assert str(cache).startswith(str(Path.home()))
    assert resolve_data_dir(cache_dir=tmp_path / "mine") == tmp_path / "mine" / "datasets"


def test_fetch_without_data_dir_uses_env_folder(web, msd_archive, monkeypatch, tmp_path):
    serve_msd(web, msd_archive, monkeypatch)
    monkeypatch.setenv("RADIOLENS_DATA", str(tmp_path / "from-env"))
    cohort = fetch_msd_prostate(progress=False)
    assert cohort.root == (tmp_path / "from-env" / "msd_prostate" / "cohort").resolve()
    assert (tmp_path / "from-env" / "msd_prostate" / "raw" / "Task05_Prostate.tar").exists()


# --------------------------------------------------------------------------------------------
# PI-RADS from PI-CAI's lesion_PIRADS column
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cell, group",
    [("", 0), (np.nan, 0), ("2", 0), ("1,2", 0), ("3", 1), ("4,2", 2), ("2,5,3", 3),
     ("5,N/A", 3), ("N/A", None), ("N/A,N/A", None), ("3, 4", 2)],
)
def test_pirads_group_takes_the_most_suspicious_lesion(cell, group):
    assert pirads_group_from_scores(cell) == group


@pytest.mark.parametrize("cell", ["6", "0", "4,x", "4.5"])
def test_pirads_group_rejects_unknown_scores(cell):
    with pytest.raises(ValueError, match=r"case '1_2'.*lesion_PIRADS"):
        pirads_group_from_scores(cell, case_id="1_2")


def test_real_picai_registry_lists_every_case_once():
    registry = picai._load_picai_registry()
    kinds = pd.Series([k for k, _ in registry]).value_counts()
    assert kinds["marksheet"] == 1
    assert kinds["gland_guerbet23"] == 1500 and kinds["zones_heviai23"] == 1500
    lesion_cases = [c for k, c in registry if k.startswith("lesion_")]
    assert len(lesion_cases) == len(set(lesion_cases)) == 1500  # one expert source per case
    assert all(len(m) == 32 and int(m, 16) >= 0 for m in registry.values())
    assert set(k for k, _ in registry) <= set(picai.PICAI_LABEL_FOLDERS)


# --------------------------------------------------------------------------------------------
# MSD Task05_Prostate
# --------------------------------------------------------------------------------------------
def test_msd_converts_to_a_valid_cohort(web, msd_archive, monkeypatch, tmp_path):
    serve_msd(web, msd_archive, monkeypatch)
    cohort = fetch_msd_prostate(tmp_path, progress=False)
    again = load_cohort(tmp_path / "msd_prostate" / "cohort")  # the validator accepts it
    assert sorted(again.case_ids) == sorted(msd_archive.labels) == sorted(cohort.case_ids)

    m = cohort.manifest
    assert m["DWI"].isna().all() and m["lesion"].isna().all()  # explicitly missing
    assert m["pirads_group"].isna().all() and m["lesion_volume_ml"].isna().all()
    assert (m["source"] == "MSD Task05_Prostate").all()
    assert m["split"].value_counts().to_dict() == {"train": 7, "val": 1, "test": 2}
    info = json.loads((tmp_path / "msd_prostate" / "cohort" / "fetch.json").read_text())
    assert info["zone_check"]["consistent"] and info["skipped"] == {}

    voxel_ml = float(np.prod(msd_archive.spacing)) / 1000.0
    for case_id, published in msd_archive.labels.items():
        case = cohort.load_case(case_id)
        np.testing.assert_array_equal(case.masks["zones"], published)  # 1 = PZ, 2 = TZ kept
        np.testing.assert_array_equal(case.masks["gland"], published > 0)
        np.testing.assert_allclose(case.images["T2W"], msd_archive.t2[case_id])  # channel 0
        np.testing.assert_allclose(case.images["ADC"], msd_archive.adc[case_id])  # channel 1
        assert m.at[case_id, "gland_volume_ml"] == pytest.approx(
            np.count_nonzero(published) * voxel_ml, rel=1e-4
        )


def test_msd_rerun_is_a_no_op_and_force_rebuilds(web, msd_archive, monkeypatch, tmp_path):
    serve_msd(web, msd_archive, monkeypatch)
    first = fetch_msd_prostate(tmp_path, progress=False)
    manifest = tmp_path / "msd_prostate" / "cohort" / "manifest.csv"
    stamp, n_requests = manifest.stat().st_mtime_ns, len(web.requests)

    second = fetch_msd_prostate(tmp_path, progress=False)
    assert len(web.requests) == n_requests  # nothing downloaded again
    assert manifest.stat().st_mtime_ns == stamp  # nothing rewritten
    pd.testing.assert_frame_equal(first.manifest, second.manifest)

    other_seed = fetch_msd_prostate(tmp_path, seed=5, progress=False)  # other settings
    assert manifest.stat().st_mtime_ns != stamp
    assert len(web.requests) == n_requests  # the verified download is reused
    assert sorted(other_seed.case_ids) == sorted(first.case_ids)
    leftovers = [p.name for p in (tmp_path / "msd_prostate").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_msd_rebuilds_a_cohort_that_no_longer_validates(web, msd_archive, monkeypatch, tmp_path):
    serve_msd(web, msd_archive, monkeypatch)
    cohort = fetch_msd_prostate(tmp_path, progress=False)
    broken = cohort.path(cohort.case_ids[0], "gland")
    broken.unlink()
    rebuilt = fetch_msd_prostate(tmp_path, progress=False)
    assert rebuilt.path(cohort.case_ids[0], "gland").exists()


def test_msd_checksum_mismatch_raises_and_leaves_nothing(web, msd_archive, monkeypatch, tmp_path):
    serve_msd(web, msd_archive, monkeypatch)
    corrupted = tmp_path / "served" / "Task05_Prostate.tar"
    corrupted.parent.mkdir()
    data = bytearray(msd_archive.archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    web.files[msd.MSD_URL] = corrupted

    out = tmp_path / "data"
    with pytest.raises(ChecksumError, match=r"Task05_Prostate\.tar.*" + msd_archive.md5):
        fetch_msd_prostate(out, progress=False)
    dataset_dir = out / "msd_prostate"
    assert not (dataset_dir / "cohort").exists()
    assert not (dataset_dir / "raw" / "Task05_Prostate.tar").exists()
    leftovers = [p for p in dataset_dir.rglob("*") if p.is_file()]
    assert leftovers == []
    assert [p.name for p in dataset_dir.iterdir()] == ["raw"]


# --------------------------------------------------------------------------------------------
# PI-CAI
# --------------------------------------------------------------------------------------------
def test_picai_converts_labels_and_provenance(web, picai_archives, monkeypatch, tmp_path):
    serve_picai(web, picai_archives, monkeypatch)
    cohort = fetch_picai(tmp_path, folds=(0,), progress=False)
    load_cohort(tmp_path / "picai" / "cohort")
    m = cohort.manifest
    assert len(m) == len(PICAI_CASES)
    assert not any("_cor" in u or "_sag" in u for u in web.requests)

    voxel_ml = float(np.prod(picai_archives.t2_spacing)) / 1000.0
    for patient, study, _cell, group, lesion_source, center in PICAI_CASES:
        case_id = f"{patient}_{study}"
        row = m.loc[case_id]
        expected = pd.NA if group is None else group
        assert (pd.isna(row["pirads_group"]) and group is None) or row["pirads_group"] == expected
        assert row["site"] == center and row["source"] == "PI-CAI"
        assert row["patient_id"] == patient
        case = cohort.load_case(case_id)
        assert case.images["ADC"].shape == case.images["T2W"].shape == picai_archives.t2_shape
        assert case.images["DWI"].shape == picai_archives.t2_shape  # hbv -> DWI, on T2 grid
        np.testing.assert_array_equal(case.masks["gland"], picai_archives.glands[case_id])
        assert set(np.unique(case.masks["zones"])) <= {0, 1, 2}
        assert case.masks["zones"][0].sum() == 0  # AI zones began one slice later: resampled
        if lesion_source is None:
            assert pd.isna(row["lesion"]) and np.isnan(row["lesion_volume_ml"])
        else:
            lesion = picai_archives.lesions[case_id]
            np.testing.assert_array_equal(case.masks["lesion"], lesion)  # ISUP 3 -> 1
            assert row["lesion_volume_ml"] == pytest.approx(lesion.sum() * voxel_ml, rel=1e-4)
        assert row["gland_volume_ml"] == pytest.approx(
            picai_archives.glands[case_id].sum() * voxel_ml, rel=1e-4
        )
    assert m.at["10004_1000004", "lesion_annotation"] == "human_expert/Pooch25"
    assert m.at["10000_1000000", "lesion_volume_ml"] == 0.0  # annotated, no csPCa
    # the two studies of patient 10008 stay in one split
    assert m.at["10008_1000008", "split"] == m.at["10008_1000009", "split"]

    # a smaller rebuild reuses every verified download (images and labels)
    n_requests = len(web.requests)
    small = fetch_picai(tmp_path, folds=(0,), max_cases=4, progress=False)
    assert small.case_ids == sorted(m.index)[:4]
    assert len(web.requests) == n_requests


def test_picai_zenodo_checksum_mismatch(web, picai_archives, monkeypatch, tmp_path):
    serve_picai(web, picai_archives, monkeypatch)
    name = picai_archives.fold_zip.name
    web.zenodo[picai.PICAI_IMAGES_DOI] = {name: (picai_archives.fold_zip, "0" * 32)}
    with pytest.raises(ChecksumError, match=r"picai_public_images_fold0\.zip.*Zenodo"):
        fetch_picai(tmp_path, folds=[0], progress=False)
    assert not (tmp_path / "picai" / "cohort").exists()
    assert not (tmp_path / "picai" / "raw" / name).exists()
    assert not [p for p in (tmp_path / "picai").iterdir() if p.name.startswith(".")]


def test_picai_label_checksum_mismatch(web, picai_archives, monkeypatch, tmp_path):
    serve_picai(web, picai_archives, monkeypatch)
    url = next(u for u in picai_archives.urls if "Guerbet23" in u)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"tampered")
    web.files[url] = bad
    with pytest.raises(ChecksumError, match=Path(url).name):
        fetch_picai(tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "picai" / "cohort").exists()


def test_picai_rejects_unknown_folds(tmp_path):
    with pytest.raises(ValueError, match="folds"):
        fetch_picai(tmp_path, folds=(5,), progress=False)


# --------------------------------------------------------------------------------------------
# Prostate158
# --------------------------------------------------------------------------------------------
def test_prostate158_converts_zones_and_lesions(web, p158_archive, monkeypatch, tmp_path):
    web.zenodo[prostate158.PROSTATE158_DOI] = {
        p158_archive.archive.name: (p158_archive.archive, p158_archive.md5)
    }
    cohort = fetch_prostate158(tmp_path, progress=False)
    load_cohort(tmp_path / "prostate158" / "cohort")
    m = cohort.manifest
    assert len(m) == len(p158_archive.anatomy)
    assert m["pirads_group"].isna().all()  # not published per case
    assert m[["T2W", "ADC", "DWI", "lesion"]].notna().all().all()
    for cid, published in p158_archive.anatomy.items():
        case_id = f"prostate158_{cid}"
        case = cohort.load_case(case_id)
        # published 1 = transition, 2 = peripheral; the contract wants 1 = PZ, 2 = TZ
        np.testing.assert_array_equal(case.masks["zones"] == 1, published == 2)
        np.testing.assert_array_equal(case.masks["zones"] == 2, published == 1)
        tumour = p158_archive.tumour[cid]
        if tumour is None:
            assert not case.masks["lesion"].any() and m.at[case_id, "lesion_volume_ml"] == 0
        else:
            np.testing.assert_array_equal(case.masks["lesion"], tumour)
            assert m.at[case_id, "lesion_volume_ml"] > 0
        assert m.at[case_id, "source_split"] == p158_archive.split[cid]
    info = json.loads((tmp_path / "prostate158" / "cohort" / "fetch.json").read_text())
    assert info["zone_check"]["consistent"] and info["zone_check"]["cases_compared"] == len(m)

    # a rebuild with other settings verifies the archive against the checksum Zenodo declared
    # the first time, without asking Zenodo again
    del web.zenodo[prostate158.PROSTATE158_DOI]
    n_requests = len(web.requests)
    rebuilt = fetch_prostate158(tmp_path, seed=3, progress=False)
    assert len(web.requests) == n_requests and sorted(rebuilt.case_ids) == sorted(m.index)
    archive = tmp_path / "prostate158" / "raw" / p158_archive.archive.name
    archive.write_bytes(b"truncated")
    with pytest.raises(DownloadError, match="Zenodo record"):  # record gone: no silent reuse
        fetch_prostate158(tmp_path, seed=4, progress=False)


def test_prostate158_warns_when_zone_labels_look_swapped(web, monkeypatch, tmp_path, caplog):
    # a release whose anatomy masks used 1 = PZ would be converted the wrong way round
    swapped = make_prostate158_zip(tmp_path / "served", n_cases=4, pz_label=1)
    web.zenodo[prostate158.PROSTATE158_DOI] = {swapped.archive.name: (swapped.archive, swapped.md5)}
    with caplog.at_level("WARNING", logger="radiolens.data.datasets"):
        fetch_prostate158(tmp_path / "data", progress=False)
    assert "zone labels may be the other way round" in caplog.text
    info = json.loads((tmp_path / "data" / "prostate158" / "cohort" / "fetch.json").read_text())
    assert info["zone_check"] == {"cases_compared": 4, "peripheral_on_rim": 0, "consistent": False}
