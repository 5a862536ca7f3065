"""Tests for radiolens.plotting's case views and kernel-backed explorers."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radiolens import plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------
# a tiny cohort-like object (the contract of radiolens.data.Cohort / Case)
# --------------------------------------------------------------------------------------


class FakeCase:
    def __init__(self, case_id, images, masks, spacing, labels):
        self.case_id = case_id
        self.images = images
        self.masks = masks
        self.spacing = spacing
        self.labels = labels


class FakeCohort:
    """Cases with distinct content per slice and modality, a gland on slices 2..6."""

    def __init__(self, n_cases=3, shape=(9, 24, 28), seed=0):
        rng = np.random.default_rng(seed)
        self.cases = {}
        z, y, x = np.indices(shape)
        for i in range(n_cases):
            gland = (((y - 12) / 8) ** 2 + ((x - 14) / 9) ** 2 < 1) & (z >= 2) & (z <= 6)
            zones = np.where(gland & (y >= 14), 1, np.where(gland, 2, 0)).astype(np.uint8)
            lesion = gland & (((y - 15) / 3) ** 2 + ((x - 12) / 3) ** 2 < 1) & (z == 4)
            t2 = (300 + 20 * z + 5 * x + rng.normal(0, 10, shape)).astype(np.float32)
            dwi = (50 + 3 * y + 30 * lesion + rng.normal(0, 2, shape)).astype(np.float32)
            adc = (1600 - 800 * lesion + 10 * z + rng.normal(0, 30, shape)).astype(np.float32)
            self.cases[f"case{i:02d}"] = FakeCase(
                f"case{i:02d}",
                {"T2W": t2, "DWI": dwi, "ADC": adc},
                {"gland": gland.astype(np.uint8), "zones": zones, "lesion": lesion.astype(np.uint8)},
                (0.5, 0.5, 3.0),
                {"pirads_group": i % 4, "gland_volume_ml": 30.0 + i},
            )
        self.loaded = []

    @property
    def case_ids(self):
        return list(self.cases)

    def load_case(self, case_id):
        self.loaded.append(case_id)
        return self.cases[case_id]


@pytest.fixture(scope="module")
def cohort():
    return FakeCohort()


def _png_array(data: bytes) -> np.ndarray:
    assert data[:8] == PNG_MAGIC
    return np.asarray(Image.open(io.BytesIO(data)))


# --------------------------------------------------------------------------------------
# show_case
# --------------------------------------------------------------------------------------


def test_slider_range_equals_number_of_slices(cohort):
    viewer = plotting.show_case(cohort, "case01")
    assert viewer.slider.min == 0
    assert viewer.slider.max + 1 == viewer.n_slices == 9
    # default: the middle of the gland (slices 2..6)
    assert viewer.slice_index == 4


def test_modality_switch_changes_displayed_array(cohort):
    viewer = plotting.show_case(cohort, "case00", modality="T2W", slice_index=3)
    case = cohort.cases["case00"]
    np.testing.assert_array_equal(viewer.current_slice(), case.images["T2W"][3])
    before = viewer.image.value
    viewer.modality_selector.value = "ADC"
    assert viewer.modality == "ADC"
    np.testing.assert_array_equal(viewer.current_slice(), case.images["ADC"][3])
    assert viewer.image.value != before
    assert viewer.modalities == ["T2W", "DWI", "ADC"]


def test_rendered_pixels_are_the_windowed_slice_and_overlays_toggle(cohort):
    viewer = plotting.show_case(cohort, "case00", modality="ADC", slice_index=4, masks=())
    rgb = viewer.render()
    raw = cohort.cases["case00"].images["ADC"][4].astype(float)
    low, high = viewer.windows["ADC"]
    assert (low, high) == plotting.ADC_WINDOW
    grey = np.round(np.clip((raw - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    factor = rgb.shape[1] // raw.shape[1]
    np.testing.assert_array_equal(rgb[::factor, ::factor, 0], grey)
    assert (rgb[..., 0] == rgb[..., 1]).all()  # no overlay: pure grey

    red = np.array(plotting.OVERLAYS["lesion"][0][2])
    viewer.mask_toggles["lesion"].value = True
    with_lesion = viewer.render()
    assert (with_lesion == red).all(axis=-1).sum() > 0
    assert viewer.shown_masks == ("lesion",)
    viewer.slider.value = 2  # the lesion is only on slice 4
    assert (viewer.render() == red).all(axis=-1).sum() == 0

    # zones are a translucent tint: peripheral zone pixels lean cyan, transition ones magenta
    viewer.mask_toggles["zones"].value = True
    rgb = viewer.render().astype(int)[::factor, ::factor]
    zones = cohort.cases["case00"].masks["zones"][2]
    assert (rgb[zones == 1][:, 2] > rgb[zones == 1][:, 0]).all()
    assert (rgb[zones == 2][:, 0] > rgb[zones == 2][:, 1]).all()
    assert (rgb[zones == 0][:, 0] == rgb[zones == 0][:, 1]).all()


def test_static_fallback_png_reflects_the_slice(cohort):
    viewer = plotting.show_case(cohort, "case02", slice_index=2)
    png2 = viewer.static_png()
    img2 = _png_array(png2)
    viewer.slider.value = 5
    img5 = _png_array(viewer.static_png())
    assert img2.shape == img5.shape
    assert not np.array_equal(img2, img5)
    # the mime bundle carries the widget view and the same PNG as a fallback
    bundle = viewer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]) == viewer.static_png()
    assert "case02" in bundle["text/plain"]


def test_static_only_mode_drops_the_widget_view(cohort, monkeypatch):
    viewer = plotting.show_case(cohort, "case00", interactive=False)
    bundle = viewer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" not in bundle
    assert base64.b64decode(bundle["image/png"])[:8] == PNG_MAGIC
    monkeypatch.setenv("RADIOLENS_STATIC_VIEWS", "1")
    assert "application/vnd.jupyter.widget-view+json" not in plotting.show_case(cohort, "case00")._repr_mimebundle_()


def test_bad_input_errors_name_the_problem(cohort):
    with pytest.raises(KeyError, match="'nope'"):
        plotting.show_case(cohort, "nope")
    with pytest.raises(ValueError, match="'PET'"):
        plotting.show_case(cohort, "case00", modality="PET")
    with pytest.raises(ValueError, match="prostate"):
        plotting.show_case(cohort, "case00", masks=("prostate",))
    with pytest.raises(IndexError, match="9 slices"):
        plotting.show_case(cohort, "case00", slice_index=9)


def test_missing_mask_is_disabled_not_faked(cohort):
    case = cohort.cases["case00"]
    other = FakeCohort(n_cases=1)
    del other.cases["case00"].masks["lesion"]
    viewer = plotting.show_case(other, "case00")
    assert viewer.mask_toggles["lesion"].disabled
    assert "lesion" not in viewer.shown_masks
    assert case.masks["lesion"] is not None  # the shared fixture was not touched


def test_window_levels_per_modality():
    adc = np.full((2, 4, 4), 1500.0)
    assert plotting.window_for("ADC", adc) == (0.0, 2500.0)
    assert plotting.window_for("ADC", adc * 1e-3) == pytest.approx((0.0, 2.5))  # stored in 1e-3 mm^2/s
    t2 = np.arange(1000, dtype=float)
    low, high = plotting.window_for("T2W", t2)
    assert low == pytest.approx(np.percentile(t2, 0.5)) and high == pytest.approx(np.percentile(t2, 99.5))
    assert plotting.window_for("DWI", t2)[0] == pytest.approx(np.percentile(t2, 1))
    assert plotting.window_for("T2W", np.ones(10)) == (1.0, 2.0)  # constant image: still a valid window


# --------------------------------------------------------------------------------------
# weight-change explorer
# --------------------------------------------------------------------------------------


class FakeReport:
    """LensReport's contract, with the paper's three rankings written out independently.

    gained: descending ``by`` (rel_delta_I, delta_I or delta_r2); lost: ascending; stable:
    among features at or above the median importance (for delta_r2: median R²) both before
    and after, ascending |by|.
    """

    def __init__(self, seed, case_ids):
        rng = np.random.default_rng(seed)
        cols = [
            f"{m}__{img}_{fam}_{feat}"
            for m in ("T2W", "DWI", "ADC")
            for img, fam, feat in [
                ("original", "glcm", "MCC"), ("original", "glcm", "Imc2"),
                ("wavelet-LHL", "firstorder", "Kurtosis"), ("original", "glrlm", "RunVariance"),
                ("original", "ngtdm", "Busyness"), ("original", "firstorder", "Energy"),
            ]
        ]
        from radiolens.naming import parse_columns

        imp = parse_columns(cols).drop(columns="filter")
        imp["I_pre"] = rng.uniform(0.5, 2.0, len(cols))
        imp["I_ft"] = imp["I_pre"] * rng.uniform(0.3, 3.0, len(cols))
        imp["delta_I"] = imp["I_ft"] - imp["I_pre"]
        imp["rel_delta_I"] = imp["delta_I"] / imp["I_pre"]
        imp["r2_pre"] = rng.uniform(0.2, 0.9, len(cols))
        imp["r2_ft"] = rng.uniform(0.1, 0.9, len(cols))
        imp["delta_r2"] = imp["r2_ft"] - imp["r2_pre"]
        for c in ("delta_I", "delta_r2"):
            imp[f"{c}_lo"] = imp[c] - 0.1
            imp[f"{c}_hi"] = imp[c] + 0.1
        self.importance = imp
        n = len(case_ids)
        self.observed = pd.DataFrame(rng.uniform(0, 1, (n, len(cols))), index=case_ids, columns=cols)
        self.decoded_pre = self.observed + rng.normal(0, 0.05, self.observed.shape)
        self.decoded_ft = self.observed + rng.normal(0, 0.2, self.observed.shape)

    def gained(self, k=10, by="rel_delta_I"):
        return self.importance.loc[self.importance[by].sort_values(ascending=False).index].head(k)

    def lost(self, k=10, by="rel_delta_I"):
        return self.importance.loc[self.importance[by].sort_values(ascending=True).index].head(k)

    def stable(self, k=10, by="delta_I"):
        imp = self.importance
        a, b = ("r2_pre", "r2_ft") if by == "delta_r2" else ("I_pre", "I_ft")
        keep = (imp[a] >= imp[a].median()) & (imp[b] >= imp[b].median())
        delta = imp.loc[keep, by].abs().sort_values()
        return imp.loc[delta.index].head(k)


@pytest.fixture()
def explorer(cohort):
    reports = {"pirads": FakeReport(1, cohort.case_ids), "volume": FakeReport(2, cohort.case_ids)}
    return plotting.WeightChangeExplorer(reports, cohort=cohort, roi="gland", k=5)


def test_unfiltered_ranking_matches_the_reports_own(explorer):
    report = explorer.report
    n = len(report.importance)
    for mode in ("gained", "lost", "stable"):
        for by in ("rel_delta_I", "delta_I", "delta_r2"):
            expected = list(getattr(report, mode)(n, by=by)["column"])
            assert list(plotting.ranked(report, mode, by=by, k=None)["column"]) == expected, (mode, by)
    explorer.update(mode="stable", by="delta_r2", k=n)
    assert list(explorer.ranked()["column"]) == list(report.stable(n, by="delta_r2")["column"])
    explorer.update(mode="lost", by="rel_delta_I", k=4)
    assert list(explorer.ranked()["column"]) == list(report.lost(4)["column"])


def test_explorer_on_a_real_lens_report(cohort):
    """The same plumbing on radiolens.lens.LensReport's own rankings and tables."""
    lens = pytest.importorskip("radiolens.lens")
    fake = FakeReport(4, cohort.case_ids)
    report = lens.LensReport(
        importance=fake.importance, scores=pd.DataFrame(), tests=pd.DataFrame(),
        observed=fake.observed, decoded_pre=fake.decoded_pre, decoded_ft=fake.decoded_ft,
    )
    ex = plotting.WeightChangeExplorer({"pirads": report}, k=50)
    n = len(report.importance)
    for mode in ("gained", "lost", "stable"):
        for by in ("rel_delta_I", "delta_I", "delta_r2"):
            expected = list(getattr(report, mode)(n, by=by)["column"])
            assert list(plotting.ranked(report, mode, by=by, k=None)["column"]) == expected, (mode, by)
    assert list(ex.ranked()["column"]) == list(report.gained(n)["column"])
    ex.update(modalities=("DWI",), mode="lost", by="delta_r2", k=3)
    lost = [c for c in report.lost(n, by="delta_r2")["column"] if c.startswith("DWI__")][:3]
    assert list(ex.ranked()["column"]) == lost
    column = ex.current_feature
    assert column in lost  # the chosen feature stays chosen while it is still listed
    data = ex.scatter_data()
    np.testing.assert_array_equal(data[data.encoder == "ft"]["decoded"], report.decoded_ft[column])


