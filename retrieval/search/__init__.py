"""Search: rank the catalogue against a query vector inside its nearest K-means cluster(s).

:mod:`.query` is the one entry point from a photo (shop, API, evaluation); :mod:`.ranking`
ranks a vector in one snapshot; :mod:`.rerank` puts the predicted category first;
:mod:`.clustering` fits and switches K-means runs; :mod:`.table` holds the search table's SQL.
:mod:`.filters` holds the shopper filters every search and list takes, :mod:`.facets` their
counts, :mod:`.keyword` the search by words.
"""

from retrieval.search import keyword
from retrieval.search.facets import Facet, FacetValue, facet_counts
from retrieval.search.filters import (
    FILTER_FIELDS,
    SearchFilters,
    UnknownFilterValue,
    forget_cached_values,
    resolve_filters,
)
from retrieval.search.query import (
    PhotoSearch,
    PredictedCategory,
    more_like_this,
    predicted_categories,
    search_image,
    search_photo,
    search_refined,
)
from retrieval.search.ranking import (
    Hit,
    SearchResult,
    SearchUnavailable,
    one_per_product,
    one_snapshot,
    require_active_model,
    search_vectors,
)
from retrieval.search.refine import FeedbackError, QueryWords

__all__ = [
    "FILTER_FIELDS",
    "Facet",
    "FacetValue",
    "FeedbackError",
    "Hit",
    "PhotoSearch",
    "PredictedCategory",
    "QueryWords",
    "SearchFilters",
    "SearchResult",
    "SearchUnavailable",
    "UnknownFilterValue",
    "facet_counts",
    "forget_cached_values",
    "keyword",
    "more_like_this",
    "one_per_product",
    "one_snapshot",
    "predicted_categories",
    "require_active_model",
    "resolve_filters",
    "search_image",
    "search_photo",
    "search_refined",
    "search_vectors",
]
