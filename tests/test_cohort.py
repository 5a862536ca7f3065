"""The cohort contract: loading, validation (bad input), splitting, own-data tables."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from radiolens.data import (
    MANIFEST_COLUMNS,
    Cohort,
    CohortError,
    cohort_from_table,
    load_cohort,
    split_cases,
    write_image,
    write_manifest,
)

SHAPE = (8, 16, 16)  # (z, y, x)
SPACING = (1.0, 1.0, 2.0)  # (x, y, z)


def _arrays(rng, lesion: bool):
    t2 = rng.normal(100, 10, SHAPE).astype(np.float32)
    gland = np.zeros(SHAPE, np.uint8)
    gland[2:6, 4:12, 4:12] = 1
    zones = gland.copy()
    zones[2:6, 4:8, 4:12] = 2
    les = np.zeros(SHAPE, np.uint8)
    if lesion:
        les[3:5, 9:11, 6:9] = 1
    return {
        "T2W": t2,
        "DWI": rng.normal(20, 2, SHAPE).astype(np.float32),
        "ADC": rng.normal(1500, 50, SHAPE).astype(np.float32),
        "gland": gland,
        "zones": zones,
        "lesion": les,
    }


def make_tiny_cohort(root: Path, n: int = 6, seed: int = 0, ext: str = ".nii.gz") -> Cohort:
    """Write ``n`` tiny cases and their manifest; returns the validated cohort."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        case_id = f"case{i:02d}"
        group = i % 4
        arrays = _arrays(rng, lesion=group > 0)
        row = {"case_id": case_id, "pirads_group": group, "source": "unit-test", "site": "X"}
        for key, array in arrays.items():
            rel = f"img/{case_id}_{key}{ext}"
            write_image(array, root / rel, spacing=SPACING, origin=(-8.0, -8.0, -8.0))
            row[key] = rel
        rows.append(row)
    return write_manifest(pd.DataFrame(rows), root)


@pytest.fixture(scope="module")
def _template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template") / "cohort"
    make_tiny_cohort(root)
    return root


@pytest.fixture()
def tiny(_template, tmp_path) -> Cohort:
    """A fresh copy of a 6-case cohort (copying is much faster than writing it anew)."""
    root = tmp_path / "cohort"
    shutil.copytree(_template, root)
    return load_cohort(root, check_pixels=False)


def _rewrite(cohort: Cohort, case_id: str, key: str, array, spacing=SPACING, origin=(-8.0, -8.0, -8.0)):
    write_image(array, cohort.path(case_id, key), spacing=spacing, origin=origin)


