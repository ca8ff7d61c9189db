"""Disk held per feature model, and what the retention sweep (retire_inactive_models) frees.

Runs the product's own code (K-means runs written by clustering.build_run, activation by
training.activate_model, the sweep) on a private embedded PostgreSQL under ``--var``
(default var/bench-prune; never var/ or var/test/), over N synthetic garments whose vectors
are generated in SQL (clustered 542-d floats: sizes do not depend on the values):

1. model A: vectors, K-means runs (fused, deep), activated;
2. model B: the same, activated (A's runs and vectors stay: the state before this change);
3. the sweep with keep=1: A's partitions dropped (CONCURRENTLY), its vectors kept;
4. the sweep with keep=0: A's vectors deleted (batches), then VACUUM;
5. model C's vectors written: whether the table reuses the space A's vectors left.

Sizes are pg_total_relation_size (heap + TOAST + indexes) and pg_database_size (what the
filesystem holds). Prints a markdown table and writes ``--json``.

    .venv/bin/python bench/bench_prune.py --garments 100000 --json var/bench-prune.json
    .venv/bin/python -m fashionsite.embedded stop var/bench-prune   # afterwards
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MB = 1024 * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--garments", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=10, help="K-means K (RETRIEVAL_KMEANS_K)")
    ap.add_argument("--var", type=Path, default=ROOT / "var" / "bench-prune")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    os.environ["DJANGO_VAR_DIR"] = str(args.var.resolve())
    os.environ["RETRIEVAL_KMEANS_K"] = str(args.k)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
    sys.path.insert(0, str(ROOT))
    import django

    from fashionsite.embedded import ensure_services

    ensure_services()  # an entry point: the embedded servers, as manage.py
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from retrieval import training
    from retrieval.models import Category, FeatureModel, Garment, GarmentFeature
    from retrieval.search import clustering
    from retrieval.search import table as searchtable

    call_command("migrate", verbosity=0)
    if Garment.objects.exists():
        raise SystemExit(f"{args.var} already holds a catalogue: delete it first")

    def sql(statement: str, params=None):
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else None

    def sizes(label: str) -> dict:
        parts = {}
        for run_id in clustering.partition_run_ids():
            name = clustering.partition_name(run_id)
            parts[name] = sql("SELECT pg_total_relation_size(%s)", [name])[0][0]
        row = {
            "step": label,
            "database_mb": sql("SELECT pg_database_size(current_database())")[0][0] / MB,
            "vectors_table_mb": sql(
                "SELECT pg_total_relation_size(%s)", [searchtable.FEATURE_TABLE]
            )[0][0]
            / MB,
            "partitions": len(parts),
            "partitions_mb": sum(parts.values()) / MB,
            "vectors": GarmentFeature.objects.count(),
        }
        print(
            f"{label}: database {row['database_mb']:.0f} MB, vectors table "
            f"{row['vectors_table_mb']:.0f} MB ({row['vectors']} rows), "
            f"{row['partitions']} partitions {row['partitions_mb']:.0f} MB",
            flush=True,
        )
        return row

    def add_model(name: str, seed: int) -> FeatureModel:
        model = FeatureModel.objects.create(
            name=name, backbone="efficientnet_lite0", backbone_dim=1280, status="ready"
        )
        sql("SELECT setseed(%s)", [seed / 100.0])
        sql("DROP TABLE IF EXISTS bench_centres")
        sql(
            "CREATE TEMP TABLE bench_centres AS SELECT c AS label, "
            "(SELECT array_agg((random() * 2 - 1)::real ORDER BY i) "
            " FROM generate_series(1, 542) AS i WHERE c >= 0) AS x "
            "FROM generate_series(0, %s - 1) AS c",
            [args.k],
        )
        sql(
            f"INSERT INTO {searchtable.FEATURE_TABLE} (garment_id, model_id, deep, fused, "
            "created_at) "
            "SELECT g.id, %s, v.a[1:512]::vector, v.a::vector, now() "
            f"FROM {searchtable.GARMENT_TABLE} AS g "
            "JOIN bench_centres AS c ON c.label = g.id %% %s "
            "CROSS JOIN LATERAL (SELECT array_agg((c.x[i] + (random() - 0.5) * 0.4)::real "
            "  ORDER BY i) AS a FROM generate_series(1, 542 + 0 * g.id) AS i) AS v",
            [model.pk, args.k],
        )
        sql(f"ANALYZE {searchtable.FEATURE_TABLE}")
        return model

    steps, timings = [], {}
    started = time.perf_counter()
    category = Category.objects.create(name="Bench")
    sql(
        f"INSERT INTO {searchtable.GARMENT_TABLE} (sku, title, description, category_id, "
        "colour, image, attributes, status, error, claimed_by, created_at, updated_at) "
        "SELECT 'B' || n, 'bench', '', %s, '', 'garments/x.jpg', '{}', 'ready', '', '', "
        "now(), now() FROM generate_series(1, %s) AS n",
        [category.pk, args.garments],
    )
    steps.append(sizes("catalogue, no model"))

    for name, seed in (("A", 1), ("B", 2)):
        t = time.perf_counter()
        model = add_model(name, seed)
        steps.append(sizes(f"model {name}: vectors"))
        training.activate_model(model=model)  # fits its runs (fused, deep), then switches
        timings[f"vectors + runs + activation of {name} (s)"] = time.perf_counter() - t
        steps.append(sizes(f"model {name}: runs, active"))

    t = time.perf_counter()
    report = training.retire_inactive_models(keep=1)
    timings["sweep keep=1: A's partitions dropped (s)"] = time.perf_counter() - t
    print("\n".join(report.lines()))
    steps.append(sizes("sweep keep=1"))

    t = time.perf_counter()
    report = training.retire_inactive_models(keep=0)
    timings["sweep keep=0: A's vectors deleted (s)"] = time.perf_counter() - t
    print("\n".join(report.lines()))
    steps.append(sizes("sweep keep=0"))
    t = time.perf_counter()
    sql(f"VACUUM {searchtable.FEATURE_TABLE}")
    timings["VACUUM of the vectors table (s)"] = time.perf_counter() - t
    steps.append(sizes("VACUUM"))

    add_model("C", 3)
    steps.append(sizes("model C: vectors written"))

    print()
    print(f"N = {args.garments} garments, K = {args.k}, load {os.getloadavg()[0]:.1f}")
    print("| step | database MB | vectors table MB | vectors | partitions | partitions MB |")
    print("|---|---|---|---|---|---|")
    for row in steps:
        print(
            f"| {row['step']} | {row['database_mb']:.0f} | {row['vectors_table_mb']:.0f} | "
            f"{row['vectors']} | {row['partitions']} | {row['partitions_mb']:.0f} |"
        )
    for label, seconds in timings.items():
        print(f"{label}: {seconds:.1f}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"garments": args.garments, "k": args.k, "steps": steps, "timings": timings},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
