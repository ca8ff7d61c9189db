"""Database side of one clustered search: schema/index designs, latency, recall, switches.

Runs against a private embedded PostgreSQL in var/bench/postgres (see bench/_pg.py), on
synthetic clustered 542-d "fused" vectors shaped like ours (uneven category sizes, deep
part L2-normalised, colour part ~0.3). Each timed query is the SQL alone: the query vector
and the probed cluster ids are computed beforehand, as the app does from the centroids.

    .venv/bin/python bench/bench_search_db.py --rows 100000 --clusters 141 --queries 300
    .venv/bin/python bench/bench_search_db.py --rows 1000000 --clusters 141 \
        --designs slim,half,part,hnsw,switch
    # the product's own statements (retrieval/searchtable.py), shipped design vs run partitions
    .venv/bin/python bench/bench_search_db.py --rows 1000000 --designs product --reuse

Results are appended, one JSON object per line, to var/bench/results/search.jsonl and
printed as a markdown table. Tables are dropped and recreated for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import _pg
import numpy as np
import psycopg
from pgvector import HalfVector

from retrieval.search import table as searchtable  # Django-free: the product's search-table SQL

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


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        t = time.perf_counter()
        self.ds = _pg.make_dataset(args.rows, args.clusters, seed=args.seed)
        self.n = args.rows
        self.k = args.clusters
        self.queries, self.src = _pg.make_queries(self.ds, args.queries, seed=args.seed + 1)
        self.sizes = np.bincount(self.ds.labels, minlength=self.k)
        self.order = _pg.cluster_order(self.queries, self.ds.centroids)
        self.sets = {p: _pg.probe_sets(self.order, self.sizes, p, TOP) for p in (1, 2, 3)}
        log(f"data: {self.n} rows, k={self.k}, {time.perf_counter() - t:.1f}s")
        self.gt_global, self.gt_cluster = self._ground_truth()
        self.url = _pg.start_server()
        self.conn = _pg.connect(self.url)
        self.info = {
            "machine": _pg.machine_info(),
            "server": _pg.server_info(self.conn),
            "cluster_sizes": {
                "min": int(self.sizes.min()),
                "median": int(np.median(self.sizes)),
                "max": int(self.sizes.max()),
                "query_weighted_mean": float((self.sizes**2).sum() / self.sizes.sum()),
            },
        }
        log(json.dumps(self.info))
        self.out = []

    # ----------------------------------------------------------------- ground truth

    def _ground_truth(self):
        a = self.args
        path = _pg.BENCH_DIR / f"gt_{a.rows}_{a.clusters}_{a.seed}_{a.queries}.npz"
        if path.exists():
            z = np.load(path)
            gt_global = (z["gi"], z["gd"])
            gt_cluster = {p: (z[f"ci{p}"], z[f"cd{p}"]) for p in (1, 2, 3)}
            return gt_global, gt_cluster
        t = time.perf_counter()
        gi, gd = _pg.exact_topk(self.ds.fused, self.queries, TOP)
        gt_cluster = {}
        for p in (1, 2, 3):
            allowed = [np.asarray(s) for s in self.sets[p]]
            gt_cluster[p] = _pg.exact_topk(
                self.ds.fused, self.queries, TOP, allowed=allowed, labels=self.ds.labels
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {f"ci{p}": v[0] for p, v in gt_cluster.items()}
        extra |= {f"cd{p}": v[1] for p, v in gt_cluster.items()}
        np.savez(path, gi=gi, gd=gd, **extra)
        log(f"ground truth {time.perf_counter() - t:.1f}s")
        return (gi, gd), gt_cluster

    # ----------------------------------------------------------------- helpers

    def record(self, **row) -> None:
        row = {"rows": self.n, "k": self.k, "tag": self.args.tag, **row}
        self.out.append(row)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(row) + "\n")
        log(json.dumps(row))

    def sql(self, text: str, *params) -> float:
        t = time.perf_counter()
        self.conn.execute(text, *params)
        return time.perf_counter() - t

    def sizes_of(self, table: str) -> dict:
        c = self.conn
        r = c.execute(
            """SELECT pg_relation_size(c.oid), coalesce(pg_relation_size(c.reltoastrelid), 0),
                      pg_indexes_size(c.oid), c.relpages, c.reltuples
               FROM pg_class c WHERE c.oid = %s::regclass""",
            (table,),
        ).fetchone()
        idx = c.execute(
            """SELECT i.relname, pg_relation_size(i.oid) FROM pg_index x
               JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = %s::regclass""",
            (table,),
        ).fetchall()
        return {
            "heap_mb": round(r[0] / 2**20, 1),
            "toast_mb": round(r[1] / 2**20, 1),
            "indexes_mb": round(r[2] / 2**20, 1),
            "rows_per_page": round(r[4] / max(1, r[3]), 2),
            "index_mb": {name: round(size / 2**20, 1) for name, size in idx},
        }

    def vec(self, i: int, half: bool):
        q = self.queries[i]
        return HalfVector(q) if half else q

    def explain(self, sql: str, params: dict) -> dict:
        plan = self.conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        plan = plan.fetchone()[0][0]
        nodes: list[str] = []

        def walk(node) -> None:
            label = node["Node Type"]
            if "Index Name" in node:
                label += f"({node['Index Name']})"
            nodes.append(label)
            for child in node.get("Plans", []):
                walk(child)

        walk(plan["Plan"])
        top = plan["Plan"]
        return {
            "plan": " > ".join(nodes),
            "buffers_hit": top.get("Shared Hit Blocks"),
            "buffers_read": top.get("Shared Read Blocks"),
            "workers": max([n.get("Workers Launched", 0) for n in _iter_nodes(plan["Plan"])]),
        }

    def measure(
        self,
        design: str,
        table: str,
        probes: int | None,
        settings: dict[str, str] | None = None,
        col: str = "fused",
        half: bool = False,
        sql: str | None = None,
        nq: int | None = None,
        note: str = "",
        **extra,
    ) -> dict:
        """Time the search over the query set; recall against in-cluster and global truth."""
        settings = {"statement_timeout": "'60s'", **(settings or {})}
        for name, value in settings.items():
            self.conn.execute(f"SET {name} = {value}")
        if sql is None:
            template = GLOBAL_SQL if probes is None else SEARCH_SQL
            sql = template.format(col=col, table=table, model=MODEL_ID, top=TOP)
        nq = min(nq or self.args.queries, self.args.queries)
        warm = min(self.args.warmup, nq)

        def params(i: int) -> dict:
            p = {"q": self.vec(i, half)}
            if probes is not None:
                p["c"] = self.sets[probes][i]
                p["order"] = [int(x) for x in self.order[i]]
                p["sizes"] = [int(self.sizes[x]) for x in self.order[i]]
                p["probes"] = probes
            return p

        for i in range(warm):
            self.conn.execute(sql, params(i)).fetchall()
        lat, found = [], []
        budget = time.perf_counter() + self.args.max_seconds
        for i in range(nq):
            p = params(i)
            t = time.perf_counter()
            rows = self.conn.execute(sql, p).fetchall()
            lat.append((time.perf_counter() - t) * 1000)
            found.append([int(r[0]) for r in rows])
            if time.perf_counter() > budget and i >= 30:
                break
        done = len(found)
        short = [i for i, f in enumerate(found) if len(f) < TOP]
        if short and os.environ.get("BENCH_DEBUG"):
            plan = self.conn.execute("EXPLAIN ANALYZE " + sql, params(short[0])).fetchall()
            log(
                "short result",
                short[0],
                params(short[0]).get("c"),
                "\n".join(r[0][:200] for r in plan),
            )
        x, q = self.ds.fused, self.queries[:done]
        gi, gd = self.gt_global
        rec_global = _pg.recall(found, gi[:done], gd[:done], TOP, x, q)
        rec_cluster = None
        if probes is not None:
            ci, cd = self.gt_cluster[probes]
            rec_cluster = _pg.recall(found, ci[:done], cd[:done], TOP, x, q)
        plan = self.explain(sql, params(0))
        for name in settings:
            self.conn.execute(f"RESET {name}")
        row = {
            "design": design,
            "table": table,
            "probes": probes,
            "settings": settings,
            "queries": done,
            "p50_ms": round(_pg.pct(lat, 50), 2),
            "p95_ms": round(_pg.pct(lat, 95), 2),
            "p99_ms": round(_pg.pct(lat, 99), 2),
            "mean_ms": round(float(np.mean(lat)), 2),
            "recall_cluster": None if rec_cluster is None else round(rec_cluster, 4),
            "recall_global": round(rec_global, 4),
            "min_rows": min(len(f) for f in found),
            "short_queries": len(short),
            "note": note,
            **plan,
            **extra,
        }
        self.record(kind="search", **row)
        return row

    # ----------------------------------------------------------------- loading

    def load(self, table: str, kind: str, limit: int | None = None) -> dict:
        """Create and COPY one table design; returns load/index timings and sizes."""
        c = self.conn
        n_rows = min(limit or self.n, self.n)
        c.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        if kind in ("wide", "wide_tt"):
            ddl = f"""CREATE TABLE {table} (
                id bigint NOT NULL, garment_id bigint NOT NULL, model_id bigint NOT NULL,
                version smallint NOT NULL, pooled vector NOT NULL,
                positions smallint[] NOT NULL, rgb double precision[] NOT NULL,
                deep vector(512) NOT NULL, fused vector(542) NOT NULL, cluster integer,
                cluster_run_id bigint, created_at timestamptz NOT NULL)"""
            if kind == "wide_tt":
                ddl += " WITH (toast_tuple_target = 8160)"
        elif kind in ("slim", "slim_toast"):
            ddl = f"""CREATE TABLE {table} (
                id bigint NOT NULL, garment_id bigint NOT NULL, model_id bigint NOT NULL,
                cluster integer, fused vector(542) NOT NULL, deep vector(512) NOT NULL)"""
        elif kind == "half":
            ddl = f"""CREATE TABLE {table} (
                id bigint NOT NULL, garment_id bigint NOT NULL, model_id bigint NOT NULL,
                cluster integer, fused halfvec(542) NOT NULL, deep halfvec(512) NOT NULL)"""
        else:
            raise ValueError(kind)
        c.execute(ddl)
        if kind in ("slim", "half"):
            c.execute(f"ALTER TABLE {table} ALTER COLUMN fused SET STORAGE PLAIN")
        rng = np.random.default_rng(7)
        batch = 20_000 if kind.startswith("wide") else 100_000
        t = time.perf_counter()
        for s in range(0, n_rows, batch):
            e = min(n_rows, s + batch)
            m = e - s
            ids = np.arange(s, e, dtype=np.int64)
            fused = self.ds.fused[s:e]
            cols = [
                ("id", "int8", ids),
                ("garment_id", "int8", ids),
                ("model_id", "int8", np.full(m, MODEL_ID, dtype=np.int64)),
                ("cluster", "int4", self.ds.labels[s:e]),
            ]
            vkind = "halfvec" if kind == "half" else "vector"
            cols += [("fused", vkind, fused), ("deep", vkind, fused[:, :512])]
            if kind.startswith("wide"):
                cols += [
                    ("version", "int2", np.ones(m, dtype=np.int16)),
                    ("pooled", "vector", rng.random((m, _pg.POOLED_DIM), dtype=np.float32)),
                    ("positions", "int2[]", rng.integers(0, 400, (m, 10)).astype(np.int16)),
                    ("rgb", "float8[]", rng.uniform(0, 255, (m, 30))),
                    ("cluster_run_id", "int8", np.ones(m, dtype=np.int64)),
                    ("created_at", "timestamptz", np.full(m, _pg.now_pg_us(), dtype=np.int64)),
                ]
            _pg.copy_binary(c, table, cols)
        copy_s = time.perf_counter() - t
        t = time.perf_counter()
        c.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
        if kind.startswith("wide"):
            c.execute(f"CREATE UNIQUE INDEX ON {table} (garment_id, model_id)")
        c.execute(f"CREATE INDEX {table}_model_cluster ON {table} (model_id, cluster)")
        index_s = time.perf_counter() - t
        t = time.perf_counter()
        c.execute(f"VACUUM (ANALYZE) {table}")
        vacuum_s = time.perf_counter() - t
        row = {
            "design": kind,
            "table": table,
            "copy_s": round(copy_s, 1),
            "btree_s": round(index_s, 1),
            "vacuum_s": round(vacuum_s, 1),
            **self.sizes_of(table),
        }
        self.record(kind="load", **row)
        return row

    def run_storage(self) -> None:
        """Which vectors end up out of line (TOAST) per design, and partition inheritance."""
        c = self.conn
        for kind in ("wide", "wide_tt", "slim_toast", "slim", "half"):
            table = f"st_{kind}"
            self.load(table, kind, limit=2000)
            cols = ["fused", "deep"] + (["pooled"] if kind.startswith("wide") else [])
            out = {}
            for col in cols:
                out[f"{col}_out_of_line"] = c.execute(
                    f"SELECT avg((pg_column_toast_chunk_id({col}) IS NOT NULL)::int)::float8"
                    f" FROM {table}"
                ).fetchone()[0]
            out["row_bytes_detoasted"] = c.execute(
                f"SELECT avg(pg_column_size(t.*))::int FROM {table} t"
            ).fetchone()[0]
            self.record(kind="storage", design=kind, **out)
            c.execute(f"DROP TABLE {table}")
        c.execute("DROP TABLE IF EXISTS st_parent CASCADE")
        c.execute(
            "CREATE TABLE st_parent (run_id int NOT NULL, fused vector(542) STORAGE PLAIN)"
            " PARTITION BY LIST (run_id)"
        )
        c.execute("CREATE TABLE st_p1 PARTITION OF st_parent FOR VALUES IN (1)")
        c.execute("CREATE TABLE st_p2 (LIKE st_parent INCLUDING STORAGE)")
        c.execute("CREATE TABLE st_p3 (LIKE st_parent)")
        storage = dict(
            c.execute(
                "SELECT attrelid::regclass::text, attstorage FROM pg_attribute"
                " WHERE attname = 'fused' AND attrelid IN"
                " ('st_parent'::regclass, 'st_p1'::regclass, 'st_p2'::regclass,"
                " 'st_p3'::regclass)"
            ).fetchall()
        )
        types = dict(
            c.execute(
                "SELECT typname, typstorage FROM pg_type WHERE typname IN ('vector', 'halfvec')"
            ).fetchall()
        )
        self.record(kind="storage", partition_attstorage=storage, type_storage=types)
        c.execute("DROP TABLE st_parent, st_p2, st_p3")

    def cluster_table(self, table: str) -> None:
        t = time.perf_counter()
        self.conn.execute(f"CLUSTER {table} USING {table}_model_cluster")
        self.conn.execute(f"VACUUM (ANALYZE) {table}")
        self.record(
            kind="cluster",
            table=table,
            seconds=round(time.perf_counter() - t, 1),
            **self.sizes_of(table),
        )

    def hnsw(self, table: str, m: int, efc: int, col: str = "fused", ops="vector_l2_ops"):
        name = f"{table}_hnsw"
        self.conn.execute(f"DROP INDEX IF EXISTS {name}")
        t = time.perf_counter()
        self.conn.execute(
            f"CREATE INDEX {name} ON {table} USING hnsw ({col} {ops}) "
            f"WITH (m = {m}, ef_construction = {efc})"
        )
        secs = time.perf_counter() - t
        size = self.conn.execute(f"SELECT pg_relation_size('{name}')").fetchone()[0]
        self.conn.execute(f"ANALYZE {table}")
        self.record(
            kind="hnsw_build",
            table=table,
            m=m,
            ef_construction=efc,
            seconds=round(secs, 1),
            index_mb=round(size / 2**20, 1),
        )

    # ----------------------------------------------------------------- designs

    def exact_set(self, design: str, table: str, half: bool = False, extra_probes=True) -> None:
        self.measure(design, table, 1, half=half)
        self.measure(design, table, 1, {"max_parallel_workers_per_gather": "0"}, half=half)
        if extra_probes:
            for p in (2, 3):
                self.measure(design, table, p, half=half)

    def global_exact(self, table: str, design: str) -> None:
        nq = self.args.global_queries
        self.measure(design, table, None, {"enable_indexscan": "off"}, nq=nq, note="exact global")
        self.measure(
            design,
            table,
            None,
            {"enable_indexscan": "off", "max_parallel_workers_per_gather": "0"},
            nq=nq,
            note="exact global",
        )

    def run_wide(self) -> None:
        self.load("wide", "wide")
        self.exact_set("wide (Django schema, vectors TOASTed)", "wide")
        if self.args.wide_hnsw:
            self.hnsw("wide", 16, 64)
            self.hnsw_set("wide", "wide + hnsw", probes=(1,))
            self.conn.execute("DROP INDEX wide_hnsw")
        self.conn.execute("DROP TABLE wide")

    def run_wide_tt(self) -> None:
        self.load("wide_tt", "wide_tt")
        self.exact_set("wide, toast_tuple_target=8160", "wide_tt", extra_probes=False)
        self.conn.execute("DROP TABLE wide_tt")

    def run_slim_toast(self) -> None:
        self.load("slim_toast", "slim_toast")
        self.exact_set("slim, default storage (TOASTed)", "slim_toast", extra_probes=False)
        self.conn.execute("DROP TABLE slim_toast")

    def run_slim(self) -> None:
        self.load("slim", "slim")
        self.exact_set("slim, fused PLAIN, arrival order", "slim")
        self.global_exact("slim", "slim")
        self.cluster_table("slim")
        self.exact_set("slim, fused PLAIN, CLUSTERed", "slim")

    def run_half(self) -> None:
        self.load("half", "half")
        self.cluster_table("half")
        self.exact_set("halfvec(542) PLAIN, CLUSTERed", "half", half=True)
        self.measure(
            "halfvec(542) PLAIN",
            "half",
            None,
            {"enable_indexscan": "off"},
            half=True,
            nq=self.args.global_queries,
            note="exact global",
        )
        self.conn.execute("DROP TABLE half")

    def run_part(self) -> None:
        """LIST partitions by cluster, each a heap of one cluster: exact = seq scan."""
        c = self.conn
        c.execute("DROP TABLE IF EXISTS part CASCADE")
        c.execute(
            """CREATE TABLE part (id bigint NOT NULL, garment_id bigint NOT NULL,
               model_id bigint NOT NULL, cluster integer NOT NULL,
               fused vector(542) STORAGE PLAIN NOT NULL) PARTITION BY LIST (cluster)"""
        )
        for k in range(self.k):
            c.execute(f"CREATE TABLE part_{k} PARTITION OF part FOR VALUES IN ({k})")
        t = time.perf_counter()
        c.execute(
            "INSERT INTO part SELECT id, garment_id, model_id, cluster, fused FROM slim"
            " ORDER BY cluster"
        )
        c.execute("VACUUM (ANALYZE) part")
        secs = time.perf_counter() - t
        heap = c.execute(
            "SELECT sum(pg_relation_size(inhrelid))::bigint FROM pg_inherits"
            " WHERE inhparent = 'part'::regclass"
        ).fetchone()[0]
        self.record(
            kind="load",
            design="part",
            table="part",
            insert_select_s=round(secs, 1),
            heap_mb=round(heap / 2**20, 1),
        )
        self.measure("LIST partition per cluster", "part", 1)
        self.measure(
            "LIST partition per cluster", "part", 1, {"max_parallel_workers_per_gather": "0"}
        )
        self.measure("LIST partition per cluster", "part", 3)
        c.execute("DROP TABLE part")

    def hnsw_set(self, table: str, design: str, probes=(1, 2, 3), half: bool = False) -> None:
        """HNSW searches. The btree on (model_id, cluster) is dropped meanwhile: with it the
        planner prefers btree + sort for a one-cluster filter (the exact method)."""
        self.conn.execute(f"DROP INDEX {table}_model_cluster")
        hn = {"enable_seqscan": "off"}
        it = {**hn, "hnsw.iterative_scan": "relaxed_order"}
        self.measure(design, table, 1, {**hn, "hnsw.ef_search": "40"}, half=half, note="no iter")
        for ef in self.args.ef_search:
            for p in probes:
                self.measure(design, table, p, {**it, "hnsw.ef_search": str(ef)}, half=half)
        # iterative scans stop after hnsw.max_scan_tuples (default 20000) visited tuples
        self.measure(
            design,
            table,
            1,
            {**it, "hnsw.ef_search": "40", "hnsw.max_scan_tuples": "100000"},
            half=half,
        )
        for ef in (40, 100):
            self.measure(
                design, table, None, {"hnsw.ef_search": str(ef)}, half=half, note="hnsw global"
            )
        self.conn.execute(f"CREATE INDEX {table}_model_cluster ON {table} (model_id, cluster)")
        self.conn.execute(f"ANALYZE {table}")

    def run_hnsw(self) -> None:
        for m, efc in self.args.hnsw:
            self.hnsw("slim", m, efc)
            self.hnsw_set("slim", f"slim + hnsw(m={m},efc={efc})")
        # exact search still available on the same table when index scans are off
        self.measure("slim CLUSTERed, hnsw present", "slim", 1, {"enable_indexscan": "off"})

    # ----------------------------------------------------------------- completeness

    def completeness(self) -> None:
        c = self.conn
        tiny = self.k + 1000
        src = self.ds.fused[:3]
        ids = np.arange(10**9, 10**9 + 3, dtype=np.int64)
        _pg.copy_binary(
            c,
            "slim",
            [
                ("id", "int8", ids),
                ("garment_id", "int8", ids),
                ("model_id", "int8", np.full(3, MODEL_ID, dtype=np.int64)),
                ("cluster", "int4", np.full(3, tiny, dtype=np.int32)),
                ("fused", "vector", src),
                ("deep", "vector", src[:, :512]),
            ],
        )
        q = src[0]
        order = [tiny, *(int(x) for x in _pg.cluster_order(q[None], self.ds.centroids)[0])]
        simple = SEARCH_SQL.format(col="fused", table="slim", model=MODEL_ID, top=TOP)
        n_simple = len(c.execute(simple, {"q": q, "c": [tiny]}).fetchall())
        full = COMPLETE_SQL.format(col="fused", table="slim", model=MODEL_ID, top=TOP)
        sized = COMPLETE_SIZES_SQL.format(col="fused", table="slim", model=MODEL_ID, top=TOP)
        sizes = [3, *(int(self.sizes[x]) for x in order[1:])]
        result = {}
        for name, sql in (("recursive_count", full), ("sizes_param", sized)):
            params = {"q": q, "order": order, "sizes": sizes, "probes": 1}
            rows = c.execute(sql, params).fetchall()
            lat = []
            for _ in range(50):
                t = time.perf_counter()
                c.execute(sql, params).fetchall()
                lat.append((time.perf_counter() - t) * 1000)
            result[f"{name}_rows"] = len(rows)
            result[f"{name}_tiny_p50_ms"] = round(_pg.pct(lat, 50), 2)
            result[f"{name}_tiny_rows_in_result"] = sum(int(r[0]) >= 10**9 for r in rows)
        c.execute("DELETE FROM slim WHERE id >= 1000000000")
        self.record(kind="completeness", tiny_cluster_rows=3, simple_rows=n_simple, **result)
        # the same statements on normal queries (fallback never needed): their overhead
        # The cluster list is only known at run time (ARRAY(subquery)), so the planner guesses
        # a large row count and may pick a parallel plan: measured with parallel workers on/off.
        for p in (1, 3):
            for name, sql in (("recursive count", full), ("sizes param", sized)):
                for workers in ("2", "0"):
                    self.measure(
                        f"slim CLUSTERed, completeness SQL ({name})",
                        "slim",
                        p,
                        {"enable_indexscan": "off", "max_parallel_workers_per_gather": workers},
                        sql=sql,
                    )

    # ----------------------------------------------------------------- cluster switch

    def new_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """What a fresh K-means writes: another fit (perturbed centroids) whose label ids are
        a permutation of the old ones, so nearly every row's label value changes.
        Returns (labels, centroids indexed by the new label ids)."""
        rng = np.random.default_rng(99)
        cent = self.ds.centroids + rng.standard_normal(self.ds.centroids.shape).astype(
            np.float32
        ) * (0.02 / np.sqrt(_pg.FUSED_DIM))
        labels = _pg.assign(self.ds.fused, cent)
        perm = rng.permutation(self.k).astype(np.int32)
        new_cent = np.empty_like(cent)
        new_cent[perm] = cent
        return perm[labels], new_cent

    def searcher(self, stop: threading.Event, lat: list, sql: str | None = None) -> None:
        """Run P=1 exact searches in a loop on a second connection; ``lat`` collects
        (start, end, ms, query index, ids)."""
        conn = _pg.connect(self.url)
        conn.execute("SET enable_indexscan = off")
        sql = sql or SEARCH_SQL.format(col="fused", table="slim", model=MODEL_ID, top=TOP)
        i = 0
        while not stop.is_set():
            qi = i % self.args.queries
            t = time.perf_counter()
            rows = conn.execute(sql, {"q": self.queries[qi], "c": self.sets[1][qi]}).fetchall()
            e = time.perf_counter()
            lat.append((t, e, (e - t) * 1000, qi, [int(r[0]) for r in rows]))
            i += 1
        conn.close()

    def snapshot_check(self, runs: list, since: float, until: float) -> dict:
        """Latency of the searches that ran in [since, until] and their recall against the
        exact answer under the labels they were meant to read (the old ones)."""
        during = [r for r in runs if r[0] >= since and r[1] <= until]
        if not during:
            return {"searches_during": 0}
        ci, cd = self.gt_cluster[1]
        idx = [r[3] for r in during]
        rec = _pg.recall(
            [r[4] for r in during], ci[idx], cd[idx], TOP, self.ds.fused, self.queries[idx]
        )
        ms = [r[2] for r in during]
        return {
            "searches_during": len(during),
            "search_p50_during_ms": round(_pg.pct(ms, 50), 2),
            "search_p99_during_ms": round(_pg.pct(ms, 99), 2),
            "recall_vs_old_labels_during": round(rec, 4),
        }

    def run_switch(self) -> None:
        c = self.conn
        new, new_centroids = self.new_labels()
        changed = float((new != self.ds.labels).mean())
        ids = np.arange(self.n, dtype=np.int64)
        c.execute("DROP TABLE IF EXISTS newlab")
        c.execute("CREATE TABLE newlab (id bigint NOT NULL, cluster integer NOT NULL)")
        _pg.copy_binary(c, "newlab", [("id", "int8", ids), ("cluster", "int4", new)])
        c.execute("ALTER TABLE newlab ADD PRIMARY KEY (id)")
        c.execute("ANALYZE newlab")
        has_hnsw = c.execute("SELECT to_regclass('slim_hnsw') IS NOT NULL").fetchone()[0]
        if has_hnsw and self.n <= self.args.update_hnsw_max_rows:
            # (i-a) the same UPDATE while the table has an HNSW index: every updated row is a
            # new index entry (not HOT, the btree column changes). Rolled back afterwards.
            limit = self.args.update_timeout
            c.execute(f"SET statement_timeout = '{limit}s'")
            t = time.perf_counter()
            outcome = "done, rolled back"
            try:
                with c.transaction(force_rollback=True):
                    c.execute(
                        "UPDATE slim s SET cluster = n.cluster FROM newlab n WHERE s.id = n.id"
                    )
            except psycopg.errors.QueryCanceled:
                outcome = f"cancelled by statement_timeout={limit}s"
            c.execute("RESET statement_timeout")
            self.record(
                kind="switch",
                method="UPDATE all rows in one transaction, hnsw index present",
                seconds=round(time.perf_counter() - t, 1),
                outcome=outcome,
            )
            c.execute("VACUUM slim")
        if has_hnsw:
            c.execute("DROP INDEX slim_hnsw")
        # (ii) assignment table keyed by (run_id, cluster), joined in the search
        c.execute("DROP TABLE IF EXISTS assign")
        c.execute(
            "CREATE TABLE assign (run_id integer NOT NULL, cluster integer NOT NULL,"
            " feature_id bigint NOT NULL)"
        )
        t = time.perf_counter()
        for run, lab in ((1, self.ds.labels), (2, new)):
            order = np.lexsort((ids, lab))
            _pg.copy_binary(
                c,
                "assign",
                [
                    ("run_id", "int4", np.full(self.n, run, dtype=np.int32)),
                    ("cluster", "int4", lab[order]),
                    ("feature_id", "int8", ids[order]),
                ],
            )
        c.execute("ALTER TABLE assign ADD PRIMARY KEY (run_id, cluster, feature_id)")
        c.execute("VACUUM (ANALYZE) assign")
        self.record(
            kind="switch",
            method="assignment table: COPY 2 runs + PK + vacuum",
            seconds=round(time.perf_counter() - t, 1),
            assign_mb=self.sizes_of("assign"),
        )
        join_sql = f"""
            WITH r AS MATERIALIZED (
                SELECT s.garment_id, s.fused <-> %(q)b AS d
                FROM assign a JOIN slim s ON s.id = a.feature_id
                WHERE a.run_id = 1 AND a.cluster = ANY(%(c)s::int[])
                ORDER BY d LIMIT {TOP})
            SELECT garment_id, d FROM r ORDER BY d"""
        self.measure(
            "assignment table join (run 1), slim CLUSTERed by old labels",
            "slim",
            1,
            {"enable_indexscan": "off"},
            sql=join_sql,
        )
        self.measure(
            "assignment table join (run 1), slim CLUSTERed by old labels",
            "slim",
            1,
            {"enable_bitmapscan": "off"},
            sql=join_sql,
            note="nested loop of index scans",
        )
        c.execute("DROP TABLE assign")

        # (iii) new partition per run, loaded in cluster order, attached, then switched
        c.execute("DROP TABLE IF EXISTS search CASCADE")
        c.execute(
            """CREATE TABLE search (run_id integer NOT NULL, cluster integer NOT NULL,
               feature_id bigint NOT NULL, garment_id bigint NOT NULL,
               fused vector(542) STORAGE PLAIN NOT NULL) PARTITION BY LIST (run_id)"""
        )
        c.execute("CREATE INDEX ON search (run_id, cluster)")
        c.execute("CREATE TABLE search_1 PARTITION OF search FOR VALUES IN (1)")
        c.execute(
            "INSERT INTO search SELECT 1, cluster, id, garment_id, fused FROM slim ORDER BY cluster"
        )
        c.execute("VACUUM (ANALYZE) search")
        stop = threading.Event()
        lat: list[float] = []
        part_sql = f"""
            WITH r AS MATERIALIZED (
                SELECT garment_id, fused <-> %(q)b AS d FROM search
                WHERE run_id = 1 AND cluster = ANY(%(c)s::int[])
                ORDER BY d LIMIT {TOP})
            SELECT garment_id, d FROM r ORDER BY d"""
        th = threading.Thread(target=self.searcher, args=(stop, lat, part_sql))
        th.start()
        time.sleep(1)
        t_build = t = time.perf_counter()
        c.execute(
            """CREATE TABLE search_2 (run_id integer NOT NULL, cluster integer NOT NULL,
               feature_id bigint NOT NULL, garment_id bigint NOT NULL,
               fused vector(542) STORAGE PLAIN NOT NULL)"""
        )
        fused_order = np.argsort(new, kind="stable")
        copy_t = time.perf_counter()
        for s in range(0, self.n, 100_000):
            part = fused_order[s : s + 100_000]
            _pg.copy_binary(
                c,
                "search_2",
                [
                    ("run_id", "int4", np.full(len(part), 2, dtype=np.int32)),
                    ("cluster", "int4", new[part]),
                    ("feature_id", "int8", ids[part]),
                    ("garment_id", "int8", ids[part]),
                    ("fused", "vector", self.ds.fused[part]),
                ],
            )
        copy_s = time.perf_counter() - copy_t
        c.execute("ALTER TABLE search_2 ADD CONSTRAINT run2 CHECK (run_id = 2)")
        c.execute("CREATE INDEX ON search_2 (run_id, cluster)")
        c.execute("VACUUM (ANALYZE) search_2")
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        c.execute("ALTER TABLE search ATTACH PARTITION search_2 FOR VALUES IN (2)")
        attach_ms = (time.perf_counter() - t) * 1000
        t_end = time.perf_counter()
        stop.set()
        th.join()
        self.record(
            kind="switch",
            method="new partition per run: COPY in cluster order + btree + vacuum + ATTACH",
            seconds=round(build_s, 1),
            copy_s=round(copy_s, 1),
            attach_ms=round(attach_ms, 1),
            **self.snapshot_check(lat, t_build, t_end),
            partition_mb=self.sizes_of("search_2"),
        )
        self.measure("search partitioned by run (run 1)", "search", 1, sql=part_sql)
        c.execute("DROP TABLE search")

        # (i) UPDATE every row's cluster in one transaction, searches running alongside
        before = self.sizes_of("slim")
        c.execute("DROP TABLE IF EXISTS newlab")
        c.execute("CREATE TABLE newlab (id bigint NOT NULL, cluster integer NOT NULL)")
        _pg.copy_binary(c, "newlab", [("id", "int8", ids), ("cluster", "int4", new)])
        c.execute("ALTER TABLE newlab ADD PRIMARY KEY (id)")
        c.execute("ANALYZE newlab")
        stop = threading.Event()
        lat = []
        th = threading.Thread(target=self.searcher, args=(stop, lat))
        th.start()
        time.sleep(1)
        t = time.perf_counter()
        with self.conn.transaction():
            c.execute("UPDATE slim s SET cluster = n.cluster FROM newlab n WHERE s.id = n.id")
            t_upd = time.perf_counter()
        upd_s = time.perf_counter() - t
        time.sleep(1)
        stop.set()
        th.join()
        after_commit = [r for r in lat if r[0] > t + upd_s]
        after = self.sizes_of("slim")
        self.record(
            kind="switch",
            method="UPDATE all rows in one transaction (btree only)",
            seconds=round(upd_s, 1),
            changed_fraction=round(changed, 3),
            update_statement_s=round(t_upd - t, 1),
            **self.snapshot_check(lat, t, t_upd),
            searches_after_commit=len(after_commit),
            before=before,
            after=after,
        )
        self.ds.labels = new
        self.sizes = np.bincount(new, minlength=self.k)
        # ground truth for the new labels, only for the P=1 in-cluster reference
        self.order = order = _pg.cluster_order(self.queries, new_centroids)
        self.sets = {p: _pg.probe_sets(order, self.sizes, p, TOP) for p in (1, 2, 3)}
        allowed = [np.asarray(s) for s in self.sets[1]]
        self.gt_cluster[1] = _pg.exact_topk(
            self.ds.fused, self.queries, TOP, allowed=allowed, labels=new
        )
        self.measure("after UPDATE, before VACUUM", "slim", 1, {"enable_indexscan": "off"}, nq=100)
        t = time.perf_counter()
        c.execute("VACUUM (ANALYZE) slim")
        self.record(
            kind="switch", method="VACUUM after UPDATE", seconds=round(time.perf_counter() - t, 1)
        )
        self.measure("after UPDATE + VACUUM", "slim", 1, {"enable_indexscan": "off"}, nq=100)
        c.execute("DROP TABLE newlab")

    # ----------------------------------------------------------------- the product's SQL

    def product_tables(self) -> None:
        """The product's tables as of the shipped design (migration 0002: labels on
        retrieval_garmentfeature, fused PLAIN, rows in arrival order) plus the search table
        of migration 0003, same names, so retrieval.searchtable's statements run unchanged.
        Kept between runs with --reuse (the 1M load takes minutes)."""
        c = self.conn
        meta = f"{self.n}:{self.k}:{self.args.seed}"
        if self.args.reuse:
            c.execute("CREATE TABLE IF NOT EXISTS bench_meta (what text PRIMARY KEY, v text)")
            row = c.execute("SELECT v FROM bench_meta WHERE what = 'product'").fetchone()
            if row and row[0] == meta:
                log("product tables reused")
                self.product_reset_runs()
                return
        for t in (
            searchtable.SEARCH_TABLE,
            searchtable.CENTROID_TABLE,
            searchtable.RUN_TABLE,
            searchtable.FEATURE_TABLE,
            searchtable.GARMENT_TABLE,
            searchtable.CATEGORY_TABLE,
        ):
            c.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
        c.execute(
            "CREATE TABLE retrieval_category (id bigint PRIMARY KEY, active boolean NOT NULL)"
        )
        # Garment rows carry ~300 bytes of other columns (sku, title, image, attributes ...).
        c.execute(
            """CREATE TABLE retrieval_garment (id bigint PRIMARY KEY, category_id bigint NOT NULL,
               status varchar(12) NOT NULL DEFAULT 'ready',
               other text NOT NULL DEFAULT repeat('x', 300))"""
        )
        c.execute(
            """CREATE TABLE retrieval_garmentfeature (id bigint PRIMARY KEY,
               garment_id bigint NOT NULL, model_id bigint NOT NULL, deep vector(512) NOT NULL,
               fused vector(542) NOT NULL, cluster integer, deep_cluster integer,
               created_at timestamptz NOT NULL DEFAULT now())"""
        )
        c.execute("ALTER TABLE retrieval_garmentfeature ALTER COLUMN fused SET STORAGE PLAIN")
        c.execute(
            """CREATE TABLE retrieval_clusterrun (id bigint PRIMARY KEY, model_id bigint NOT NULL,
               space varchar(8) NOT NULL, active boolean NOT NULL)"""
        )
        c.execute(
            """CREATE TABLE retrieval_clustercentroid (id bigserial PRIMARY KEY,
               run_id bigint NOT NULL, label integer NOT NULL, centroid vector NOT NULL)"""
        )
        # retrieval/migrations/0003_searchrow.py
        c.execute(
            """CREATE TABLE retrieval_searchrow (feature_id bigint NOT NULL,
               run_id bigint NOT NULL, cluster integer NOT NULL, scan_vector halfvec NOT NULL,
               CONSTRAINT retrieval_searchrow_pkey PRIMARY KEY (feature_id, run_id))
               PARTITION BY LIST (run_id)"""
        )
        c.execute("ALTER TABLE retrieval_searchrow ALTER COLUMN scan_vector SET STORAGE PLAIN")
        c.execute("CREATE INDEX retrieval_searchrow_cluster ON retrieval_searchrow (cluster)")
        ids = np.arange(self.n, dtype=np.int64)
        cats = np.arange(self.k, dtype=np.int64)
        with c.cursor().copy("COPY retrieval_category (id, active) FROM STDIN") as copy:
            for cat in cats.tolist():
                copy.write_row((cat, True))
        t = time.perf_counter()
        _pg.copy_binary(
            c,
            "retrieval_garment",
            [("id", "int8", ids), ("category_id", "int8", self.ds.gen_cluster.astype(np.int64))],
        )
        for s in range(0, self.n, 100_000):
            e = min(self.n, s + 100_000)
            _pg.copy_binary(
                c,
                "retrieval_garmentfeature",
                [
                    ("id", "int8", ids[s:e]),
                    ("garment_id", "int8", ids[s:e]),
                    ("model_id", "int8", np.full(e - s, MODEL_ID, dtype=np.int64)),
                    ("cluster", "int4", self.ds.labels[s:e]),
                    ("fused", "vector", self.ds.fused[s:e]),
                    ("deep", "vector", self.ds.fused[s:e, :512]),
                ],
            )
        copy_s = time.perf_counter() - t
        # The shipped indexes (0001): unique (garment, model), FK model, (model, cluster) ...
        c.execute("CREATE UNIQUE INDEX ON retrieval_garmentfeature (garment_id, model_id)")
        c.execute("CREATE INDEX ON retrieval_garmentfeature (model_id)")
        c.execute(
            "CREATE INDEX retrieval_gf_model_cluster ON retrieval_garmentfeature "
            "(model_id, cluster)"
        )
        c.execute("CREATE INDEX ON retrieval_garment (category_id)")
        c.execute("VACUUM (ANALYZE) retrieval_garment, retrieval_category")
        c.execute("VACUUM (ANALYZE) retrieval_garmentfeature")
        self.record(
            kind="load",
            design="product tables (shipped GarmentFeature, arrival order)",
            copy_s=round(copy_s, 1),
            garmentfeature=self.sizes_of("retrieval_garmentfeature"),
            garment=self.sizes_of("retrieval_garment"),
        )
        if self.args.reuse:
            c.execute(
                "INSERT INTO bench_meta VALUES ('product', %s) "
                "ON CONFLICT (what) DO UPDATE SET v = EXCLUDED.v",
                (meta,),
            )

    def product_reset_runs(self) -> None:
        c = self.conn
        for run_id in c.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'retrieval_searchrow'::regclass"
        ).fetchall():
            c.execute(f"DROP TABLE {run_id[0]}")
        c.execute("DELETE FROM retrieval_clustercentroid")
        c.execute("DELETE FROM retrieval_clusterrun")

    def product_add_run(self, run_id: int, centroids: np.ndarray) -> None:
        c = self.conn
        c.execute(
            "INSERT INTO retrieval_clusterrun VALUES (%s, %s, 'fused', false)", (run_id, MODEL_ID)
        )
        _pg.copy_binary(
            c,
            "retrieval_clustercentroid",
            [
                ("run_id", "int8", np.full(len(centroids), run_id, dtype=np.int64)),
                ("label", "int4", np.arange(len(centroids), dtype=np.int32)),
                ("centroid", "vector", centroids.astype(np.float32)),
            ],
        )

    def product_switch(self, run_id: int, labels: np.ndarray) -> dict:
        """clustering.switch_run's statements: one transaction (EXCLUSIVE on the vectors,
        write the partition in cluster order, attach, flip the active run), then VACUUM."""
        c = self.conn
        ids = np.arange(self.n, dtype=np.int64)
        t0 = time.perf_counter()
        with c.transaction():
            cur = c.cursor()
            cur.execute(f"LOCK TABLE {searchtable.FEATURE_TABLE} IN EXCLUSIVE MODE")
            searchtable.write_partition(
                cur, run_id=run_id, model_id=MODEL_ID, column="fused", feature_ids=ids,
                labels=labels,
            )  # fmt: skip
            t1 = time.perf_counter()
            searchtable.attach_partition(cur, run_id=run_id)
            t2 = time.perf_counter()
            cur.execute(
                "UPDATE retrieval_clusterrun SET active = false WHERE model_id = %s AND active",
                (MODEL_ID,),
            )
            cur.execute("UPDATE retrieval_clusterrun SET active = true WHERE id = %s", (run_id,))
        t3 = time.perf_counter()
        c.execute(f"VACUUM {searchtable.partition_name(run_id)}")
        t4 = time.perf_counter()
        return {
            "write_partition_s": round(t1 - t0, 1),
            "attach_ms": round((t2 - t1) * 1000, 1),
            "switch_transaction_s": round(t3 - t0, 1),
            "vacuum_s": round(t4 - t3, 1),
            "partition": self.sizes_of(searchtable.partition_name(run_id)),
        }

    def product_search(self, conn, design: str, qi: int) -> tuple[list[int], int]:
        """The database part of one search as search.search_vectors runs it: one REPEATABLE
        READ transaction; returns (garment ids, statements). ``design``: "new" (run
        partition, retrieval.searchtable) or "old" (the shipped statement, search.py at
        0adf4e3: labels on retrieval_garmentfeature, completeness by doubling the probes)."""
        query, norm = self.literals[qi]
        with conn.transaction():
            cur = conn.cursor()
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if design == "new":
                cur.execute(searchtable.LOCK_FOR_SEARCH_SQL)
            cur.execute(searchtable.CLUSTERS_SQL, [MODEL_ID, "fused", query])
            rows = cur.fetchall()
            run_id, labels = rows[0][0], [label for _, label in rows]
            if design == "new":
                hits, _, statements = searchtable.clustered_search(
                    cur, query=query, query_norm=norm, column="fused", run_id=run_id,
                    labels=labels, probes=1, top=TOP, filters=self.filters,
                )  # fmt: skip
                return [int(h[0]) for h in hits], statements
            n_probe, statements = 1, 0
            while True:
                cur.execute(OLD_PRODUCT_SQL, [query, MODEL_ID, labels[:n_probe], TOP])
                hits = cur.fetchall()
                statements += 1
                if len(hits) >= TOP or n_probe >= len(labels):
                    return [int(h[0]) for h in hits], statements
                n_probe = min(len(labels), max(n_probe * 2, n_probe + 1))

    def product_measure(self, design: str, label: str, nq: int | None = None) -> dict:
        conn = self.product_conn
        nq = min(nq or self.args.queries, self.args.queries)
        for i in range(min(self.args.warmup, nq)):
            self.product_search(conn, design, i)
        lat, found, stmts = [], [], []
        load_before = os.getloadavg()[0]
        for i in range(nq):
            t = time.perf_counter()
            ids, n = self.product_search(conn, design, i)
            lat.append((time.perf_counter() - t) * 1000)
            found.append(ids)
            stmts.append(n)
        x, q = self.ds.fused, self.queries[:nq]
        gi, gd = self.gt_global
        ci, cd = self.gt_cluster[1]
        row = {
            "design": label,
            "queries": nq,
            "p50_ms": round(_pg.pct(lat, 50), 2),
            "p95_ms": round(_pg.pct(lat, 95), 2),
            "p99_ms": round(_pg.pct(lat, 99), 2),
            "mean_ms": round(float(np.mean(lat)), 2),
            "recall_global": round(_pg.recall(found, gi[:nq], gd[:nq], TOP, x, q), 4),
            "min_rows": min(len(f) for f in found),
            "statements_mean": round(float(np.mean(stmts)), 3),
            "statements_max": int(max(stmts)),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
        if self.labels_are_original:
            row["recall_cluster"] = round(_pg.recall(found, ci[:nq], cd[:nq], TOP, x, q), 4)
        self.record(kind="product_search", **row)
        return row

    def product_searcher(self, stop: threading.Event, out: list) -> None:
        conn = _pg.connect(self.url)
        conn.cursor_factory = psycopg.ClientCursor
        i = 0
        while not stop.is_set():
            qi = i % self.args.queries
            t = time.perf_counter()
            try:
                ids, _ = self.product_search(conn, "new", qi)
                err = None
            except psycopg.Error as exc:  # would be a failed search for a shopper
                ids, err = [], f"{type(exc).__name__}: {exc}"
            e = time.perf_counter()
            out.append((t, e, (e - t) * 1000, qi, ids, err))
            i += 1
        conn.close()

    def run_product(self) -> None:
        """Shipped design vs per-run partitions, through the product's statements."""
        self.product_tables()
        self.product_reset_runs()
        self.product_conn = _pg.connect(self.url)
        self.product_conn.cursor_factory = psycopg.ClientCursor  # Django's client-side binding
        self.filters, _ = searchtable.shopper_filters(
            include_hidden=False, category_id=None, exclude_garment_ids=()
        )
        self.literals = [
            ("[" + ",".join(f"{float(v):.7g}" for v in q) + "]", float(np.linalg.norm(q)))
            for q in self.queries.astype(np.float64)
        ]
        self.labels_are_original = True
        self.product_add_run(1, self.ds.centroids)
        # Shipped design: run 1 active, labels on the vectors table (arrival order).
        self.conn.execute("UPDATE retrieval_clusterrun SET active = true WHERE id = 1")
        self.product_measure("old", "shipped: labels on garmentfeature, arrival order")
        # New design: run 1's partition, then the same queries.
        self.conn.execute("UPDATE retrieval_clusterrun SET active = false WHERE id = 1")
        build = self.product_switch(1, self.ds.labels)
        self.record(kind="product_switch", run=1, searches_running=False, **build)
        self.product_measure("new", "run partition (halfvec scan, cluster order, exact rerank)")
        self.product_measure("old", "shipped: labels on garmentfeature, arrival order (again)")
        self.product_measure("new", "run partition (again)")
        # A new K-means run switched in while searches run on another connection.
        new_labels, new_centroids = self.new_labels()
        self.product_add_run(2, new_centroids)
        stop, out = threading.Event(), []
        th = threading.Thread(target=self.product_searcher, args=(stop, out))
        th.start()
        time.sleep(2)
        t_start = time.perf_counter()
        build = self.product_switch(2, new_labels)
        # clustering.drop_partitions outside a transaction block: DETACH ... CONCURRENTLY
        # (waits for the searches that may read it, blocks none), then DROP.
        t, drop_attempts = time.perf_counter(), 1
        searchtable.detach_and_drop(self.conn.cursor(), run_id=1)
        drop_ms = (time.perf_counter() - t) * 1000
        time.sleep(2)
        stop.set()
        th.join()
        during = [r for r in out if r[0] >= t_start]
        errors = [r[5] for r in during if r[5]]
        gi, gd = self.gt_global
        idx = [r[3] for r in during if not r[5]]
        ms = [r[2] for r in during]
        self.record(
            kind="product_switch",
            run=2,
            searches_running=True,
            **build,
            drop_old_partition_ms=round(drop_ms, 1),
            drop_attempts=drop_attempts,
            searches_during=len(during),
            search_errors=len(errors),
            first_error=errors[0] if errors else None,
            short_results=sum(1 for r in during if len(r[4]) < TOP),
            search_p50_during_ms=round(_pg.pct(ms, 50), 2),
            search_p99_during_ms=round(_pg.pct(ms, 99), 2),
            search_max_during_ms=round(max(ms), 1) if ms else None,
            recall_global_during=round(
                _pg.recall(
                    [r[4] for r in during if not r[5]], gi[idx], gd[idx], TOP, self.ds.fused,
                    self.queries[idx],
                ),
                4,
            ) if idx else None,
        )  # fmt: skip
        self.labels_are_original = False  # in-cluster truth was computed for run 1's labels
        self.product_measure("new", "run partition, run 2 (after a switch under load)")
        if self.args.old_cluster:
            t = time.perf_counter()
            self.conn.execute("CLUSTER retrieval_garmentfeature USING retrieval_gf_model_cluster")
            self.conn.execute("VACUUM (ANALYZE) retrieval_garmentfeature")
            self.record(kind="cluster", table="retrieval_garmentfeature",
                        seconds=round(time.perf_counter() - t, 1))  # fmt: skip
            self.conn.execute("UPDATE retrieval_clusterrun SET active = (id = 1)")
            self.labels_are_original = True
            self.product_measure("old", "shipped, after CLUSTER (ACCESS EXCLUSIVE, manual)")
            self.conn.execute("DELETE FROM bench_meta WHERE what = 'product'")  # order changed
        self.product_conn.close()

    # ----------------------------------------------------------------- driver

    def run(self) -> None:
        designs = self.args.designs
        steps = [
            ("storage", self.run_storage),
            ("wide", self.run_wide),
            ("wide_tt", self.run_wide_tt),
            ("slim_toast", self.run_slim_toast),
            ("slim", self.run_slim),
            ("half", self.run_half),
            ("part", self.run_part),
            ("hnsw", self.run_hnsw),
            ("complete", self.completeness),
            ("switch", self.run_switch),
            ("product", self.run_product),
        ]
        for name, fn in steps:
            if name in designs:
                log(f"--- {name}")
                fn()
        print(markdown(self.out))