# --------------------------------------------------------------------------------------------
# the contract
# --------------------------------------------------------------------------------------------
def test_manifest_written_with_contract_columns_and_volumes(tiny):
    frame = pd.read_csv(tiny.root / "manifest.csv")
    assert list(frame.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    # volumes filled from the masks: 4 * 8 * 8 voxels of 2 mm^3
    assert frame["gland_volume_ml"].tolist() == pytest.approx([4 * 8 * 8 * 2 / 1000] * 6)
    lesion = frame.set_index("case_id")["lesion_volume_ml"]
    assert lesion["case00"] == 0.0  # group 0: empty lesion mask -> 0, not missing
    assert lesion["case01"] == pytest.approx(2 * 2 * 3 * 2 / 1000)
    # paths stored relative, so the folder can move
    assert frame["T2W"].str.startswith("img/").all()
    assert set(frame["split"]) <= {"train", "val", "test"}


def test_cohort_api(tiny):
    assert len(tiny) == 6
    assert tiny.case_ids == [f"case{i:02d}" for i in range(6)]
    assert sorted(tiny.ids("train") + tiny.ids("val") + tiny.ids("test")) == tiny.case_ids
    assert tiny.path("case00", "T2W") == tiny.root / "img/case00_T2W.nii.gz"
    labels = tiny.labels
    assert list(labels.columns) == ["pirads_group", "gland_volume_ml", "lesion_volume_ml", "split"]
    assert labels.loc["case03", "pirads_group"] == 3
    case = tiny.load_case("case01")
    assert set(case.images) == {"T2W", "DWI", "ADC"} and set(case.masks) == {"gland", "zones", "lesion"}
    assert case.images["T2W"].dtype == np.float32 and case.images["T2W"].shape == SHAPE
    assert case.masks["zones"].dtype == np.uint8 and set(np.unique(case.masks["zones"])) == {0, 1, 2}
    assert case.spacing == pytest.approx(SPACING)
    assert case.labels["pirads_group"] == 1 and isinstance(case.labels["pirads_group"], int)
    assert case.stack().shape == (3, *SHAPE)
    img = tiny.read_image("case01", "ADC")
    assert img.GetSize() == (16, 16, 8)
    sub = tiny.subset(["case02", "case04"])
    assert sub.case_ids == ["case02", "case04"] and sub.root == tiny.root
    with pytest.raises(KeyError, match="nope"):
        tiny.path("nope", "T2W")
    with pytest.raises(ValueError, match="unknown split"):
        tiny.ids("training")


def test_missing_mask_is_explicit(tiny):
    cohort = tiny
    frame = pd.read_csv(cohort.root / "manifest.csv", dtype=str, keep_default_na=False)
    frame.loc[0, "lesion"] = ""
    frame.loc[0, "lesion_volume_ml"] = ""
    frame.to_csv(cohort.root / "manifest.csv", index=False)
    loaded = load_cohort(cohort.root)
    assert loaded.path("case00", "lesion") is None
    case = loaded.load_case("case00")
    assert "lesion" not in case.masks and case.missing == ("lesion",)
    assert np.isnan(loaded.labels.loc["case00", "lesion_volume_ml"])


def test_fingerprint_tracks_content_not_location(tiny, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny.root, moved)
    b = load_cohort(moved, check_pixels=False)
    assert tiny.fingerprint == b.fingerprint  # same content elsewhere: same key
    arr = tiny.load_case("case01").images["DWI"]
    arr[0, 0, 0] += 1.0
    _rewrite(tiny, "case01", "DWI", arr)
    assert load_cohort(tiny.root).fingerprint != b.fingerprint
    frame = pd.read_csv(moved / "manifest.csv")
    frame.loc[0, "pirads_group"] = 3
    frame.to_csv(moved / "manifest.csv", index=False)
    assert load_cohort(moved).fingerprint != b.fingerprint  # labels count too


def test_parquet_manifest_and_other_formats(tmp_path):
    cohort = make_tiny_cohort(tmp_path / "c", n=3, ext=".nrrd")
    write_manifest(cohort.manifest, cohort.root, fmt="parquet")
    assert not (cohort.root / "manifest.csv").exists()
    loaded = load_cohort(cohort.root / "manifest.parquet")
    assert loaded.case_ids == cohort.case_ids
    assert loaded.load_case("case02").masks["lesion"].sum() == 12


# --------------------------------------------------------------------------------------------
# bad input: each error names the case, the file and the problem
# --------------------------------------------------------------------------------------------
def _expect(root, *fragments, check_pixels=True):
    with pytest.raises(CohortError) as info:
        load_cohort(root, check_pixels=check_pixels)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error: {message}"
    return info.value


def test_missing_file(tiny):
    tiny.path("case02", "ADC").unlink()
    err = _expect(tiny.root, "case02", "case02_ADC.nii.gz", "does not exist")
    assert err.case_id == "case02" and err.key == "ADC"


def test_mismatched_geometry_between_t2w_and_mask(tiny):
    gland = tiny.load_case("case01").masks["gland"]
    _rewrite(tiny, "case01", "gland", gland, spacing=(1.0, 1.0, 3.0))
    _expect(tiny.root, "case01", "case01_gland.nii.gz", "geometry mismatch with T2W", "spacing")
    _rewrite(tiny, "case01", "gland", gland, origin=(-8.0, -5.0, -8.0))
    _expect(tiny.root, "case01", "case01_gland.nii.gz", "origin")
    _rewrite(tiny, "case01", "gland", gland[:, :, :12])
    _expect(tiny.root, "case01", "case01_gland.nii.gz", "size")


def test_small_header_rounding_is_tolerated(tiny):
    gland = tiny.load_case("case01").masks["gland"]
    _rewrite(tiny, "case01", "gland", gland, spacing=(1.0000004, 1.0, 2.0), origin=(-8.00001, -8.0, -8.0))
    load_cohort(tiny.root)


def test_empty_gland_mask(tiny):
    _rewrite(tiny, "case03", "gland", np.zeros(SHAPE, np.uint8))
    _expect(tiny.root, "case03", "case03_gland.nii.gz", "empty gland")


def test_non_binary_mask(tiny):
    lesion = tiny.load_case("case01").masks["lesion"]
    lesion[lesion > 0] = 3
    _rewrite(tiny, "case01", "lesion", lesion)
    _expect(tiny.root, "case01", "case01_lesion.nii.gz", "non-binary")
    _rewrite(tiny, "case01", "lesion", lesion.astype(np.float32) * 0.25)
    _expect(tiny.root, "case01", "case01_lesion.nii.gz", "not integer-valued")


def test_two_dimensional_image(tiny):
    img = sitk.GetImageFromArray(np.ones((16, 16), np.float32))
    write_image(img, tiny.path("case04", "DWI"))
    _expect(tiny.root, "case04", "case04_DWI.nii.gz", "3D", check_pixels=False)


def test_nan_voxels_caught_at_load_and_at_use(tiny):
    arr = tiny.load_case("case02").images["ADC"]
    arr[1, 2, 3] = np.nan
    _rewrite(tiny, "case02", "ADC", arr)
    _expect(tiny.root, "case02", "case02_ADC.nii.gz", "NaN")
    # headers only at load: the voxels are still checked when the case is read
    lazy = load_cohort(tiny.root, check_pixels=False)
    with pytest.raises(CohortError, match=r"case02.*case02_ADC\.nii\.gz.*NaN"):
        lazy.load_case("case02")
    lazy.load_case("case01")


def test_duplicate_case_id(tiny):
    frame = pd.read_csv(tiny.root / "manifest.csv", dtype=str, keep_default_na=False)
    frame.loc[4, "case_id"] = "case01"
    frame.to_csv(tiny.root / "manifest.csv", index=False)
    _expect(tiny.root, "case01", "duplicate case id", "manifest.csv")


def test_unknown_pirads_value(tiny):
    frame = pd.read_csv(tiny.root / "manifest.csv", dtype=str, keep_default_na=False)
    frame.loc[2, "pirads_group"] = "7"
    frame.loc[3, "pirads_group"] = "PI-RADS 4"
    frame.to_csv(tiny.root / "manifest.csv", index=False)
    err = _expect(tiny.root, "case02", "case03", "unknown PI-RADS group '7'", "'PI-RADS 4'")
    assert len(err.problems) == 2


def test_case_without_any_image(tiny):
    frame = pd.read_csv(tiny.root / "manifest.csv", dtype=str, keep_default_na=False)
    frame.loc[1, ["T2W", "DWI", "ADC"]] = ""
    frame.to_csv(tiny.root / "manifest.csv", index=False)
    _expect(tiny.root, "case01", "no image at all")


def test_bad_split_and_missing_column(tiny):
    frame = pd.read_csv(tiny.root / "manifest.csv", dtype=str, keep_default_na=False)
    frame.loc[0, "split"] = "training"
    frame.to_csv(tiny.root / "manifest.csv", index=False)
    _expect(tiny.root, "case00", "split 'training'")
    frame.drop(columns=["zones"]).to_csv(tiny.root / "manifest.csv", index=False)
    _expect(tiny.root, "missing column", "zones")


def test_corrupted_file(tiny):
    # garbage bytes: the header cannot be read
    tiny.path("case01", "T2W").write_bytes(b"this is not an image" * 10)
    _expect(tiny.root, "case01", "case01_T2W.nii.gz", "corrupted")


def test_truncated_file_caught_by_pixel_check(tiny):
    path = tiny.path("case05", "DWI")
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # header intact, voxels cut off
    _expect(tiny.root, "case05", "case05_DWI.nii.gz", "corrupted")


def test_nothing_half_written(tiny):
    cohort = tiny
    (cohort.root / "manifest.csv").unlink()
    _rewrite(cohort, "case01", "gland", np.zeros(SHAPE, np.uint8))
    frame = cohort.manifest.reset_index()
    with pytest.raises(CohortError, match="empty gland"):
        write_manifest(frame, cohort.root)
    assert not (cohort.root / "manifest.csv").exists()  # validation failed: no manifest at all
    # a failing image write leaves neither the target nor a temporary file
    with pytest.raises(RuntimeError):  # SimpleITK has no writer for that extension
        write_image(np.ones((4, 4, 4), np.float32), cohort.root / "img" / "x.unknownformat")
    assert [p.name for p in (cohort.root / "img").iterdir() if "x.unknown" in p.name] == []
    leftovers = [p for p in cohort.root.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]
    assert leftovers == []


def test_pixel_check_is_remembered_and_invalidated(tiny, monkeypatch):
    from radiolens.data import cohort as cohort_module

    load_cohort(tiny.root)  # first load: checked and remembered
    calls = []
    real = cohort_module._check_pixels
    monkeypatch.setattr(cohort_module, "_check_pixels", lambda *a: calls.append(1) or real(*a))
    load_cohort(tiny.root)
    assert calls == []
    arr = tiny.load_case("case00").images["T2W"]
    calls.clear()
    arr[0, 0, 0] = np.nan
    _rewrite(tiny, "case00", "T2W", arr)  # new bytes, size or mtime: checked again
    with pytest.raises(CohortError, match="NaN"):
        load_cohort(tiny.root)


# --------------------------------------------------------------------------------------------
# splitting
# --------------------------------------------------------------------------------------------
def _label_table(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "pirads_group": rng.choice(4, n, p=[0.4, 0.2, 0.25, 0.15])})


