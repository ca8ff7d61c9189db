"""Category-aware re-rank: the head's own category prediction orders the results.

A departure from the paper, selectable with ``RETRIEVAL_RERANK`` (``none`` = the paper's plain
ranking by fused distance). The head's FC2 already classifies the photo; with ``category``,
the garments of the predicted category come first (nearest first, found through the same
cluster search, widened until N of them are found), then the rest of the plain ranking. When
the predicted probability is below ``RETRIEVAL_RERANK_MIN_CONFIDENCE`` the plain ranking is
used. Its statements run in one REPEATABLE READ snapshot, like a plain search's
(:func:`retrieval.search.one_snapshot`). Measured in docs/benchmarks.md ("Evaluation"), on
studio and on shoppers' photos.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from retrieval import search
from retrieval.models import Category, FeatureModel
from retrieval.search.filters import SearchFilters

#: Distance under which a garment is the query photo itself (float noise: an identical image
#: gives ~1e-6; the nearest distinct garments of a catalogue are ~0.1 apart, and a JPEG
#: re-encoded copy 0.05-0.4, measured on the test catalogue).
DUPLICATE_DISTANCE = 1e-3


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
    filters: SearchFilters | None = None,
) -> search.SearchResult:
    """Like :func:`retrieval.search.search_vectors` in fused mode, predicted category first.

    fused: ``(542,)`` float32 query vector; probs: ``(C,)`` float32, the head's softmax for the
    query (``C = len(model.classes)``). Order: the query photo itself if it is in the catalogue
    (distance <= DUPLICATE_DISTANCE), the predicted category's garments nearest first, then the
    plain ranking's others, all within the shopper's ``filters``. Scores stay ``-distance``,
    so they may rise again after the predicted category's garments.
    """
    started = time.perf_counter()
    common: dict[str, Any] = {
        "fused": fused,
        "model": model,
        "mode": "fused",
        "probes": probes,
        "clustered": clustered,
        "include_hidden": include_hidden,
        "filters": filters,
    }
    # One snapshot for all statements (the plain ranking, the category, the category's
    # ranking), as for a plain search: a K-means switch committing between them is not seen.
    with search.one_snapshot():
        # The paper's ranking first: it supplies the exact matches and fills the page.
        plain = search.search_vectors(top=top, exclude_garment_ids=exclude_garment_ids, **common)
        category_id = None
        if len(probs) == len(model.classes or ()):
            name, confidence = predicted_category(model=model, probs=probs)
            if confidence >= min_confidence:
                category_id = (
                    Category.objects.filter(name=name).values_list("id", flat=True).first()
                )
        if category_id is None:
            return plain
        # The query photo itself (a catalogue photo searched again) stays first whatever the
        # head predicts: an identical image must come back first with score 0 (issue #5).
        hits = [h for h in plain.hits if h.distance <= DUPLICATE_DISTANCE]
        clusters = list(plain.clusters)
        if len(hits) < top:
            first = search.search_vectors(
                top=top - len(hits),
                category_id=category_id,
                exclude_garment_ids=(*exclude_garment_ids, *(h.garment_id for h in hits)),
                **common,
            )
            hits += first.hits
            clusters += [c for c in first.clusters if c not in clusters]
        # A small predicted category: the plain ranking fills the page (it holds `top`
        # garments, so enough of them are not listed yet). Each list shows one garment per
        # merged product; across the two lists as well (in the same snapshot).
        seen = {h.garment_id for h in hits}
        hits = search.one_per_product(hits + [h for h in plain.hits if h.garment_id not in seen])
    hits = hits[:top]
    return search.SearchResult(
        hits=hits,
        mode="fused",
        model=model.name,
        clusters=clusters,
        took_ms=(time.perf_counter() - started) * 1000.0,
    )
