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
    names = ["pirads", "lesion (lesion ROI)"]
    return write_bundle(path, config, downstream=downstream, planted=planted, sweeps={n: sweep for n in names},
                        reports={n: report for n in names}, n_cases=60), downstream, planted, sweep


def test_a_bundle_round_trips_with_its_note(tmp_path, config, report):
    path, downstream, planted, sweep = _write(tmp_path / "b", config, report)
    loaded = load_bundle(path)
    assert loaded.report_names == ["pirads", "lesion (lesion ROI)"]
    pd.testing.assert_frame_equal(loaded.downstream(), downstream)
    pd.testing.assert_frame_equal(loaded.planted(), planted)
    pd.testing.assert_frame_equal(loaded.sweep("lesion (lesion ROI)"), sweep)
    again = loaded.report("lesion (lesion ROI)")
    for name in ("importance", "scores", "tests", "observed", "decoded_pre", "decoded_ft", "decoder_pre", "decoder_ft"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(report, name))  # exact, wide ones too
    assert again.diagnostics == json.loads(json.dumps(report.diagnostics))
    assert again.params == json.loads(json.dumps(report.params))
    assert "synthetic" in loaded.note and "not the results of Wang et al." in loaded.note
    assert "synthetic" in (path / "README.md").read_text()
    assert loaded.matches(config)
    assert (path / "reports" / "pirads" / "decoded_pre.T.parquet").exists()  # wide tables stored transposed


def test_an_altered_or_unlisted_file_fails_verification_naming_it(tmp_path, config, report):
    path, *_ = _write(tmp_path / "b", config, report)
    target = path / "reports" / "pirads" / "importance.parquet"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(BundleError, match="reports/pirads/importance.parquet") as caught:
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
    path, downstream, planted, sweep = _write(tmp_path / "b", config, report)
    study = Study(config, progress=False, use_bundle=path)
    assert study.bundle is not None
    reports = study.reports()
    assert list(reports) == ["pirads", "lesion (lesion ROI)"]
    np.testing.assert_allclose(reports["pirads"].importance["I_pre"], report.importance["I_pre"])
    pd.testing.assert_frame_equal(study.downstream_table(), downstream)
    pd.testing.assert_frame_equal(study.planted_truth(), planted)
    pd.testing.assert_frame_equal(study.sweep("lesion", "lesion"), sweep)
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