def test_split_ratios_stratified_and_deterministic():
    table = _label_table()
    split = split_cases(table, seed=3)
    assert split.index.tolist() == table["case_id"].tolist()
    counts = split.value_counts()
    assert abs(counts["train"] - 140) <= 1 and abs(counts["val"] - 20) <= 1 and abs(counts["test"] - 40) <= 1
    for group, members in table.groupby("pirads_group"):
        share = split[members["case_id"]].value_counts(normalize=True)
        assert share["train"] == pytest.approx(0.7, abs=0.06), group
        assert share["test"] == pytest.approx(0.2, abs=0.06), group
    assert split.equals(split_cases(table, seed=3))
    assert not split.equals(split_cases(table, seed=4))


def test_split_keeps_patients_together():
    table = _label_table(60)
    table["patient_id"] = [f"p{i // 3}" for i in range(60)]
    split = split_cases(table, seed=0)
    per_patient = split.groupby(table.set_index("case_id")["patient_id"]).nunique()
    assert (per_patient == 1).all()


# --------------------------------------------------------------------------------------------
# your own data
# --------------------------------------------------------------------------------------------
def test_cohort_from_table_aliases_scores_and_splits(tmp_path):
    src = make_tiny_cohort(tmp_path / "src", n=4, ext=".mha")
    frame = pd.read_csv(src.root / "manifest.csv")
    table = pd.DataFrame(
        {
            "ID": frame["case_id"],
            "t2": frame["T2W"],
            "hbv": frame["DWI"],
            "adc": frame["ADC"],
            "prostate": frame["gland"],
            "lesion": frame["lesion"],
            "PIRADS": [2, 5, 1, ""],
            "age": [60, 61, 62, 63],
        }
    )
    csv = src.root / "my_table.csv"
    table.to_csv(csv, index=False)
    cohort = cohort_from_table(csv, out_dir=tmp_path / "mine")
    assert cohort.case_ids == frame["case_id"].tolist()
    groups = cohort.manifest["pirads_group"]
    assert groups.iloc[:3].tolist() == [0, 3, 0] and pd.isna(groups.iloc[3])
    assert cohort.path("case00", "zones") is None  # not given: explicit missing
    assert cohort.path("case00", "T2W") == (src.root / "img/case00_T2W.mha").resolve()
    assert set(cohort.manifest["split"]) <= {"train", "val", "test"}
    assert cohort.manifest["age"].astype(float).tolist() == [60, 61, 62, 63]
    assert cohort.manifest["gland_volume_ml"].iloc[0] == pytest.approx(0.512)
    assert load_cohort(tmp_path / "mine").case_ids == cohort.case_ids


