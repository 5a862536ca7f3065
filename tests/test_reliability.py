"""The reliability catalogue: every bad input and fault we know of, and what the user sees.

Each test is one promise (issue 15). Hostile names never write outside their folder; no cache
entry or image is used unverified; one cache root is honoured; a configuration is checked
completely before any work; a failed or interrupted run leaves an honest folder. The slow
ones run the command line end to end (``pytest -m slow``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radiolens.cache import ArtifactCache, hash_file
from radiolens.config import CHECKED_TOGETHER, DEFAULTS, RULES, ConfigError, load_config
from radiolens.data import load_cohort, write_image
from radiolens.data.contract import CASE_ID_MAX_LENGTH, CohortError, check_case_id, inside
from radiolens.data.image_io import DamagedImageError, read_array, read_image
from radiolens.errors import InputFileError, UnsafeNameError, UserError

sys.path.insert(0, str(Path(__file__).parent))
from _encoder_helpers import make_tiny_cohort  # noqa: E402

HOSTILE_IDS = ["../../escape/ESCAPED", "/tmp/absolute", ".", "..", "a/b", "a b", "x" * (CASE_ID_MAX_LENGTH + 1),
               "-rf", ".hidden", "back\\slash", ""]


def flip_byte(path: Path, where: float = 0.5) -> None:
    """Flip one byte of ``path`` at a relative position (the size stays the same)."""
    data = bytearray(path.read_bytes())
    i = min(len(data) - 1, int(len(data) * where))
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("tiny_rel"), n_cases=6, seed=5)


# ============================================================================================
# 1. unsafe names: a case id never writes outside its folder
# ============================================================================================
@pytest.mark.parametrize("case_id", HOSTILE_IDS[:-1])
def test_the_case_id_rule_refuses_hostile_ids(case_id):
    with pytest.raises(UnsafeNameError, match="case id") as err:
        check_case_id(case_id, "row 2 of 'cases.csv'")
    assert "row 2 of 'cases.csv'" in str(err.value) and "letters, digits" in str(err.value)
    assert isinstance(err.value, UserError)


@pytest.mark.parametrize("case_id", ["case_001", "10000_1000000", "prostate158.020", "A-1"])
def test_the_case_id_rule_accepts_ordinary_ids(case_id):
    assert check_case_id(case_id, "here") == case_id


def test_inside_refuses_paths_that_leave_the_folder(tmp_path):
    (tmp_path / "out").mkdir()
    assert inside(tmp_path / "out", "images/a.nii.gz") == (tmp_path / "out" / "images/a.nii.gz").resolve()
    for bad in ("../x.nii.gz", "/etc/passwd", "images/../../x"):
        with pytest.raises(UnsafeNameError, match="outside"):
            inside(tmp_path / "out", bad)
    # a link inside the folder that points out of it is followed, and refused
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeNameError):
        inside(tmp_path / "out", "link/x.nii.gz")


@pytest.mark.parametrize("resample", [False, True])
def test_hostile_ids_in_a_table_stop_before_anything_is_written(tiny, tmp_path, resample):
    from radiolens.data import cohort_from_table

    table = tiny.manifest.reset_index()[["case_id", "T2W", "DWI", "ADC", "gland", "pirads_group"]].copy()
    table.loc[0, "case_id"] = "../../escape/ESCAPED"
    table.loc[1, "case_id"] = str(tmp_path / "absolute")
    path = tmp_path / "cases.csv"
    table.to_csv(path, index=False)
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(UnsafeNameError) as err:
        cohort_from_table(path, out_dir=out, resample=resample, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "row 2 of" in message and "row 3 of" in message and "ESCAPED" in message
    assert not (tmp_path / "a" / "escape").exists() and not list(tmp_path.rglob("*ESCAPED*"))
    assert not list(tmp_path.rglob("absolute*"))


def test_hostile_id_in_a_manifest_names_the_row(tiny, tmp_path):
    frame = pd.read_csv(tiny.manifest_path, dtype=str, keep_default_na=False)
    frame.loc[3, "case_id"] = "../../../../tmp/x"
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(UnsafeNameError, match=r"row 5 of .*manifest.csv.*'\.\./\.\./\.\./\.\./tmp/x'"):
        load_cohort(tmp_path, cache_dir=tmp_path / "cache")


def test_preprocess_refuses_a_hostile_id_that_bypassed_the_manifest(tiny, tmp_path):
    from radiolens.data import Cohort
    from radiolens.data.preprocess import preprocess

    manifest = tiny.manifest.copy()
    manifest.index = pd.Index(["../../ESCAPED", *manifest.index[1:]], name="case_id")
    hostile = Cohort(tiny.root, manifest, cache_dir=tmp_path / "cache")
    with pytest.raises(UnsafeNameError):
        preprocess(hostile, spacing=(1, 1, 2), crop_shape=(16, 32, 32), out_dir=tmp_path / "x" / "y" / "pre")
    assert not list(tmp_path.rglob("*ESCAPED*"))


def test_a_data_set_case_named_by_an_archive_cannot_escape(tmp_path):
    from radiolens.data.datasets._base import write_case

    with pytest.raises(UnsafeNameError):
        write_case(tmp_path / "cohort", "../../evil", {"T2W": None}, {})
    assert not (tmp_path.parent / "evil").exists()


# ============================================================================================
# 2. damaged images: one checked reader, everywhere
# ============================================================================================
@pytest.fixture
def image_file(tmp_path):
    array = np.random.default_rng(0).normal(100, 10, (16, 32, 32)).astype(np.float32)
    return write_image(array, tmp_path / "img.nii.gz"), array


def test_a_half_truncated_image_is_refused_not_zero_filled(image_file):
    path, _ = image_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for reader in (read_image, read_array):
        with pytest.raises(DamagedImageError, match="truncated or corrupt"):
            reader(path)


def test_a_flipped_byte_in_a_compressed_image_fails_its_checksum(image_file):
    path, _ = image_file
    flip_byte(path, 0.6)
    with pytest.raises(DamagedImageError):
        read_array(path)


def test_a_short_uncompressed_nifti_is_refused(tmp_path):
    path = write_image(np.ones((16, 32, 32), np.float32), tmp_path / "img.nii", compress=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DamagedImageError, match="header describes"):
        read_image(path)
    with pytest.raises(DamagedImageError):
        read_array(path)


def test_an_intact_image_reads_back_exactly(image_file):
    path, array = image_file
    np.testing.assert_array_equal(read_array(path), array)


def test_radiomics_workers_refuse_a_truncated_image(tmp_path):
    from radiolens import radiomics

    from _radiomics_helpers import REDUCED_SETTINGS, make_cohort

    cohort = make_cohort(tmp_path / "c", 2)
    bad = Path(cohort.path("case01", "T2W"))
    bad.write_bytes(bad.read_bytes()[:-40])
    result = radiomics.extract_detailed(cohort, rois=("gland",), modalities=("T2W",), settings=REDUCED_SETTINGS,
                                        cache_dir=tmp_path / "cache", progress=False)
    assert list(result.failures["case_id"]) == ["case01"]
    assert "truncated or corrupt" in result.failures["message"].iloc[0] and bad.name in result.failures["message"].iloc[0]


def test_a_cohort_file_changed_since_its_check_is_checked_again(tiny, tmp_path):
    import shutil

    folder = tmp_path / "cohort"
    shutil.copytree(tiny.root, folder)
    frame = pd.read_csv(tiny.manifest_path, dtype=str, keep_default_na=False)
    for key in ("T2W", "DWI", "ADC", "gland"):
        frame[key] = [Path(p).name for p in frame[key]]
    frame.to_csv(folder / "manifest.csv", index=False)
    cache = tmp_path / "cache"
    load_cohort(folder, cache_dir=cache)  # checked and remembered
    assert files_under(cache / "cohort_checks")
    victim = folder / frame.loc[2, "DWI"]
    flip_byte(victim, 0.7)  # same size, new content: the remembered check no longer applies
    with pytest.raises(CohortError, match=rf"{frame.loc[2, 'case_id']}.*DWI.*corrupt"):
        load_cohort(folder, cache_dir=cache)


def test_a_damaged_synthetic_cohort_is_regenerated_identically(tmp_path):
    from radiolens.data import make_synthetic_cohort

    kwargs = dict(n_cases=10, shape=(16, 32, 32), spacing=(1.6, 1.6, 4.0), seed=3, cache_dir=tmp_path / "cache")
    first = make_synthetic_cohort(**kwargs)
    before = first.fingerprint
    flip_byte(first.path(first.case_ids[4], "ADC"), 0.5)
    again = make_synthetic_cohort(**kwargs)
    assert again.root == first.root and again.fingerprint == before


# ============================================================================================
# 2b. cache entries: one flipped byte in each kind, and the re-run equals the original
# ============================================================================================
def _corrupt_entry(cache: ArtifactCache, pattern: str) -> Path:
    victims = sorted(cache.folder.glob(pattern))
    assert victims, f"no {pattern} entry in {cache.folder}"
    flip_byte(victims[0])
    return victims[0]


def test_flipped_byte_in_cached_parquet_embeddings(tiny, tmp_path):
    from test_embeddings import small_encoder

    from radiolens import embeddings

    encoder = small_encoder()
    original = embeddings.extract(encoder, tiny, cache_dir=tmp_path, progress=False)
    _corrupt_entry(ArtifactCache(tmp_path, "embeddings"), "*.parquet")
    rerun = embeddings.extract(encoder, tiny, cache_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(rerun, original)
    # and the entry is whole again
    assert embeddings.extract(encoder, tiny, cache_dir=tmp_path, progress=False).equals(original)


def test_flipped_byte_in_cached_json_radiomics(tmp_path):
    from radiolens import radiomics

    from _radiomics_helpers import REDUCED_SETTINGS, make_cohort

    cohort = make_cohort(tmp_path / "c", 2)
    kw = dict(rois=("gland",), modalities=("T2W",), settings=REDUCED_SETTINGS, cache_dir=tmp_path / "cache", progress=False)
    original = radiomics.extract_detailed(cohort, **kw).features
    _corrupt_entry(ArtifactCache(tmp_path / "cache", "radiomics"), "*.json.data")
    pd.testing.assert_frame_equal(radiomics.extract_detailed(cohort, **kw).features, original)


class _Counted:
    """A compute function that counts its calls."""

    def __init__(self, make):
        self.make, self.calls = make, 0

    def __call__(self):
        self.calls += 1
        return self.make()


def test_flipped_byte_in_cached_npy(tmp_path):
    cache = ArtifactCache(tmp_path, "arrays")
    compute = _Counted(lambda: np.arange(1000, dtype=np.float64))

    def save(a, p):
        with open(p, "wb") as handle:
            np.save(handle, a)

    first = cache.cached("k", compute, save, np.load, ext="npy")
    _corrupt_entry(cache, "*.npy")
    again = cache.cached("k", compute, save, np.load, ext="npy")
    assert compute.calls == 2
    np.testing.assert_array_equal(again, first)


def test_flipped_byte_in_cached_checkpoint(tmp_path):
    import torch
    from test_embeddings import small_encoder

    from radiolens.models import load_encoder, save_encoder

    cache = ArtifactCache(tmp_path, "encoders")
    compute = _Counted(lambda: small_encoder(seed=1))
    first = cache.cached("enc", compute, save_encoder, load_encoder, ext="pt")
    _corrupt_entry(cache, "*.pt")
    again = cache.cached("enc", compute, save_encoder, load_encoder, ext="pt")
    assert compute.calls == 2
    for (name, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def small_report():
    from radiolens.lens import RadiomicLens
    from radiolens.lens.simulation import planted_shift

    sim = planted_shift(n_cases=60, d=16, n_per_modality=3, n_test=0, seed=0)
    lens = RadiomicLens(protocol="paper", hidden_dim=4, epochs=3, random_state=0).fit(sim.X_pre, sim.R)
    return lens, lens.compare(sim.X_pre, sim.X_ft, sim.R), sim.X_pre


@pytest.mark.parametrize("victim", ["scores.parquet", "any"])
def test_flipped_byte_in_a_cached_lens_report_folder(small_report, tmp_path, victim):
    from radiolens.lens import LensReport

    _, report, _ = small_report
    cache = ArtifactCache(tmp_path, "lens")
    compute = _Counted(lambda: report)
    cache.cached("rep", compute, lambda r, folder: r.to_dir(folder), LensReport.from_dir)
    folder = cache.get_dir("rep")
    original = {p.relative_to(folder): p.read_bytes() for p in files_under(folder)}
    target = folder / victim if victim != "any" else files_under(folder)[-1]
    if not target.exists():  # the report names its tables; pick the scores table wherever it lives
        target = next(p for p in files_under(folder) if p.name.startswith("scores"))
    flip_byte(target)
    again = cache.cached("rep", compute, lambda r, folder: r.to_dir(folder), LensReport.from_dir)
    assert compute.calls == 2 and again is report
    assert {p.relative_to(folder): p.read_bytes() for p in files_under(folder)} == original


def test_flipped_byte_in_a_cached_lens_folder(small_report, tmp_path):
    from radiolens.lens import RadiomicLens

    lens, _, x = small_report
    cache = ArtifactCache(tmp_path, "lens")
    compute = _Counted(lambda: lens)
    cache.cached("lens", compute, lambda m, folder: m.save(folder), RadiomicLens.load)
    for victim in files_under(cache.get_dir("lens")):
        flip_byte(victim)
        assert cache.get_dir("lens") is None  # detected
        cache.cached("lens", compute, lambda m, folder: m.save(folder), RadiomicLens.load)
    assert compute.calls == 1 + len(files_under(cache.get_dir("lens")))
    loaded = cache.cached("lens", compute, lambda m, folder: m.save(folder), RadiomicLens.load)
    np.testing.assert_array_equal(np.asarray(loaded.transform(x)), np.asarray(lens.transform(x)))


def test_a_damaged_sidecar_means_recompute(tmp_path):
    cache = ArtifactCache(tmp_path, "t")
    compute = _Counted(lambda: pd.DataFrame({"a": [1.0, 2.0]}))
    first = cache.cached_frame("f", compute)
    (cache.folder / "f.json").write_text("{not json")
    pd.testing.assert_frame_equal(cache.cached_frame("f", compute), first)
    assert compute.calls == 2


# ============================================================================================
# 3. one cache root: nothing written under HOME when --cache-dir is given
# ============================================================================================
def test_every_helper_honours_the_cache_root(tiny, tmp_path, monkeypatch):
    from test_embeddings import small_encoder

    from radiolens import embeddings, radiomics
    from radiolens.data import cohort_from_table, make_synthetic_cohort
    from radiolens.data.preprocess import preprocess

    from _radiomics_helpers import REDUCED_SETTINGS

    home = tmp_path / "home"
    home.mkdir()
    for var in ("RADIOLENS_CACHE", "XDG_CACHE_HOME", "RADIOLENS_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    cache = tmp_path / "cache"

    synthetic = make_synthetic_cohort(n_cases=10, shape=(16, 32, 32), spacing=(1.6, 1.6, 4.0), cache_dir=cache)
    make_synthetic_cohort(n_cases=10, shape=(16, 32, 32), spacing=(1.6, 1.6, 4.0), cache_dir=cache)  # reuse: checks
    assert cache in synthetic.root.parents
    table = tiny.manifest.reset_index()[["case_id", "T2W", "DWI", "ADC", "gland", "pirads_group", "split"]]
    for key in ("T2W", "DWI", "ADC", "gland"):
        table[key] = [str(tiny.path(c, key)) for c in table["case_id"]]
    table.to_csv(tmp_path / "cases.csv", index=False)
    own = cohort_from_table(tmp_path / "cases.csv", cache_dir=cache)
    load_cohort(own.manifest_path, cache_dir=cache)
    pre = preprocess(own, spacing=(1, 1, 2), crop_shape=(16, 32, 32))  # the cohort's cache
    radiomics.extract_detailed(pre, rois=("gland",), modalities=("T2W",), settings=REDUCED_SETTINGS, progress=False)
    embeddings.extract(small_encoder(), pre, progress=False)
    assert files_under(home) == [], files_under(home)
    for namespace in ("synthetic", "cohorts", "cohort_checks", "preprocessed", "radiomics", "embeddings"):
        assert (cache / namespace).is_dir(), namespace


# ============================================================================================
# 4. the configuration, checked completely before any work
# ============================================================================================
@pytest.mark.parametrize(
    "override, key",
    [
        ({"finetune": {"epochs": -5}}, "finetune.epochs"),
        ({"lens": {"hidden_dim": "wide"}}, "lens.hidden_dim"),
        ({"jobs": 0}, "jobs"),
        ({"finetune": {"batch_size": 0}}, "finetune.batch_size"),
        ({"lens": {"batch_size": 0}}, "lens.batch_size"),
        ({"finetune": {"lr": -1}}, "finetune.lr"),
        ({"finetune": {"lr": math.nan}}, "finetune.lr"),
        ({"lens": {"lr": math.inf}}, "lens.lr"),
        ({"lens": {"n_bootstrap": -3}}, "lens.n_bootstrap"),
        ({"finetune": {"regimes": []}}, "finetune.regimes"),
        ({"radiomics": {"modalities": []}}, "radiomics.modalities"),
        ({"cohort": {"shape": [-32, 96, 96]}}, "cohort.shape"),
        ({"preprocess": {"crop_shape": [64, 0, 224]}}, "preprocess.crop_shape"),
        ({"cohort": {"spacing": [0.8, 0, 2.0]}}, "cohort.spacing"),
        ({"preprocess": {"spacing": [0.5, 0.5]}}, "preprocess.spacing"),
        ({"cohort": {"n_cases": 0}}, "cohort.n_cases"),
        ({"radiomics": {"settings": 5}}, "radiomics.settings"),
        ({"radiomics": {"settings": "nowhere.yaml"}}, "radiomics.settings"),
        ({"lens": {"l1_grid": [0.0, -1e-6]}}, "lens.l1_grid"),
        ({"lens": {"scale": "huge"}}, "lens.scale"),
        ({"lens": {"match_ft_moments": "yes"}}, "lens.match_ft_moments"),
        ({"finetune": {"tasks": ["pirads", "pirads"]}}, "finetune.tasks"),
        ({"preprocess": {"enabled": "yes"}}, "preprocess.enabled"),
        ({"out": ""}, "out"),
        ({"device": "gpu"}, "device"),
        ({"cohort": {"resample": "sometimes"}}, "cohort.resample"),
        ({"cohort": {"lesion_threshold": math.nan}}, "cohort.lesion_threshold"),
        ({"encoder": {"in_chans": 2}}, "encoder.in_chans"),
        ({"finetune": {"tasks": []}}, "finetune.tasks"),
    ],
)
def test_a_bad_value_is_refused_naming_key_value_and_what_is_allowed(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(**override)
    message = str(err.value)
    assert repr(key) in message and ("allowed" in message or "must" in message)


def test_every_rule_names_a_real_key_and_every_key_has_a_rule_or_a_typed_default():
    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    keys = dict(leaves(DEFAULTS))
    assert not set(RULES) - set(keys), "rules for keys that do not exist"
    assert not set(CHECKED_TOGETHER) - set(keys), "CHECKED_TOGETHER names keys that do not exist"
    untyped = [k for k, v in keys.items() if k not in RULES and k not in CHECKED_TOGETHER and v is None]
    assert not untyped, f"give {untyped} a rule in radiolens.config.RULES (a None default says nothing)"


def test_the_cli_prints_one_line_for_a_bad_config(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("lens:\n  n_bootstrap: -3\n")
    done = subprocess.run([sys.executable, "-m", "radiolens", "run", str(config), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == ConfigError.exit_code
    assert "lens.n_bootstrap" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()  # nothing started


# ============================================================================================
# 5. failure leaves an honest state
# ============================================================================================
def _earlier_report(out: Path) -> None:
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "scores_pirads.csv").write_text("old\n")
    (out / "report.html").write_text("<html>an earlier run</html>")
    (out / "summary.json").write_text(json.dumps({"files": ["tables/scores_pirads.csv", "report.html", "summary.json"]}))


def test_a_failed_run_leaves_failed_txt_and_no_report_claiming_to_be_current(tmp_path, monkeypatch):
    from radiolens.pipeline import Study

    out = tmp_path / "out"
    _earlier_report(out)

    def boom(self, out):
        raise NotImplementedError("a step broke")

    monkeypatch.setattr(Study, "_run", boom)
    with pytest.raises(NotImplementedError):
        Study(load_config(cache_dir=str(tmp_path / "cache"))).run(out)
    assert "a step broke" in (out / "FAILED.txt").read_text()
    assert not (out / "report.html").exists() and not (out / "summary.json").exists()
    assert not (out / "tables" / "scores_pirads.csv").exists() and not (out / "RUNNING.txt").exists()
    assert (out / "previous" / "report.html").read_text() == "<html>an earlier run</html>"
    assert (out / "previous" / "tables" / "scores_pirads.csv").exists()


def test_a_successful_run_clears_the_markers(tmp_path, monkeypatch):
    from radiolens.pipeline import Study

    out = tmp_path / "out"
    _earlier_report(out)
    (out / "FAILED.txt").write_text("an old failure")

    def fine(self, out):
        assert (out / "RUNNING.txt").exists() and not (out / "report.html").exists()
        (out / "report.html").write_text("new")
        return "result"

    monkeypatch.setattr(Study, "_run", fine)
    assert Study(load_config(cache_dir=str(tmp_path / "cache"))).run(out) == "result"
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "tables"]


def test_a_run_whose_tasks_were_all_skipped_reports_so(tmp_path):
    from radiolens.report import write_report

    path = write_report(tmp_path, {}, downstream=pd.DataFrame(columns=["task", "regime", "metric", "value"]),
                        sweeps={}, warnings=["task 'pirads' skipped: the column is absent"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("no lens report") and summary["warnings"]
    assert "No task produced a lens report" in path.read_text()


def test_a_run_whose_tasks_all_lack_labels_stops_with_one_message_and_failed_txt(tmp_path):
    import shutil

    from radiolens.pipeline import Study
    from radiolens.tasks import MissingLabelsError

    source = make_tiny_cohort(tmp_path / "src", n_cases=8, seed=4, splits=["train"] * 4 + ["val"] * 2 + ["test"] * 2)
    folder = tmp_path / "nolabels"
    shutil.copytree(source.root, folder)
    frame = pd.read_csv(source.manifest_path, dtype=str, keep_default_na=False).assign(pirads_group="")
    frame.to_csv(folder / "manifest.csv", index=False)
    out = tmp_path / "out"
    _earlier_report(out)
    config = load_config(cohort={"source": "folder", "path": str(folder)}, finetune={"tasks": ["pirads"]},
                         cache_dir=str(tmp_path / "cache"), out=str(out))
    with pytest.raises(MissingLabelsError, match="pirads_group") as err:
        Study(config, progress=False).run()
    assert isinstance(err.value, UserError)
    assert "pirads_group" in (out / "FAILED.txt").read_text() and not (out / "report.html").exists()


def _t2w_only_cohort(tiny, folder: Path):
    import shutil

    shutil.copytree(tiny.root, folder)
    frame = pd.read_csv(tiny.manifest_path, dtype=str, keep_default_na=False)
    frame["DWI"] = ""
    frame["ADC"] = ""
    for key in ("T2W", "gland"):
        frame[key] = [Path(p).name for p in frame[key]]
    frame.to_csv(folder / "manifest.csv", index=False)
    return folder


def test_a_t2w_only_cohort_is_refused_before_radiomics(tmp_path):
    from radiolens.pipeline import Study

    source = make_tiny_cohort(tmp_path / "src", n_cases=8, seed=2, splits=["train"] * 4 + ["val"] * 2 + ["test"] * 2)
    folder = _t2w_only_cohort(source, tmp_path / "t2w")
    config = load_config(cohort={"source": "folder", "path": str(folder)}, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"radiomics.modalities.*\['DWI', 'ADC'\].*\['T2W'\]"):
        Study(config, progress=False).cohort()
    # told to use T2W only, the tasks that need DWI and ADC are skipped with a reason
    config = load_config(cohort={"source": "folder", "path": str(folder)}, radiomics={"modalities": ["T2W"]},
                         cache_dir=str(tmp_path / "cache"))
    study = Study(config, progress=False)
    assert study.available_tasks() == ["volume"]
    assert any("'pirads' skipped" in w and "DWI in 8 of 8 cases" in w for w in study.warnings)


def test_a_random_file_as_checkpoint_gets_a_radiolens_message(tmp_path):
    from radiolens.models import load_profound

    path = tmp_path / "weights.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputFileError) as err:
        load_profound(path, preset="micro")
    assert "not a PyTorch checkpoint" in str(err.value) and "weights_only=False" not in str(err.value)


def test_stale_worker_files_of_ended_processes_are_swept(tmp_path):
    from radiolens.run_folder import sweep_stale_worker_files

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead, alive = child.pid, os.getpid()
    (tmp_path / f"sem.loky-{dead}-abc").write_text("")
    (tmp_path / f"joblib_memmapping_folder_{dead}_x_y").mkdir()
    (tmp_path / f"sem.loky-{alive}-def").write_text("")
    (tmp_path / "unrelated").write_text("")
    removed = sweep_stale_worker_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f"sem.loky-{dead}-abc", f"joblib_memmapping_folder_{dead}_x_y"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"sem.loky-{alive}-def", "unrelated"])


def test_an_interrupted_run_ends_its_loky_workers(tmp_path, monkeypatch):
    from joblib.externals.loky import get_reusable_executor

    from radiolens.pipeline import Study
    from radiolens.run_folder import _alive

    executor = get_reusable_executor(max_workers=1)
    worker = executor.submit(os.getpid).result()
    assert _alive(worker)

    def interrupted(self, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(Study, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Study(load_config(cache_dir=str(tmp_path / "cache"))).run(tmp_path / "out")
    assert not _alive(worker)
    assert "interrupted" in (tmp_path / "out" / "FAILED.txt").read_text()


def test_sigterm_marks_the_run_failed_and_exits_cleanly(tmp_path):
    out = tmp_path / "out"
    _earlier_report(out)
    script = textwrap.dedent(f"""
        import sys, time
        from radiolens import cli
        from radiolens.pipeline import Study
        def slow(self, out):
            print("started", flush=True)
            time.sleep(120)
        Study._run = slow
        sys.exit(cli.main(["run", "--out", {str(out)!r}, "--cache-dir", {str(tmp_path / "cache")!r}]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert "interrupted" in (out / "FAILED.txt").read_text() and not (out / "report.html").exists()


# ============================================================================================
# end to end (slow): the command line as a user runs it
# ============================================================================================
TINY_STUDY = """
cohort:
  n_cases: 20
  shape: [16, 32, 32]
  spacing: [1.6, 1.6, 4.0]
finetune:
  tasks: [volume]
  regimes: [full]
  epochs: 1
  batch_size: 4
radiomics:
  lesion_roi: false
lens:
  epochs: 5
  l1_grid: [0.0]
  l2_grid: [0.0]
  n_bootstrap: 2
  n_permutations: 5
"""


@pytest.mark.slow
def test_a_run_with_cache_dir_writes_nothing_under_home_and_survives_a_corrupt_cache(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    env = {k: v for k, v in os.environ.items() if k not in ("RADIOLENS_CACHE", "XDG_CACHE_HOME", "RADIOLENS_DATA")}
    env.update(HOME=str(home), MPLBACKEND="Agg")
    cache = tmp_path / "cache"

    def run(out):
        done = subprocess.run([sys.executable, "-m", "radiolens", "run", str(config), "--quick", "--no-progress",
                               "--cache-dir", str(cache), "--out", str(out), "--jobs", "1"],
                              env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-4000:]
        return {p.relative_to(out): p.read_bytes() for p in files_under(out / "tables")}

    first = run(tmp_path / "out1")
    assert files_under(home) == [], files_under(home)
    # one flipped byte in every cached table, checkpoint, record and lens folder file
    for path in files_under(cache):
        if path.suffix in (".parquet", ".pt", ".data") or "lens" in path.parts and not path.name.endswith(".json"):
            flip_byte(path)
    time.sleep(0.01)
    assert run(tmp_path / "out2") == first
    assert files_under(home) == []
    assert hash_file(tmp_path / "out2" / "summary.json")  # a report was written
