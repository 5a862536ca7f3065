"""Planted-truth simulation: embeddings whose radiomic content is known, to validate the lens.

The generative model (no tuning towards any method; the parameters are the obvious ones):

* Every radiomic feature ``k`` is driven by its own independent latent source ``s_k ~ N(0, 1)``;
  the observed value is an affine image of it (``loc_k + scale_k * s_k``), so its min-max
  scaled version is ``s_k`` up to a linear map.
* Each feature is labelled ``kept`` (encoded before and after fine-tuning), ``lost`` (encoded
  only before), ``gained`` (encoded only after) or ``unencoded`` (never).
* The pre-trained encoder writes the sources it encodes, plus ``n_nuisance`` non-radiomic
  factors, into ``d`` embedding dims through a random Gaussian mixing matrix (entries
  ``N(0, 1 / n_encoded)`` so each dim carries unit signal variance), plus isotropic noise of
  standard deviation ``noise``.
* The fine-tuned encoder keeps the mixing directions of ``kept`` features up to a rotation of
  angle ``drift`` (radians) towards fresh random directions, drops ``lost`` features, writes
  ``gained`` features along fresh random directions, and keeps the nuisance directions.

:func:`ols_reliability_table` runs the lens on such data across hidden widths and case counts
and records how well each importance measure recovers the planted truth (precision of the
top-6 "gained" and bottom-6 "lost" of 60 features). What it found with the defaults (d = 96,
seed 0, 200 epochs, 500 extra cases; the book shows the full table):

* Paper protocol (decoders fitted on the cases stage 1 was trained on, scored on the extra
  cases): every ``delta_I`` -- OLS on raw or standardised ``Z``, relative, or ridge -- ranks the
  truth backwards once the hidden width reaches the embedding width (precision 0.0 at hidden
  256 and 512 for 300, 800 and 2000 cases) and is reliable only with a narrow hidden space and
  many cases (hidden 16 at 2000 cases: 1.0; hidden 64 at 800 cases: 0.17-0.67). ``delta_r2`` is
  far better (ridge: 0.67-1.0 from 800 cases on) but not reliable at 300 cases.
* Decoders fitted on the extra cases, which stage 1 never saw (scored by leave-one-out): ridge
  ``delta_I`` recovers the truth in almost every setting (>= 0.83, except 0.67 for gains at
  hidden 512 / 2000 cases) and ``delta_r2`` >= 0.83 in all but one (0.67), while the paper's
  OLS ``delta_I`` is still backwards at hidden 256 (>= d, 0.0). (At hidden 512 the 500
  decoder cases are too few for least squares, so "OLS" there is the ridge fallback: see the
  ``decoder_used`` column.)

The mechanism: stage 1 learns the training cases' radiomics, noise included, so on those cases
``Z_pre`` carries unencoded features' noise that the pre decoder fits (inflated ``I_pre``, worse
held-out ``r2_pre``); and with hidden >= d, ``Z`` is a nearly collinear image of ``d`` inputs in
which noise-fitting rows of an unregularised decoder get the largest norms.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from radiolens.lens.estimator import RadiomicLens

__all__ = [
    "PYRADIOMICS_FEATURES",
    "PlantedShift",
    "ols_reliability_table",
    "planted_shift",
    "pyradiomics_columns",
    "recovery_precision",
]

logger = logging.getLogger(__name__)

#: Plausible PyRadiomics feature names per family (a subset of PyRadiomics 3.1).
SIM_FEATURES: dict[str, tuple[str, ...]] = {
    "firstorder": ("Energy", "Entropy", "Kurtosis", "Mean", "Skewness", "Variance"),
    "glcm": ("Contrast", "Correlation", "Idm", "Imc2", "MCC", "JointEntropy"),
    "gldm": ("DependenceEntropy", "LargeDependenceEmphasis", "GrayLevelNonUniformity"),
    "glrlm": ("RunEntropy", "ShortRunEmphasis", "LongRunEmphasis"),
    "glszm": ("ZoneEntropy", "SmallAreaEmphasis", "GrayLevelVariance"),
    "ngtdm": ("Busyness", "Coarseness", "Contrast", "Strength"),
}
SIM_IMAGE_TYPES: tuple[str, ...] = ("original", "wavelet-LLH", "wavelet-HHL")

#: The PyRadiomics 3.1 feature classes the paper uses (no shape), 93 features per image type.
PYRADIOMICS_FEATURES: dict[str, tuple[str, ...]] = {
    "firstorder": (
        "10Percentile", "90Percentile", "Energy", "Entropy", "InterquartileRange", "Kurtosis",
        "Maximum", "MeanAbsoluteDeviation", "Mean", "Median", "Minimum", "Range",
        "RobustMeanAbsoluteDeviation", "RootMeanSquared", "Skewness", "TotalEnergy", "Uniformity",
        "Variance",
    ),
    "glcm": (
        "Autocorrelation", "ClusterProminence", "ClusterShade", "ClusterTendency", "Contrast",
        "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "Id", "Idm",
        "Idmn", "Idn", "Imc1", "Imc2", "InverseVariance", "JointAverage", "JointEnergy",
        "JointEntropy", "MCC", "MaximumProbability", "SumAverage", "SumEntropy", "SumSquares",
    ),
    "gldm": (
        "DependenceEntropy", "DependenceNonUniformity", "DependenceNonUniformityNormalized",
        "DependenceVariance", "GrayLevelNonUniformity", "GrayLevelVariance", "HighGrayLevelEmphasis",
        "LargeDependenceEmphasis", "LargeDependenceHighGrayLevelEmphasis",
        "LargeDependenceLowGrayLevelEmphasis", "LowGrayLevelEmphasis", "SmallDependenceEmphasis",
        "SmallDependenceHighGrayLevelEmphasis", "SmallDependenceLowGrayLevelEmphasis",
    ),
    "glrlm": (
        "GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized", "GrayLevelVariance",
        "HighGrayLevelRunEmphasis", "LongRunEmphasis", "LongRunHighGrayLevelEmphasis",
        "LongRunLowGrayLevelEmphasis", "LowGrayLevelRunEmphasis", "RunEntropy",
        "RunLengthNonUniformity", "RunLengthNonUniformityNormalized", "RunPercentage", "RunVariance",
        "ShortRunEmphasis", "ShortRunHighGrayLevelEmphasis", "ShortRunLowGrayLevelEmphasis",
    ),
    "glszm": (
        "GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized", "GrayLevelVariance",
        "HighGrayLevelZoneEmphasis", "LargeAreaEmphasis", "LargeAreaHighGrayLevelEmphasis",
        "LargeAreaLowGrayLevelEmphasis", "LowGrayLevelZoneEmphasis", "SizeZoneNonUniformity",
        "SizeZoneNonUniformityNormalized", "SmallAreaEmphasis", "SmallAreaHighGrayLevelEmphasis",
        "SmallAreaLowGrayLevelEmphasis", "ZoneEntropy", "ZonePercentage", "ZoneVariance",
    ),
    "ngtdm": ("Busyness", "Coarseness", "Complexity", "Contrast", "Strength"),
}
#: PyRadiomics' original image plus its eight 3-D wavelet decompositions.
PYRADIOMICS_IMAGE_TYPES: tuple[str, ...] = ("original",) + tuple(
    f"wavelet-{a}{b}{c}" for a in "LH" for b in "LH" for c in "LH"
)


def pyradiomics_columns(
    modalities: Sequence[str] = ("T2W", "DWI", "ADC"),
    image_types: Sequence[str] = PYRADIOMICS_IMAGE_TYPES,
) -> list[str]:
    """All radiolens column names PyRadiomics would produce: 837 per modality by default
    (9 image types x 93 features), 2511 for the paper's three modalities."""
    return [
        f"{m}__{it}_{fam}_{feat}"
        for m in modalities
        for it in image_types
        for fam, feats in PYRADIOMICS_FEATURES.items()
        for feat in feats
    ]
