"""The radiomic lens: which radiomic features an encoder represents, and what fine-tuning changes.

This module implements the method of Wang et al. (MIDL 2026) in two stages (see the book's
"method" chapter for the derivation):

Stage 1 (:meth:`RadiomicLens.fit`)
    A shared non-linear projection ``Z = act(W x + b)`` from encoder embeddings to a hidden
    space, trained on *pre-fine-tuning* embeddings together with one temporary linear head per
    modality that predicts that modality's min-max scaled radiomic features. Loss: the L1
    reconstruction error summed over modalities plus ``l1 * sum|w| + l2 * sum w**2`` over all
    weights. After training the projection is frozen and the heads are discarded.

Stage 2 (:meth:`RadiomicLens.compare`)
    For the pre-trained and the fine-tuned embeddings separately, a closed-form linear decoder
    from the frozen hidden space to the radiomics (least squares with intercept). The
    importance of a radiomic feature is the L2 norm of its row of the decoder; its change is
    ``delta_I = I_ft - I_pre``.

What radiolens does by default that the paper does not (each documented where it lives), so
that its intervals and p-values are calibrated (``benchmarks/bench_calibration.py`` measures
it on planted truth):

* the **cross-fitted protocol** (``protocol="cross-fit"``): stage 1 is also trained on each half
  of the training cases, and every training case is decoded through the projection trained on
  the *other* half. Decoders fitted on the cases stage 1 learnt (the paper's protocol,
  ``protocol="paper"``) favour the pre-trained encoder: features neither encoder carries look
  lost by ``delta_I`` and gained by held-out R^2;
* the **whitened, debiased importance** (``scale="whitened"``): decoder weights on decorrelated,
  standardised hidden units, with the noise a least-squares fit picks up subtracted; unlike the
  paper's ``I`` it cannot be inflated by a hidden unit that barely varies;
* fine-tuned embeddings **matched per dimension** to the pre-trained ones' mean and spread
  before the projection (``match_ft_moments``), so that fine-tuning's wholesale moves of the
  embedding do not push them into the flat part of the projection's non-linearity;
* held-out decodability ``r2_pre/r2_ft`` per feature, wild-bootstrap intervals, a paired
  permutation test combining held-out ``delta_r2`` and ``delta_I``, features that cannot be
  evaluated reported as such, a cross-validated ridge decoder and diagnostics of the regime in
  which the paper's importance is unreliable.

Choices the paper leaves open and that radiolens makes (all parameters of
:class:`RadiomicLens`):

* hidden width: ``hidden_dim=None`` picks ``min(256, d // 2, n_train // 10)`` (at least 1), so
  the hidden space is narrower than the embedding *and* has at least ten training cases per
  hidden unit. A planted-truth simulation (:mod:`radiolens.lens.simulation`) showed the paper's OLS
  importance ranking features backwards when the hidden width reaches the embedding width.
* activation GELU (smooth, no dead units that would make ``Z`` rank-deficient), optimiser
  AdamW with *no* decoupled weight decay (the elastic penalty is already in the loss),
  mini-batches of 64 cases, inputs standardised with the training mean and standard deviation.
* the L1 reconstruction term is the mean absolute error over cases and features of each
  modality, summed over modalities; penalties apply to weights, not biases.

The package, in the order a lens is used:

``projection``   stage 1: the shared projection and its training
``decoders``     stage 2: closed-form (and ridge) decoders
``inference``    bootstrap intervals, permutation p-values, Wilcoxon tests, p-value adjustment
``report``       :class:`LensReport`, its rankings and its folder format
``estimator``    :class:`RadiomicLens`, the scikit-learn estimator tying them together
``sweep``        :func:`penalty_sweep`, the paper's choice of stage-1 penalties
``requirements`` the fewest cases per split a lens needs, checked up front
``simulation``   planted-truth embeddings where the right answer is known
``calibration``  planted-truth runs measuring false positives, coverage and power
``stages``       the lens stage by stage of the encoder: where in the network fine-tuning acts
``baselines``    reference points: what ROI size alone explains of the features, and whether
                 the embedding can tell a case label (e.g. "has a lesion") at all
"""

from __future__ import annotations

from radiolens.lens.baselines import covariate_r2, label_auc
from radiolens.lens.decoders import DEFAULT_RIDGE_ALPHAS
from radiolens.lens.estimator import RadiomicLens
from radiolens.lens.inference import adjust_pvalues
from radiolens.lens.report import IMPORTANCE_COLUMNS, LensReport
from radiolens.lens.requirements import check_cases_per_split, min_cases_per_split
from radiolens.lens.stages import linear_cka, stage_shift_table
from radiolens.lens.sweep import PAPER_L1_GRID, PAPER_L2_GRID, penalty_sweep

__all__ = [
    "DEFAULT_RIDGE_ALPHAS",
    "IMPORTANCE_COLUMNS",
    "LensReport",
    "PAPER_L1_GRID",
    "PAPER_L2_GRID",
    "RadiomicLens",
    "adjust_pvalues",
    "check_cases_per_split",
    "covariate_r2",
    "label_auc",
    "linear_cka",
    "min_cases_per_split",
    "penalty_sweep",
    "stage_shift_table",
]