def test_ranking_rules(explorer):
    # widget changes drive the table (each observer fires a redraw)
    explorer.top_k.value = explorer.top_k.max
    gained = explorer.ranked()
    assert gained["rel_delta_I"].is_monotonic_decreasing
    assert list(gained["rank"]) == list(range(1, len(gained) + 1))
    explorer.mode.value = "lost"
    assert explorer.ranked()["rel_delta_I"].is_monotonic_increasing
    explorer.by.value = "delta_r2"
    assert explorer.ranked()["delta_r2"].is_monotonic_increasing
    explorer.update(mode="gained")
    assert explorer.ranked()["delta_r2"].is_monotonic_decreasing
    explorer.update(mode="stable")
    stable = explorer.ranked()
    imp = explorer.report.importance
    assert stable["delta_r2"].abs().is_monotonic_increasing
    assert (stable["r2_pre"] >= imp["r2_pre"].median()).all()
    assert (stable["r2_ft"] >= imp["r2_ft"].median()).all()
    assert len(stable) < len(imp)
    explorer.update(by="delta_I")
    stable = explorer.ranked()
    assert stable["delta_I"].abs().is_monotonic_increasing
    assert (stable["I_pre"] >= imp["I_pre"].median()).all()
    explorer.update(mode="gained")
    assert explorer.ranked()["delta_I"].is_monotonic_decreasing


