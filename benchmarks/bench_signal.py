"""Does the built-in study carry signal? Table 2, decoder R^2 per family and ROI, lens warnings.

The demonstration is only convincing if (a) full fine-tuning beats the frozen encoder on the
downstream tasks by a margin like the paper's, (b) the encoder's embeddings decode radiomics
at paper-like levels (held-out R^2), and (c) no lens report carries a warning that its
importances are artefacts. This script prints those numbers for a study, next to the paper's,
so that the next change to the generator, the shipped encoder or the lens shows whether the
demonstration got better or worse. Next to the lens's R^2 it prints what the log ROI volume
alone explains on the same test cases (OLS on the lens's training cases): a family that the
volume explains as well as the embedding does is read as *size*, not as texture. Table 2's
differences come with their paired test (``Study.downstream_comparison``), and a linear probe
(``Study.lesion_visibility``) says whether the lesion task's embeddings can even tell which
cases have a lesion (if not, no PI-RADS head and no lesion-ROI lens can read one). It also
prints the cohort's PI-RADS mix and the peripheral zone's share of the gland (measured on the
zone masks).

It runs the study through :class:`radiolens.pipeline.Study`, so every step comes from the
study's cache: seconds on a cache that ``radiolens run`` filled, the whole study otherwise.

Usage::

    python benchmarks/bench_signal.py                        # the full default study
    python benchmarks/bench_signal.py --quick                # the quick study
    python benchmarks/bench_signal.py --config my.yaml --cache-dir /path/to/cache
    python benchmarks/bench_signal.py --json signal.json     # also write the numbers
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from radiolens.config import load_config
from radiolens.finetune import describe_comparison
from radiolens.naming import FAMILIES, parse_report_name
from radiolens.pipeline import Study

#: Wang et al. (MIDL 2026), Table 2: frozen backbone vs full fine-tuning on PI-CAI (test cases).
PAPER_TABLE2 = {("pirads", "qwk"): (0.118, 0.326), ("lesion", "dice"): (0.399, 0.429)}
#: The paper's Table 1 / Fig. 2 decoder R^2 that it states in numbers (gland ROI, pre -> ft).
PAPER_R2 = "NGTDM 0.735 -> 0.717 (PI-RADS), 0.892 -> 0.785 (volume); GLSZM worst (0.41 / 0.53 pre); lesion ROI about 0.4 or lower"


def table2(study: Study) -> pd.DataFrame:
    """Frozen vs full per task and metric, with the paper's values where it gives them."""
    wide = study.downstream_table().pivot_table(index=["task", "metric"], columns="regime", values="value")
    wide = wide.reindex(columns=["frozen", "full"])
    wide["paper frozen"] = [PAPER_TABLE2.get(key, (np.nan, np.nan))[0] for key in wide.index]
    wide["paper full"] = [PAPER_TABLE2.get(key, (np.nan, np.nan))[1] for key in wide.index]
    return wide


def decoder_r2(reports: dict) -> pd.DataFrame:
    """Held-out decoder R^2 (mean over a group's features), rows = group, columns = (report, encoder)."""
    columns = {}
    for name, report in reports.items():
        scores = report.scores
        for encoder in ("pre", "ft"):
            sub = scores[(scores["encoder"] == encoder) & scores["level"].isin(["overall", "family", "modality"])]
            columns[(name, encoder)] = sub.set_index("group")["r2"]
    frame = pd.DataFrame(columns)
    order = ["all", *[f for f in FAMILIES if f in frame.index], *[g for g in frame.index if g not in FAMILIES and g != "all"]]
    return frame.reindex(order)


def volume_baseline(study: Study, reports: dict) -> pd.DataFrame:
    """:meth:`Study.size_baseline <radiolens.pipeline.Study.size_baseline>` of every report, mean
    per group; rows as :func:`decoder_r2`, one column per report."""
    columns = {}
    for name in reports:
        table = study.size_baseline(*parse_report_name(name))
        groups = {"all": table["r2_volume"].mean()}
        for level in ("family", "modality"):
            groups.update(table.groupby(level)["r2_volume"].mean().to_dict())
        columns[(name, "volume only")] = pd.Series(groups)
    return pd.DataFrame(columns)


def lens_warnings(reports: dict) -> dict[str, list[str]]:
    return {name: list(report.diagnostics.get("warnings", [])) for name, report in reports.items()}


