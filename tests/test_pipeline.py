"""The main job end to end: `radiolens run --quick` on the built-in cohort, re-run, bad input.

The quick study runs once per test session (a few minutes on 2 cores) in a subprocess, exactly
as a user would start it; the other tests read its output folder and its cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from radiolens.config import load_config
from radiolens.pipeline import Study

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
    table2 = pd.read_csv(next(out.rglob("downstream*.csv")))
    assert set(table2["task"]) == {"pirads", "lesion", "volume"}
    assert set(table2["regime"]) == {"frozen", "full"}
    assert summary  # non-empty summary


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
    """SIGKILL a run after it has started working, then run again: it completes from the cache."""
    cache, _, env = quick_run
    own_cache = tmp_path / "cache"
    env = {**env, "RADIOLENS_CACHE": str(own_cache)}
    args = [sys.executable, "-m", "radiolens", "run", "--quick", "--no-progress", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    # wait until some radiomics work units are cached, then kill the whole process group
    while time.time() < deadline and len(list(own_cache.glob("radiomics/*.json"))) < 5:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished_units = len(list(own_cache.glob("radiomics/*.json")))
    assert finished_units >= 5
    completed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1500)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "out" / "report.html").exists()
    # the second run's report equals the uninterrupted one
    first = pd.read_csv(next((tmp_path / "out").rglob("*downstream*.csv")))
    reference = pd.read_csv(next(quick_run[1].rglob("*downstream*.csv")))
    pd.testing.assert_frame_equal(first, reference)


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
    with pytest.raises(ValueError, match="no 'test' cases"):
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