def test_filters_and_top_k(explorer):
    explorer.top_k.value = 4
    assert len(explorer.ranked()) == 4
    assert len(explorer.feature.options) == 4
    explorer.modality_filter.value = ("ADC",)
    assert set(explorer.ranked()["modality"]) == {"ADC"}
    explorer.update(k=explorer.top_k.max)
    table = explorer.ranked()
    assert set(table["modality"]) == {"ADC"}
    assert len(table) == 6  # all ADC features, nothing else
    # filtered order is the unfiltered order with other modalities removed
    full = plotting.ranked(explorer.report, "gained", by="rel_delta_I", k=None)
    assert list(table["column"]) == [c for c in full["column"] if c.startswith("ADC__")]
    explorer.family_filter.value = ("glcm",)
    assert set(explorer.ranked()["family"]) == {"glcm"} and len(explorer.ranked()) == 2
    explorer.update(modalities=())
    assert explorer.ranked().empty
    assert explorer.current_feature is None
    explorer.update(modalities=("T2W", "DWI"), families=("ngtdm", "firstorder"), k=3)
    table = explorer.ranked()
    assert len(table) == 3 and set(table["modality"]) <= {"T2W", "DWI"}
    assert set(table["family"]) <= {"ngtdm", "firstorder"}
    with pytest.raises(KeyError, match="'segmentation'"):
        explorer.update(task="segmentation")
    with pytest.raises(ValueError, match="'PET'"):
        explorer.update(modalities=("T2W", "PET"))


