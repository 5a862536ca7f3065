"""Encoders: a ProFound-compatible 3D ConvNeXt V2, weights, task heads, inputs, pre-training.

* :class:`ConvNeXtV2Encoder3D` and :data:`PRESETS` (:mod:`radiolens.models.convnext`)
* :func:`load_profound`, :func:`load_pretrained`, :func:`load_encoder`, :func:`save_encoder`,
  :func:`encoder_hash`, :func:`as_encoder` (:mod:`radiolens.models.profound`)
* :func:`load_encoder_file`: any checkpoint a user brings (ProFound, radiolens, TorchScript)
  with its provenance (:mod:`radiolens.models.external`)
* the task heads, :func:`encoder_for_task` (:mod:`radiolens.models.heads`)
* :func:`case_tensor`, :class:`CaseStore`, :class:`CohortDataset` (:mod:`radiolens.models.inputs`):
  the one place where a cohort case becomes a network input, and the one batching path
* augmentation (:mod:`radiolens.models.augment`)
* :func:`radiolens.models.pretrain.pretrain`: FCMAE-style masked pre-training

Fine-tuning, which trains these pieces on a task, is the next step: :mod:`radiolens.finetune`.
"""

from radiolens.models.convnext import PRESETS, ConvNeXtV2Encoder3D
from radiolens.models.external import FORMATS_ACCEPTED, load_encoder_file
from radiolens.models.heads import encoder_for_task
from radiolens.models.inputs import CaseStore, CohortDataset, case_tensor, pad_to_multiple
from radiolens.models.pretrain import pretrain
from radiolens.models.profound import (
    EncoderAdapter,
    LoadReport,
    as_encoder,
    encoder_hash,
    infer_preset,
    load_encoder,
    load_pretrained,
    load_profound,
    remap_profound_state_dict,
    save_encoder,
    weight_card,
)

__all__ = [
    "PRESETS",
    "ConvNeXtV2Encoder3D",
    "EncoderAdapter",
    "FORMATS_ACCEPTED",
    "load_encoder_file",
    "LoadReport",
    "as_encoder",
    "encoder_for_task",
    "encoder_hash",
    "infer_preset",
    "load_encoder",
    "load_pretrained",
    "weight_card",
    "load_profound",
    "remap_profound_state_dict",
    "save_encoder",
    "CaseStore",
    "CohortDataset",
    "case_tensor",
    "pad_to_multiple",
    "pretrain",
]