TRUTH_LABELS: tuple[str, ...] = ("gained", "lost", "kept", "unencoded")


@dataclass
class PlantedModel:
    """The generator behind a :class:`PlantedShift`: mixing directions, nuisance and scaling.

    :meth:`sample` draws more cases from the *same* encoders and radiomics, e.g. a very large
    fresh sample on which the true change of every feature can be computed.
    """

    columns: list[str]
    A_pre: np.ndarray  # (p, d) mixing direction of every radiomic source, pre-trained encoder
    A_ft: np.ndarray  # (p, d) the same for the fine-tuned encoder
    N_pre: np.ndarray  # (n_nuisance, d)
    N_ft: np.ndarray
    loc: np.ndarray  # (p,) R = loc + scale * source
    scale: np.ndarray
    noise: float
    ft_offset: np.ndarray | float = 0.0  # (d,) added to every fine-tuned embedding
    ft_gain: float = 1.0  # every fine-tuned embedding is multiplied by it (before the offset)

    def sample(self, n: int, rng: np.random.Generator, prefix: str = "sim", start: int = 0
               ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """``(X_pre, X_ft, R)`` of ``n`` new cases (ids ``{prefix}{start:05d}``..)."""
        p, d = self.A_pre.shape
        S = rng.normal(size=(n, p))
        F = rng.normal(size=(n, len(self.N_pre)))
        X_pre = S @ self.A_pre + F @ self.N_pre + self.noise * rng.normal(size=(n, d))
        X_ft = (S @ self.A_ft + F @ self.N_ft + self.noise * rng.normal(size=(n, d))) * self.ft_gain + self.ft_offset
        R = self.loc + self.scale * S
        ids = pd.Index([f"{prefix}{i:05d}" for i in range(start, start + n)], name="case_id")
        emb_cols = [f"emb_{j:03d}" for j in range(d)]
        return (pd.DataFrame(X_pre, index=ids, columns=emb_cols), pd.DataFrame(X_ft, index=ids, columns=emb_cols),
                pd.DataFrame(R, index=ids, columns=self.columns))


@dataclass
class PlantedShift:
    """Simulated pre/ft embeddings and radiomics with known encoding.

    Attributes
    ----------
    X_pre, X_ft : DataFrame
        Training cases x ``d`` embeddings (columns ``emb_000..``), indexed by case id.
    R : DataFrame
        Training cases x radiomic columns (``"{modality}__{pyradiomics key}"``).
    truth : DataFrame
        Indexed by radiomic column, column ``truth`` in ``gained, lost, kept, unencoded``.
    X_pre_test, X_ft_test, R_test : DataFrame or None
        Held-out cases from the same model (``None`` when ``n_test == 0``).
    model : PlantedModel or None
        The generator, to draw more cases from it.
    """

    X_pre: pd.DataFrame
    X_ft: pd.DataFrame
    R: pd.DataFrame
    truth: pd.DataFrame
    X_pre_test: pd.DataFrame | None = None
    X_ft_test: pd.DataFrame | None = None
    R_test: pd.DataFrame | None = None
    model: PlantedModel | None = None

    @property
    def test(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None:
        """``(X_pre_test, X_ft_test, R_test)`` for :meth:`RadiomicLens.compare`, or None."""
        if self.R_test is None:
            return None
        return self.X_pre_test, self.X_ft_test, self.R_test


def simulated_columns(n_per_modality: int, modalities: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Draw ``n_per_modality`` distinct radiomic names per modality (image type x family x feature)."""
    pool = [f"{it}_{fam}_{feat}" for it in SIM_IMAGE_TYPES for fam, feats in SIM_FEATURES.items() for feat in feats]
    if n_per_modality > len(pool):
        raise ValueError(f"at most {len(pool)} simulated features per modality, got {n_per_modality}")
    columns = []
    for modality in modalities:
        keys = rng.choice(len(pool), size=n_per_modality, replace=False)
        columns += [f"{modality}__{pool[i]}" for i in sorted(keys)]
    return columns


def planted_shift(
    n_cases: int = 800,
    d: int = 96,
    n_per_modality: int = 20,
    modalities: Sequence[str] = ("T2W", "DWI", "ADC"),
    fractions: dict[str, float] | None = None,
    n_nuisance: int = 16,
    noise: float = 1.0,
    drift: float = 0.3,
    ft_offset: float = 0.0,
    ft_gain: float = 1.0,
    n_test: int = 0,
    seed: int = 0,
) -> PlantedShift:
    """Simulate pre/ft embeddings that encode a known subset of radiomic features.

    Parameters
    ----------
    n_cases
        Training cases.
    d
        Embedding width.
    n_per_modality
        Radiomic features per modality (``p = n_per_modality * len(modalities)``).
    modalities
        Modality prefixes of the column names.
    fractions
        Share of features per label; default ``gained 0.1, lost 0.1, kept 0.3`` (rest
        ``unencoded``). Every label present gets at least one feature.
    n_nuisance
        Non-radiomic factors both encoders also carry.
    noise
        Standard deviation of isotropic embedding noise (signal variance per dim is 1).
    drift
        Rotation (radians) of the ``kept`` directions between pre and ft.
    ft_offset, ft_gain
        Fine-tuning that also moves and rescales the embedding wholesale, as the built-in
        study's fine-tuned encoders do: every fine-tuned embedding is multiplied by ``ft_gain``
        and each dimension shifted by its own ``N(0, ft_offset^2)`` offset (in units of the
        pre-trained embedding's spread, about 1.4 per dimension). Neither changes what is
        encoded; the defaults (0, 1) leave the embeddings as they were.
    n_test
        Extra held-out cases from the same model.
    seed
        Seed of everything.

    Returns
    -------
    PlantedShift
    """
    if n_cases < 2:
        raise ValueError(f"n_cases must be >= 2, got {n_cases}")
    rng = np.random.default_rng(seed)
    fractions = {"gained": 0.1, "lost": 0.1, "kept": 0.3} if fractions is None else dict(fractions)
    unknown = set(fractions) - set(TRUTH_LABELS)
    if unknown:
        raise ValueError(f"unknown truth labels {sorted(unknown)}; use {TRUTH_LABELS}")
    columns = simulated_columns(n_per_modality, modalities, rng)
    p = len(columns)
    counts = {k: max(1, int(round(v * p))) if v > 0 else 0 for k, v in fractions.items()}
    counts["unencoded"] = p - sum(counts.values())
    if counts["unencoded"] < 0:
        raise ValueError(f"fractions {fractions} sum to more than 1")
    labels = np.array(sum(([k] * c for k, c in counts.items()), []))
    labels = labels[rng.permutation(p)]
    truth = pd.DataFrame({"truth": labels}, index=pd.Index(columns, name="column"))

    pre_enc = np.flatnonzero(np.isin(labels, ("kept", "lost")))
    ft_enc = np.flatnonzero(np.isin(labels, ("kept", "gained")))
    kept = np.flatnonzero(labels == "kept")
    k_pre = len(pre_enc) + n_nuisance
    k_ft = len(ft_enc) + n_nuisance

    # Mixing directions (rows) for every radiomic source and nuisance factor.
    A_pre = np.zeros((p, d))
    A_pre[pre_enc] = rng.normal(0.0, 1.0 / np.sqrt(k_pre), size=(len(pre_enc), d))
    A_ft = np.zeros((p, d))
    A_ft[ft_enc] = rng.normal(0.0, 1.0 / np.sqrt(k_ft), size=(len(ft_enc), d))
    # kept: rotate the pre direction by `drift` towards the fresh one drawn above
    A_ft[kept] = np.cos(drift) * A_pre[kept] * np.sqrt(k_pre / k_ft) + np.sin(drift) * A_ft[kept]
    N_pre = rng.normal(0.0, 1.0 / np.sqrt(k_pre), size=(n_nuisance, d))
    N_ft = N_pre * np.sqrt(k_pre / k_ft)

    loc = rng.uniform(-5.0, 50.0, size=p)
    scale = rng.lognormal(0.0, 1.0, size=p)
    offset = ft_offset * np.sqrt(1.0 + noise**2) * rng.normal(size=d) if ft_offset else 0.0
    model = PlantedModel(columns, A_pre, A_ft, N_pre, N_ft, loc, scale, float(noise), offset, float(ft_gain))
    Xp, Xf, Rd = model.sample(n_cases + n_test, rng)
    ids = Rd.index
    tr, te = ids[:n_cases], ids[n_cases:]
    if n_test:
        return PlantedShift(Xp.loc[tr], Xf.loc[tr], Rd.loc[tr], truth, Xp.loc[te], Xf.loc[te], Rd.loc[te], model)
    return PlantedShift(Xp, Xf, Rd, truth, model=model)


def recovery_precision(score: pd.Series, truth: pd.DataFrame) -> tuple[float, float]:
    """Precision of the top-k (gained) and bottom-k (lost) of ``score`` against the truth.

    ``k`` is the number of truly gained (resp. lost) features; NaN scores rank last.
    """
    labels = truth["truth"].reindex(score.index)
    k_g = int((labels == "gained").sum())
    k_l = int((labels == "lost").sum())
    top = score.sort_values(ascending=False, na_position="last", kind="stable").index[:k_g]
    bottom = score.sort_values(ascending=True, na_position="last", kind="stable").index[:k_l]
    prec_g = float((labels.loc[top] == "gained").mean()) if k_g else float("nan")
    prec_l = float((labels.loc[bottom] == "lost").mean()) if k_l else float("nan")
    return prec_g, prec_l


#: Measures compared by :func:`ols_reliability_table`: (method name, decoder, scale, column).
RELIABILITY_METHODS: tuple[tuple[str, str, str, str], ...] = (
    ("ols delta_I (paper)", "ols", "paper", "delta_I"),
    ("ols rel_delta_I (paper)", "ols", "paper", "rel_delta_I"),
    ("ols delta_I (standardized Z)", "ols", "standardized", "delta_I"),
    ("ols delta_I (whitened Z)", "ols", "whitened", "delta_I"),
    ("ols delta_r2", "ols", "paper", "delta_r2"),
    ("ridge delta_I", "ridge", "standardized", "delta_I"),
    ("ridge delta_r2", "ridge", "standardized", "delta_r2"),
)
#: Protocols compared by :func:`ols_reliability_table`.
RELIABILITY_PROTOCOLS: tuple[str, ...] = ("paper", "cross-fit", "held-out decoders")


def ols_reliability_table(
    hidden_dims: Sequence[int] = (16, 64, 256, 512),
    n_cases: Sequence[int] = (300, 800, 2000),
    d: int = 96,
    n_test: int = 500,
    epochs: int = 200,
    seed: int = 0,
    protocols: Sequence[str] = RELIABILITY_PROTOCOLS,
    **sim_params,
) -> pd.DataFrame:
    """How well each importance measure recovers planted gains and losses.

    For every (hidden width, number of training cases) a lens is fitted on a fresh
    :func:`planted_shift` (same ``seed``), then compared with the OLS decoder (paper,
    standardised and whitened scale) and the ridge decoder, under each protocol:

    ``"paper"``
        decoders fitted on the training cases stage 1 was trained on, scored on the
        ``n_test`` held-out cases;
    ``"cross-fit"``
        radiolens's default: every training case decoded through the stage-1 projection trained
        on the other half of the training cases, scored on the ``n_test`` held-out cases;
    ``"held-out decoders"``
        decoders fitted on the ``n_test`` held-out cases (never seen by stage 1), scored by
        exact leave-one-out on them.

    Returns
    -------
    pandas.DataFrame
        ``protocol, method, hidden_dim, n_cases, precision_gained, precision_lost,
        decoder_used`` (``decoder_used`` says whether OLS fell back to ridge).
    """
    unknown = set(protocols) - set(RELIABILITY_PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocols {sorted(unknown)}")
    rows = []
    for n in n_cases:
        sim = planted_shift(n_cases=n, d=d, n_test=n_test, seed=seed, **sim_params)
        for h in hidden_dims:
            logger.info("reliability: n_cases=%d hidden_dim=%d", n, h)
            reports = {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the unreliable-regime warnings are the point here
                lenses = {}
                for protocol in protocols:
                    kind = "cross-fit" if protocol == "cross-fit" else "paper"
                    if kind not in lenses:
                        lenses[kind] = RadiomicLens(protocol=kind, hidden_dim=h, epochs=epochs,
                                                    random_state=seed).fit(sim.X_pre, sim.R)
                    lens = lenses[kind]
                    for _name, decoder, scale, _col in RELIABILITY_METHODS:
                        if (protocol, decoder, scale) in reports:
                            continue
                        lens.set_params(decoder=decoder)
                        if protocol == "held-out decoders":
                            rep = lens.compare(sim.X_pre_test, sim.X_ft_test, sim.R_test, scale=scale)
                        else:
                            rep = lens.compare(sim.X_pre, sim.X_ft, sim.R, test=sim.test, scale=scale)
                        reports[protocol, decoder, scale] = rep
            for protocol in protocols:
                for name, decoder, scale, col in RELIABILITY_METHODS:
                    rep = reports[protocol, decoder, scale]
                    score = rep.importance.set_index("column")[col]
                    pg, pl = recovery_precision(score, sim.truth)
                    rows.append({
                        "protocol": protocol, "method": name, "hidden_dim": h, "n_cases": n,
                        "precision_gained": pg, "precision_lost": pl,
                        "decoder_used": rep.diagnostics["decoder_used_pre"],
                    })
    return pd.DataFrame(rows, columns=["protocol", "method", "hidden_dim", "n_cases", "precision_gained",
                                       "precision_lost", "decoder_used"])