def test_cohort_from_table_validates_and_resamples(tiny, tmp_path):
    src = tiny
    # an ADC map on a coarser grid, as scanners often store it
    adc = sitk.ReadImage(str(src.path("case01", "ADC")))
    coarse = sitk.Resample(adc, [8, 8, 8], sitk.Transform(), sitk.sitkLinear, adc.GetOrigin(),
                           (2.0, 2.0, 2.0), adc.GetDirection(), 0.0, sitk.sitkFloat32)
    sitk.WriteImage(coarse, str(src.path("case01", "ADC")))
    frame = pd.read_csv(src.root / "manifest.csv").drop(columns=["split"])
    frame.to_csv(src.root / "t.csv", index=False)
    with pytest.raises(CohortError, match=r"case01.*case01_ADC\.nii\.gz.*grid differs.*cohort.resample: true"):
        cohort_from_table(src.root / "t.csv", out_dir=tmp_path / "strict", resample=False)
    assert not (tmp_path / "strict").exists()
    assert not [p.name for p in tmp_path.iterdir() if "strict" in p.name], "a failed table left a folder behind"
    # the default resamples (real DWI/ADC always sit on their own grid), and says so
    fixed = cohort_from_table(src.root / "t.csv", out_dir=tmp_path / "fixed")
    case = fixed.load_case("case01")
    assert case.images["ADC"].shape == SHAPE
    assert fixed.path("case01", "ADC").parent == (tmp_path / "fixed" / "resampled").resolve()
    assert fixed.path("case00", "ADC") == src.path("case00", "ADC").resolve()
    with pytest.raises(CohortError, match="unknown PI-RADS score"):
        cohort_from_table(frame.head(2).assign(pirads=[3, 9]).drop(columns=["pirads_group"]).assign(
            T2W=[str(src.root / p) for p in frame["T2W"].head(2)], DWI=None, ADC=None, gland=None, zones=None, lesion=None),
            out_dir=tmp_path / "bad")


def test_cohort_from_table_default_folder_is_the_cache(tiny):
    src = tiny
    table = pd.read_csv(src.root / "manifest.csv")
    table[["T2W", "gland"]] = table[["T2W", "gland"]].map(lambda p: str(src.root / p))
    cohort = cohort_from_table(table[["case_id", "T2W", "gland", "pirads_group"]])
    assert Path(os.environ["RADIOLENS_CACHE"]) in cohort.root.parents
    assert cohort.path("case00", "DWI") is None


def test_split_by_an_absent_label_is_a_user_error_naming_the_column():
    from radiolens.data.contract import CohortError, split_cases

    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(10)]})
    with pytest.raises(CohortError, match="'pirads_group'.*stratify=None"):
        split_cases(table)
    assert split_cases(table, stratify=None).value_counts().to_dict() == {"train": 7, "test": 2, "val": 1}
