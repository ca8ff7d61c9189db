"""Category-aware re-rank: the head's own category prediction orders the results.

A departure from the paper, selectable with ``RETRIEVAL_RERANK`` (``none`` = the paper's plain
ranking by fused distance). The head's FC2 already classifies the photo; with ``category``,
the garments of the predicted category come first (nearest first, found through the same
cluster search, widened until N of them are found), then the rest of the plain ranking. When
the predicted probability is below ``RETRIEVAL_RERANK_MIN_CONFIDENCE`` the plain ranking is
used. Measured in docs/benchmarks.md ("Evaluation"), on studio and on shoppers' photos.
"""

from __future__ import annotations

import time

import numpy as np

from retrieval import search
from retrieval.models import Category, FeatureModel


def predicted_category(*, model: FeatureModel, probs: np.ndarray) -> tuple[str, float]:
    """(category name, probability) of the most probable class. probs: ``(C,)`` float32."""
    index = int(np.argmax(probs))
    return str(model.classes[index]), float(probs[index])


def search_reranked(
    *,
    fused: np.ndarray,
    probs: np.ndarray,
    model: FeatureModel,
    top: int = 10,
    probes: int | None = None,
    clustered: bool = True,
    min_confidence: float = 0.0,
    exclude_garment_ids: tuple[int, ...] = (),
    include_hidden: bool = False,
) -> search.SearchResult:
    """Like :func:`retrieval.search.search_vectors` in fused mode, predicted category first.

    fused: ``(542,)`` float32 query vector; probs: ``(C,)`` float32, the head's softmax for the
    query (``C = len(model.classes)``). Scores stay ``-distance``, so after the predicted
    category's garments they may rise again.
    """
    started = time.perf_counter()
    common = {
        "fused": fused,
        "model": model,
        "mode": "fused",
        "probes": probes,
        "clustered": clustered,
        "include_hidden": include_hidden,
    }
    category_id = None
    if len(probs) == len(model.classes or ()):
        name, confidence = predicted_category(model=model, probs=probs)
        if confidence >= min_confidence:
            category_id = Category.objects.filter(name=name).values_list("id", flat=True).first()
    if category_id is None:
        return search.search_vectors(top=top, exclude_garment_ids=exclude_garment_ids, **common)
    first = search.search_vectors(
        top=top, category_id=category_id, exclude_garment_ids=exclude_garment_ids, **common
    )
    hits, clusters = list(first.hits), list(first.clusters)
    if len(hits) < top:
        rest = search.search_vectors(
            top=top - len(hits),
            exclude_garment_ids=(*exclude_garment_ids, *(h.garment_id for h in hits)),
            **common,
        )
        hits += rest.hits
        clusters += [c for c in rest.clusters if c not in clusters]
    return search.SearchResult(
        hits=hits,
        mode="fused",
        model=model.name,
        clusters=clusters,
        took_ms=(time.perf_counter() - started) * 1000.0,
    )
