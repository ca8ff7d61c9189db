"""The cluster-switch and product-statement parts of bench/bench_search_db.py (a mixin of its
``Bench``: every method uses the bench's connection, sizes and records)."""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import _pg
import numpy as np
import psycopg
from search_db_sql import (
    MODEL_ID,
    OLD_PRODUCT_SQL,
    SEARCH_SQL,
    TOP,
    log,
)


def _load_searchtable():
    """The product's search-table SQL (retrieval/search/table.py, Django-free), loaded by path:
    importing it through ``retrieval.search`` would import the ORM (the package's public face)."""
    import importlib.util

    path = _pg.ROOT / "retrieval" / "search" / "table.py"
    spec = importlib.util.spec_from_file_location("bench_searchtable", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


searchtable = _load_searchtable()


class SwitchBenchMixin:
    """Switch designs (``--designs switch``) and the product's own statements (``product``)."""

    # Set and defined by ``bench_search_db.Bench``, whose methods these are.
    args: argparse.Namespace
    ds: Any
    n: int
    k: int
    queries: np.ndarray
    gt_global: Any
    gt_cluster: Any
    url: str
    conn: psycopg.Connection
    if TYPE_CHECKING:

        def record(self, **row: Any) -> None: ...
        def sizes_of(self, table: str) -> dict: ...
        def measure(self, *args: Any, **options: Any) -> dict: ...

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
