"""Fine-tuning an encoder on a downstream task, frozen or in full (the paper's ``E -> E_ft``).

The lens compares an encoder before (``E``) and after (``E_ft``) fine-tuning. This module
produces ``E_ft`` the way the paper does (its Section 3 and appendix):

============  =========================================  ==========  ==========================
task          head                                       channels    loss / test metric
============  =========================================  ==========  ==========================
``pirads``    linear -> batch norm -> linear (4 classes)  T2W,DWI,ADC cross-entropy / quadratic
                                                                      weighted kappa, accuracy
``lesion``    UPerNet decoder over the 4 stage maps        T2W,DWI,ADC soft Dice (+ optional BCE) /
                                                                      mean Dice on lesion cases
``volume``    batch norm -> linear                         T2W         MSE on standardised volume /
                                                                      MSE, MAE in ml
============  =========================================  ==========  ==========================

Two regimes: ``"frozen"`` trains the head only (the encoder's weights and normalisation
statistics never change) and ``"full"`` trains encoder and head together. AdamW, learning
rate 1e-3, cosine or step schedule, early stopping on the validation loss (the best epoch's
weights are kept). The encoder passed in is never modified: fine-tuning works on a copy.

Choices the paper leaves open, made here and exposed as parameters: weight decay 0.05 on
weights only (not on biases and norm parameters, as in ConvNeXt training); batch size 8
(4 in the quick study); model selection on the validation *loss* (the validation metric is
recorded too, but kappa/Dice on a handful of validation cases are too coarse to select on);
the volume target standardised with the training split's mean and standard deviation; for the
T2W-only task a 3-channel encoder keeps the T2W slice of its stem kernel
(:func:`radiolens.models.heads.adapt_stem_in_chans`); the Dice loss is a *batch* soft Dice
(see :func:`~radiolens.finetune.metrics.soft_dice_loss` for why) with the decoder's output starting at a 1% lesion prior;
the lesion metric thresholds the probability at 0.5 and averages Dice over test cases that
have a lesion; in the frozen regime the encoder's outputs are computed once per case and the
head trains on them without augmentation (augmenting would mean running the fixed encoder on
every augmented view, every epoch: most of the frozen runs' cost); the full regime augments.

Determinism: every random choice (head initialisation, batch order, augmentation) derives
from ``seed``; training runs under ``torch.use_deterministic_algorithms`` and a forked torch
RNG, so the same call on the same CPU gives the same history bit for bit.

Modules: :mod:`~radiolens.finetune.data` (labelled cases per split),
:mod:`~radiolens.finetune.metrics` (losses and metrics per task kind),
:mod:`~radiolens.finetune.train` (:class:`FineTuneConfig`, the loop),
:mod:`~radiolens.finetune.checkpoints` (saving and loading),
:mod:`~radiolens.finetune.comparison` (is full fine-tuning better than frozen? paired tests of
Table 2's differences). The tasks themselves are
defined in :mod:`radiolens.tasks`, the heads in :mod:`radiolens.models.heads`.
"""

from radiolens.finetune.checkpoints import load_finetuned, save_finetuned
from radiolens.finetune.comparison import COMPARISON_COLUMNS, compare_regimes, describe_comparison
from radiolens.finetune.data import EmptySplitError
from radiolens.finetune.metrics import dice_score, quadratic_weighted_kappa, soft_dice_loss
from radiolens.finetune.train import FineTuneConfig, FineTuneResult, TaskModel, finetune

__all__ = [
    "COMPARISON_COLUMNS",
    "EmptySplitError",
    "FineTuneConfig",
    "FineTuneResult",
    "TaskModel",
    "compare_regimes",
    "describe_comparison",
    "dice_score",
    "finetune",
    "load_finetuned",
    "quadratic_weighted_kappa",
    "save_finetuned",
    "soft_dice_loss",
]
