"""SQL of the search table (one partition per K-means run): writing a run, searching it.

Django-free on purpose: ``retrieval.search.clustering`` and ``retrieval.search`` run these functions
on a Django cursor, and ``bench/bench_search_db.py`` runs the very same statements on a
psycopg cursor (client-side binding, as Django does) at 100k and 1M rows. Table names are
the Django models' (checked by tests/search/test_search.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from retrieval.search.filters import SearchFilters

SEARCH_TABLE = "retrieval_searchrow"
FEATURE_TABLE = "retrieval_garmentfeature"
CENTROID_TABLE = "retrieval_clustercentroid"
RUN_TABLE = "retrieval_clusterrun"
GARMENT_TABLE = "retrieval_garment"
CATEGORY_TABLE = "retrieval_category"

# Rows per INSERT when a partition is written (bounded statement size and memory).
WRITE_CHUNK = 20_000

# Unit roundoff of half precision (10 stored mantissa bits, rounded: 2**-11; taken as 2**-10
# to cover any rounding mode). A halfvec holds each component within that relative error.
HALF_EPS = 2.0**-10


def partition_name(run_id: int) -> str:
    return f"{SEARCH_TABLE}_r{int(run_id)}"


# --------------------------------------------------------------------------- writing a run


def write_partition(
    cursor, *, run_id: int, model_id: int, column: str, feature_ids: np.ndarray, labels
) -> None:
    """Create and fill the (not yet attached) partition of a run, rows in cluster order.

    ``labels[i]`` is the label of vector ``feature_ids[i]`` (GarmentFeature ids of the model);
    the model's vectors not in ``feature_ids`` (stored since the fit read them) get their
    nearest centroid of the run. ``column``: "fused" or "deep", the run's space.
    """
    part = partition_name(run_id)
    cursor.execute(
        f"CREATE TABLE {part} (LIKE {SEARCH_TABLE} INCLUDING STORAGE, "
        f"CONSTRAINT {part}_run CHECK (run_id = {int(run_id)}))"
    )
    # One INSERT per cluster (chunked): rows land in the heap in cluster order, without
    # sorting a million 1 kB rows in the database.
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_ids, sorted_labels = np.asarray(feature_ids)[order], labels[order]
    bounds = np.flatnonzero(np.diff(sorted_labels)) + 1
    for chunk_ids, chunk_labels in zip(
        np.split(sorted_ids, bounds), np.split(sorted_labels, bounds), strict=True
    ):
        if len(chunk_ids) == 0:
            continue
        label = int(chunk_labels[0])
        for start in range(0, len(chunk_ids), WRITE_CHUNK):
            cursor.execute(
                f"""
                INSERT INTO {part} (feature_id, run_id, cluster, scan_vector)
                SELECT f.id, %s, %s, f.{column}::halfvec FROM {FEATURE_TABLE} AS f
                WHERE f.id = ANY(%s) AND f.model_id = %s
                """,
                [run_id, label, chunk_ids[start : start + WRITE_CHUNK].tolist(), model_id],
            )
    # Vectors stored after the fit read them: label by nearest centroid (few rows, appended).
    # Inside a caller's transaction ON COMMIT has not dropped the previous space's table yet.
    cursor.execute("DROP TABLE IF EXISTS pg_temp.fitted_ids")
    cursor.execute("CREATE TEMP TABLE fitted_ids (id bigint PRIMARY KEY) ON COMMIT DROP")
    with cursor.copy("COPY fitted_ids (id) FROM STDIN") as copy:
        for pk in np.asarray(feature_ids).tolist():
            copy.write_row((pk,))
    cursor.execute("ANALYZE fitted_ids")
    cursor.execute(
        f"""
        INSERT INTO {part} (feature_id, run_id, cluster, scan_vector)
        SELECT f.id, %s, (SELECT c.label FROM {CENTROID_TABLE} AS c WHERE c.run_id = %s
                          ORDER BY c.centroid <-> f.{column} LIMIT 1),
               f.{column}::halfvec
        FROM {FEATURE_TABLE} AS f
        WHERE f.model_id = %s AND NOT EXISTS (SELECT 1 FROM fitted_ids AS n WHERE n.id = f.id)
        """,
        [run_id, run_id, model_id],
    )
    cursor.execute("DROP TABLE fitted_ids")
    # The same indexes as the parent's, so ATTACH adopts them instead of building them.
    cursor.execute(f"ALTER TABLE {part} ADD PRIMARY KEY (feature_id, run_id)")
    cursor.execute(f"CREATE INDEX ON {part} (cluster)")
    cursor.execute(f"ANALYZE {part}")


def attach_partition(cursor, *, run_id: int) -> None:
    """Attach a written partition. Takes SHARE UPDATE EXCLUSIVE on the parent (searches and
    inserts go on) and skips the scan of the rows thanks to the partition's CHECK."""
    cursor.execute(
        f"ALTER TABLE {SEARCH_TABLE} ATTACH PARTITION {partition_name(run_id)} "
        f"FOR VALUES IN ({int(run_id)})"
    )


