"""Results bundles: written, verified by checksum on load, matched to a configuration, read by Study."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from radiolens import bundle as bundles
from radiolens.bundle import BundleError, find_bundle, load_bundle, study_fingerprint, write_bundle
from radiolens.config import load_config
from radiolens.errors import UserError
from radiolens.finetune.comparison import compare_regimes, simulate_regimes
from radiolens.lens import RadiomicLens
from radiolens.lens.simulation import planted_shift
from radiolens.pipeline import Study


@pytest.fixture(scope="module")
def report():
    sim = planted_shift(n_cases=60, d=16, n_per_modality=4, n_test=20, seed=0)
    lens = RadiomicLens(hidden_dim=4, epochs=5, random_state=0).fit(sim.X_pre, sim.R)
    return lens.compare(sim.X_pre, sim.X_ft, sim.R, test=sim.test, n_bootstrap=0, n_permutations=0)


@pytest.fixture()
def config(tmp_path):
    return load_config(quick=True, cache_dir=tmp_path / "cache")


def _write(path, config, report):
    downstream = pd.DataFrame({"task": ["pirads", "pirads"], "regime": ["frozen", "full"], "metric": ["qwk", "qwk"],
                               "value": [0.1, 0.3]})
    planted = pd.DataFrame({"protocol": ["paper"], "method": ["ols delta_r2"], "hidden_dim": [16], "n_cases": [300],
                            "precision_gained": [0.5], "precision_lost": [0.5], "decoder_used": ["ols"]})
    sweep = pd.DataFrame({"l1": [0.0, 1e-6], "l2": [0.0, 0.0], "val_loss": [0.5, 0.4], "selected": [False, True]})
    comparison = compare_regimes("pirads", *simulate_regimes("pirads", 12, seed=0), n_resamples=99)
    names = ["pirads", "lesion (lesion ROI)"]
    return write_bundle(path, config, downstream=downstream, comparison=comparison, planted=planted,
                        sweeps={n: sweep for n in names}, reports={n: report for n in names}, n_cases=60), \
        downstream, planted, sweep, comparison


def test_a_bundle_round_trips_with_its_note(tmp_path, config, report):
    path, downstream, planted, sweep, comparison = _write(tmp_path / "b", config, report)
    loaded = load_bundle(path)
    assert loaded.report_names == ["pirads", "lesion (lesion ROI)"]
    pd.testing.assert_frame_equal(loaded.downstream(), downstream)
    pd.testing.assert_frame_equal(loaded.downstream_comparison(), comparison, check_exact=True)
    pd.testing.assert_frame_equal(loaded.planted(), planted)
    pd.testing.assert_frame_equal(loaded.sweep("lesion (lesion ROI)"), sweep)
    again = loaded.report("lesion (lesion ROI)")
    for name in ("importance", "scores", "tests"):  # the statistics: exact
        pd.testing.assert_frame_equal(getattr(again, name), getattr(report, name), check_exact=True)
    for name in ("observed", "decoded_pre", "decoded_ft", "decoder_pre", "decoder_ft"):  # single precision
        stored, computed = getattr(again, name), getattr(report, name)
        pd.testing.assert_frame_equal(stored, computed, check_exact=False, rtol=1e-7, atol=1e-30)
        assert not stored.equals(computed) and stored.dtypes.eq("float64").all()
    assert again.diagnostics == json.loads(json.dumps(report.diagnostics))
    assert again.params == json.loads(json.dumps(report.params))
    assert "synthetic" in loaded.note and "not the results of Wang et al." in loaded.note
    assert "synthetic" in (path / "README.md").read_text()
    assert loaded.matches(config)


def test_a_table_several_reports_share_is_stored_once(tmp_path, config, report):
    path, *_ = _write(tmp_path / "b", config, report)  # two reports with the same tables
    tables = sorted((path / "tables").iterdir())
    assert len(tables) == 8  # importance, scores, tests, observed, decoded x2, decoder x2
    index = {name: json.loads((path / "reports" / slug / "tables.json").read_text())
             for name, slug in (("pirads", "pirads"), ("lesion", "lesion-lesion-roi"))}
    assert index["pirads"] == index["lesion"]
    assert not list((path / "reports").rglob("*.parquet"))  # the report folders keep only their index and JSON


def test_a_table_index_cannot_name_a_file_outside_the_manifest(tmp_path, config, report):
    path, *_ = _write(tmp_path / "b", config, report)
    folder = path / "reports" / "pirads"
    index = json.loads((folder / "tables.json").read_text())
    index["scores"]["file"] = "../../secret.parquet"
    (folder / "tables.json").write_text(json.dumps(index))
    with pytest.raises(BundleError, match="tables.json"):  # the altered index fails its checksum first
        load_bundle(path).report("pirads")
    bundle = load_bundle(_write(tmp_path / "c", config, report)[0])
    del bundle.manifest["files"][json.loads((bundle.path / "reports" / "pirads" / "tables.json").read_text())["scores"]["file"]]
    with pytest.raises(BundleError, match="does not list"):
        bundle.report("pirads")


@pytest.mark.parametrize("label", ["quick", "full"])
def test_the_shipped_bundles_hold_the_current_built_in_studies(label):
    """A default that changes without the bundles being written again fails here, not in a reader's Binder."""
    bundle = find_bundle(load_config(quick=label == "quick"))
    assert bundle is not None, f"radiolens/results/{label} is missing or stale: run the study and `radiolens bundle`"
    assert bundle.path == bundles.PACKAGE_BUNDLES / label
    assert sum(p.stat().st_size for p in bundle.path.rglob("*") if p.is_file()) < 8e6
    assert bundle.manifest["config"]["cohort"]["n_cases"] == (60 if label == "quick" else 200)
    assert "synthetic" in bundle.note
    assert set(bundle.report_names) == {"pirads", "lesion", "lesion (lesion ROI)", "volume"}
    report = bundle.report("pirads")
    assert report.importance.shape[0] == report.observed.shape[1] > 2000