def cohort_summary(study: Study) -> dict:
    """PI-RADS mix and the PZ / (PZ + TZ) share of the gland, measured on the zone masks."""
    cohort = study.cohort()
    manifest = cohort.manifest
    shares = []
    for case_id in cohort.case_ids:
        zones = cohort.load_case(case_id, keys=["zones"]).masks.get("zones")
        if zones is None:
            continue
        pz, tz = np.count_nonzero(zones == 1), np.count_nonzero(zones == 2)
        if pz + tz:
            shares.append(pz / (pz + tz))
    out = {"n_cases": len(cohort.case_ids)}
    if "pirads_group" in manifest:
        counts = manifest["pirads_group"].value_counts().sort_index()
        out["pirads_groups"] = {str(int(k)): int(v) for k, v in counts.items()}
    if shares:
        q = np.percentile(shares, [5, 25, 50, 75, 95])
        out["pz_share"] = {"mean": float(np.mean(shares)), "sd": float(np.std(shares)),
                           **{f"p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95), q)}}
    return out


def lesion_probe(study: Study) -> pd.DataFrame | None:
    """:meth:`Study.lesion_visibility <radiolens.pipeline.Study.lesion_visibility>`, when the study has the lesion task."""
    return study.lesion_visibility() if "lesion" in study.available_tasks() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="study configuration (YAML); default: the full default study")
    parser.add_argument("--quick", action="store_true", help="the quick study instead")
    parser.add_argument("--cache-dir", default=None, help="the study's cache (default: $RADIOLENS_CACHE)")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    parser.add_argument("--no-cohort", action="store_true", help="skip reading the zone masks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = load_config(args.config, quick=args.quick, cache_dir=args.cache_dir)
    study = Study(config, progress=False)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lens's warnings are printed below, once each
        t2 = table2(study)
        reports = study.reports()
    seconds = time.perf_counter() - start
    cohort = {} if args.no_cohort else cohort_summary(study)

    pd.set_option("display.width", 200)
    kind = "quick" if args.quick else "full"
    print(f"study: {args.config or 'built-in ' + kind + ' default'}, cache {study.cache_root}; "
          f"steps loaded or computed in {seconds:.1f} s\n")
    print("Table 2 (test cases; frozen backbone + head vs full fine-tuning)")
    print(t2.round(3).to_string(), "\n")
    tests = study.downstream_comparison()
    print("Full minus frozen on the same test cases (paired permutation test; 95% interval)")
    print(tests.round(3).to_string(index=False))
    print(describe_comparison(tests), "\n")
    r2 = decoder_r2(reports)
    print("Decoder R^2 on the test cases (mean of per-feature R^2), by family and modality")
    print(r2.round(3).to_string())
    print(f"paper: {PAPER_R2}\n")
    baseline = volume_baseline(study, reports).reindex(r2.index)
    print("The same features from the log ROI volume alone (OLS; same training and test cases)")
    print(baseline.round(3).to_string(), "\n")
    probe = lesion_probe(study)
    if probe is not None:
        print("Can the embedding tell whether a case has a lesion? (linear probe, cross-validated AUC, all cases)")
        print(probe.round(3).to_string(), "\n")
    print("Lens warnings")
    warns = lens_warnings(reports)
    for name, messages in warns.items():
        print(f"  {name}: {len(messages)}")
        for message in messages:
            print(f"    - {message}")
    if study.warnings:
        print("Study warnings")
        for message in study.warnings:
            print(f"  - {message}")
    if cohort:
        print(f"\nCohort: {cohort['n_cases']} cases; PI-RADS groups (<3, 3, 4, 5): {cohort.get('pirads_groups')}")
        if "pz_share" in cohort:
            s = cohort["pz_share"]
            print(f"PZ / (PZ + TZ) on the zone masks: mean {s['mean']:.3f}, sd {s['sd']:.3f}, "
                  f"median {s['p50']:.3f}, IQR {s['p25']:.3f}-{s['p75']:.3f}, 5-95% {s['p5']:.3f}-{s['p95']:.3f}")
    if args.json:
        payload = {
            "table2": [{"task": t, "metric": m, **{k: (None if pd.isna(v) else float(v)) for k, v in row.items()}}
                       for (t, m), row in t2.iterrows()],
            "table2_tests": json.loads(tests.to_json(orient="records")),
            "decoder_r2": {f"{name}|{enc}": {g: (None if pd.isna(v) else float(v)) for g, v in col.items()}
                           for (name, enc), col in r2.items()},
            "volume_only_r2": {name: {g: (None if pd.isna(v) else float(v)) for g, v in col.items()}
                               for (name, _), col in baseline.items()},
            "lesion_probe": None if probe is None else json.loads(probe.to_json(orient="index")),
            "lens_warnings": warns,
            "study_warnings": list(study.warnings),
            "cohort": cohort,
            "seconds": seconds,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
