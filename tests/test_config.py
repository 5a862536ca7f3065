"""The run configuration: defaults, quick mode, validation naming the key."""

from __future__ import annotations

import pytest

from radiolens.config import DEFAULTS, QUICK, ConfigError, describe_defaults, load_config


def write(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_defaults_are_complete_and_documented():
    config = load_config()
    assert config["cohort"]["source"] == "synthetic"
    assert config["lens"]["l1_grid"] == [0.0, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5]  # the paper's grid
    assert config["lens"]["l2_grid"] == [0.0, 1e-5, 1e-4, 1e-3]
    text = describe_defaults()
    # every leaf key is printed with a non-empty explanation
    for line in text.splitlines():
        if line.strip().endswith(":"):
            continue
        assert "#" in line and line.split("#", 1)[1].strip(), line


def test_quick_mode_changes_only_what_it_names():
    quick = load_config(quick=True)
    full = load_config()
    assert quick["quick"] is True and full["quick"] is False
    assert quick["cohort"]["n_cases"] == QUICK["cohort"]["n_cases"] < full["cohort"]["n_cases"]
    assert quick["cohort"]["shape"] == full["cohort"]["shape"]
    assert quick["finetune"]["lr"] == full["finetune"]["lr"]


def test_file_values_override_and_overrides_win(tmp_path):
    path = write(tmp_path, "seed: 3\nlens:\n  epochs: 50\n  decoder: ridge\n")
    config = load_config(path, seed=None, jobs=4)
    assert config["seed"] == 3 and config["jobs"] == 4
    assert config["lens"]["epochs"] == 50 and config["lens"]["decoder"] == "ridge"
    assert config["lens"]["lr"] == DEFAULTS["lens"]["lr"]


@pytest.mark.parametrize(
    "text, key",
    [
        ("lens:\n  hiden_dim: 12\n", "lens.hiden_dim"),
        ("colour: red\n", "colour"),
        ("finetune:\n  tasks: [pirads, survival]\n", "finetune.tasks"),
        ("lens:\n  decoder: lasso\n", "lens.decoder"),
        ("seed: 1.5\n", "seed"),
        ("lens:\n  epochs: many\n", "lens.epochs"),
        ("cohort: synthetic\n", "cohort"),
        ("cohort:\n  shape: [24, 96, 96]\n", "cohort.shape"),
        ("cohort:\n  source: table\n", "cohort.path"),
        ("cohort:\n  source: table\n  path: nowhere.csv\n", "cohort.path"),
        ("encoder:\n  weights: missing/profound.pth\n", "encoder.weights"),
        ("finetune:\n  decoder_channels: 0\n", "finetune.decoder_channels"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert repr(key) in str(err.value) or key in str(err.value)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "cases.csv").write_text("case_id\n")
    config = load_config(write(tmp_path, "cohort:\n  source: table\n  path: cases.csv\n"))
    assert config["cohort"]["path"] == str(tmp_path / "cases.csv")


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "lens: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_defaults_round_trip_through_yaml(tmp_path):
    # the printed defaults are themselves a valid configuration file
    path = write(tmp_path, describe_defaults())
    assert load_config(path) == load_config()


def test_path_keys_take_path_objects_and_store_strings(tmp_path):
    from radiolens.config import ConfigError, load_config

    config = load_config(None, cache_dir=tmp_path / "cache", out=tmp_path / "out")
    assert config["cache_dir"] == str(tmp_path / "cache") and config["out"] == str(tmp_path / "out")
    with pytest.raises(ConfigError, match="'out'.*a file or folder path"):
        load_config(None, out=5)
