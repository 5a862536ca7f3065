"""Where in the network fine-tuning acts: linear CKA, the lens per stage, its chart and report section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_views import make_report

from radiolens import plotting
from radiolens.lens import linear_cka, stage_shift_table
from radiolens.lens.simulation import planted_shift
from radiolens.report import write_report


def test_linear_cka_is_one_for_a_rotation_and_low_for_unrelated_cases():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(200, 6))) < 0.2
    # it compares representations of different widths
    assert 0 < linear_cka(x, x[:, :3]) < 1
    with pytest.raises(ValueError, match="same cases"):
        linear_cka(x, x[:100])
    with pytest.raises(ValueError, match="constant"):
        linear_cka(x, np.ones((200, 2)))


@pytest.fixture(scope="module")
def table():
    sim = planted_shift(n_cases=120, d=16, n_per_modality=4, n_test=60, seed=0)
    rng = np.random.default_rng(1)
    noise = pd.DataFrame(rng.normal(size=sim.X_pre.shape), index=sim.X_pre.index, columns=sim.X_pre.columns)
    noise_test = pd.DataFrame(rng.normal(size=sim.X_pre_test.shape), index=sim.X_pre_test.index,
                              columns=sim.X_pre.columns)
    stages = {
        # a stage fine-tuning left alone: the same embeddings before and after
        "stage1": {"train": (sim.X_pre, sim.X_pre, sim.R), "test": (sim.X_pre_test, sim.X_pre_test, sim.R_test)},
        # a stage fine-tuning replaced with noise: nothing radiomic left to read
        "stage2": {"train": (sim.X_pre, noise, sim.R), "test": (sim.X_pre_test, noise_test, sim.R_test)},
    }
    return stage_shift_table(stages, {"epochs": 30, "random_state": 0})


def test_a_stage_left_alone_shows_no_shift_and_a_replaced_one_does(table):
    still, replaced = table.set_index("stage").loc["stage1"], table.set_index("stage").loc["stage2"]
    assert still["cka"] == pytest.approx(1.0) and still["delta_r2"] == pytest.approx(0.0, abs=1e-9)
    assert replaced["cka"] < 0.5
    assert replaced["r2_ft"] < replaced["r2_pre"] and replaced["delta_r2"] < 0
    assert replaced["share_r2_gained"] < 0.5
    assert (table["n_train_cases"] == 120).all() and (table["n_test_cases"] == 60).all()


def test_the_report_has_a_section_where_fine_tuning_acts(table, tmp_path):
    chart = plotting.stage_shift_chart({"pirads": table, "volume": table})
    assert chart.to_dict()["hconcat"]
    path = write_report(tmp_path, {"t": make_report(5)}, stages={"pirads": table}, explorer=False)
    html = path.read_text(encoding="utf-8")
    assert '<section id="stages">' in html and 'href="#stages"' in html
    assert 'id="stages-table"' in html
    written = pd.read_csv(tmp_path / "tables" / "stage_shift.csv")
    assert list(written["stage"]) == ["stage1", "stage2"] and list(written["task"]) == ["pirads", "pirads"]
