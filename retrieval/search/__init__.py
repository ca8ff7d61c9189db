"""Search: rank the catalogue against a query vector inside its nearest K-means cluster(s).

:mod:`.query` is the one entry point from a photo (shop, API, evaluation); :mod:`.ranking`
ranks a vector in one snapshot; :mod:`.rerank` puts the predicted category first;
:mod:`.clustering` fits and switches K-means runs; :mod:`.table` holds the search table's SQL.
"""

from retrieval.search.query import more_like_this, search_image
from retrieval.search.ranking import (
    Hit,
    SearchResult,
    SearchUnavailable,
    one_per_product,
    one_snapshot,
    require_active_model,
    search_vectors,
)

__all__ = [
    "Hit",
    "SearchResult",
    "SearchUnavailable",
    "more_like_this",
    "one_per_product",
    "one_snapshot",
    "require_active_model",
    "search_image",
    "search_vectors",
]