# A garment's vectors into the partitions of its model's active runs (both spaces), labelled
# by nearest centroid of each run; replaces its earlier rows there (re-indexing).
# Parameters: model id, garment ids.
ADD_TO_ACTIVE_RUNS_SQL = f"""
INSERT INTO {SEARCH_TABLE} AS s (feature_id, run_id, cluster, scan_vector)
SELECT f.id, r.id,
       (SELECT c.label FROM {CENTROID_TABLE} AS c WHERE c.run_id = r.id
        ORDER BY c.centroid <-> v.vector LIMIT 1),
       v.vector::halfvec
FROM {FEATURE_TABLE} AS f
JOIN {RUN_TABLE} AS r ON r.model_id = f.model_id AND r.active
CROSS JOIN LATERAL (
    SELECT CASE WHEN r.space = 'deep' THEN f.deep ELSE f.fused END AS vector
) AS v
WHERE f.model_id = %s AND f.garment_id = ANY(%s)
ON CONFLICT (feature_id, run_id)
DO UPDATE SET cluster = EXCLUDED.cluster, scan_vector = EXCLUDED.scan_vector
"""


def detach_and_drop(cursor, *, run_id: int) -> None:
    """Drop a run's partition without blocking searches; not in a transaction block.

    ``DETACH ... CONCURRENTLY`` takes SHARE UPDATE EXCLUSIVE on the parent (searches and
    inserts go on), marks the partition as being detached, then waits for the transactions
    that may still read it (searches hold the parent from before their snapshot); the DROP
    then locks only the detached table. A detach interrupted half-way is finished with
    ``FINALIZE`` on the next call.
    """
    part = partition_name(run_id)
    cursor.execute(
        "SELECT i.inhdetachpending FROM pg_inherits AS i WHERE i.inhrelid = to_regclass(%s)",
        [part],
    )
    row = cursor.fetchone()
    if row is not None:
        mode = "FINALIZE" if row[0] else "CONCURRENTLY"
        cursor.execute(f"ALTER TABLE {SEARCH_TABLE} DETACH PARTITION {part} {mode}")
    cursor.execute(f"DROP TABLE IF EXISTS {part}")


# --------------------------------------------------------------------------- searching a run


def candidates_for(top: int) -> int:
    """Candidates of the half-precision scan re-ranked exactly, for N results: enough that
    the exactness check (:func:`provably_complete`) passes at once for almost every query
    (measured: docs/benchmarks_search.md); a failed check widens the list 4x."""
    return 2 * top + 20


