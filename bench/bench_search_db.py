"""Database side of one clustered search: schema/index designs, latency, recall, switches.

Runs against a private embedded PostgreSQL in var/bench/postgres (see bench/_pg.py), on
synthetic clustered 542-d "fused" vectors shaped like ours (uneven category sizes, deep
part L2-normalised, colour part ~0.3). Each timed query is the SQL alone: the query vector
and the probed cluster ids are computed beforehand, as the app does from the centroids.

    .venv/bin/python bench/bench_search_db.py --rows 100000 --clusters 141 --queries 300
    .venv/bin/python bench/bench_search_db.py --rows 1000000 --clusters 141 \
        --designs slim,half,part,hnsw,switch
    # the product's own statements (retrieval/search/table.py), shipped design vs run partitions
    .venv/bin/python bench/bench_search_db.py --rows 1000000 --designs product --reuse

Results are appended, one JSON object per line, to var/bench/results/search.jsonl and
printed as a markdown table. Tables are dropped and recreated for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import _pg
import numpy as np
from pgvector import HalfVector
from search_db_sql import (
    COMPLETE_SIZES_SQL,
    COMPLETE_SQL,
    GLOBAL_SQL,
    MODEL_ID,
    RESULTS,
    SEARCH_SQL,
    TOP,
    log,
)
from search_db_switch import SwitchBenchMixin


class Bench(SwitchBenchMixin):
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
