"""Retrieval quality on the catalogue: metrics, query sets, reports, the parameter grid."""

from retrieval.evaluation.grid import (
    GRID_MODES,
    GRID_PROBES,
    GRID_WEIGHTS,
    PIPELINES,
    MemoryIndex,
    run_grid,
)
from retrieval.evaluation.metrics import Labelled, precision_at, summarise
from retrieval.evaluation.queries import extract_queries, read_query_set
from retrieval.evaluation.reports import queue_evaluation, run_evaluation

__all__ = [
    "GRID_MODES",
    "GRID_PROBES",
    "GRID_WEIGHTS",
    "PIPELINES",
    "Labelled",
    "MemoryIndex",
    "extract_queries",
    "precision_at",
    "queue_evaluation",
    "read_query_set",
    "run_evaluation",
    "run_grid",
    "summarise",
]