def test_an_altered_or_unlisted_file_fails_verification_naming_it(tmp_path, config, report):
    path, *_ = _write(tmp_path / "b", config, report)
    stored = json.loads((path / "reports" / "pirads" / "tables.json").read_text())["importance"]["file"]
    target = path / stored
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(BundleError, match=stored) as caught:
        load_bundle(path)
    assert isinstance(caught.value, UserError)

    path, *_ = _write(tmp_path / "c", config, report)
    (path / "sweeps" / "extra.parquet").write_bytes(b"x")
    with pytest.raises(BundleError, match="not in its manifest"):
        load_bundle(path)

    path, *_ = _write(tmp_path / "d", config, report)
    (path / "planted.parquet").unlink()
    with pytest.raises(BundleError, match="planted.parquet is missing"):
        load_bundle(path)


def test_a_manifest_cannot_point_outside_its_folder(tmp_path, config, report):
    path, *_ = _write(tmp_path / "b", config, report)
    (tmp_path / "secret.txt").write_text("x")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../secret.txt"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(path)


def test_the_fingerprint_follows_results_not_runtime(config, monkeypatch):
    base = study_fingerprint(config)
    assert study_fingerprint({**config, "jobs": 7, "device": "cuda", "out": "elsewhere", "cache_dir": "/x"}) == base
    assert study_fingerprint({**config, "lens": {**config["lens"], "hidden_dim": 8}}) != base
    assert study_fingerprint({**config, "seed": 1}) != base
    monkeypatch.setitem(bundles.STEP_VERSIONS, "lens_report", bundles.STEP_VERSIONS["lens_report"] + 1)
    assert study_fingerprint(config) != base  # a bumped step makes every bundle of it stale


def test_find_bundle_matches_the_configuration_and_skips_a_broken_one(tmp_path, config, report, caplog):
    path, *_ = _write(tmp_path / "bundles" / "quick", config, report)
    assert find_bundle(config, [tmp_path / "bundles"]).path == path
    assert find_bundle({**config, "seed": 3}, [tmp_path / "bundles"]) is None
    (path / "downstream.parquet").write_bytes(b"altered")
    with caplog.at_level(logging.WARNING, logger="radiolens.bundle"):
        assert find_bundle(config, [tmp_path / "bundles"]) is None
    assert "downstream.parquet" in caplog.text


def test_study_reads_its_results_from_a_matching_bundle_without_computing(tmp_path, config, report):
    path, downstream, planted, sweep, comparison = _write(tmp_path / "b", config, report)
    study = Study(config, progress=False, use_bundle=path)
    assert study.bundle is not None
    reports = study.reports()
    assert list(reports) == ["pirads", "lesion (lesion ROI)"]
    np.testing.assert_allclose(reports["pirads"].importance["I_pre"], report.importance["I_pre"])
    pd.testing.assert_frame_equal(study.downstream_table(), downstream)
    pd.testing.assert_frame_equal(study.planted_truth(), planted)
    pd.testing.assert_frame_equal(study.sweep("lesion", "lesion"), sweep)
    pd.testing.assert_frame_equal(study.downstream_comparison(), comparison)
    # nothing was computed: no cohort, no radiomics, no fine-tuning in the study's cache
    assert not any((tmp_path / "cache").glob("*/*"))

    assert Study(config, progress=False).bundle is None  # default: compute (radiolens run)
    assert Study({**config, "seed": 5}, progress=False, use_bundle=path).bundle is None  # another study
    with pytest.raises(ValueError, match="use_bundle=False"):
        study.write_bundle(tmp_path / "again")


@pytest.mark.slow
def test_radiolens_bundle_writes_the_finished_quick_study(quick_run, tmp_path):
    """`radiolens bundle --quick` reads the finished run's cache (computing nothing but the bundle)
    and a study reading the bundle gives the run's own numbers."""
    from conftest import run_cli

    cache, out, env = quick_run
    before = {p for p in cache.rglob("*") if p.is_file()}
    completed = run_cli(["bundle", "--quick", "--out", str(tmp_path / "quick")], env, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "results bundle written" in completed.stdout
    bundle = load_bundle(tmp_path / "quick")
    assert {p for p in cache.rglob("*") if p.is_file()} == before  # nothing recomputed
    assert sum(p.stat().st_size for p in (tmp_path / "quick").rglob("*")) < 20e6
    study = Study(load_config(quick=True, cache_dir=tmp_path / "empty"), progress=False, use_bundle=tmp_path / "quick")
    assert study.bundle is not None and study.bundle.path == bundle.path
    pd.testing.assert_frame_equal(
        study.compare("pirads").importance.reset_index(drop=True),
        pd.read_parquet(next((out / "lens" / "pirads").glob("importance.parquet"))).reset_index(drop=True))
    assert set(study.stage_shifts()) == {"pirads", "lesion", "volume"}
    # the report's tested Table 2 and the bundle's are one table
    reported = pd.read_csv(out / "tables" / "downstream_comparison.csv")
    bundled = study.downstream_comparison()
    assert list(reported["metric"]) == list(bundled["metric"])
    np.testing.assert_allclose(reported[["difference", "p_value"]], bundled[["difference", "p_value"]], rtol=1e-9)
