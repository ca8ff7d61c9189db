"""Search by photo or by a garment: image (or stored vector) -> ranked garments; the one entry
point for the shop, the API and evaluation.
"""

from __future__ import annotations

import time

import numpy as np
from django.conf import settings

from retrieval.models import Garment, GarmentFeature
from retrieval.search.ranking import (
    SearchResult,
    SearchUnavailable,
    require_active_model,
    search_vectors,
)


def search_image(
    *,
    image,
    top: int = 10,
    mode: str = "fused",
    category_id: int | None = None,
    probes: int | None = None,
    include_hidden: bool = False,
) -> SearchResult:
    """Search by photo. image: a PIL image (RGB) or bytes.

    Runs the CNN once, as the paper does, unless RETRIEVAL_QUERY_CROP / RETRIEVAL_QUERY_FLIP
    add a pass each (:meth:`retrieval.features.FeatureExtractor.extract_query`). With
    RETRIEVAL_RERANK=category, fused and exact searches list the predicted category's garments
    first (:mod:`retrieval.search.rerank`; a departure from the paper).
    """
    from retrieval import images
    from retrieval.features import extractor_for

    started = time.perf_counter()
    model = require_active_model()
    if isinstance(image, bytes | bytearray):
        image = images.open_image(bytes(image), max_pixels=settings.RETRIEVAL_MAX_PIXELS)
    out = extractor_for(backbone=model.backbone, model=model).extract_query(
        [image], flip=settings.RETRIEVAL_QUERY_FLIP, crop=settings.RETRIEVAL_QUERY_CROP
    )
    fused = out["fused"][0]
    if settings.RETRIEVAL_RERANK == "category" and mode != "deep" and category_id is None:
        from retrieval.search import rerank

        result = rerank.search_reranked(
            fused=fused,
            probs=out["probs"][0],
            model=model,
            top=top,
            probes=probes,
            clustered=mode == "fused",
            min_confidence=settings.RETRIEVAL_RERANK_MIN_CONFIDENCE,
            include_hidden=include_hidden,
        )
    else:
        result = search_vectors(
            fused=fused,
            model=model,
            top=top,
            mode=mode,
            probes=probes,
            category_id=category_id,
            include_hidden=include_hidden,
        )
    probs = np.asarray(out["probs"][0]) if len(out.get("probs", ())) else np.zeros(0)
    if len(probs) and len(probs) == len(model.classes or ()):
        from retrieval.search.rerank import predicted_category

        result.predicted_category, result.confidence = predicted_category(model=model, probs=probs)
    result.took_ms = (time.perf_counter() - started) * 1000.0
    return result


def more_like_this(
    *,
    garment: Garment,
    top: int = 10,
    mode: str = "fused",
    probes: int | None = None,
    include_hidden: bool = False,
) -> SearchResult:
    """Garments similar to an indexed one, from its stored vectors (no CNN pass)."""
    model = require_active_model()
    row = GarmentFeature.objects.filter(garment=garment, model=model).values_list("fused").first()
    if row is None:
        raise SearchUnavailable(f"garment {garment.sku} is not indexed under the active model")
    return search_vectors(
        fused=np.asarray(row[0], dtype=np.float32),
        model=model,
        top=top,
        mode=mode,
        probes=probes,
        exclude_garment_ids=(garment.pk,),
        include_hidden=include_hidden,
    )