def test_bars_carry_the_bootstrap_intervals(explorer):
    from matplotlib.container import ErrorbarContainer

    table = plotting.ranked(explorer.report, "gained", by="delta_r2", k=5)
    fig = plotting.ranking_figure(table, by="delta_r2")
    ax = fig.axes[0]
    bars = [p.get_width() for p in ax.patches[:5]]
    np.testing.assert_allclose(bars, table["delta_r2"])
    (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = container.lines[2][0].get_segments()
    np.testing.assert_allclose([seg[0][0] for seg in segments], table["delta_r2_lo"])
    np.testing.assert_allclose([seg[1][0] for seg in segments], table["delta_r2_hi"])
    # no rel_delta_I interval in the report: the ΔI interval over I_pre, and the axis says so
    table = plotting.ranked(explorer.report, "gained", by="rel_delta_I", k=5)
    ax = plotting.ranking_figure(table, by="rel_delta_I").axes[0]
    (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    lows = [seg[0][0] for seg in container.lines[2][0].get_segments()]
    np.testing.assert_allclose(lows, table["delta_I_lo"] / table["I_pre"])
    assert "I_pre" in ax.get_xlabel()
    # without interval columns: plain bars
    bare = table.drop(columns=[c for c in table.columns if c.endswith(("_lo", "_hi"))])
    ax = plotting.ranking_figure(bare, by="rel_delta_I").axes[0]
    assert not [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_chart_follows_the_controls(explorer):
    first = explorer.chart.value
    assert first[:8] == PNG_MAGIC
    explorer.mode.value = "lost"
    assert explorer.chart.value != first
    assert explorer.chart.value == explorer.chart_png()


def test_task_switch_uses_that_tasks_report(explorer):
    explorer.modality_filter.value = ("T2W",)
    explorer.task.value = "volume"
    assert explorer.report is explorer.reports["volume"]
    # filters reset to everything the new report has
    assert set(explorer.modality_filter.value) == {"T2W", "DWI", "ADC"}
    expected = list(explorer.reports["volume"].gained(5)["column"])
    assert list(explorer.ranked()["column"]) == expected
    # update(): the task switch first, then the filters given with it
    explorer.update(task="pirads", modalities=("DWI",), k=2)
    assert explorer.report is explorer.reports["pirads"]
    full = explorer.reports["pirads"].gained(18)["column"]
    assert list(explorer.ranked()["column"]) == [c for c in full if c.startswith("DWI__")][:2]


def test_select_feature_shows_definition_scatter_and_case(explorer, cohort):
    column = "ADC__original_glcm_Imc2"
    explorer.select_feature(column)
    assert explorer.current_feature == column
    assert "Imc2" in explorer.definition.value and "mutual information" in explorer.definition.value
    data = explorer.scatter_data()
    report = explorer.report
    pre, ft = data[data.encoder == "pre"], data[data.encoder == "ft"]
    np.testing.assert_array_equal(pre["observed"], report.observed[column])
    np.testing.assert_array_equal(pre["decoded"], report.decoded_pre[column])
    np.testing.assert_array_equal(ft["decoded"], report.decoded_ft[column])
    assert list(pre["case_id"]) == list(report.observed.index)
    assert explorer.scatter.value[:8] == PNG_MAGIC

    values = report.observed[column]
    assert explorer.example_case() == (values - values.median()).abs().idxmax()
    assert explorer.case_image.value[:8] == PNG_MAGIC
    assert explorer.example_case() in explorer.case_info.value

    other = "T2W__original_ngtdm_Busyness"
    explorer.select_feature(other)
    assert explorer.scatter_data()["observed"].iloc[0] == report.observed[other].iloc[0]
    with pytest.raises(KeyError, match="T2W__original_glcm_Nope"):
        explorer.select_feature("T2W__original_glcm_Nope")


def test_feature_dropdown_drives_the_details(explorer):
    options = [value for _label, value in explorer.feature.options]
    assert options == list(explorer.ranked()["column"])
    assert explorer.current_feature == options[0]
    explorer.feature.value = options[2]
    assert explorer.current_feature == options[2]
    assert options[2] in explorer.definition.value
    explorer.select_feature(options[1])  # and the dropdown follows select_feature
    assert explorer.feature.value == options[1]


def test_explorer_without_cohort_and_bad_input(cohort):
    ex = plotting.WeightChangeExplorer({"t": FakeReport(3, cohort.case_ids)})
    assert ex.case_png() is None and ex.case_image.value == b""
    bundle = ex._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]) == ex.chart_png()
    with pytest.raises(ValueError, match="non-empty"):
        plotting.WeightChangeExplorer({})
    with pytest.raises(ValueError, match="'best'"):
        plotting.WeightChangeExplorer({"t": FakeReport(3, cohort.case_ids)}, mode="best")
    with pytest.raises(TypeError, match="'t'"):
        plotting.WeightChangeExplorer({"t": object()})


# --------------------------------------------------------------------------------------
# sweep explorer
# --------------------------------------------------------------------------------------


def test_sweep_explorer_selects_and_highlights():
    l1s, l2s = [0, 1e-7, 1e-6], [0, 1e-5, 1e-4]
    rows = [
        {"l1": a, "l2": b, "val_loss": 1 + i + 0.1 * j}
        for i, a in enumerate(l1s)
        for j, b in enumerate(l2s)
    ]
    rows[4]["val_loss"] = 0.5  # l1=1e-7, l2=1e-5 is best
    sweep = plotting.SweepExplorer(pd.DataFrame(rows))
    assert (sweep.l1.value, sweep.l2.value) == (1e-7, 1e-5)
    assert sweep.selected_loss() == 0.5
    first = sweep.image.value
    sweep.l1.value = 1e-6
    sweep.l2.value = 1e-4
    assert sweep.selected_loss() == pytest.approx(3.2)
    assert sweep.image.value != first
    assert sweep.grid().shape == (3, 3)
    with pytest.raises(KeyError, match="val_loss"):
        plotting.SweepExplorer(pd.DataFrame({"l1": [0], "l2": [0], "score": [1]}))
    # a penalty_sweep table marks its choice; the explorer starts there
    table = pd.DataFrame(rows).assign(selected=False)
    table.loc[7, "selected"] = True
    marked = plotting.SweepExplorer(table)
    assert (marked.l1.value, marked.l2.value) == (table.loc[7, "l1"], table.loc[7, "l2"])
    assert marked.best()["val_loss"] == table.loc[7, "val_loss"]


# --------------------------------------------------------------------------------------
# on the built-in synthetic cohort (radiolens.data.Cohort)
# --------------------------------------------------------------------------------------


def test_views_on_the_synthetic_cohort(synthetic_cohort):
    cohort = synthetic_cohort
    labels = cohort.labels
    case_id = labels.sort_values("pirads_group").index[-1]  # a case with a lesion
    viewer = plotting.show_case(cohort, case_id, modality="ADC")
    case = cohort.load_case(case_id)
    assert viewer.n_slices == viewer.slider.max + 1 == case.images["T2W"].shape[0]
    assert viewer.windows["ADC"] == plotting.ADC_WINDOW  # the synthetic ADC is in 1e-6 mm^2/s
    lesion = case.masks["lesion"]
    assert lesion[viewer.slice_index].sum() == (lesion > 0).sum(axis=(1, 2)).max()
    np.testing.assert_array_equal(viewer.current_slice(), case.images["ADC"][viewer.slice_index])
    assert _png_array(viewer.static_png()).ndim == 3
    with pytest.raises(KeyError, match="'synth_9999'"):
        plotting.show_case(cohort, "synth_9999")

    # the explorer's example case comes from the cohort, drawn with its ROI
    report = FakeReport(5, cohort.case_ids)
    explorer = plotting.WeightChangeExplorer({"task": report}, cohort=cohort, roi="gland")
    column = explorer.current_feature
    assert explorer.example_case() in cohort.case_ids
    assert explorer.case_png()[:8] == PNG_MAGIC
    assert explorer.example_case() in explorer.case_info.value
    assert column in explorer.definition.value


def test_widget_bars_and_altair_charts_colour_modalities_alike(explorer):
    from matplotlib.colors import to_hex


    table = plotting.ranked(explorer.report, "gained", by="delta_r2", k=8)
    ax = plotting.ranking_figure(table, by="delta_r2").axes[0]
    bar_colours = [to_hex(p.get_facecolor()) for p in ax.patches[: len(table)]]
    assert bar_colours == [plotting.MODALITY_COLORS[m] for m in table["modality"]]
    scale = plotting.ranking_chart(explorer.report, kind="gained", k=8).to_dict()["layer"][0]["encoding"]["color"]["scale"]
    assert dict(zip(scale["domain"], scale["range"])) == plotting.MODALITY_COLORS


def test_explorer_shows_each_features_decoder_weights(cohort):
    lens = pytest.importorskip("radiolens.lens")
    fake = FakeReport(4, cohort.case_ids)
    columns = list(fake.importance["column"])
    rng = np.random.default_rng(0)
    units = pd.RangeIndex(5, name="hidden_unit")
    pre = pd.DataFrame(rng.normal(size=(5, len(columns))), index=units, columns=columns)
    ft = pd.DataFrame(rng.normal(size=(5, len(columns))), index=units, columns=columns)
    report = lens.LensReport(
        importance=fake.importance, scores=pd.DataFrame(), tests=pd.DataFrame(), observed=fake.observed,
        decoded_pre=fake.decoded_pre, decoded_ft=fake.decoded_ft, decoder_pre=pre, decoder_ft=ft,
    )
    ex = plotting.WeightChangeExplorer({"pirads": report}, k=5)
    column = columns[3]
    ex.select_feature(column)
    data = ex.decoder_weights()
    assert list(data.columns) == ["hidden_unit", "encoder", "weight"]
    np.testing.assert_array_equal(data[data.encoder == "pre"]["weight"], pre[column])
    np.testing.assert_array_equal(data[data.encoder == "ft"]["weight"], ft[column])
    assert ex.weights.value[:8] == b"\x89PNG\r\n\x1a\n" and ex.weights.value == ex.weights_png(column)
    fig = plotting.decoder_weights_figure(data, column)
    heights = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(heights, np.concatenate([pre[column], ft[column]]))
    # a report written before decoder weights were stored: no weights panel, no error
    old = plotting.WeightChangeExplorer({"pirads": lens.LensReport(
        importance=fake.importance, scores=pd.DataFrame(), tests=pd.DataFrame(), observed=fake.observed,
        decoded_pre=fake.decoded_pre, decoded_ft=fake.decoded_ft)})
    assert old.decoder_weights(column).empty and old.weights_png(column) is None and old.weights.value == b""
