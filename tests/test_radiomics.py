"""Tests of radiolens.radiomics: exact, parallel, cached, resumable PyRadiomics extraction."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from radiolens import radiomics as R
from radiolens.cache import ArtifactCache, hash_json
from radiolens.naming import FAMILIES, parse_column
from radiolens.radiomics import extraction as R_extract
from radiolens.radiomics import units as R_units

import _radiomics_helpers as H

HELPER = Path(__file__).with_name("_radiomics_helpers.py")


def _direct(image, mask, settings, label=1, itk_threads=1) -> dict:
    """PyRadiomics called the plain way (with one ITK thread, as radiolens runs it)."""
    from radiomics import featureextractor

    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)
    try:
        extractor = featureextractor.RadiomicsFeatureExtractor(json.loads(json.dumps(settings)))
        out = extractor.execute(str(image), str(mask), label=label)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)
    return {k: float(v) for k, v in out.items() if not k.startswith("diagnostics_")}


@pytest.fixture
def cohort(tmp_path):
    return H.make_cohort(tmp_path / "data", n_cases=4, no_lesion=("case01",))


def _entries(cache_dir) -> list[str]:
    folder = Path(cache_dir) / R.CACHE_NAMESPACE
    return sorted(p.name[: -len(".json")] for p in folder.glob("*.json") if not p.name.endswith(".json.data"))


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
def test_default_settings_are_the_papers():
    params = R.default_settings()
    assert set(params["featureClass"]) == set(FAMILIES)  # six classes, no shape
    assert "shape" not in params["featureClass"]
    assert set(params["imageType"]) == {"Original", "Wavelet"}
    assert params["setting"]["normalize"] is True
    assert params["setting"]["binCount"] == 32 and "binWidth" not in params["setting"]
    # a fresh copy each call
    params["setting"]["binCount"] = 8
    assert R.default_settings()["setting"]["binCount"] == 32
    assert R.load_settings(None) == R.default_settings()


def test_settings_from_yaml_file_and_bad_settings(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(H.REDUCED_SETTINGS))
    assert R.load_settings(path) == H.REDUCED_SETTINGS
    with pytest.raises(ValueError, match="binCuont"):
        R.load_settings({"setting": {"binCuont": 3}})
    with pytest.raises(ValueError, match="top-level"):
        R.load_settings({"settings": {}})
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        R.load_settings(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------------------------
# exactness and table layout
# --------------------------------------------------------------------------------------------
def test_values_identical_to_pyradiomics_on_several_cases(cohort):
    result = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=False, progress=False)
    features = result.features
    assert list(features.index) == cohort.case_ids and features.index.name == "case_id"
    for case_id in cohort.case_ids:
        for modality in H.MODALITIES:
            direct = _direct(cohort.path(case_id, modality), cohort.path(case_id, "gland"), H.REDUCED_SETTINGS)
            ours = {c.split("__", 1)[1]: v for c, v in features.loc[case_id].items() if c.startswith(f"{modality}__")}
            assert ours.keys() == direct.keys()
            assert all(ours[k] == direct[k] for k in direct), f"{case_id} {modality} differs from PyRadiomics"
    # names parse, diagnostics are kept apart, provenance has the version
    parsed = [parse_column(c) for c in features.columns]
    assert {p.family for p in parsed} == {"firstorder", "glcm"}
    assert [p.modality for p in parsed] == sorted((p.modality for p in parsed), key=H.MODALITIES.index)
    assert not any("diagnostics" in c for c in features.columns)
    assert all("__diagnostics_" in c for c in result.diagnostics.columns)
    import radiomics

    assert result.provenance["radiomics_version"] == radiomics.__version__
    assert (result.diagnostics["T2W__diagnostics_Versions_PyRadiomics"] == radiomics.__version__).all()


def test_full_default_settings_exact_on_two_cases(tmp_path):
    small = H.make_cohort(tmp_path / "d", n_cases=2, shape=(10, 20, 20))
    result = R.extract_detailed(small, modalities=("T2W",), cache_dir=False, progress=False)
    assert result.failures.empty
    names = [parse_column(c) for c in result.features.columns]
    assert {n.image_type for n in names} == {"Original", "Wavelet"}
    assert {n.family for n in names} == set(FAMILIES)
    for case_id in small.case_ids:
        direct = _direct(small.path(case_id, "T2W"), small.path(case_id, "gland"), R.default_settings())
        row = result.features.loc[case_id]
        assert len(direct) == len(row) > 700
        assert all(row[f"T2W__{k}"] == v or (np.isnan(v) and np.isnan(row[f"T2W__{k}"])) for k, v in direct.items())


def test_values_do_not_depend_on_the_callers_itk_threads(tmp_path):
    # Multi-threaded ITK reductions change the last bits; radiolens pins one thread and
    # restores the caller's setting afterwards.
    big = H.make_cohort(tmp_path / "d", n_cases=1, shape=(24, 64, 64))
    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        values = []
        for threads in (1, 2, 4):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            result = R.extract(big, modalities=("T2W",), settings=H.REDUCED_SETTINGS, cache_dir=False, progress=False)
            assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads
            values.append(result)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)
    for other in values[1:]:  # without the pin, 2 threads change 16 values in the last bits
        pd.testing.assert_frame_equal(values[0], other, check_exact=True)


def test_two_rois_and_cases_without_lesion_are_missing_not_zero(cohort):
    cohort.cases["case02"]["lesion"] = None  # no lesion file at all
    result = R.extract_detailed(cohort, rois=("gland", "lesion"), settings=H.REDUCED_SETTINGS, cache_dir=False, progress=False)
    features = result.features
    assert features.index.names == ["case_id", "roi"]
    assert len(features) == 2 * len(cohort.case_ids)
    for case_id in ("case01", "case02"):
        assert features.loc[(case_id, "lesion")].isna().all()  # NaN, not zeros
        assert features.loc[(case_id, "gland")].notna().all()
    missing = result.missing
    assert set(zip(missing.case_id, missing.roi)) == {("case01", "lesion"), ("case02", "lesion")}
    assert len(missing) == 6 and result.failures.empty
    assert missing.message.str.contains("no lesion|no mask").all()
    assert features.loc[("case00", "lesion")].notna().all()
    # the lesion ROI really is the lesion: fewer voxels than the gland
    units = result.units.set_index(["case_id", "modality", "roi"])
    assert units.loc[("case00", "T2W", "lesion"), "n_voxels"] < units.loc[("case00", "T2W", "gland"), "n_voxels"]


def test_roi_label_syntax_picks_a_label(tmp_path):
    cohort = H.make_cohort(tmp_path / "d", n_cases=1)
    gland = sitk.ReadImage(str(cohort.path("case00", "gland")))
    zones = sitk.GetArrayFromImage(gland)
    zones[: zones.shape[0] // 2] *= 2  # upper half label 2, lower half label 1
    out = sitk.GetImageFromArray(zones)
    out.CopyInformation(gland)
    sitk.WriteImage(out, str(tmp_path / "zones.nii.gz"))
    cohort.cases["case00"]["zones"] = tmp_path / "zones.nii.gz"
    result = R.extract_detailed(cohort, rois=("zones:1", "zones:2"), modalities=("T2W",), settings=H.REDUCED_SETTINGS, cache_dir=False, progress=False)
    direct = _direct(cohort.path("case00", "T2W"), tmp_path / "zones.nii.gz", H.REDUCED_SETTINGS, label=2)
    assert result.features.loc[("case00", "zones:2"), "T2W__original_firstorder_Mean"] == direct["original_firstorder_Mean"]
    assert result.features.loc[("case00", "zones:1"), "T2W__original_firstorder_Mean"] != direct["original_firstorder_Mean"]


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------
def test_second_call_reads_only_the_cache(cohort, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=cache_dir, progress=False)
    assert (first.units.status == "computed").all()
    assert len(_entries(cache_dir)) == 12

    def boom(*args, **kwargs):
        raise AssertionError("a cached unit was recomputed")

    monkeypatch.setattr(R_units, "_extract_one", boom)
    second = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=cache_dir, progress=False)
    assert (second.units.status == "cached").all() and second.failures.empty
    pd.testing.assert_frame_equal(first.features, second.features)
    pd.testing.assert_frame_equal(first.diagnostics, second.diagnostics)


def test_changed_input_or_setting_recomputes_only_what_it_affects(cohort, tmp_path):
    cache_dir = tmp_path / "cache"
    kwargs = dict(cache_dir=cache_dir, progress=False)
    R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, **kwargs)
    # one image changes -> one unit recomputed
    image = sitk.ReadImage(str(cohort.path("case03", "DWI")))
    sitk.WriteImage(image * 2.0 + 1.0, str(cohort.path("case03", "DWI")))
    second = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, **kwargs)
    computed = second.units[second.units.status == "computed"]
    assert list(zip(computed.case_id, computed.modality)) == [("case03", "DWI")]
    # one setting changes -> every unit uses it, all recomputed; changing back -> all cached
    changed = json.loads(json.dumps(H.REDUCED_SETTINGS))
    changed["setting"]["binCount"] = 8
    third = R.extract_detailed(cohort, settings=changed, **kwargs)
    assert (third.units.status == "computed").all()
    back = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, **kwargs)
    assert (back.units.status == "cached").all()
    assert not np.allclose(third.features["T2W__original_glcm_Contrast"], back.features["T2W__original_glcm_Contrast"])
    # the key holds the PyRadiomics version
    assert third.units.cache_key.nunique() == 12
    assert back.provenance["radiomics_version"] == R.radiomics_version()


def test_key_depends_on_radiomics_version(cohort, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    R.extract_detailed(cohort, modalities=("T2W",), settings=H.REDUCED_SETTINGS, cache_dir=cache_dir, progress=False)
    monkeypatch.setattr(R_extract, "radiomics_version", lambda: "v99.0")
    again = R.extract_detailed(cohort, modalities=("T2W",), settings=H.REDUCED_SETTINGS, cache_dir=cache_dir, progress=False)
    assert (again.units.status == "computed").all()
    assert again.provenance["radiomics_version"] == "v99.0"


def test_truncated_or_corrupt_entry_is_detected_and_recomputed(cohort, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    first = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=cache_dir, progress=False)
    keys = first.units.cache_key.tolist()
    folder = cache_dir / R.CACHE_NAMESPACE
    payload = folder / f"{keys[0]}.json.data"
    payload.write_bytes(payload.read_bytes()[: payload.stat().st_size // 2])  # truncated
    other = folder / f"{keys[5]}.json.data"
    other.write_bytes(other.read_bytes().replace(b"1", b"7", 3))  # same length, wrong bytes
    with caplog.at_level(logging.WARNING, logger="radiolens.cache"):
        second = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=cache_dir, progress=False)
    assert "corrupt" in caplog.text
    assert second.units.status.tolist() == ["computed"] + ["cached"] * 4 + ["computed"] + ["cached"] * 6
    pd.testing.assert_frame_equal(first.features, second.features)
    cache = ArtifactCache(cache_dir, R.CACHE_NAMESPACE)
    assert all(cache.has(k, "json.data") for k in keys)


# --------------------------------------------------------------------------------------------
# parallel backends
# --------------------------------------------------------------------------------------------
def test_cache_payload_is_byte_identical_whoever_computes_it(cohort, tmp_path):
    # so two processes racing to store the same unit can never pair payload and checksum wrongly
    a = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=tmp_path / "a", progress=False)
    R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=tmp_path / "b", n_jobs=2, progress=False)
    for key in a.units.cache_key:
        name = f"{R.CACHE_NAMESPACE}/{key}.json.data"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_joblib_workers_give_identical_values(cohort):
    serial = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=False, progress=False)
    parallel = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=False, n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(serial.features, parallel.features)
    assert (parallel.units.status == "computed").all()


def test_joblib_workers_are_single_threaded(cohort, tmp_path):
    cache_dir = tmp_path / "cache"
    result = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=cache_dir, n_jobs=2, progress=False)
    cache = ArtifactCache(cache_dir, R.CACHE_NAMESPACE)
    workers = [cache.meta(k, "json.data")["worker"] for k in result.units.cache_key]
    assert {w["itk_threads"] for w in workers} == {1}
    assert all(set(w["blas_threads"]) <= {1} for w in workers)
    assert os.getpid() not in {w["pid"] for w in workers}


def test_dask_local_cluster_gives_identical_values(cohort, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    serial = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=False, progress=False)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)
    try:
        with distributed.Client(cluster) as client:
            cache_dir = tmp_path / "cache"
            result = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, backend="dask", client=client, cache_dir=cache_dir, progress=False)
    finally:
        cluster.close()
    pd.testing.assert_frame_equal(serial.features, result.features)
    assert (result.units.status == "computed").all()
    assert len(_entries(cache_dir)) == 12


def test_dask_missing_gives_helpful_error(cohort, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(ImportError, match=r"radiolens\[dask\]"):
        R.extract(cohort, settings=H.REDUCED_SETTINGS, backend="dask", cache_dir=False, progress=False)


def test_unknown_backend_is_an_error(cohort):
    with pytest.raises(ValueError, match="backend"):
        R.extract(cohort, settings=H.REDUCED_SETTINGS, backend="spark", cache_dir=False)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def _bad_cohort(tmp_path) -> H.FakeCohort:
    cohort = H.make_cohort(tmp_path / "data", n_cases=6)
    ref = sitk.ReadImage(str(cohort.path("case00", "gland")))

    def write(array, name, like=ref, spacing=None):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(like)
        if spacing is not None:
            image.SetSpacing(spacing)
        sitk.WriteImage(image, str(tmp_path / name))
        return tmp_path / name

    gland = sitk.GetArrayFromImage(ref)
    cohort.cases["case01"]["gland"] = write(gland, "moved.nii.gz", spacing=(0.6, 0.6, 1.2))  # geometry
    cohort.cases["case02"]["gland"] = write(np.zeros_like(gland), "empty.nii.gz")
    one = np.zeros_like(gland)
    one[5, 10, 10] = 1
    cohort.cases["case03"]["gland"] = write(one, "one.nii.gz")
    t2w = sitk.ReadImage(str(cohort.path("case04", "T2W")))
    cohort.cases["case04"]["T2W"] = write(np.full(gland.shape, 300, np.float32), "constant.nii.gz", like=t2w)
    nan = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort.path("case05", "ADC"))))
    nan[6, 12, 12] = np.nan
    # .nrrd: ITK's NIfTI reader turns NaN voxels into 0, NRRD keeps them
    cohort.cases["case05"]["ADC"] = write(nan, "nan.nrrd", like=t2w)
    return cohort


def test_bad_inputs_are_recorded_per_unit_never_crash_or_vanish(tmp_path, caplog):
    cohort = _bad_cohort(tmp_path)
    with caplog.at_level(logging.WARNING, logger="radiolens.radiomics"):
        result = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=tmp_path / "cache", progress=False)
    assert "work units had problems" in caplog.text and "failures" in caplog.text
    failures = result.failures.set_index(["case_id", "modality"])
    expected = {
        ("case01", m): "GeometryMismatchError" for m in H.MODALITIES
    } | {("case02", m): "EmptyROIError" for m in H.MODALITIES} | {("case03", m): "ValueError" for m in H.MODALITIES} | {
        ("case04", "T2W"): "InvalidImageError",
        ("case05", "ADC"): "InvalidImageError",
    }
    assert failures["error_type"].to_dict() == expected
    messages = failures["message"]
    assert "resample_mask=True" in messages[("case01", "T2W")] and "spacing" in messages[("case01", "T2W")]
    assert "no voxel with label 1" in messages[("case02", "DWI")]
    assert "1 segmented voxel" in messages[("case03", "ADC")]
    assert "constant" in messages[("case04", "T2W")]
    assert "1 NaN/inf voxels" in messages[("case05", "ADC")]
    assert all(m.startswith(f"case {c!r} {mod}/gland") for (c, mod), m in messages.items())
    # every case keeps its row; failed units are NaN, good units are not
    features = result.features
    assert list(features.index) == cohort.case_ids
    assert features.loc["case00"].notna().all()
    for (case_id, modality) in expected:
        assert features.loc[case_id].filter(like=f"{modality}__").isna().all()
    assert features.loc["case04"].filter(like="DWI__").notna().all()
    # failures are not cached: fixing the data is enough
    assert result.units.loc[result.units.status == "failed", "cache_key"].notna().all()
    assert len(_entries(tmp_path / "cache")) == 18 - len(expected)


def test_resample_mask_fixes_a_geometry_mismatch(tmp_path):
    cohort = _bad_cohort(tmp_path)
    keep = {"case01": cohort.cases["case01"]}
    result = R.extract_detailed(H.FakeCohort(keep), settings=H.REDUCED_SETTINGS, resample_mask=True, cache_dir=False, progress=False)
    assert result.failures.empty
    assert result.features.loc["case01"].notna().all()
    assert result.provenance["resample_mask"] is True


def test_nonfinite_feature_values_become_nan_and_a_visible_failure(cohort, monkeypatch, caplog):
    real = R_units._extractor_for

    class Poisoned:
        def __init__(self, inner):
            self.inner = inner

        def execute(self, *args, **kwargs):
            out = self.inner.execute(*args, **kwargs)
            out["original_glcm_Correlation"] = np.float64("nan")
            out["original_glcm_MCC"] = np.float64("inf")
            return out

    monkeypatch.setattr(R_units, "_extractor_for", lambda p, h: Poisoned(real(p, h)))
    with caplog.at_level(logging.WARNING, logger="radiolens.radiomics"):
        result = R.extract_detailed(cohort, modalities=("ADC",), settings=H.REDUCED_SETTINGS, cache_dir=False, progress=False)
    assert (result.failures.error_type == "NonFiniteFeature").sum() == 4
    assert result.failures.message.str.contains("original_glcm_MCC").all()
    assert result.features["ADC__original_glcm_MCC"].isna().all()
    assert result.features["ADC__original_glcm_Correlation"].isna().all()
    assert result.features["ADC__original_glcm_Contrast"].notna().all()
    assert "NonFiniteFeature x4" in caplog.text


def test_extract_returns_features_and_warns(tmp_path, caplog):
    cohort = _bad_cohort(tmp_path)
    with caplog.at_level(logging.WARNING, logger="radiolens.radiomics"):
        features = R.extract(cohort, modalities=("T2W",), settings=H.REDUCED_SETTINGS, cache_dir=False, progress=False)
    assert features.shape[0] == 6 and features.loc["case00"].notna().all()
    assert "GeometryMismatchError x1" in caplog.text


# --------------------------------------------------------------------------------------------
# resumable: real SIGKILL
# --------------------------------------------------------------------------------------------
def _spec(tmp_path, n_cases, n_jobs, settings) -> tuple[Path, list[R.WorkUnit], Path]:
    cohort = H.make_cohort(tmp_path / "data", n_cases=n_cases, shape=(12, 28, 28))
    units = R.make_units(cohort)
    cache_dir = tmp_path / "cache"
    spec = {
        "units": H.unit_dicts(units),
        "settings": settings,
        "cache_dir": str(cache_dir),
        "n_jobs": n_jobs,
        "out": str(tmp_path / "out.json"),
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path, units, cache_dir


def _start(spec_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HELPER.parent), *sys.path]))
    log = open(spec_path.with_suffix(".log"), "wb")
    return subprocess.Popen([sys.executable, str(HELPER), str(spec_path)], env=env, start_new_session=True, stderr=log)


def _wait_for_entries(cache_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = len(_entries(cache_dir)) if (cache_dir / R.CACHE_NAMESPACE).exists() else 0
        if count >= n:
            return count
        if proc.poll() is not None:
            raise AssertionError(f"extraction ended (rc={proc.returncode}) before {n} units were cached")
        time.sleep(0.005)
    raise AssertionError("timed out waiting for cache entries")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _check_cache_sound(cache_dir: Path) -> list[str]:
    """Every entry that has a sidecar is valid; return their keys."""
    cache = ArtifactCache(cache_dir, R.CACHE_NAMESPACE)
    keys = _entries(cache_dir)
    for key in keys:
        assert cache.has(key, "json.data"), f"corrupt cache entry {key} after SIGKILL"
    return keys


# Original + Wavelet on a 12x28x28 volume: ~0.1-0.2 s per unit, slow enough to kill mid-run.
_KILL_SETTINGS = {
    "setting": {"normalize": True, "normalizeScale": 100, "binCount": 16, "label": 1, "preCrop": True},
    "imageType": {"Original": {}, "Wavelet": {}},
    "featureClass": {"firstorder": [], "glcm": [], "glszm": []},
}


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigkill_of_the_parent_loses_nothing_finished(tmp_path):
    spec, units, cache_dir = _spec(tmp_path, n_cases=5, n_jobs=1, settings=_KILL_SETTINGS)
    proc = _start(spec)
    try:
        _wait_for_entries(cache_dir, 3, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = _check_cache_sound(cache_dir)
    assert 3 <= len(done) < len(units), "kill came too late to test resuming"
    resumed = R.extract_units(units, settings=_KILL_SETTINGS, cache_dir=cache_dir, progress=False)
    assert (resumed.units.status == "cached").sum() == len(done)
    assert (resumed.units.status == "computed").sum() == len(units) - len(done)
    assert len(_check_cache_sound(cache_dir)) == len(units)  # one entry per unit, no duplicates
    fresh = R.extract_units(units, settings=_KILL_SETTINGS, cache_dir=False, progress=False)
    pd.testing.assert_frame_equal(fresh.features, resumed.features)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigkill_of_a_worker_is_survived(tmp_path):
    spec, units, cache_dir = _spec(tmp_path, n_cases=5, n_jobs=2, settings=_KILL_SETTINGS)
    proc = _start(spec)
    try:
        _wait_for_entries(cache_dir, 2, proc)
        workers = []
        for child in _children(proc.pid):
            try:
                if b"LokyProcess" in Path(f"/proc/{child}/cmdline").read_bytes():
                    workers.append(child)
            except OSError:
                pass
        assert workers, "no loky worker found to kill"
        os.kill(workers[0], signal.SIGKILL)
        assert proc.wait(timeout=120) == 0  # the run survives and finishes
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "a worker process died" in spec.with_suffix(".log").read_text()  # the kill did land
    statuses = json.loads((tmp_path / "out.json").read_text())["status"]
    assert len(statuses) == len(units) and set(statuses) <= {"computed", "cached"}
    assert len(_check_cache_sound(cache_dir)) == len(units)
    again = R.extract_units(units, settings=_KILL_SETTINGS, cache_dir=cache_dir, progress=False)
    assert (again.units.status == "cached").all()
    fresh = R.extract_units(units, settings=_KILL_SETTINGS, cache_dir=False, progress=False)
    pd.testing.assert_frame_equal(fresh.features, again.features)


def test_units_without_a_cohort(tmp_path):
    paths = H.write_case(tmp_path, "solo", seed=3)
    unit = R.WorkUnit("solo", "T2W", "gland", str(paths["T2W"]), str(paths["gland"]))
    result = R.extract_units([unit], settings=H.REDUCED_SETTINGS, cache_dir=False, progress=False)
    assert result.features.loc["solo", "T2W__original_firstorder_Mean"] == _direct(paths["T2W"], paths["gland"], H.REDUCED_SETTINGS)["original_firstorder_Mean"]
    assert hash_json(result.provenance["settings"]) == result.provenance["settings_hash"]


def test_a_missing_file_is_a_recorded_failure(cohort, tmp_path):
    cohort.cases["case02"]["ADC"] = tmp_path / "gone.nii.gz"
    result = R.extract_detailed(cohort, settings=H.REDUCED_SETTINGS, cache_dir=tmp_path / "cache", progress=False)
    row = result.failures.set_index(["case_id", "modality"]).loc[("case02", "ADC")]
    assert row.error_type == "FileNotFoundError" and "gone.nii.gz" in row.message
    assert result.features.loc["case02"].filter(like="ADC__").isna().all()
    assert result.features.loc["case02"].filter(like="T2W__").notna().all()


def test_real_cohort_gland_and_lesion(synthetic_cohort):
    cohort = synthetic_cohort.subset(synthetic_cohort.case_ids[:4])
    result = R.extract_detailed(cohort, rois=("gland", "lesion"), settings=H.REDUCED_SETTINGS, cache_dir=False, progress=False)
    assert result.failures.empty
    assert list(result.features.index.get_level_values("case_id").unique()) == cohort.case_ids
    has_lesion = cohort.manifest["lesion_volume_ml"] > 0
    for case_id in cohort.case_ids:
        lesion_row = result.features.loc[(case_id, "lesion")]
        assert lesion_row.isna().all() != bool(has_lesion[case_id])  # NaN exactly when no lesion
        assert result.features.loc[(case_id, "gland")].notna().all()
    some = cohort.case_ids[0]
    direct = _direct(cohort.path(some, "ADC"), cohort.path(some, "gland"), H.REDUCED_SETTINGS)
    assert result.features.loc[(some, "gland"), "ADC__original_glcm_Idm"] == direct["original_glcm_Idm"]


def test_clean_keeps_complete_cases_and_defined_features():
    columns = ["T2W__original_firstorder_Mean", "T2W__original_glcm_MCC", "ADC__original_firstorder_Mean"]
    features = pd.DataFrame(
        [[1.0, 0.5, 900.0],  # complete
         [2.0, np.inf, 800.0],  # inf -> NaN: MCC becomes undefined for one kept case
         [3.0, 0.7, np.nan],  # no ADC at all (e.g. no ROI): the case goes
         [4.0, 0.9, 700.0]],
        index=pd.Index(["a", "b", "c", "d"], name="case_id"), columns=columns,
    )
    cleaned = R.clean(features)
    assert list(cleaned.index) == ["a", "b", "d"]
    assert list(cleaned.columns) == ["T2W__original_firstorder_Mean", "ADC__original_firstorder_Mean"]
    assert np.isfinite(cleaned.to_numpy()).all()
    # a feature NaN only in the dropped case stays: cases first, then features
    features.loc["c", "T2W__original_glcm_MCC"] = np.nan
    features.loc["b", "T2W__original_glcm_MCC"] = 0.6
    assert "T2W__original_glcm_MCC" in R.clean(features).columns
