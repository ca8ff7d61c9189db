"""The read side: one search function behind the web page, the API and evaluation.

image -> fused feature -> nearest K-means centroid(s) -> pgvector ranking restricted to those
clusters -> top N with score = -L2 distance (0 = identical), as in the paper. If the probed
clusters hold fewer than N eligible garments, the next nearest clusters are added until N are
found or the catalogue is exhausted (completeness). All statements of one search run in one
REPEATABLE READ snapshot, so a K-means switch committing mid-search is never half seen.

The clustered scan reads the active run's partition of ``SearchRow`` (rows in cluster order,
vectors in half precision: half the pages of float32) and keeps the nearest candidates; those
are re-ranked with the float32 vectors of ``GarmentFeature``, so the distances returned and
their order are exact. Departure from the paper (which ranks a cluster in full precision):
the half-precision scan only chooses candidates, and a candidate list too short to prove the
exact top N (``searchtable.provably_complete``) is widened, so the answer equals the exact
ranking of the probed clusters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from retrieval.models import FeatureModel, Garment
from retrieval.search import table as searchtable
from retrieval.search.filters import SearchFilters
from retrieval.selectors import active_model
from retrieval.spec import MODES


class SearchUnavailable(RuntimeError):
    """No trained, active feature model yet: nothing can be searched."""


@dataclass(frozen=True)
class Hit:
    garment_id: int
    distance: float

    @property
    def score(self) -> float:
        return -self.distance


@dataclass
class SearchResult:
    hits: list[Hit]
    mode: str
    model: str
    clusters: list[int] = field(default_factory=list)
    took_ms: float = 0.0
    # The head's category for a query photo and its probability (None: no photo, no head).
    predicted_category: str | None = None
    confidence: float | None = None

    def garments(self) -> list[tuple[Garment, float]]:
        """(garment, score) in rank order, with categories loaded in one query."""
        ids = [h.garment_id for h in self.hits]
        by_id = Garment.objects.select_related("category").in_bulk(ids)
        return [(by_id[h.garment_id], h.score) for h in self.hits if h.garment_id in by_id]


def _vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{float(v):.7g}" for v in vector) + "]"


def require_active_model() -> FeatureModel:
    """The active feature model; SearchUnavailable when none is (nothing trained yet)."""
    model = active_model()
    if model is None:
        raise SearchUnavailable(
            "no trained feature model is active yet: import a catalogue and train one "
            "(manage.py train_model)"
        )
    return model


@contextmanager
def one_snapshot() -> Iterator[None]:
    """Run the statements of the block in one REPEATABLE READ, READ ONLY transaction: they
    all read the database as of the block's first query (a K-means switch committing
    meanwhile is either wholly seen or not at all).

    ``SET TRANSACTION`` must be the transaction's first statement, so it is sent first, before
    any query of the block. Nested blocks (a re-ranked search runs several searches in one
    snapshot) join the outer one; inside a caller's own transaction (an atomic block: tests,
    a view under ATOMIC_REQUESTS) the isolation level can no longer be set, so the statements
    run in that transaction at its level (READ COMMITTED by default: one snapshot per
    statement, as before).
    """
    outer_transaction = connection.in_atomic_block
    with transaction.atomic():
        if not outer_transaction:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def search_vectors(
    *,
    fused: np.ndarray,
    model: FeatureModel,
    top: int = 10,
    mode: str = "fused",
    probes: int | None = None,
    category_id: int | None = None,
    exclude_garment_ids: tuple[int, ...] = (),
    clustered: bool = True,
    include_hidden: bool = False,
    filters: SearchFilters | None = None,
    one_per_product: bool = True,
) -> SearchResult:
    """Rank the catalogue against one query vector.

    fused: (542,) float32, the query's fused vector (its first 512 values are the deep part).
    mode: "fused" (the paper's fused feature), "deep" (the 512-d deep-only baseline), or
    "exact" (= fused with clustered=False). clustered: restrict to the nearest K-means
    cluster(s) as the paper does; False ranks the whole catalogue exactly. include_hidden:
    also rank garments shoppers do not see (inactive category, not ready): for staff.
    one_per_product: of garments staff merged into one product (``Garment.product_group``),
    only the best-scored is listed; the ranking is widened so that ``top`` are still found.
    filters: the shopper's gender, colour, season, usage and category, applied inside the
    cluster scan (clusters are added until N garments pass them, so the top N is complete);
    category_id: a category on top of them (the re-rank's predicted category).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == "exact":
        mode, clustered = "fused", False
    if top < 1:
        raise ValueError("top must be at least 1")
    probes = probes or settings.RETRIEVAL_PROBES
    started = time.perf_counter()
    deep_dims = len(fused) - 30
    column = "deep" if mode == "deep" else "fused"
    vector = fused[:deep_dims] if mode == "deep" else fused
    query = _vector_literal(vector)
    conditions, params = searchtable.shopper_filters(
        include_hidden=include_hidden,
        category_id=category_id,
        exclude_garment_ids=exclude_garment_ids,
        filters=filters,
    )

    with one_snapshot(), connection.cursor() as cursor:
        run_id, labels = None, []
        if clustered:
            cursor.execute(searchtable.LOCK_FOR_SEARCH_SQL)  # before the snapshot, see there
            run_id, labels = _clusters_by_distance(cursor, model=model, query=query, space=mode)

        def rank(n: int) -> tuple[list[tuple[int, float]], list[int]]:
            if not labels:  # exact mode, or no K-means run yet: rank everything
                cursor.execute(
                    searchtable.EXACT_SQL.format(column=column, filters=conditions),
                    {**params, "q": query, "top": n, "model": model.pk},
                )
                return cursor.fetchall(), []
            found, probed, _ = searchtable.clustered_search(
                cursor,
                query=query,
                query_norm=float(np.linalg.norm(vector.astype(np.float64))),
                column=column,
                run_id=run_id,
                labels=labels,
                probes=probes,
                top=n,
                filters=conditions,
                params=params,
                # Chosen filters are selective: most of a cluster's nearest rows fail them.
                filter_in_scan=category_id is not None or bool(filters),
            )
            return found, probed

        wanted = top
        rows, used = rank(wanted)
        while one_per_product:
            kept = _one_per_product(cursor, rows)
            # Done when the page is full, or the ranking ran out of garments.
            if len(kept) >= top or len(rows) < wanted:
                rows = kept[:top]
                break
            wanted += top + (len(rows) - len(kept))
            rows, used = rank(wanted)
    return SearchResult(
        hits=[Hit(gid, float(d)) for gid, d in rows],
        mode=mode,
        model=model.name,
        clusters=used,
        took_ms=(time.perf_counter() - started) * 1000.0,
    )


def one_per_product(hits: list[Hit]) -> list[Hit]:
    """Hits (nearest first) without the later garments of a merged product group."""
    with connection.cursor() as cursor:
        kept = {gid for gid, _ in _one_per_product(cursor, [(h.garment_id, 0.0) for h in hits])}
    return [h for h in hits if h.garment_id in kept]


def _one_per_product(
    cursor: CursorWrapper, rows: list[tuple[int, float]]
) -> list[tuple[int, float]]:
    """``rows`` (garment id, distance), nearest first, without the later garments of a product
    group staff merged (the nearest, i.e. best-scored, of each group stays). One indexed
    lookup of the listed ids (in the search's snapshot); nothing to do for most searches."""
    if not rows:
        return rows
    cursor.execute(searchtable.PRODUCT_GROUPS_SQL, [[gid for gid, _ in rows]])
    group_of = dict(cursor.fetchall())
    if not group_of:
        return rows
    seen: set[int] = set()
    kept = []
    for gid, distance in rows:
        group = group_of.get(gid)
        if group is not None:
            if group in seen:
                continue
            seen.add(group)
        kept.append((gid, distance))
    return kept


def _clusters_by_distance(
    cursor, *, model: FeatureModel, query: str, space: str
) -> tuple[int | None, list[int]]:
    """The active run of a space and its cluster labels, nearest centroid first
    ((None, []) without a run)."""
    cursor.execute(searchtable.CLUSTERS_SQL, [model.pk, space, query])
    rows = cursor.fetchall()
    if not rows:
        return None, []
    return rows[0][0], [label for _, label in rows]
