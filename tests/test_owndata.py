"""Your data, your models (issue 12): real-format folders (DICOM series, DWI/ADC on a coarser grid
than T2W, ISUP-valued lesion masks, tables without labels), encoders brought from elsewhere, and
a command line that answers mistakes with one message and an exit code."""

from __future__ import annotations

import json
import locale
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import yaml

from radiolens import cli, models
from radiolens.cache import hash_file
from radiolens.config import load_config
from radiolens.data import cohort_from_table, make_synthetic_cohort
from radiolens.data.contract import CohortError
from radiolens.data.export import write_dicom_series, write_example_folder
from radiolens.data.image_io import DicomSeriesError, read_array, read_image
from radiolens.data.tables import LesionRuleError
from radiolens.errors import EXIT_CODES, InputFileError, NotEnoughDataError
from radiolens.lens.requirements import check_cases_per_split, min_cases_per_split
from radiolens.pipeline import Study
from radiolens.report import slug
from radiolens.tasks import MissingLabelsError

REDUCED_RADIOMICS = {
    "setting": {"normalize": True, "normalizeScale": 100, "binCount": 16, "label": 1, "preCrop": True},
    "imageType": {"Original": {}},
    "featureClass": {"firstorder": []},
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small synthetic cohort to export in real formats (12 cases: enough for a lens split)."""
    return make_synthetic_cohort(n_cases=12, shape=(16, 48, 48), seed=3, out_dir=tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def folder(source, tmp_path_factory):
    """A PI-CAI-style download: DICOM T2W, coarse DWI/ADC, lesion masks valued 3, no labels."""
    return write_example_folder(source, tmp_path_factory.mktemp("mine") / "download")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The shipped encoder in ProFound's layout (pre) and a perturbed copy as a radiolens file (ft)."""
    root = tmp_path_factory.mktemp("ckpt")
    encoder = models.load_pretrained()
    torch.save({"model": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}, root / "pre.pth")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn_like(p))
    models.save_encoder(encoder, root / "ft.pt")
    return root / "pre.pth", root / "ft.pt"


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
def test_dicom_series_reads_back_on_its_grid(tmp_path):
    values = np.random.default_rng(0).random((5, 12, 10)).astype(np.float32) * 2.5  # not integers
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.5, 0.6, 3.0))
    image.SetOrigin((10.0, -4.0, 2.0))
    encoding = locale.getpreferredencoding(False)
    write_dicom_series(image, tmp_path / "t2")
    assert locale.getpreferredencoding(False) == encoding  # GDCM's locale switch is undone
    back = read_image(tmp_path / "t2")
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read_array(tmp_path / "t2"), values, atol=2.5 / 30000 * 1.01)


def test_a_folder_with_two_series_is_an_error_listing_them(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((3, 8, 8), np.int16))
    write_dicom_series(image, tmp_path / "a", seed=1)
    write_dicom_series(image, tmp_path / "b", seed=2)
    for f in (tmp_path / "b").iterdir():
        shutil.move(f, tmp_path / "a" / f"b_{f.name}")
    with pytest.raises(DicomSeriesError, match=r"holds 2 DICOM series \(2\.25\.\d+ \(3 files\), 2\.25\.\d+ \(3 files\)\)"):
        read_image(tmp_path / "a")
    with pytest.raises(DicomSeriesError, match="holds no DICOM series"):
        read_image(tmp_path / "b")


