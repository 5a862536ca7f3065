"""The whole study, step by step, every step cached on disk by content hash.

:class:`Study` is what ``radiolens run`` executes and what every book chapter uses: each method
returns one step's artifact, computing it (with a progress bar) or reading it from the cache.
A chapter opened on its own in Binder therefore recomputes only what is missing, and an
interrupted run resumes at the first unfinished step.

Steps, in the order data flows::

    cohort -> radiomics -> encoder -> fine-tuned encoders (+ Table 2) -> embeddings
           -> penalty sweep -> lens fit -> compare (per task and ROI) -> report

The study only composes: each step is a function of its module, and each cache key is
:func:`radiolens.cache.step_key` of the step's inputs (see ``CONTRIBUTING.md``).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radiolens import __version__
from radiolens._utils import cpu_seconds, torch_threads
from radiolens.cache import ArtifactCache, atomic_write_text, default_cache_dir, hash_frame, hash_json, step_key
from radiolens.naming import MODALITIES, parse_report_name, report_name
from radiolens.tasks import MissingLabelsError, Task, get_task

__all__ = ["Study", "StudyResult", "parse_report_name", "report_name", "run_study"]

logger = logging.getLogger(__name__)


@dataclass
class ExternalFineTuned:
    """An encoder fine-tuned outside radiolens (config ``finetune.checkpoints``): compared with
    the pre-trained encoder as it is, never trained here."""

    task: str
    encoder: Any
    provenance: dict = field(default_factory=dict)
    regime: str = "full"


@dataclass
class StudyResult:
    """What :meth:`Study.run` produced."""

    out_dir: Path
    report_path: Path
    reports: dict[str, Any]
    downstream: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)


class Study:
    """One radiolens study described by a configuration (see :mod:`radiolens.config`).

    Parameters
    ----------
    config
        A complete configuration from :func:`radiolens.config.load_config`.
    progress
        Show progress bars.
    encoder
        A pre-trained encoder (any ``torch.nn.Module`` following the adapter protocol, see
        :func:`radiolens.models.as_encoder`) used instead of ``encoder.weights``.
    finetuned
        ``{task name: fine-tuned encoder}`` modules used as they are, like
        ``finetune.checkpoints`` files (any task name; no labels needed).
    use_bundle
        ``True``: read Table 2, the penalty sweeps, the lens reports and the planted-truth table
        from the package's results bundle of this configuration (:mod:`radiolens.bundle`) when
        one matches it, instead of computing them; a folder: look for the bundle there. The
        book's chapters pass ``True``, so a chapter opened with an empty cache shows the study's
        results in seconds. ``False`` (default, and ``radiolens run``): compute (or read the
        cache). Other steps (cohort, radiomics, encoders, embeddings, the fitted lens) are never
        in a bundle.

    Examples
    --------
    >>> from radiolens.config import load_config
    >>> study = Study(load_config(quick=True))          # doctest: +SKIP
    >>> report = study.compare("pirads")                 # computes or loads every step  # doctest: +SKIP
    """

    def __init__(self, config: dict, progress: bool = True, encoder=None, finetuned: dict | None = None,
                 use_bundle: bool | str | Path = False) -> None:
        self.config = config
        self.progress = progress
        self.use_bundle = use_bundle
        self._encoder_override = encoder
        self._finetuned_override = dict(finetuned or {})
        #: Where each encoder came from (path, sha256, format), for the report.
        self.encoder_provenance: dict[str, dict] = {}
        self.cache_root = default_cache_dir(config.get("cache_dir"))
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}
        self.warnings: list[str] = []
        self._memo: dict[Any, Any] = {}
        self._report_dirs: dict[Any, Path] = {}

    # ------------------------------------------------------------------------------------
    # helpers
    # ------------------------------------------------------------------------------------
    def _cache(self, namespace: str) -> ArtifactCache:
        return ArtifactCache(self.cache_root, namespace)

    def _timed(self, name: str, func, *args, **kwargs):
        start, cpu_start = time.perf_counter(), cpu_seconds()
        result = func(*args, **kwargs)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.cpu_timings[name] = self.cpu_timings.get(name, 0.0) + cpu_seconds() - cpu_start
        return result

    def _warn(self, message: str) -> None:
        logger.warning(message)
        if message not in self.warnings:
            self.warnings.append(message)

    @property
    def bundle(self):
        """The verified results bundle this study reads its results from, or None (:mod:`radiolens.bundle`)."""
        if "bundle" not in self._memo:
            found = None
            if self.use_bundle is not False:
                from radiolens.bundle import find_bundle

                found = find_bundle(self.config, None if self.use_bundle is True else [self.use_bundle])
                if found is not None:
                    logger.info("reading results from the bundle %s: %s", found.path, found.note)
            self._memo["bundle"] = found
        return self._memo["bundle"]

    def write_bundle(self, path: str | Path | None = None) -> Path:
        """Write this study's results bundle (computing, or reading from the cache, every step it holds).

        Parameters
        ----------
        path
            The bundle's folder; default ``radiolens/results/<label>`` in the package
            (:func:`radiolens.bundle.bundle_label`: ``quick``, ``full`` or ``custom-...``).
        """
        from radiolens.bundle import PACKAGE_BUNDLES, bundle_label, write_bundle

        if self.bundle is not None:
            raise ValueError("this study reads its results from a bundle; write bundles from Study(config, use_bundle=False)")
        reports = self.reports()
        sweeps = {name: self.sweep(*parse_report_name(name)) for name in reports}
        return write_bundle(path or PACKAGE_BUNDLES / bundle_label(self.config), self.config,
                            downstream=self.downstream_table(), comparison=self.downstream_comparison(),
                            planted=self.planted_truth(), sweeps=sweeps,
                            reports=reports, n_cases=len(self.cohort().case_ids), stages=self.stage_shifts())

    def stage_shifts(self) -> dict[str, pd.DataFrame]:
        """:meth:`stage_shift` of every gland-ROI report, keyed like :meth:`reports`."""
        if self.bundle is not None:
            return {name: self.bundle.stages(name) for name in self.bundle.stage_names}
        out = {}
        for task in self.available_tasks():
            try:
                out[report_name(task)] = self.stage_shift(task)
            except ValueError as err:  # e.g. an encoder archive without forward_stages, too few cases
                self._warn(f"stage-by-stage lens for {task} skipped: {err}")
        return out

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def tasks(self) -> list[str]:
        """The tasks radiolens fine-tunes itself (``finetune.tasks`` without the external ones)."""
        return [t for t in self.config["finetune"]["tasks"] if t not in self.external_tasks]

    @property
    def external_tasks(self) -> list[str]:
        """Tasks whose fine-tuned encoder comes from elsewhere (``finetune.checkpoints`` or the
        ``finetuned`` argument), in that order."""
        names = list(self.config["finetune"].get("checkpoints") or {})
        return names + [t for t in self._finetuned_override if t not in names]

    def task(self, name: str) -> Task:
        """The :class:`~radiolens.tasks.Task` of a name; an external task sees the channels its
        fine-tuned encoder takes (1: T2W, else every modality) and keeps a registered task's
        radiomics ROIs."""
        if name not in self.external_tasks:
            return get_task(name)
        from radiolens.models.heads import encoder_in_chans

        registered = get_task(name) if name in _registered_tasks() else None
        n = encoder_in_chans(self.finetuned(name).encoder)
        channels = MODALITIES[:1] if n == 1 else MODALITIES
        if len(channels) != n:
            from radiolens.errors import InputFileError

            raise InputFileError(
                f"fine-tuned encoder for task {name!r} takes {n} input channels; radiolens feeds 1 (T2W) or "
                f"{len(MODALITIES)} ({', '.join(MODALITIES)})"
            )
        return Task(name=name, channels=channels, rois=registered.rois if registered else ("gland",),
                    title=(registered.title if registered else name) + " (fine-tuned elsewhere)")

    # ------------------------------------------------------------------------------------
    # step 1: cohort
    # ------------------------------------------------------------------------------------
    def cohort(self):
        """The cohort (built-in synthetic by default), preprocessed when configured."""
        if "cohort" not in self._memo:
            self._memo["cohort"] = self._timed("cohort", self._build_cohort)
        return self._memo["cohort"]

    def _build_cohort(self):
        from radiolens import data

        spec = self.config["cohort"]
        source = spec["source"]
        if source == "synthetic":
            params = {k: spec[k] for k in ("n_cases", "shape", "spacing", "seed")}
            # make_synthetic_cohort reuses a folder that already holds a cohort of these settings
            cohort = data.make_synthetic_cohort(
                n_cases=spec["n_cases"],
                shape=tuple(spec["shape"]),
                spacing=tuple(spec["spacing"]),
                seed=spec["seed"],
                out_dir=self.cache_root / "cohorts" / ("synthetic-" + hash_json(params)[:16]),
                n_jobs=self.config["jobs"],
                progress=self.progress,
                cache_dir=self.cache_root,
            )
        elif source == "folder":
            cohort = data.load_cohort(spec["path"], cache_dir=self.cache_root)
        elif source == "table":
            options = {"resample": spec["resample"], "lesion_threshold": spec["lesion_threshold"] or "nonzero"}
            key = "table-" + hash_json({"path": spec["path"], "seed": self.seed, **options})[:16]
            cohort = data.cohort_from_table(spec["path"], out_dir=self.cache_root / "cohorts" / key, seed=self.seed,
                                            progress=self.progress, cache_dir=self.cache_root, **options)
        else:
            from radiolens.data.datasets import FETCHERS

            cohort = FETCHERS[source](data_dir=spec["path"], progress=self.progress, cache_dir=self.cache_root)
        if self.config["preprocess"]["enabled"]:
            from radiolens.data.preprocess import preprocess

            pre = self.config["preprocess"]
            cohort = preprocess(cohort, spacing=tuple(pre["spacing"]), crop_shape=tuple(pre["crop_shape"]), out_dir=None,
                                cache_dir=self.cache_root)
        from radiolens.lens.requirements import check_cases_per_split

        # before any slow step: the lens is fitted on train, its penalties chosen on val and
        # scored on test, and each needs a minimum (radiolens.lens.requirements)
        lens = self.config["lens"]
        where = f"table {spec['path']!r}" if source == "table" else f"cohort {str(cohort.root)!r}"
        check_cases_per_split(cohort.manifest["split"].value_counts().to_dict(), lens["n_folds"], lens["protocol"], where)
        self._check_modalities(cohort)
        return cohort

    def _check_modalities(self, cohort) -> None:
        """Stop before any work when ``radiomics.modalities`` names images the cohort lacks."""
        from radiolens.data.contract import is_missing

        wanted = list(self.config["radiomics"]["modalities"])
        present = [m for m in wanted if not cohort.manifest[m].map(is_missing).all()]
        absent = [m for m in wanted if m not in present]
        if absent:
            held = [m for m in ("T2W", "DWI", "ADC") if not cohort.manifest[m].map(is_missing).all()]
            from radiolens.config import ConfigError

            raise ConfigError(
                f"config key 'radiomics.modalities' lists {absent}, but no case of the cohort in {cohort.root} has "
                f"such an image (it holds {held}); set radiomics.modalities to {held or 'the images you have'}"
            )

    def _missing_channels(self, task: str) -> str | None:
        """Why the cohort cannot feed a task's input channels, or None."""
        from radiolens.data.contract import is_missing

        manifest = self.cohort().manifest
        lacking = {m: int(manifest[m].map(is_missing).sum()) for m in get_task(task).channels}
        lacking = {m: n for m, n in lacking.items() if n}
        if not lacking:
            return None
        parts = ", ".join(f"{m} in {n} of {len(manifest)} cases" for m, n in lacking.items())
        return f"its input channels {list(get_task(task).channels)} are missing ({parts})"

    # ------------------------------------------------------------------------------------
    # step 2: radiomics
    # ------------------------------------------------------------------------------------
    def radiomics(self, roi: str = "gland") -> pd.DataFrame:
        """Radiomic features (cases x nM) of one ROI; cases without that ROI are dropped here."""
        key = ("radiomics", roi)
        if key not in self._memo:
            from radiolens import radiomics

            spec = self.config["radiomics"]
            result = self._timed(
                f"radiomics ({roi})",
                radiomics.extract_detailed,
                self.cohort(),
                rois=(roi,),
                modalities=tuple(spec["modalities"]),
                settings=spec["settings"],
                n_jobs=self.config["jobs"],
                cache_dir=self.cache_root,
                progress=self.progress,
            )
            if len(result.failures):
                self._warn(
                    f"radiomics ({roi} ROI): {len(result.failures)} work unit(s) failed; those cases are "
                    f"left out of the lens (see the failures table): {sorted(set(result.failures['case_id']))[:10]}"
                )
            features = radiomics.clean(result.features)
            kept = set(features.columns)
            dropped = [c for c in result.features.columns if c not in kept]
            if dropped:
                self._warn(f"radiomics ({roi} ROI): {len(dropped)} feature(s) undefined for some cases were dropped: {dropped[:5]}")
            self._memo[key] = features
        return self._memo[key]

    # ------------------------------------------------------------------------------------
    # step 3: encoders
    # ------------------------------------------------------------------------------------
    def encoder(self):
        """The pre-trained encoder (shipped weights, a checkpoint, or pre-trained here)."""
        if "encoder" not in self._memo:
            self._memo["encoder"] = self._timed("encoder", self._build_encoder)
        return self._memo["encoder"]

    def _build_encoder(self):
        from radiolens import models

        spec = self.config["encoder"]
        weights = spec["weights"]
        if self._encoder_override is not None:
            encoder = models.as_encoder(self._encoder_override, in_chans=spec["in_chans"] or len(MODALITIES))
            self.encoder_provenance["pre-trained"] = {"format": "python object", "class": type(self._encoder_override).__name__,
                                                      "weights_sha256": models.encoder_hash(encoder)}
            return encoder
        if weights == "pretrain":
            self.encoder_provenance["pre-trained"] = {"format": "pre-trained here", "preset": spec["preset"],
                                                      "epochs": spec["pretrain_epochs"]}
            key = step_key("pretrain", {"cohort": self.cohort().fingerprint, "preset": spec["preset"],
                                        "epochs": spec["pretrain_epochs"], "seed": self.seed})

            def pretrain():
                encoder, _history = models.pretrain(
                    self.cohort(), preset=spec["preset"], epochs=spec["pretrain_epochs"], seed=self.seed,
                    device=self.config["device"], progress=self.progress,
                )
                return encoder

            return self._cache("encoders").cached(key, pretrain, models.save_encoder, models.load_encoder, ext="pt")
        if Path(weights).suffix in (".pt", ".pth", ".ckpt") or Path(weights).exists():
            encoder, info = models.load_encoder_file(weights, "pre-trained encoder", preset=spec["preset"],
                                                     in_chans=spec["in_chans"])
            if info.get("missing"):
                self._warn(f"encoder checkpoint {weights}: {info['missing']} encoder parameter(s) missing from the file")
            self.encoder_provenance["pre-trained"] = info
            return encoder
        card = models.weight_card(weights) if weights in models.profound.SHIPPED_WEIGHTS else {}
        self.encoder_provenance["pre-trained"] = {"format": "shipped", "name": weights, "sha256": card.get("sha256")}
        return models.load_pretrained(weights)

    def case_store(self):
        """The cohort's cases as network inputs, read once for all fine-tuning runs and embeddings."""
        if "case_store" not in self._memo:
            from radiolens.models import CaseStore

            masks = tuple({get_task(t).label for t in self.tasks if get_task(t).kind == "segmentation"})
            self._memo["case_store"] = CaseStore(self.cohort(), getattr(self.encoder(), "total_stride", None), masks=masks)
        return self._memo["case_store"]

    def finetune_config(self, task: str):
        """The :class:`~radiolens.finetune.FineTuneConfig` of one task, from the configuration."""
        from radiolens.finetune import FineTuneConfig

        spec = self.config["finetune"]
        # the decoder's shape only exists for segmentation: other tasks' keys ignore it
        head_kwargs = {}
        if get_task(task).kind == "segmentation":
            head_kwargs = {"channels": spec["decoder_channels"], "pool_scales": tuple(spec["decoder_pool_scales"])}
        return FineTuneConfig(
            epochs=spec["epochs"], lr=spec["lr"], batch_size=spec["batch_size"], patience=spec["patience"],
            frozen_views=spec["frozen_views"], head_kwargs=head_kwargs,
        )

    def finetuned(self, task: str, regime: str = "full"):
        """A fine-tuned encoder and its test metrics for one task and regime (cached); for an
        external task, its encoder as given (:class:`ExternalFineTuned`, regime ``full`` only)."""
        if task in self.external_tasks:
            return self._external(task, regime)
        key = ("finetuned", task, regime)
        if key not in self._memo:
            self._memo[key] = self._timed(f"fine-tune {task}/{regime}", self._finetune, task, regime)
        return self._memo[key]

    def _external(self, task: str, regime: str) -> ExternalFineTuned:
        if regime != "full":
            raise ValueError(f"task {task!r} was fine-tuned elsewhere: only its fine-tuned encoder (regime 'full') exists")
        key = ("external", task)
        if key not in self._memo:
            from radiolens import models

            role = f"fine-tuned encoder for task {task!r}"
            if task in self._finetuned_override:
                module = self._finetuned_override[task]
                encoder = models.as_encoder(module, in_chans=getattr(module, "in_chans", None) or len(MODALITIES))
                info = {"format": "python object", "class": type(module).__name__,
                        "weights_sha256": models.encoder_hash(encoder)}
            else:
                encoder, info = models.load_encoder_file(self.config["finetune"]["checkpoints"][task], role,
                                                         preset=self.config["encoder"]["preset"],
                                                         in_chans=self.config["encoder"]["in_chans"])
            self.encoder_provenance[f"fine-tuned ({task})"] = info
            self._memo[key] = ExternalFineTuned(task, encoder, info)
        return self._memo[key]

    def _finetune_key(self, task: str, regime: str) -> str:
        from radiolens.models import encoder_hash

        config = self.finetune_config(task)
        return step_key("finetune", {"task": task, "regime": regime, "config": config.key(), "seed": self.seed,
                                     "encoder": encoder_hash(self.encoder()), "cohort": self.cohort().fingerprint})

    def _finetune(self, task: str, regime: str):
        from radiolens import finetune as ft

        def finetune():
            # one intra-op thread: a run's result does not depend on how many run at once
            # (finetune_all runs them in parallel processes), as radiomics runs on one ITK thread
            with torch_threads(1):
                return ft.finetune(self.encoder(), self.cohort(), task, regime, self.finetune_config(task),
                                   seed=self.seed, device=self.config["device"], progress=self.progress,
                                   store=self.case_store())

        return self._cache("finetuned").cached(
            self._finetune_key(task, regime), finetune, lambda result, path: ft.save_finetuned(result, path, card=False),
            ft.load_finetuned, ext="pt", meta={"task": task, "regime": regime},
        )

    def finetune_all(self) -> None:
        """Fine-tune every available task and regime not in the cache yet, ``jobs`` runs at a time
        in worker processes (each run on one thread), longest first; later calls of
        :meth:`finetuned` read the results from the cache."""
        runs = [(task, regime) for task in self.trainable_tasks() for regime in self.config["finetune"]["regimes"]
                if self._cache("finetuned").get_file(self._finetune_key(task, regime), "pt") is None]
        jobs = min(int(self.config["jobs"]), len(runs))
        if jobs < 2:
            return  # nothing to share out: finetuned() computes in this process
        from joblib.externals.loky import ProcessPoolExecutor

        # longest first (segmentation, then the full regime), so no worker is left with a long run at the end
        runs.sort(key=lambda run: (get_task(run[0]).kind != "segmentation", run[1] != "full"))
        start, cpu_start = time.perf_counter(), cpu_seconds()
        # a pool of our own: its workers, and the cases they hold in memory, end with the phase
        pool = ProcessPoolExecutor(max_workers=jobs)
        try:
            futures = {run: pool.submit(_finetune_job, self.config, *run) for run in runs}
            for (task, regime), future in futures.items():
                wall, cpu = future.result()
                self.timings[f"fine-tune {task}/{regime} (in a worker)"] = wall
                self.cpu_timings[f"fine-tune {task}/{regime} (in a worker)"] = cpu
        except BaseException:
            # interrupted or failed: end the workers now instead of waiting for their runs
            pool.shutdown(wait=True, kill_workers=True)
            raise
        pool.shutdown(wait=True)
        self.timings[f"fine-tuning ({len(runs)} runs, {jobs} processes)"] = time.perf_counter() - start
        self.cpu_timings[f"fine-tuning ({len(runs)} runs, {jobs} processes)"] = cpu_seconds() - cpu_start

    def trainable_tasks(self) -> list[str]:
        """Configured tasks radiolens fine-tunes whose labels exist in the cohort; the others are
        skipped with one warning each (the lens still runs on the rest)."""
        if "trainable_tasks" not in self._memo:
            ok = []
            for task in self.tasks:
                missing = self._missing_channels(task)
                if missing:
                    self._warn(f"task {task!r} skipped: {missing}")
                    continue
                try:
                    get_task(task).check_labels(self.cohort())
                    ok.append(task)
                except MissingLabelsError as err:
                    self._warn(f"task {task!r} skipped: {err}; add that label to the table to fine-tune on it, "
                               f"or give finetune.checkpoints: {{{task}: file}} to compare an encoder fine-tuned elsewhere")
            self._memo["trainable_tasks"] = ok
        return self._memo["trainable_tasks"]

    def available_tasks(self) -> list[str]:
        """The tasks the lens compares: the trainable ones with labels, then the external ones.

        Raises
        ------
        MissingLabelsError
            No task is left (every configured task lacks its labels and no encoder fine-tuned
            elsewhere was given).
        """
        tasks = self.trainable_tasks() + self.external_tasks
        if not tasks:
            wanted = list(self.config["finetune"]["tasks"])
            raise MissingLabelsError(
                ", ".join(wanted) or "-", ", ".join(get_task(t).label or "-" for t in wanted) or "-",
                "so no encoder can be fine-tuned and there is nothing to compare; add labels to the table, or give "
                "the fine-tuned encoder(s) with finetune.checkpoints: {task: file} (or `radiolens compare PRE FT`)",
            )
        return tasks

    def downstream_table(self) -> pd.DataFrame:
        """Our Table 2: (task, regime, metric, value) for every available task and regime."""
        if self.bundle is not None:
            return self.bundle.downstream()
        self.finetune_all()
        frames = []
        for task in self.trainable_tasks():
            for regime in self.config["finetune"]["regimes"]:
                table = self.finetuned(task, regime).metrics_table()
                frames.append(table)
        if not frames:
            return pd.DataFrame(columns=["task", "regime", "metric", "value"])
        return pd.concat(frames, ignore_index=True)

    def downstream_comparison(self) -> pd.DataFrame:
        """Table 2's frozen-vs-full differences tested on the paired test cases, one row per task
        and metric (:func:`radiolens.finetune.compare_regimes`)."""
        from radiolens.finetune import COMPARISON_COLUMNS, compare_regimes

        if self.bundle is not None:
            return self.bundle.downstream_comparison()
        tasks = self.trainable_tasks() if {"frozen", "full"} <= set(self.config["finetune"]["regimes"]) else []
        if tasks:
            self.finetune_all()
        frames = [compare_regimes(task, self.finetuned(task, "frozen").predictions,
                                  self.finetuned(task, "full").predictions, seed=self.seed) for task in tasks]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARISON_COLUMNS)

    # ------------------------------------------------------------------------------------
    # step 4: embeddings
    # ------------------------------------------------------------------------------------
    def embeddings(self, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(X_pre, X_ft)``: the pre-trained and the fully fine-tuned encoder on every case."""
        key = ("embeddings", task)
        if key not in self._memo:
            from radiolens import embeddings
            from radiolens.models import encoder_for_task

            spec = self.task(task)
            pre_encoder = encoder_for_task(self.encoder(), spec)
            ft_encoder = self.finetuned(task, "full").encoder
            kwargs = dict(channels=spec.channels, device=self.config["device"], cache_dir=self.cache_root,
                          progress=self.progress, store=self.case_store())
            x_pre = self._timed("embeddings", embeddings.extract, pre_encoder, self.cohort(), **kwargs)
            x_ft = self._timed("embeddings", embeddings.extract, ft_encoder, self.cohort(), **kwargs)
            self._memo[key] = (x_pre, x_ft)
        return self._memo[key]

    # ------------------------------------------------------------------------------------
    # step 5: the lens
    # ------------------------------------------------------------------------------------
    def lens_inputs(self, task: str, roi: str = "gland") -> dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
        """``{"train"|"val"|"test": (X_pre, X_ft, R)}`` on the cases that have this ROI's radiomics."""
        return self._split(*self.embeddings(task), self.radiomics(roi), roi)

    def stage_inputs(self, task: str, roi: str = "gland") -> dict[str, dict[str, tuple]]:
        """``{stage: lens_inputs}`` for the pooled output of each ConvNeXt stage (``"stage1"`` ..
        ``"stage4"``) of the pre-trained and the fully fine-tuned encoder (cached embeddings)."""
        key = ("stage_inputs", task, roi)
        if key not in self._memo:
            from radiolens import embeddings
            from radiolens.models import encoder_for_task

            stages = ("stage1", "stage2", "stage3", "stage4")
            spec = self.task(task)
            kwargs = dict(channels=spec.channels, device=self.config["device"], cache_dir=self.cache_root,
                          progress=self.progress, store=self.case_store(), stages=stages)
            x_pre = self._timed("embeddings", embeddings.extract, encoder_for_task(self.encoder(), spec), self.cohort(),
                                **kwargs)
            x_ft = self._timed("embeddings", embeddings.extract, self.finetuned(task, "full").encoder, self.cohort(),
                               **kwargs)
            radiomics = self.radiomics(roi)
            self._memo[key] = {stage: self._split(embeddings.stage_columns(x_pre, stage),
                                                  embeddings.stage_columns(x_ft, stage), radiomics, roi)
                               for stage in stages}
        return self._memo[key]

    def stage_shift(self, task: str, roi: str = "gland") -> pd.DataFrame:
        """Where in the network fine-tuning acts: the lens on every stage (:func:`radiolens.lens.stage_shift_table`)."""
        key = ("stage_shift", task, roi)
        if key not in self._memo and self.bundle is not None and report_name(task, roi) in self.bundle.stage_names:
            self._memo[key] = self.bundle.stages(report_name(task, roi))
        if key not in self._memo:
            from radiolens.lens import stage_shift_table

            parts = self.stage_inputs(task, roi)
            params = self._lens_params()
            ckey = step_key("stage_shift", {
                "inputs": {stage: {split: [hash_frame(f) for f in frames] for split, frames in p.items() if split != "val"}
                           for stage, p in parts.items()}, "params": params})
            self._memo[key] = self._cache("lens").cached_frame(ckey, lambda: self._timed(
                f"stage shift {task}/{roi}", stage_shift_table,
                {stage: {"train": p["train"], "test": p["test"]} for stage, p in parts.items()}, params))
        return self._memo[key]

    def size_baseline(self, task: str, roi: str = "gland") -> pd.DataFrame:
        """Held-out R^2 of one report's features from ``log(<roi>_volume_ml)`` alone (a line fitted on
        the lens's training cases, scored on its test cases; :func:`radiolens.lens.covariate_r2`):
        ``column, modality, family, r2_volume``. Many radiomic features are functions of ROI size."""
        from radiolens.lens import covariate_r2

        report, labels, radiomics = self.compare(task, roi), self.cohort().labels, self.radiomics(roi)
        labels = labels.set_index("case_id") if "case_id" in labels.columns else labels
        meta = report.importance.loc[report.importance["r2_pre"].notna(), ["column", "modality", "family"]]
        train = [c for c in radiomics.index if self.cohort().manifest.at[c, "split"] == "train"]
        test, features = list(report.observed.index), list(meta["column"])
        log_volume = np.log(labels[f"{roi}_volume_ml"].astype(float).clip(lower=1e-6))
        r2 = covariate_r2(log_volume.loc[train], radiomics.loc[train, features],
                          log_volume.loc[test], radiomics.loc[test, features])
        return meta.assign(r2_volume=r2.to_numpy()).reset_index(drop=True)

    def lesion_visibility(self) -> pd.DataFrame:
        """Can the lesion task's embeddings tell which cases have a lesion? :func:`radiolens.lens.label_auc`
        of ``lesion_volume_ml > 0`` over every case, one row per encoder (``pre``, ``ft``)."""
        from radiolens.lens import label_auc

        has_lesion = self.cohort().labels["lesion_volume_ml"] > 0
        x_pre, x_ft = self.embeddings("lesion")
        return pd.DataFrame({"pre": label_auc(x_pre, has_lesion), "ft": label_auc(x_ft, has_lesion)}).T

    def _split(self, x_pre: pd.DataFrame, x_ft: pd.DataFrame, radiomics: pd.DataFrame, roi: str) -> dict:
        ids = [c for c in radiomics.index if c in x_pre.index]
        split = self.cohort().manifest.loc[ids, "split"]
        parts = {}
        for name in ("train", "val", "test"):
            chosen = [c for c in ids if split[c] == name]
            parts[name] = (x_pre.loc[chosen], x_ft.loc[chosen], radiomics.loc[chosen])
        from radiolens.lens.requirements import check_cases_per_split

        lens = self.config["lens"]
        check_cases_per_split({k: len(v[2]) for k, v in parts.items()}, lens["n_folds"], lens["protocol"],
                              f"the set of cases with {roi}-ROI radiomics")
        return parts

    def _lens_params(self) -> dict:
        spec = self.config["lens"]
        # constant features (e.g. a statistic that saturates in a small ROI) cannot be min-max
        # scaled; the lens drops them with a warning instead of failing the whole study
        return {"protocol": spec["protocol"], "n_folds": spec["n_folds"], "hidden_dim": spec["hidden_dim"],
                "epochs": spec["epochs"], "lr": spec["lr"], "batch_size": spec["batch_size"],
                "decoder": spec["decoder"], "fit_intercept": spec["fit_intercept"],
                "match_ft_moments": spec["match_ft_moments"], "random_state": self.seed, "drop_constant": True}

    def sweep(self, task: str, roi: str = "gland") -> pd.DataFrame:
        """The penalty sweep for one task's pre-trained embeddings (validation loss per l1, l2)."""
        key = ("sweep", task, roi)
        if key not in self._memo and self.bundle is not None and report_name(task, roi) in self.bundle.report_names:
            self._memo[key] = self.bundle.sweep(report_name(task, roi))
        if key not in self._memo:
            from radiolens.lens import penalty_sweep

            parts = self.lens_inputs(task, roi)
            (x_tr, _, r_tr), (x_va, _, r_va) = parts["train"], parts["val"]
            spec = self.config["lens"]
            ckey = step_key("penalty_sweep", {
                "x": hash_frame(x_tr), "xv": hash_frame(x_va), "r": hash_frame(r_tr), "rv": hash_frame(r_va),
                "params": self._lens_params(), "l1": spec["l1_grid"], "l2": spec["l2_grid"]})
            table = self._cache("lens").cached_frame(ckey, lambda: self._timed(
                "penalty sweep", penalty_sweep, x_tr, r_tr, x_va, r_va,
                l1_grid=spec["l1_grid"], l2_grid=spec["l2_grid"], n_jobs=self.config["jobs"], **self._lens_params(),
            ))
            self._memo[key] = table
        return self._memo[key]

    def lens(self, task: str, roi: str = "gland"):
        """The lens fitted on the training cases' pre-trained embeddings with the chosen penalties."""
        key = ("lens", task, roi)
        if key not in self._memo:
            from radiolens.lens import RadiomicLens

            sweep = self.sweep(task, roi)
            best = sweep.loc[sweep["selected"]].iloc[0]
            x_tr, _, r_tr = self.lens_inputs(task, roi)["train"]
            params = {**self._lens_params(), "l1": float(best["l1"]), "l2": float(best["l2"])}
            ckey = step_key("lens", {"x": hash_frame(x_tr), "r": hash_frame(r_tr), "params": params})
            lens = self._cache("lens").cached(
                ckey, lambda: self._timed(f"lens fit {task}/{roi}", RadiomicLens(**params).fit, x_tr, r_tr),
                lambda lens, folder: lens.save(folder), RadiomicLens.load,
            )
            self._memo[key] = lens
        return self._memo[key]

    def compare(self, task: str, roi: str = "gland"):
        """The lens report for one task (and ROI): pre vs fine-tuned, scored on the test cases."""
        key = ("compare", task, roi)
        if key not in self._memo and self.bundle is not None and report_name(task, roi) in self.bundle.report_names:
            self._memo[key] = self.bundle.report(report_name(task, roi))
            self._report_dirs[key] = self.bundle.report_dir(report_name(task, roi))
        if key not in self._memo:
            from radiolens.lens import LensReport

            lens = self.lens(task, roi)
            parts = self.lens_inputs(task, roi)
            (x_pre, x_ft, r), test = parts["train"], parts["test"]
            spec = self.config["lens"]
            ckey = step_key("lens_report", {
                "lens": _lens_key(lens), "x": hash_frame(x_pre), "xf": hash_frame(x_ft), "r": hash_frame(r),
                "t": [hash_frame(t) for t in test], "b": spec["n_bootstrap"], "p": spec["n_permutations"],
                "scale": spec["scale"], "stat": spec["permutation_stat"]})
            cache = self._cache("lens")
            report = cache.cached(
                ckey, lambda: self._timed(
                    f"compare {task}/{roi}", lens.compare, x_pre, x_ft, r, test=test,
                    n_bootstrap=spec["n_bootstrap"], n_permutations=spec["n_permutations"], scale=spec["scale"],
                    permutation_stat=spec["permutation_stat"],
                ),
                lambda report, folder: report.to_dir(folder), LensReport.from_dir,
            )
            folder = cache.get_dir(ckey)
            self._memo[key] = report
            self._report_dirs[key] = folder
        return self._memo[key]

    def reports(self) -> dict[str, Any]:
        """Every lens report, keyed ``"pirads"``, ``"volume"``, ``"lesion"`` (gland ROI) and
        ``"lesion (lesion ROI)"``."""
        if self.bundle is not None:
            return {name: self.compare(*parse_report_name(name)) for name in self.bundle.report_names}
        out = {}
        for task in self.available_tasks():
            for roi in self.task(task).rois:
                if roi == "lesion" and not self.config["radiomics"]["lesion_roi"]:
                    continue
                name = report_name(task, roi)
                try:
                    out[name] = self.compare(task, roi)
                except ValueError as err:  # e.g. too few lesion cases for a lens
                    self._warn(f"lens for {name} skipped: {err}")
        return out

    def planted_truth(self) -> pd.DataFrame:
        """How the lens's measures recover a known shift (simulation; see chapter 9)."""
        if "planted" not in self._memo and self.bundle is not None:
            self._memo["planted"] = self.bundle.planted()
        if "planted" not in self._memo:
            from radiolens.lens import simulation

            quick = bool(self.config.get("quick"))
            # hidden widths below and above the simulated embedding width (96), few and many
            # cases; the full grid of the lens benchmark takes too long for a study run
            if quick:
                kwargs = dict(hidden_dims=(16, 256), n_cases=(300,), epochs=100, n_test=300)
            else:
                kwargs = dict(hidden_dims=(16, 64, 256), n_cases=(300, 800))
            key = step_key("planted_truth", {"seed": self.seed, **kwargs})
            table = self._cache("planted").cached_frame(
                key, lambda: self._timed("planted truth", simulation.ols_reliability_table, seed=self.seed, **kwargs)
            )
            self._memo["planted"] = table
        return self._memo["planted"]

    # ------------------------------------------------------------------------------------
    # everything
    # ------------------------------------------------------------------------------------
    def provenance(self) -> dict:
        """Versions, configuration, seeds and timings, for the report."""
        import torch

        try:
            import radiomics as pyradiomics

            radiomics_version = pyradiomics.__version__
        except ImportError:  # pragma: no cover
            radiomics_version = None
        cohort = self._memo.get("cohort")
        return {
            "radiolens": __version__,
            "pyradiomics": radiomics_version,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "config": self.config,
            "seed": self.seed,
            "cohort": None if cohort is None else {"root": str(cohort.root), "fingerprint": cohort.fingerprint,
                                                   "n_cases": len(cohort.case_ids)},
            "encoders": dict(self.encoder_provenance),
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
        }

    def run(self, out_dir: str | Path | None = None) -> StudyResult:
        """Run (or resume) every step and write the report folder.

        The folder never holds a report that claims to be this run's when it is not: an
        earlier report is moved to ``previous/`` first, ``RUNNING.txt`` marks a run in
        progress (and stays behind if the process is killed), and a failed run leaves
        ``FAILED.txt`` with the error instead of a report.
        """
        out = Path(out_dir or self.config["out"])
        out.mkdir(parents=True, exist_ok=True)
        from radiolens import run_folder

        run_folder.sweep_stale_worker_files()
        run_folder.begin_run(out)
        try:
            result = self._run(out)
        except BaseException as err:
            run_folder.fail_run(out, err)
            if isinstance(err, KeyboardInterrupt):
                run_folder.stop_worker_pools()
            raise
        run_folder.finish_run(out)
        return result

    def _run(self, out: Path) -> StudyResult:
        from radiolens.report import write_report

        start, cpu_start = time.perf_counter(), cpu_seconds()
        self.cohort()
        # every user input is read before the slow steps: a bad checkpoint or missing labels
        # fail in seconds, not after the radiomics
        self.encoder()
        for task in self.available_tasks():
            if task in self.external_tasks:
                self.task(task)
        for task in self.available_tasks():
            for roi in self.task(task).rois:
                if roi == "gland" or self.config["radiomics"]["lesion_roi"]:
                    self.radiomics(roi)
        downstream = self.downstream_table()
        comparison = self.downstream_comparison()
        reports = self.reports()
        sweeps = {name: self.sweep(*parse_report_name(name)) for name in reports}
        stages = self.stage_shifts()
        planted = self.planted_truth()
        self.timings["total"] = time.perf_counter() - start
        self.cpu_timings["total"] = cpu_seconds() - cpu_start
        report_path = write_report(
            out, reports, downstream=downstream, comparison=comparison, sweeps=sweeps, planted=planted, stages=stages,
            provenance=self.provenance(), warnings=self.warnings,
            lens_dirs={name: self._report_dirs[("compare", *parse_report_name(name))] for name in reports},
        )
        return StudyResult(out, report_path, reports, downstream, list(self.warnings), dict(self.timings),
                           dict(self.cpu_timings))


_WORKER_STUDIES: dict[str, Study] = {}


def _finetune_job(config: dict, task: str, regime: str) -> tuple[float, float]:
    """One fine-tuning run in a worker process (:meth:`Study.finetune_all`): computed into the
    cache; returns its wall and CPU seconds. The worker keeps its study (cohort, encoder, cases
    in memory) for its next run."""
    key = hash_json(config)
    study = _WORKER_STUDIES.get(key) or _WORKER_STUDIES.setdefault(key, Study(config, progress=False))
    start, cpu = time.perf_counter(), time.process_time()
    study.finetuned(task, regime)
    return time.perf_counter() - start, time.process_time() - cpu


def _registered_tasks() -> tuple[str, ...]:
    from radiolens.tasks import TASKS

    return tuple(TASKS)


def _lens_key(lens) -> str:
    return hash_json({"params": lens.get_params() if hasattr(lens, "get_params") else repr(lens)})


def run_study(config: dict, out_dir: str | Path | None = None, progress: bool = True) -> StudyResult:
    """Convenience wrapper: ``Study(config).run(out_dir)`` with a log file in the output folder."""
    out = Path(out_dir or config["out"])
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "radiolens.log", mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("radiolens")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        result = Study(config, progress=progress).run(out)
        atomic_write_text(out / "timings.json", json.dumps(result.timings, indent=1))
        atomic_write_text(out / "cpu_timings.json", json.dumps(result.cpu_timings, indent=1))
        return result
    finally:
        root.removeHandler(handler)
        handler.close()
