"""Encoders: a ProFound-compatible 3D ConvNeXt V2, weight loading, masked pre-training.

* :class:`ConvNeXtV2Encoder3D` and :data:`PRESETS` (:mod:`radiolens.models.convnext`)
* :func:`load_profound`, :func:`load_pretrained`, :func:`load_encoder`, :func:`save_encoder`,
  :func:`as_encoder` (:mod:`radiolens.models.profound`)
* :func:`case_tensor`, :class:`CohortDataset` (:mod:`radiolens.models.inputs`): the one place
  where a cohort case becomes a network input
* :func:`radiolens.models.pretrain.pretrain`: FCMAE-style masked pre-training
"""

from radiolens.models.convnext import PRESETS, ConvNeXtV2Encoder3D
from radiolens.models.profound import (
    EncoderAdapter,
    LoadReport,
    as_encoder,
    infer_preset,
    load_encoder,
    load_pretrained,
    load_profound,
    remap_profound_state_dict,
    save_encoder,
    weight_card,
)
from radiolens.models.inputs import CohortDataset, case_tensor, pad_to_multiple
from radiolens.models.pretrain import pretrain

__all__ = [
    "PRESETS",
    "ConvNeXtV2Encoder3D",
    "EncoderAdapter",
    "LoadReport",
    "as_encoder",
    "infer_preset",
    "load_encoder",
    "load_pretrained",
    "weight_card",
    "load_profound",
    "remap_profound_state_dict",
    "save_encoder",
    "CohortDataset",
    "case_tensor",
    "pad_to_multiple",
    "pretrain",
]
