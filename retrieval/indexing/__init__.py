"""Indexing: claim garments, extract and store their vectors, queue the work, recover it.

:mod:`.extraction` runs the CNN (through :mod:`retrieval.features`) and stores the CNN cache
and the searchable vectors; :mod:`.queue` queues that work after commit and re-queues what was
lost (the recovery sweep).
"""

from retrieval.indexing.extraction import (
    INDEX_CHUNK,
    IndexResult,
    claim_garments,
    current_backbone,
    ensure_backbone_features,
    ensure_example_features,
    extract_and_store,
    index_garments,
    store_backbone_features,
    store_garment_features,
    wait_for_garments,
)
from retrieval.indexing.queue import (
    enqueue_indexing,
    mark_for_reindex,
    requeue_stuck_garments,
)

__all__ = [
    "INDEX_CHUNK",
    "IndexResult",
    "claim_garments",
    "current_backbone",
    "enqueue_indexing",
    "ensure_backbone_features",
    "ensure_example_features",
    "extract_and_store",
    "index_garments",
    "mark_for_reindex",
    "requeue_stuck_garments",
    "store_backbone_features",
    "store_garment_features",
    "wait_for_garments",
]
