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
from retrieval.evaluation.promotion import (
    Comparison,
    PromotionDecision,
    decide,
    evaluate_and_promote,
    train_and_promote,
)
from retrieval.evaluation.queries import extract_queries, read_query_set
from retrieval.evaluation.reports import (
    ReadableReport,
    describe_metric,
    queue_evaluation,
    readable_report,
    run_evaluation,
)

__all__ = [
    "GRID_MODES",
    "GRID_PROBES",
    "GRID_WEIGHTS",
    "PIPELINES",
    "Comparison",
    "Labelled",
    "MemoryIndex",
    "PromotionDecision",
    "ReadableReport",
    "decide",
    "describe_metric",
    "evaluate_and_promote",
    "extract_queries",
    "precision_at",
    "queue_evaluation",
    "read_query_set",
    "readable_report",
    "run_evaluation",
    "run_grid",
    "summarise",
    "train_and_promote",
]
