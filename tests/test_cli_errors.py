"""The command line's contract for user errors: one message, a distinct exit code, no traceback
(unless ``--verbose``); bugs keep their traceback."""

from __future__ import annotations

import pytest

from radiolens import cli
from radiolens.config import ConfigError
from radiolens.data.contract import CohortError
from radiolens.errors import EXIT_CODES, UserError


def test_every_user_error_kind_has_its_own_exit_code():
    codes = list(EXIT_CODES.values())
    assert len(codes) == len(set(codes)), "two kinds of user error share an exit code"
    assert 1 not in codes, "exit code 1 is kept for bugs"
    assert ConfigError.exit_code != CohortError.exit_code


def _boom(exc):
    def dispatch(args):
        raise exc

    return dispatch


def test_user_error_prints_one_message_and_its_exit_code(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_dispatch", _boom(CohortError("cases.csv, case 'P001', column 'T2W': file missing; fix the path")))
    code = cli.main(["run"])
    err = capsys.readouterr().err
    assert code == CohortError.exit_code == EXIT_CODES["cohort"]
    assert err.strip() == "radiolens run: cases.csv, case 'P001', column 'T2W': file missing; fix the path"
    assert "Traceback" not in err


def test_verbose_adds_the_traceback(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_dispatch", _boom(ConfigError("lens.hidden_dim: must be a positive integer")))
    code = cli.main(["-v", "run"])
    err = capsys.readouterr().err
    assert code == EXIT_CODES["config"]
    assert "Traceback" in err and err.rstrip().endswith("lens.hidden_dim: must be a positive integer")


def test_a_bug_is_not_disguised_as_a_user_error(monkeypatch):
    monkeypatch.setattr(cli, "_dispatch", _boom(ZeroDivisionError("bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["run"])


@pytest.mark.parametrize("name", ["CohortError", "ConfigError", "DownloadError", "EmptySplitError", "MissingLabelsError", "InvalidImageError"])
def test_the_package_user_errors_share_the_base(name):
    import radiolens.config
    import radiolens.data.contract
    import radiolens.data.datasets._base
    import radiolens.finetune.data
    import radiolens.radiomics.units
    import radiolens.tasks

    modules = [radiolens.config, radiolens.data.contract, radiolens.data.datasets._base, radiolens.finetune.data,
               radiolens.radiomics.units, radiolens.tasks]
    cls = next(getattr(m, name) for m in modules if hasattr(m, name))
    assert issubclass(cls, UserError)