# --------------------------------------------------------------------------------------------
# tables as they come
# --------------------------------------------------------------------------------------------
def test_a_download_without_labels_becomes_a_cohort(folder, source, tmp_path, caplog):
    table = pd.read_csv(folder)
    assert "pirads" not in table.columns and "split" not in table.columns
    assert (folder.parent / table["t2w"][0]).is_dir()  # DICOM series folders
    caplog.set_level("INFO", logger="radiolens.data.tables")
    cohort = cohort_from_table(folder, out_dir=tmp_path / "cohort")
    manifest = cohort.manifest
    assert manifest["pirads_group"].isna().all()
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert "stratified by lesion presence" in caplog.text and "resampled onto the T2W grid" in caplog.text
    # T2W converted from DICOM; DWI and ADC moved onto its grid; masks kept
    case_id = cohort.case_ids[0]
    case = cohort.load_case(case_id)
    assert case.images["T2W"].shape == case.images["ADC"].shape == source.load_case(case_id).images["T2W"].shape
    assert cohort.path(case_id, "T2W").parent.name == "converted"
    assert cohort.path(case_id, "DWI").parent.name == "resampled"
    # the ISUP-valued lesion masks ({0, 3}) are binarised by the recorded rule
    with_lesion = [c for c in cohort.case_ids if source.load_case(c, ["lesion"]).masks["lesion"].any()]
    assert with_lesion
    for c in with_lesion:
        raw = read_array(manifest.at[c, "lesion_source"])
        assert set(np.unique(raw)) == {0, 3}
        np.testing.assert_array_equal(cohort.load_case(c, ["lesion"]).masks["lesion"], (raw != 0).astype(np.uint8))
    assert set(manifest["lesion_rule"].dropna()) == {"value != 0"}
    assert (manifest["gland_volume_ml"] > 0).all()
    # no labels, but lesion masks: cases with and without a lesion are spread over the splits
    has_lesion = manifest.index.isin(with_lesion)
    for split in ("train", "test"):
        assert 0 < has_lesion[manifest["split"] == split].sum() < (manifest["split"] == split).sum()


def test_lesion_threshold_rule(folder, source, tmp_path):
    cohort = cohort_from_table(folder, out_dir=tmp_path / "isup4", lesion_threshold=4)
    assert set(cohort.manifest["lesion_rule"].dropna()) == {"value >= 4"}
    assert (cohort.manifest["lesion_volume_ml"] == 0).all()  # every lesion was graded 3
    with pytest.raises(LesionRuleError, match="cohort.lesion_threshold.*'nonzero'.*got 'big'"):
        cohort_from_table(folder, out_dir=tmp_path / "bad", lesion_threshold="big")
    with pytest.raises(CohortError, match=r"case '.*', DWI file .*hbv.nii.gz': grid differs from the case's T2W.*cohort\.resample: true"):
        cohort_from_table(folder, out_dir=tmp_path / "strict", resample=False)


def test_prostatex_and_picai_column_names(source, tmp_path):
    rows = [{"ProxID": f"ProstateX-{i:04d}", "t2_tse_tra": str(source.path(c, "T2W")), "ADC": str(source.path(c, "ADC")),
             "prostate_mask": str(source.path(c, "gland")), "center": "RUMC", "prostate_volume": "40.5",
             "PI-RADS": "4"}
            for i, c in enumerate(source.case_ids)]
    pd.DataFrame(rows).to_csv(tmp_path / "px.csv", index=False)
    cohort = cohort_from_table(tmp_path / "px.csv", out_dir=tmp_path / "px")
    assert cohort.case_ids[0] == "ProstateX-0000"
    assert cohort.manifest["site"].eq("RUMC").all()
    assert cohort.manifest["gland_volume_ml"].eq(40.5).all()
    assert cohort.manifest["pirads_group"].eq(2).all()
    assert cohort.path(cohort.case_ids[0], "gland") == source.path(source.case_ids[0], "gland").resolve()


def test_a_failed_table_leaves_nothing_behind(folder, tmp_path):
    table = pd.read_csv(folder)
    table.loc[len(table) - 1, "prostate"] = "nowhere/prostate.nii.gz"
    table.to_csv(folder.parent / "broken.csv", index=False)
    out = tmp_path / "cohorts" / "mine"
    with pytest.raises(CohortError, match=r"case '.*', gland file '.*nowhere/prostate\.nii\.gz': file does not exist"):
        cohort_from_table(folder.parent / "broken.csv", out_dir=out)
    assert not out.exists()
    assert list((tmp_path / "cohorts").iterdir()) == []  # no temporary folder either


# --------------------------------------------------------------------------------------------
# how many cases a lens needs
# --------------------------------------------------------------------------------------------
def test_minimum_cases_per_split_is_checked_with_the_fix():
    need = min_cases_per_split(n_folds=2)
    check_cases_per_split(need, n_folds=2)  # exactly the minimum passes
    for split in need:
        short = {**need, split: need[split] - 1}
        with pytest.raises(NotEnoughDataError, match=rf"my table has too few cases.*{split} {need[split] - 1} < {need[split]}"):
            check_cases_per_split(short, n_folds=2, what="my table")
    assert min_cases_per_split(n_folds=3)["train"] > need["train"]  # more folds, more training cases
    assert min_cases_per_split(n_folds=3, protocol="paper") == min_cases_per_split(n_folds=2, protocol="paper")


