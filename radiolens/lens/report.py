"""The lens's result: :class:`LensReport`, its three rankings and its folder format."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from radiolens.cache import atomic_write_bytes, atomic_write_text

IMPORTANCE_COLUMNS = [
    "column", "modality", "image_type", "family", "feature",
    "I_pre", "I_ft", "delta_I", "rel_delta_I", "r2_pre", "r2_ft", "delta_r2",
]
_FRAMES = ("importance", "scores", "tests", "observed", "decoded_pre", "decoded_ft")
#: Tables a report folder written before they existed may lack (read back as empty frames).
_OPTIONAL_FRAMES = ("decoder_pre", "decoder_ft")


@dataclass
class LensReport:
    """What :meth:`RadiomicLens.compare` measured.

    Attributes
    ----------
    importance
        One row per radiomic column: ``column, modality, image_type, family, feature, I_pre,
        I_ft, delta_I, rel_delta_I, r2_pre, r2_ft, delta_r2``; with bootstrap also
        ``I_pre_lo/hi, I_ft_lo/hi, delta_I_lo/hi, delta_r2_lo/hi``; with permutations also
        ``p_value, p_adjusted``. ``rel_delta_I = delta_I / I_pre`` (the paper does not define
        its "relative dI"; this is radiolens' reading, NaN where ``I_pre == 0``). A feature
        constant on the evaluation cases has NaN ``r2_*``, ``delta_r2`` and ``p_value`` (not
        evaluable; left out of rankings by ``delta_r2``, of family means and of the p-value
        adjustment).
    scores
        Tidy ``encoder, level, group, r2, mse`` (``encoder`` is ``pre`` or ``ft``) on the
        evaluation cases (test cases when given, else exact leave-one-out predictions of the
        decoder cases). Group ``r2`` is the mean of the evaluable features' R^2 (scikit-learn's
        uniform average); ``mse`` the mean squared error over cases and features of the group,
        in min-max scaled units.
    tests
        Wilcoxon signed-rank tests on per-case squared errors (mean over the group's features),
        pre vs ft: ``modality, family, n_cases, statistic, p_value, p_adjusted, stars``;
        ``modality == "all"`` rows pool the modalities (the paper's test). ``p_adjusted`` is
        Holm-adjusted within the pooled rows and within the per-modality rows; ``stars`` follow
        the unadjusted ``p_value`` at 0.05/0.01/0.001 as in the paper.
    observed, decoded_pre, decoded_ft
        Cases x radiomic columns on the evaluation cases: min-max scaled observations and the
        two decoders' predictions (the mean over the cross-fitted parts' decoders).
    decoder_pre, decoder_ft
        Hidden units x radiomic columns: each encoder's decoder weights in the units the
        importance is computed in, so that ``I_pre`` is the Euclidean norm of a column of
        ``decoder_pre`` (PAPER.md: "the norm of the feature's row of the decoder"). Unit ``k``'s
        weight says how strongly hidden unit ``k`` carries that radiomic feature. A
        cross-fitted report stacks its parts' units (``"fold1/z_000"``, ...), scaled so the
        norm is still ``I``; on the whitened scale the units are the decorrelated ones.
    diagnostics
        JSON-able dict: ``protocol`` (``"cross-fit"``, ``"paper"`` or ``"held-out"``) and
        ``scale`` that produced the report, decoder cases per part, condition numbers, cases per
        hidden unit, decoder actually used per encoder, ridge penalties, (near-)constant hidden
        units, the share of decoder cases their projection was trained on
        (``stage1_case_overlap``), features not evaluable, warnings.
    params
        The lens parameters (``protocol`` among them) and ``compare`` arguments that produced
        the report; ``protocol_used`` as in the diagnostics.
    """

    importance: pd.DataFrame
    scores: pd.DataFrame
    tests: pd.DataFrame
    observed: pd.DataFrame
    decoded_pre: pd.DataFrame
    decoded_ft: pd.DataFrame
    diagnostics: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    decoder_pre: pd.DataFrame = field(default_factory=pd.DataFrame)
    decoder_ft: pd.DataFrame = field(default_factory=pd.DataFrame)

    # -- the paper's three rankings ------------------------------------------------------------
    def _by(self, by: str) -> str:
        allowed = ("rel_delta_I", "delta_I", "delta_r2")
        if by not in allowed:
            raise ValueError(f"by must be one of {allowed}, got {by!r}")
        return by

    def gained(self, k: int = 10, by: str = "rel_delta_I") -> pd.DataFrame:
        """The ``k`` features whose encoding grew most (largest ``by``; the paper uses
        ``rel_delta_I``). ``by="delta_r2"`` ranks by held-out decodability instead, which the
        planted-truth simulation found reliable in every regime."""
        col = self._by(by)
        return self.importance.sort_values(col, ascending=False, na_position="last", kind="stable").head(k)

    def lost(self, k: int = 10, by: str = "rel_delta_I") -> pd.DataFrame:
        """The ``k`` features whose encoding shrank most (most negative ``by``)."""
        col = self._by(by)
        return self.importance.sort_values(col, ascending=True, na_position="last", kind="stable").head(k)

    def stable(self, k: int = 10, by: str = "delta_I", quantile: float = 0.5) -> pd.DataFrame:
        """The ``k`` features that changed least in absolute value among those important both
        before and after: ``I_pre`` and ``I_ft`` (for ``by="delta_r2"``: ``r2_pre`` and
        ``r2_ft``) at or above their ``quantile`` over all features."""
        col = self._by(by)
        imp = self.importance
        a, b = ("r2_pre", "r2_ft") if col == "delta_r2" else ("I_pre", "I_ft")
        keep = (imp[a] >= imp[a].quantile(quantile)) & (imp[b] >= imp[b].quantile(quantile))
        sub = imp[keep]
        order = sub[col].abs().sort_values(kind="stable").index
        return sub.loc[order].head(k)

    # -- persistence -----------------------------------------------------------------------------
    def to_dir(self, path: str | Path) -> Path:
        """Write the report to a folder: one Parquet file per table (exact), ``importance.csv``
        for people, ``diagnostics.json`` and ``params.json``. Every write is atomic."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name in _FRAMES + _OPTIONAL_FRAMES:
            frame: pd.DataFrame = getattr(self, name)
            atomic_write_bytes(path / f"{name}.parquet", frame.to_parquet(index=True))
        atomic_write_text(path / "importance.csv", self.importance.to_csv(index=False))
        atomic_write_text(path / "diagnostics.json", json.dumps(self.diagnostics, indent=2, sort_keys=True))
        atomic_write_text(path / "params.json", json.dumps(self.params, indent=2, sort_keys=True))
        return path

    @classmethod
    def from_dir(cls, path: str | Path) -> LensReport:
        """Read a report written by :meth:`to_dir`."""
        path = Path(path)
        missing = [f"{n}.parquet" for n in _FRAMES if not (path / f"{n}.parquet").exists()]
        if missing:
            raise FileNotFoundError(f"{path} is not a lens report folder: missing {missing}")
        frames = {n: pd.read_parquet(path / f"{n}.parquet") for n in _FRAMES}
        for name in _OPTIONAL_FRAMES:
            if (path / f"{name}.parquet").exists():
                frames[name] = pd.read_parquet(path / f"{name}.parquet")
        diagnostics = json.loads((path / "diagnostics.json").read_text())
        params = json.loads((path / "params.json").read_text())
        return cls(**frames, diagnostics=diagnostics, params=params)
