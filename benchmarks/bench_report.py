"""Benchmark: writing and opening the study report at the paper's scale.

p = 2511 radiomic columns (3 modalities x 837 PyRadiomics features), 4 task reports, 100
evaluation cases. Prints a table: seconds to write the report folder (with and without the explorer, and with
the four ``LensReport.to_dir`` copies), size of report.html and
of its largest embedded chart, and (when Chromium is installed) seconds until every chart is
drawn in headless Chromium.

    python benchmarks/bench_report.py
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from radiolens.lens import RadiomicLens
    from radiolens.lens.simulation import pyradiomics_columns
    from radiolens.report import javascript_bundle, write_report

    rng = np.random.default_rng(0)
    columns = pyradiomics_columns()
    n_train, n_test, d = 300, 100, 96
    n = n_train + n_test
    ids = [f"case{i:04d}" for i in range(n)]
    X_pre = rng.normal(size=(n, d))
    X_ft = X_pre + 0.5 * rng.normal(size=(n, d))
    R = X_pre @ rng.normal(size=(d, len(columns))) * 0.1 + rng.normal(size=(n, len(columns)))
    Xp = pd.DataFrame(X_pre, index=ids)
    Xf = pd.DataFrame(X_ft, index=ids)
    Rd = pd.DataFrame(R, index=ids, columns=columns)
    tr, te = ids[:n_train], ids[n_train:]
    t0 = time.perf_counter()
    lens = RadiomicLens(hidden_dim=48, epochs=20, random_state=0).fit(Xp.loc[tr], Rd.loc[tr])
    report = lens.compare(Xp.loc[tr], Xf.loc[tr], Rd.loc[tr], test=(Xp.loc[te], Xf.loc[te], Rd.loc[te]),
                          n_bootstrap=20)
    lens_s = time.perf_counter() - t0
    reports = {name: report for name in ("pirads", "volume", "lesion", "lesion (lesion ROI)")}

    t0 = time.perf_counter()
    javascript_bundle()
    bundle_s = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for explorer, save in ((False, False), (True, False), (True, True)):
            out = Path(tmp) / f"explorer-{explorer}-{save}"
            t0 = time.perf_counter()
            path = write_report(out, reports, explorer=explorer, save_lens_reports=save)
            write_s = time.perf_counter() - t0
            html = path.read_text()
            specs = re.findall(r'<script type="application/json" id="([^"]+)-spec">(.*?)</script>', html, flags=re.S)
            largest = max(specs, key=lambda s: len(s[1]))
            draw_s = float("nan")
            try:
                import browser

                if browser.skip_reason() is None:
                    t0 = time.perf_counter()
                    page = browser.open_page(path, wait_for="window.radiolensCharts && window.radiolensCharts.done",
                                             timeout=300)
                    draw_s = time.perf_counter() - t0
                    assert page.errors == [], page.errors
            except ImportError:
                pass
            rows.append({
                "explorer": explorer,
                "lens_to_dir": save,
                "charts": len(specs),
                "write_s": round(write_s, 2),
                "html_MB": round(len(html.encode()) / 1e6, 2),
                "largest_chart": largest[0],
                "largest_chart_MB": round(len(largest[1].encode()) / 1e6, 2),
                "open_and_draw_s": round(draw_s, 2),
            })
    print(f"p = {len(columns)} columns, 4 tasks, {n_test} evaluation cases; lens fit+compare {lens_s:.1f} s "
          f"(setup, not the report); JavaScript bundle {bundle_s:.2f} s (once per process)")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