def _config(tmp_path, table, **finetune):
    settings = tmp_path / "radiomics.yaml"
    settings.write_text(yaml.safe_dump(REDUCED_RADIOMICS))
    text = {"cohort": {"source": "table", "path": str(table)}, "radiomics": {"settings": str(settings)},
            "finetune": finetune, "jobs": 1}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(text))
    return tmp_path / "study.yaml"


def test_a_table_too_small_for_a_lens_is_refused_up_front(folder, tmp_path):
    small = pd.read_csv(folder).head(5)
    small.to_csv(folder.parent / "five.csv", index=False)
    config = load_config(_config(tmp_path, folder.parent / "five.csv"), quick=True, cache_dir=str(tmp_path / "c"))
    with pytest.raises(NotEnoughDataError, match=r"five\.csv' has too few cases for a lens") as info:
        Study(config, progress=False).cohort()
    assert str(min_cases_per_split(config["lens"]["n_folds"])) in str(info.value)


def test_tasks_without_labels_are_skipped_with_one_message(folder, tmp_path):
    config = load_config(_config(tmp_path, folder, tasks=["pirads", "volume"]), quick=True, cache_dir=str(tmp_path / "c"))
    study = Study(config, progress=False)
    assert study.available_tasks() == ["volume"]  # volumes are measured from the gland masks
    (message,) = study.warnings
    assert "task 'pirads' skipped" in message and "'pirads_group'" in message and "finetune.checkpoints" in message
    only = load_config(_config(tmp_path, folder, tasks=["pirads"]), quick=True, cache_dir=str(tmp_path / "c"))
    with pytest.raises(MissingLabelsError, match="nothing to compare.*finetune.checkpoints"):
        Study(only, progress=False).available_tasks()


# --------------------------------------------------------------------------------------------
# encoders from elsewhere
# --------------------------------------------------------------------------------------------
class _Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 6, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_every_checkpoint_format_loads_with_its_provenance(checkpoints, tmp_path):
    pre, ft = checkpoints
    enc, info = models.load_encoder_file(pre)
    assert info["format"] == "profound" and info["preset"] == "micro" and info["missing"] == 0
    assert info["sha256"] == hash_file(pre) and info["path"] == str(pre.resolve())
    enc2, info2 = models.load_encoder_file(ft)
    assert info2["format"] == "radiolens-encoder-v1"
    assert models.encoder_hash(enc) != models.encoder_hash(enc2)
    torch.jit.save(torch.jit.script(_Plain()), tmp_path / "plain.pt")
    enc3, info3 = models.load_encoder_file(tmp_path / "plain.pt")
    assert info3["format"] == "torchscript"
    assert enc3(torch.zeros(1, 3, 16, 16, 16)).shape == (1, 6)
    dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO, 4: torch.export.Dim.AUTO}
    program = torch.export.export(_Plain(), (torch.zeros(2, 3, 16, 16, 16),), dynamic_shapes=(dims,))
    torch.export.save(program, tmp_path / "plain.pt2")
    enc4, info4 = models.load_encoder_file(tmp_path / "plain.pt2")
    assert info4["format"] == "torch.export"
    enc4.train()
    enc4.eval()  # an exported graph has no modes: radiolens's holder keeps them
    assert enc4(torch.zeros(3, 3, 8, 12, 20)).shape == (3, 6)
    assert models.encoder_hash(enc4) != models.encoder_hash(models.as_encoder(_Plain(), in_chans=3))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match=r"junk\.pt' cannot be read: .*; radiolens reads a ProFound checkpoint") as info:
        models.load_encoder_file(tmp_path / "junk.pt")
    assert "\n" not in str(info.value)
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    with pytest.raises(InputFileError, match=r"other\.pt' is not an encoder radiolens can read"):
        models.load_encoder_file(tmp_path / "other.pt")


