"""The main job end to end: `radiolens run --quick` on the built-in cohort, re-run, bad input.

The quick study runs once per test session (a few minutes on 2 cores) in a subprocess, exactly
as a user would start it; the other tests read its output folder and its cache.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from radiolens.config import load_config
from radiolens.errors import NotEnoughDataError
from radiolens.pipeline import Study

from conftest import pristine_cache
from conftest import run_cli as _run_cli

pytestmark = pytest.mark.slow


def test_quick_run_writes_the_report_folder(quick_run):
    cache, out, _ = quick_run
    assert (out / "report.html").stat().st_size > 50_000  # inlined JavaScript makes it large
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "radiolens.log").read_text().strip()
    html = (out / "report.html").read_text()
    assert "synthetic" in html.lower()
    assert "<script src=\"http" not in html and "cdn.jsdelivr" not in html
    # every configured task was fine-tuned in both regimes and measured
    table2 = pd.read_csv(out / "tables" / "downstream_table2.csv")
    assert set(table2["task"]) == {"pirads", "lesion", "volume"}
    assert {"frozen", "full"} <= set(table2.columns) and table2[["frozen", "full"]].notna().all().all()
    # one lens report per task, and one more for the segmentation task's lesion ROI
    assert {p.name for p in (out / "lens").iterdir()} == {"pirads", "lesion", "lesion-lesion-roi", "volume"}
    assert summary  # non-empty summary


@pytest.mark.browser
def test_quick_report_opens_offline_in_a_browser(quick_run):
    import browser

    if browser.skip_reason():
        pytest.skip(browser.skip_reason())
    _, out, _ = quick_run
    drawn = "document.querySelectorAll('svg.marks, canvas.marks').length"
    page = browser.open_page(out / "report.html", wait_for=f"{drawn} >= 20", timeout=120, evaluate={"drawn": drawn})
    assert page.waited, f"charts drawn: {page.values}"
    assert page.errors == [] and page.requests == []  # offline: nothing fetched, nothing failed


def test_warm_rerun_recomputes_nothing(quick_run):
    cache, out, env = quick_run
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    out2 = out.parent / "out_again"
    start = time.perf_counter()
    completed = _run_cli(["run", "--quick", "--no-progress", "--out", str(out2)], env, timeout=600)
    elapsed = time.perf_counter() - start
    assert completed.returncode == 0, completed.stderr[-3000:]
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    new = sorted(str(p.relative_to(cache)) for p in set(after) - set(before))
    changed = sorted(str(p.relative_to(cache)) for p in before if p in after and after[p] != before[p])
    assert not new and not changed, f"warm re-run wrote to the cache: new={new[:5]} changed={changed[:5]}"
    # the same numbers come out
    for name in ("downstream", "importance"):
        first = sorted(out.rglob(f"*{name}*.csv"))
        second = sorted(out2.rglob(f"*{name}*.csv"))
        assert [p.name for p in first] == [p.name for p in second]
        for a, b in zip(first, second):
            pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))
    print(f"warm re-run took {elapsed:.1f} s")


def test_interrupted_run_resumes(quick_run, tmp_path):
    """SIGKILL a run in the middle of radiomics extraction, then run again: it completes, reuses
    what was finished, and gives the same results as the uninterrupted run."""
    cache, reference_out, env = quick_run
    own_cache = tmp_path / "cache"
    shutil.copytree(pristine_cache(cache), own_cache)
    # forget half of the radiomics work units and every lens result
    units = sorted(own_cache.glob("radiomics/*.json"))
    for sidecar in units[::2]:
        for path in own_cache.glob(f"radiomics/{sidecar.stem}.*"):
            path.unlink()
    shutil.rmtree(own_cache / "lens")
    remaining = len(list(own_cache.glob("radiomics/*.json")))

    env = {**env, "RADIOLENS_CACHE": str(own_cache)}
    out = tmp_path / "out"
    args = [sys.executable, "-m", "radiolens", "run", "--quick", "--no-progress", "--out", str(out)]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(own_cache.glob("radiomics/*.json"))) < remaining + 3:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    after_kill = len(list(own_cache.glob("radiomics/*.json")))
    assert after_kill >= remaining + 3, "the run was killed before it had finished any new unit"
    assert not (out / "report.html").exists()

    completed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1500)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(list(own_cache.glob("radiomics/*.json"))) == len(units)  # nothing lost, nothing twice
    for name in ("downstream_table2.csv", "importance_pirads.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / "tables" / name), pd.read_csv(reference_out / "tables" / name))


def test_unknown_config_key_is_a_clean_error(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text("lens:\n  hiden_dim: 4\n")
    completed = _run_cli(["run", str(config)], os.environ.copy(), timeout=120)
    assert completed.returncode == 2
    assert "lens.hiden_dim" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_cohort_without_test_cases_is_rejected(synthetic_cohort, tmp_path):
    manifest = synthetic_cohort.manifest.reset_index()
    manifest["split"] = manifest["split"].replace({"test": "train"})
    folder = tmp_path / "no_test"
    folder.mkdir()
    for key in ("T2W", "DWI", "ADC", "gland", "zones", "lesion"):
        manifest[key] = [
            "" if synthetic_cohort.path(c, key) is None else str(synthetic_cohort.path(c, key)) for c in manifest["case_id"]
        ]
    manifest.to_csv(folder / "manifest.csv", index=False)
    study = Study(load_config(cohort={"source": "folder", "path": str(folder)}, cache_dir=str(tmp_path / "cache")))
    with pytest.raises(NotEnoughDataError, match=r"too few cases for a lens: \{'train': \d+, 'val': \d+, 'test': 0\}.*test 0 < 2"):
        study.cohort()


def test_task_without_labels_is_skipped_with_a_warning(synthetic_cohort, tmp_path):
    manifest = synthetic_cohort.manifest.reset_index()
    for key in ("T2W", "DWI", "ADC", "gland", "zones"):
        manifest[key] = [str(synthetic_cohort.path(c, key)) for c in manifest["case_id"]]
    manifest["lesion"] = ""  # no lesion masks at all
    folder = tmp_path / "no_lesions"
    folder.mkdir()
    manifest.to_csv(folder / "manifest.csv", index=False)
    study = Study(load_config(cohort={"source": "folder", "path": str(folder)}, cache_dir=str(tmp_path / "cache")))
    assert study.available_tasks() == ["pirads", "volume"]
    assert any("lesion" in w and "skipped" in w for w in study.warnings)


def test_decoder_width_comes_from_the_config_and_keys_the_cache(synthetic_cohort, tmp_path):
    def lesion_head_width(channels: int) -> int:
        config = load_config(
            quick=True, cache_dir=str(tmp_path / "cache"),
            cohort={"source": "folder", "path": str(synthetic_cohort.root)},
            finetune={"decoder_channels": channels, "epochs": 1},
        )
        study = Study(config, progress=False)
        return study.finetuned("lesion", "frozen").head.channels

    assert lesion_head_width(8) == 8
    assert lesion_head_width(12) == 12  # a different width is not served from the first's cache
    assert lesion_head_width(8) == 8  # and the cached one comes back as it was


def test_fine_tuning_runs_in_parallel_processes_with_the_same_results(synthetic_cohort, tmp_path):
    def table2(jobs: int) -> tuple[pd.DataFrame, dict]:
        config = load_config(
            quick=True, cache_dir=str(tmp_path / f"cache-{jobs}"), jobs=jobs,
            cohort={"source": "folder", "path": str(synthetic_cohort.root)},
            finetune={"tasks": ["pirads", "volume"], "epochs": 1},
        )
        study = Study(config, progress=False)
        return study.downstream_table(), study.timings

    serial, serial_timings = table2(1)
    parallel, parallel_timings = table2(2)
    assert not any("processes" in name for name in serial_timings)
    assert "fine-tuning (4 runs, 2 processes)" in parallel_timings  # the four runs went to two workers
    # one thread per run wherever it runs: the same Table 2, bit for bit
    pd.testing.assert_frame_equal(serial, parallel, check_exact=True)


def test_size_baseline_uses_the_reports_training_and_test_cases(quick_run):
    import numpy as np

    from radiolens.lens import covariate_r2

    cache, _, _ = quick_run
    study = Study(load_config(quick=True, cache_dir=pristine_cache(cache)), progress=False)
    table = study.size_baseline("pirads")
    report = study.compare("pirads")
    assert list(table.columns) == ["column", "modality", "family", "r2_volume"]
    assert set(table["column"]) == set(report.importance.loc[report.importance["r2_pre"].notna(), "column"])
    # by hand: the gland volume of the lens's training cases -> its test cases
    _, _, r_train = study.lens_inputs("pirads")["train"]
    test = list(report.observed.index)
    log_volume = np.log(study.cohort().labels["gland_volume_ml"].astype(float))
    radiomics, features = study.radiomics("gland"), list(table["column"])
    expected = covariate_r2(log_volume.loc[r_train.index], r_train[features],
                            log_volume.loc[test], radiomics.loc[test, features])
    np.testing.assert_allclose(table["r2_volume"].to_numpy(), expected.to_numpy(), atol=1e-12)


def test_lesion_visibility_probes_the_lesion_tasks_embeddings_for_lesion_presence(quick_run):
    from radiolens.lens import label_auc

    cache, _, _ = quick_run
    study = Study(load_config(quick=True, cache_dir=pristine_cache(cache)), progress=False)
    table = study.lesion_visibility()
    assert list(table.index) == ["pre", "ft"] and list(table.columns) == ["auc", "p_value", "n_cases", "n_positive"]
    labels = study.cohort().labels
    assert (table["n_cases"] == len(labels)).all()
    assert (table["n_positive"] == int((labels["lesion_volume_ml"] > 0).sum())).all()
    # by hand, on the fine-tuned lesion encoder's embeddings
    _, x_ft = study.embeddings("lesion")
    expected = label_auc(x_ft, pd.Series(labels["lesion_volume_ml"] > 0))
    assert table.loc["ft", "auc"] == expected["auc"] and table.loc["ft", "p_value"] == expected["p_value"]