def _iter_nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from _iter_nodes(child)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| rows | k | design | P | settings | p50 ms | p99 ms | recall@20 cluster | "
        "recall@20 global | plan |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("kind") == "product_search":
            lines.append(
                f"| {r['rows']} | {r['k']} | {r['design']} | 1 | load {r['load_avg_1m']} |"
                f" {r['p50_ms']} | {r['p99_ms']} | {r.get('recall_cluster')} |"
                f" {r['recall_global']} | statements {r['statements_mean']} |"
            )
        if r.get("kind") != "search":
            continue
        hidden = ("enable", "statement")
        st = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if not k.startswith(hidden))
        lines.append(
            f"| {r['rows']} | {r['k']} | {r['design']} {r['note']} | {r['probes'] or '-'} | {st} |"
            f" {r['p50_ms']} | {r['p99_ms']} | {r['recall_cluster']} | {r['recall_global']} |"
            f" {r['plan']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--clusters", type=int, default=141)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--global-queries", type=int, default=50, help="for exact global scans")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=90, help="per measured query set")
    ap.add_argument(
        "--designs",
        default="wide,wide_tt,slim_toast,slim,half,part,hnsw,complete,switch",
        help="comma list of: storage wide wide_tt slim_toast slim half part hnsw complete switch"
        " product",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="product: keep the product tables between runs (same rows/clusters/seed)",
    )
    ap.add_argument(
        "--old-cluster",
        action="store_true",
        help="product: finally CLUSTER the shipped table and measure it (then it is reloaded)",
    )
    ap.add_argument("--hnsw", default="16:64", help="m:ef_construction list, e.g. 16:64,32:128")
    ap.add_argument("--ef-search", default="40,100,200")
    ap.add_argument("--wide-hnsw", action="store_true", help="also build hnsw on the wide table")
    ap.add_argument("--update-hnsw-max-rows", type=int, default=200_000)
    ap.add_argument("--update-timeout", type=int, default=400, help="UPDATE with hnsw, seconds")
    ap.add_argument("--tag", default="", help="stored with every result row")
    args = ap.parse_args()
    args.designs = set(args.designs.split(","))
    args.hnsw = [tuple(int(v) for v in x.split(":")) for x in args.hnsw.split(",") if x]
    args.ef_search = [int(x) for x in args.ef_search.split(",")]
    Path(_pg.BENCH_DIR).mkdir(parents=True, exist_ok=True)
    Bench(args).run()


if __name__ == "__main__":
    main()