def test_python_modules_as_the_encoders(folder, tmp_path):
    config = load_config(_config(tmp_path, folder, tasks=["pirads"]), quick=True, cache_dir=str(tmp_path / "c"))
    torch.manual_seed(0)
    study = Study(config, progress=False, encoder=_Plain(), finetuned={"mine": _Plain()})
    assert study.available_tasks() == ["mine"]  # pirads has no labels: skipped, the lens runs on "mine"
    x_pre, x_ft = study.embeddings("mine")
    assert x_pre.shape == x_ft.shape == (12, 6)
    assert not np.allclose(x_pre.to_numpy(), x_ft.to_numpy())
    assert set(study.encoder_provenance) == {"pre-trained", "fine-tuned (mine)"}


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------
def _cli(capsys, *args):
    code = cli.main(list(args))
    err = capsys.readouterr().err
    return code, err


def _one_message(err: str, command: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("INFO ", "WARNING "))]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"radiolens {command}: "), err
    return lines[0]


def test_cli_user_errors_are_one_message_with_their_exit_code(folder, checkpoints, tmp_path, capsys):
    pre, ft = checkpoints
    common = ["--quick", "--no-progress", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "out")]
    code, err = _cli(capsys, "compare", str(tmp_path / "nope.pt"), str(ft), "--cohort", str(folder), *common)
    assert code == EXIT_CODES["config"] and "PRE checkpoint" in _one_message(err, "compare")

    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    code, err = _cli(capsys, "compare", str(pre), str(tmp_path / "junk.pt"), "--cohort", str(folder), *common)
    assert code == EXIT_CODES["input file"]
    assert "junk.pt" in _one_message(err, "compare") and "TorchScript" in err

    pd.read_csv(folder).head(5).to_csv(folder.parent / "five.csv", index=False)
    code, err = _cli(capsys, "compare", str(pre), str(ft), "--cohort", str(folder.parent / "five.csv"), *common)
    assert code == EXIT_CODES["not enough data"]
    assert str(min_cases_per_split()) in _one_message(err, "compare")

    pd.read_csv(folder).drop(columns=["t2w", "hbv", "adc"]).to_csv(folder.parent / "noimg.csv", index=False)
    code, err = _cli(capsys, "compare", str(pre), str(ft), "--cohort", str(folder.parent / "noimg.csv"), *common)
    assert code == EXIT_CODES["cohort"] and "none of the image columns" in _one_message(err, "compare")

    code, err = _cli(capsys, "run", str(_config(tmp_path, folder, tasks=["pirads"])), *common)
    assert code == MissingLabelsError.exit_code and "pirads_group" in _one_message(err, "run")

    code, err = _cli(capsys, "-v", "compare", str(pre), str(tmp_path / "junk.pt"), "--cohort", str(folder), *common)
    assert code == EXIT_CODES["input file"] and "Traceback" in err


@pytest.mark.slow
def test_cli_compare_writes_the_report_with_each_encoders_provenance(folder, checkpoints, tmp_path):
    from conftest import run_cli

    pre, ft = checkpoints
    config = _config(tmp_path, folder)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "report"
    done = run_cli(["compare", str(pre), str(ft), "--cohort", str(folder), "--task", "my_task", "--config", str(config),
                    "--quick", "--no-progress", "--out", str(out), "--cache-dir", str(tmp_path / "cache")], env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    encoders = summary["provenance"]["encoders"]
    assert encoders["pre-trained"]["sha256"] == hash_file(pre)
    assert encoders["fine-tuned (my_task)"]["sha256"] == hash_file(ft)
    assert encoders["fine-tuned (my_task)"]["path"] == str(ft.resolve())
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="encoders"' in page and hash_file(ft) in page
    assert (out / "lens" / slug("my_task")).is_dir()
    # nothing was fine-tuned here: no Table 2
    assert not (out / "tables" / "downstream_table2.csv").exists()
    assert "radiolens fine-tuned nothing" in page


def test_a_dicom_folder_in_a_cohort_manifest_is_a_clear_error(folder, tmp_path):
    from radiolens.data import load_cohort

    table = pd.read_csv(folder)
    manifest = pd.DataFrame({"case_id": table["study_id"], "split": "train",
                             "T2W": [str(folder.parent / p) for p in table["t2w"]]})
    for col in ("DWI", "ADC", "gland", "zones", "lesion", "pirads_group", "gland_volume_ml", "lesion_volume_ml",
                "source", "site", "scanner"):
        manifest[col] = ""
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(CohortError, match=r"T2W file .*t2w': is a folder \(a DICOM series\?\).*cohort_from_table"):
        load_cohort(tmp_path)
