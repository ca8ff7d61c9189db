"""The process-wide feature extractor configured by settings, for a backbone and a model's head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings

from retrieval.features.extractor import FeatureExtractor, get_extractor
from retrieval.spec import is_tuned, tuned_weights_file

if TYPE_CHECKING:  # the features package works without Django apps loaded (scripts, bench)
    from retrieval.models import FeatureModel


def extractor_for(*, backbone: str, model: FeatureModel | None = None) -> FeatureExtractor:
    """The process-wide feature extractor for a backbone and a model's head (loaded once).

    A fine-tuned backbone key loads its weights from ``RETRIEVAL_MODELS_DIR``
    (:func:`retrieval.spec.tuned_weights_file`).
    """
    kwargs: dict = {}
    if model is not None:
        kwargs = {
            "head_path": str(model.head_path) if model.head_file else None,
            "colour_variant": model.colour_variant,
            "colour_weight": model.colour_weight,
            "normalize_deep": model.normalize_deep,
        }
    return get_extractor(
        backbone=backbone,
        weights_path=settings.RETRIEVAL_BACKBONE_WEIGHTS,
        device=None if settings.RETRIEVAL_DEVICE == "auto" else settings.RETRIEVAL_DEVICE,
        precision=settings.RETRIEVAL_PRECISION,
        max_pixels=settings.RETRIEVAL_MAX_PIXELS,
        num_threads=settings.RETRIEVAL_TORCH_THREADS or None,
        freeze=settings.RETRIEVAL_FREEZE_GRAPH,
        tune_malloc=settings.RETRIEVAL_TUNE_MALLOC,
        tuned_path=tuned_path(backbone=backbone),
        **kwargs,
    )


def tuned_path(*, backbone: str) -> str | None:
    """A fine-tuned backbone's weights file (absolute), None for an ImageNet backbone."""
    if not is_tuned(backbone):
        return None
    return str(settings.RETRIEVAL_MODELS_DIR / tuned_weights_file(backbone))
