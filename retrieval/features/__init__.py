"""Features (Hou, He & Liu 2020): the only package that imports torch/torchvision.

Everything it returns is numpy or plain Python, so no other package handles tensors.
:mod:`.backbones` (CNN trunks), :mod:`.colour` and :mod:`.framing` (query centre crop) (numpy
only), :mod:`.head` (FC1/FC2), :mod:`.extractor` (image -> features), :mod:`.cpu` (CPU
speed-ups), :mod:`.configured` (the extractor that settings describe), :mod:`.finetune` (the
fine-tuned top of efficientnet_lite0, a backbone version of its own).
"""

from retrieval.features.backbones import (
    WEIGHTS_ENV,
    Backbone,
    BackboneUnavailable,
    TunedWeightsError,
    load_backbone,
    load_tuned_state,
    resolve_backbone,
)
from retrieval.features.colour import (
    CROP_MAX_AREA,
    activation_map,
    colour_feature,
    colour_positions,
    crop_box,
    fuse,
    pooled_rgb_at,
    srgb_to_lab,
)
from retrieval.features.configured import extractor_for, tuned_path
from retrieval.features.cpu import freeze_backbone, keep_freed_memory_for_reuse
from retrieval.features.extractor import ExtractedBatch, FeatureExtractor, get_extractor
from retrieval.features.finetune import (
    TapExtractor,
    TunedTop,
    new_tuned_key,
    save_tuned,
    train_top,
)
from retrieval.features.framing import (
    BORDER_MIN_FRACTION,
    CENTRE_BOX,
    border_fraction,
    border_is_plain,
)
from retrieval.features.head import (
    ClothingHead,
    auto_epochs,
    classify,
    deep_from_pooled,
    load_head,
    save_head,
    train_head,
)
from retrieval.spec import (
    BACKBONES,
    COLOUR_DIM,
    COLOUR_VARIANTS,
    DEEP_DIM,
    DEFAULT_COLOUR_VARIANT,
    DEFAULT_COLOUR_WEIGHT,
    DEFAULT_NORMALIZE_DEEP,
    FUSED_DIM,
    NUM_POSITIONS,
    POOLED_DIMS,
    QUERY_CROP_MODES,
)

__all__ = [
    "BACKBONES",
    "BORDER_MIN_FRACTION",
    "CENTRE_BOX",
    "COLOUR_DIM",
    "COLOUR_VARIANTS",
    "CROP_MAX_AREA",
    "DEEP_DIM",
    "DEFAULT_COLOUR_VARIANT",
    "DEFAULT_COLOUR_WEIGHT",
    "DEFAULT_NORMALIZE_DEEP",
    "FUSED_DIM",
    "NUM_POSITIONS",
    "POOLED_DIMS",
    "QUERY_CROP_MODES",
    "WEIGHTS_ENV",
    "Backbone",
    "BackboneUnavailable",
    "ClothingHead",
    "ExtractedBatch",
    "FeatureExtractor",
    "TapExtractor",
    "TunedTop",
    "TunedWeightsError",
    "activation_map",
    "auto_epochs",
    "border_fraction",
    "border_is_plain",
    "classify",
    "colour_feature",
    "colour_positions",
    "crop_box",
    "deep_from_pooled",
    "extractor_for",
    "freeze_backbone",
    "fuse",
    "get_extractor",
    "keep_freed_memory_for_reuse",
    "load_backbone",
    "load_head",
    "load_tuned_state",
    "new_tuned_key",
    "pooled_rgb_at",
    "resolve_backbone",
    "save_head",
    "save_tuned",
    "srgb_to_lab",
    "train_head",
    "train_top",
    "tuned_path",
]
