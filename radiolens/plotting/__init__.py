"""Every view of a study: charts and tables (Altair), case views and explorers (matplotlib,
ipywidgets), with one style.

* :mod:`~radiolens.plotting.style` - colours, labels, display windows (one palette)
* :mod:`~radiolens.plotting.charts` - the paper's tables and figures and radiolens's additions,
  as Altair charts that work in a static page (:func:`table1`, :func:`family_scores_chart`,
  :func:`modality_r2_chart`, :func:`ranking_chart`, :func:`delta_heatmap`, :func:`sweep_chart`,
  :func:`planted_truth_chart`, :func:`table2`, :func:`downstream_chart`,
  :func:`comparison_chart`)
* :mod:`~radiolens.plotting.explorer` - :func:`delta_explorer`, the kernel-free explorer
* :mod:`~radiolens.plotting.rankings` - :func:`ranked`, the lens report's rankings as views
  show them
* :mod:`~radiolens.plotting.slices` - looking at cases: :func:`show_case`, :func:`case_figure`,
  :func:`plot_cases`
* :mod:`~radiolens.plotting.widgets` - kernel-backed explorers: :class:`WeightChangeExplorer`,
  :class:`SweepExplorer`

To add a chart, write a function in :mod:`~radiolens.plotting.charts` that takes the study's
objects (a lens report, a ``{task: report}`` dict, a tidy table) and returns an Altair chart,
using the colours of :mod:`~radiolens.plotting.style`; list it here and show it in
:func:`radiolens.report.write_report` or a chapter.
"""

from radiolens.plotting.charts import (
    comparison_chart,
    concat_tasks,
    delta_heatmap,
    delta_heatmap_data,
    downstream_chart,
    family_scores_chart,
    modality_r2_chart,
    planted_truth_chart,
    ranking_chart,
    stage_shift_chart,
    sweep_chart,
    table1,
    table1_chart,
    table2,
)
from radiolens.plotting.explorer import delta_explorer, explorer_data
from radiolens.plotting.rankings import MEASURES, RANKINGS, ranked
from radiolens.plotting.slices import CaseViewer, case_figure, plot_cases, render_slice, show_case
from radiolens.plotting.style import (
    ADC_WINDOW,
    ENCODER_COLORS,
    ENCODER_LABELS,
    MODALITY_COLORS,
    OVERLAYS,
    window_for,
)
from radiolens.plotting.widgets import (
    SweepExplorer,
    WeightChangeExplorer,
    decoder_weights_figure,
    ranking_figure,
    scatter_figure,
)

__all__ = [
    "ADC_WINDOW",
    "ENCODER_COLORS",
    "ENCODER_LABELS",
    "MEASURES",
    "MODALITY_COLORS",
    "OVERLAYS",
    "RANKINGS",
    "CaseViewer",
    "SweepExplorer",
    "WeightChangeExplorer",
    "case_figure",
    "comparison_chart",
    "concat_tasks",
    "decoder_weights_figure",
    "delta_explorer",
    "delta_heatmap",
    "delta_heatmap_data",
    "downstream_chart",
    "explorer_data",
    "family_scores_chart",
    "modality_r2_chart",
    "planted_truth_chart",
    "stage_shift_chart",
    "plot_cases",
    "ranked",
    "ranking_chart",
    "ranking_figure",
    "render_slice",
    "scatter_figure",
    "show_case",
    "sweep_chart",
    "table1",
    "table1_chart",
    "table2",
    "window_for",
]