# The clustered search: half-precision scan of the probed clusters of one run's partition
# (rows in cluster order), exact re-ranking of the candidates with the float32 vectors,
# shopper filters. Returns one row even when nothing passes the filters: (candidates,
# farthest candidate's approximate distance, garment id, exact distance).
# {column}: fused or deep; {filters}: SQL on g (garment), c (category) and f (vector),
# applied to the candidates; {scan_join}/{scan_filters}: empty, or the same joins and
# filters inside the scan (SCAN_JOIN), for a category filter (see clustered_search).
CLUSTER_SQL = f"""
WITH cand AS MATERIALIZED (
    SELECT s.feature_id, s.scan_vector <-> %(q)s::halfvec AS approx
    FROM {SEARCH_TABLE} AS s{{scan_join}}
    WHERE s.run_id = %(run)s AND s.cluster = ANY(%(clusters)s){{scan_filters}}
    ORDER BY approx
    LIMIT %(m)s
)
SELECT stats.n, stats.last, hit.garment_id, hit.d
FROM (SELECT count(*) AS n, max(approx) AS last FROM cand) AS stats
LEFT JOIN LATERAL (
    SELECT f.garment_id, f.{{column}} <-> %(q)s::vector AS d
    FROM cand
    JOIN {FEATURE_TABLE} AS f ON f.id = cand.feature_id
    JOIN {GARMENT_TABLE} AS g ON g.id = f.garment_id
    JOIN {CATEGORY_TABLE} AS c ON c.id = g.category_id
    WHERE true{{filters}}
    ORDER BY d
    LIMIT %(top)s
) AS hit ON true
ORDER BY hit.d
"""

SCAN_JOIN = f"""
    JOIN {FEATURE_TABLE} AS f ON f.id = s.feature_id
    JOIN {GARMENT_TABLE} AS g ON g.id = f.garment_id
    JOIN {CATEGORY_TABLE} AS c ON c.id = g.category_id"""

# Every vector of a model ranked exactly (exact mode, or no K-means run yet).
EXACT_SQL = f"""
SELECT f.garment_id, f.{{column}} <-> %(q)s::vector AS d
FROM {FEATURE_TABLE} AS f
JOIN {GARMENT_TABLE} AS g ON g.id = f.garment_id
JOIN {CATEGORY_TABLE} AS c ON c.id = g.category_id
WHERE f.model_id = %(model)s{{filters}}
ORDER BY d
LIMIT %(top)s
"""

# The active run of a model and space, its labels nearest centroid first.
CLUSTERS_SQL = f"""
SELECT r.id, c.label FROM {CENTROID_TABLE} AS c
JOIN {RUN_TABLE} AS r ON r.id = c.run_id
WHERE r.model_id = %s AND r.space = %s AND r.active
ORDER BY c.centroid <-> %s::vector
"""

# Taken before the snapshot of a clustered search: while the search holds the search table,
# the partition of the run it may read (the active one as of its snapshot) cannot be dropped
# (DETACH ... CONCURRENTLY waits for it; a drop in a transaction block locks the table
# exclusively first, see LOCK_FOR_DROP_SQL).
LOCK_FOR_SEARCH_SQL = f"LOCK TABLE ONLY {SEARCH_TABLE} IN ACCESS SHARE MODE"
# Before dropping a partition inside a transaction block (no CONCURRENTLY there): the parent
# first, as searches lock it (DROP alone would lock the partition first and could deadlock
# with a search that holds the parent and reads it).
LOCK_FOR_DROP_SQL = f"LOCK TABLE ONLY {SEARCH_TABLE} IN ACCESS EXCLUSIVE MODE"


# The product groups (Garment.product_group) of a search's listed garments: those staff merged
# as one product (partial index: only grouped garments are in it).
PRODUCT_GROUPS_SQL = f"""
SELECT id, product_group FROM {GARMENT_TABLE}
WHERE id = ANY(%s) AND product_group IS NOT NULL
"""


def shopper_filters(
    *,
    include_hidden: bool,
    category_id: int | None = None,
    exclude_garment_ids=(),
    filters: SearchFilters | None = None,
) -> tuple[str, dict]:
    """SQL conditions (on g, c, f) and their parameters for what a search may return.

    filters: the shopper's gender, colour, season, usage and category
    (:class:`retrieval.search.filters.SearchFilters`); ``category_id`` is a shorthand for a
    category alone (the re-rank's predicted category), applied on top of ``filters``.
    """
    # Only garments shoppers may see: indexed (ready) and in an active category.
    conditions = "" if include_hidden else " AND c.active AND g.status = 'ready'"
    params: dict = {}
    if filters:
        chosen, chosen_params = filters.sql(garment="g")
        conditions += chosen
        params.update(chosen_params)
    if category_id is not None:
        conditions += " AND g.category_id = %(category)s"
        params["category"] = category_id
    if exclude_garment_ids:
        conditions += " AND NOT (f.garment_id = ANY(%(exclude)s))"
        params["exclude"] = list(exclude_garment_ids)
    return conditions, params


