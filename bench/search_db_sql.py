"""Shared by bench/bench_search_db.py and bench/search_db_switch.py: sizes, the SQL under test,
the log line."""

from __future__ import annotations

import time

import _pg

TOP = 20
MODEL_ID = 1
RESULTS = _pg.BENCH_DIR / "results" / "search.jsonl"

SEARCH_SQL = """
WITH r AS MATERIALIZED (
    SELECT garment_id, {col} <-> %(q)b AS d
    FROM {table}
    WHERE model_id = {model} AND cluster = ANY(%(c)s::int[])
    ORDER BY d LIMIT {top}
)
SELECT garment_id, d FROM r ORDER BY d
"""
GLOBAL_SQL = "SELECT garment_id, {col} <-> %(q)b AS d FROM {table} ORDER BY d LIMIT {top}"

# The shipped clustered statement (retrieval/search.py at commit 0adf4e3, before the search
# table): labels on retrieval_garmentfeature, shopper filters joined in. Parameters: query,
# model id, clusters, N.
OLD_PRODUCT_SQL = """
SELECT f.garment_id, f.fused <-> %s::vector AS d FROM retrieval_garmentfeature AS f
JOIN retrieval_garment AS g ON g.id = f.garment_id
JOIN retrieval_category AS c ON c.id = g.category_id
WHERE f.model_id = %s AND f.cluster = ANY(%s) AND c.active AND g.status = 'ready'
ORDER BY d LIMIT %s
"""

# The completeness fallback in one statement: walk the clusters in centroid-distance order
# (%(order)s, computed by the app), counting at most TOP rows of each through the btree, and
# keep going past the first %(probes)s clusters until TOP rows are available.
COMPLETE_SQL = """
WITH RECURSIVE pick(i, cluster, have) AS (
    SELECT 1, (%(order)s::int[])[1],
           (SELECT count(*) FROM (SELECT 1 FROM {table} WHERE model_id = {model}
                                  AND cluster = (%(order)s::int[])[1] LIMIT {top}) x)
  UNION ALL
    SELECT p.i + 1, (%(order)s::int[])[p.i + 1],
           p.have + (SELECT count(*) FROM (SELECT 1 FROM {table} WHERE model_id = {model}
                                  AND cluster = (%(order)s::int[])[p.i + 1] LIMIT {top}) x)
    FROM pick p
    WHERE (p.i < %(probes)s OR p.have < {top}) AND p.i < cardinality(%(order)s::int[])
)
SELECT garment_id, {col} <-> %(q)b AS d
FROM {table}
WHERE model_id = {model} AND cluster = ANY(ARRAY(SELECT cluster FROM pick))
ORDER BY d LIMIT {top}
"""

# The same with the cluster sizes passed in (aligned with %(order)s; the app has them from the
# active ClusterRun): no table access to decide which clusters to read. Preferred: the
# recursive version's "LIMIT 20" count is planned as a Seq Scan with early exit, which on a
# cluster-ordered table reads everything up to that cluster's pages (see the results).
COMPLETE_SIZES_SQL = """
WITH o AS (
    SELECT u.cluster, u.ord, sum(u.n) OVER (ORDER BY u.ord) - u.n AS before
    FROM unnest(%(order)s::int[], %(sizes)s::int[]) WITH ORDINALITY AS u(cluster, n, ord)
)
SELECT garment_id, {col} <-> %(q)b AS d
FROM {table}
WHERE model_id = {model}
  AND cluster = ANY(ARRAY(SELECT cluster FROM o WHERE ord <= %(probes)s OR before < {top}))
ORDER BY d LIMIT {top}
"""


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)