def provably_complete(nth: float, last: float, query_norm: float) -> bool:
    """Whether no row left out of the candidate list can be nearer than the N-th hit.

    Every row outside the list has approximate (half-precision) distance >= ``last``, the
    farthest candidate's. A half-precision copy differs from the vector by at most
    HALF_EPS * |x| (the query's copy by HALF_EPS * |q|), and |x| <= |q| + d(x), so such a
    row's exact distance d satisfies d >= (last - 2 * HALF_EPS * |q|) / (1 + HALF_EPS). A
    small relative slack covers float32 summation in pgvector and subnormal halves.
    """
    bound = (last - 2.0 * HALF_EPS * query_norm) / (1.0 + HALF_EPS)
    return nth <= bound - 1e-4 * last - 1e-5


def cluster_scan(
    cursor,
    *,
    column: str,
    filters: str,
    params: dict,
    run_id: int,
    clusters: list[int],
    m: int,
    filter_in_scan: bool = False,
) -> tuple[int, float, list[tuple[int, float]]]:
    """One CLUSTER_SQL statement: (candidates found, farthest candidate's approximate
    distance, [(garment id, exact distance)] in exact order)."""
    sql = CLUSTER_SQL.format(
        column=column,
        filters=filters,
        scan_join=SCAN_JOIN if filter_in_scan else "",
        scan_filters=filters if filter_in_scan else "",
    )
    cursor.execute(sql, {**params, "run": run_id, "clusters": clusters, "m": m})
    rows = cursor.fetchall()
    n_cand, last = int(rows[0][0]), float(rows[0][1] or 0.0)
    return n_cand, last, [(gid, float(d)) for _, _, gid, d in rows if gid is not None]


def clustered_search(
    cursor,
    *,
    query: str,
    query_norm: float,
    column: str,
    run_id: int,
    labels: list[int],
    probes: int,
    top: int,
    filters: str = "",
    params: dict | None = None,
    filter_in_scan: bool = False,
) -> tuple[list[tuple[int, float]], list[int], int]:
    """The exact top ``top`` of the nearest clusters, widened until complete.

    labels: the run's clusters, nearest centroid first. Starts with ``probes`` clusters and
    the candidates of :func:`candidates_for`; widens the candidate list (4x) while it may
    hide a nearer row, and adds clusters (completeness) while the probed ones hold fewer
    than ``top`` rows that pass the filters. Returns (hits, clusters used, statements run).

    filter_in_scan: apply the filters to every row of the probed clusters (joins per row,
    like the shipped statement) rather than to the candidates only. For selective filters
    (a category): most of a cluster's nearest rows would fail them, and the candidate list
    would have to widen to most of the cluster. Hidden garments are few, so shoppers'
    default filters are cheaper on the candidates.
    """
    params = {**(params or {}), "q": query, "top": top}
    n_probe = min(probes, len(labels))
    m = candidates_for(top)
    statements = 0
    while True:
        used = labels[:n_probe]
        n_cand, last, hits = cluster_scan(
            cursor, column=column, filters=filters, params=params,
            run_id=run_id, clusters=used, m=m, filter_in_scan=filter_in_scan,
        )  # fmt: skip
        statements += 1
        exhausted = n_cand < m  # every row of the probed clusters was re-ranked
        if len(hits) >= top and (
            exhausted or provably_complete(hits[top - 1][1], last, query_norm)
        ):
            return hits, used, statements
        if not exhausted:  # more candidates of these clusters may rank above the N-th hit
            m *= 4
            continue
        if n_probe >= len(labels):
            return hits, used, statements
        # Completeness: the probed clusters hold too few garments that pass the filters.
        n_probe = min(len(labels), max(n_probe * 2, n_probe + 1))
