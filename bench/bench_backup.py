"""`manage.py backup` of a whole-catalogue install: wall time and size (issue #16).

Builds a throwaway install (DJANGO_VAR_DIR=var/bench-backup, wiped first: its own embedded
PostgreSQL, media and models) holding N garments of the shared sample with their real photos,
and, per garment, the rows an indexed catalogue has: the CNN cache (BackboneFeature, 1280-d),
the model's vectors (GarmentFeature, 512-d deep + 542-d fused) and one search row per active
K-means run (fused and deep, half precision), plus centroids and a head file of a real head's
size. Running the CNN over 40k photos takes hours on this machine, so the vectors' *values*
are random (float32 uniform; the sizes, counts and partitions are the product's): pg_dump
compresses random floats about as badly as real features, so the dump size is a fair estimate,
not a measurement of real features. Then times `manage.py backup` (a child process, as from
cron) and reports the dump size, the files' size and the manifest's counts.

    .venv/bin/python bench/bench_backup.py --limit 39717      # the whole sample
    .venv/bin/python bench/bench_backup.py --limit 2000 --keep
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"
sys.path.insert(0, str(ROOT))


def tree_bytes(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def fill(*, catalog: Path, limit: int, batch: int = 2000) -> dict:
    """The install's rows and files (Django is set up for the bench's DJANGO_VAR_DIR)."""
    import numpy as np
    from django.conf import settings
    from django.db import connection, transaction
    from django.utils.text import slugify

    from retrieval.models import (
        BackboneFeature,
        Category,
        ClusterCentroid,
        ClusterRun,
        FeatureModel,
        Garment,
        GarmentFeature,
    )
    from retrieval.search import clustering
    from retrieval.search import table as searchtable

    rng = np.random.default_rng(0)
    started = time.monotonic()
    with zipfile.ZipFile(catalog) as archive:
        names = set(archive.namelist())
        styles = next(n for n in names if n.endswith("styles.csv"))
        prefix = styles[: -len("styles.csv")]
        rows = [
            r
            for r in csv.DictReader(io.TextIOWrapper(archive.open(styles), "utf-8"))
            if f"{prefix}images/{r['id']}.jpg" in names
        ][:limit]
        categories = {}
        for name in sorted({r["articleType"] for r in rows}):
            categories[name] = Category.objects.create(name=name, slug=slugify(name))
        media = settings.MEDIA_ROOT / "garments" / "bench"
        media.mkdir(parents=True, exist_ok=True)
        garments = []
        for r in rows:
            (media / f"{r['id']}.jpg").write_bytes(archive.read(f"{prefix}images/{r['id']}.jpg"))
            garments.append(
                Garment(
                    sku=r["id"],
                    title=r["productDisplayName"][:255] or r["id"],
                    category=categories[r["articleType"]],
                    colour=r["baseColour"],
                    image=f"garments/bench/{r['id']}.jpg",
                    status=Garment.Status.READY,
                )
            )
    Garment.objects.bulk_create(garments, batch_size=batch)
    n_classes = len(categories)
    head = settings.RETRIEVAL_MODELS_DIR / "heads" / "bench.pt"
    head.parent.mkdir(parents=True, exist_ok=True)
    # A head's float32 weights: 1280 -> 512 projection and 512 -> classes classifier.
    head.write_bytes(rng.random(1280 * 512 + 512 * n_classes, dtype=np.float32).tobytes())
    model = FeatureModel.objects.create(
        name="bench",
        backbone="efficientnet_lite0",
        backbone_dim=1280,
        head_file="heads/bench.pt",
        classes=sorted(categories),
        status=FeatureModel.Status.READY,
        active=True,
    )
    ids = list(Garment.objects.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        with transaction.atomic():
            BackboneFeature.objects.bulk_create(
                BackboneFeature(
                    garment_id=gid,
                    backbone="efficientnet_lite0",
                    version=1,
                    image_name=f"garments/bench/{gid}.jpg",
                    pooled=rng.random(1280, dtype=np.float32),
                    positions=list(range(10)),
                    rgb=rng.random(30).tolist(),
                )
                for gid in chunk
            )
            GarmentFeature.objects.bulk_create(
                GarmentFeature(
                    garment_id=gid,
                    model=model,
                    deep=rng.random(512, dtype=np.float32),
                    fused=rng.random(542, dtype=np.float32),
                )
                for gid in chunk
            )
    for space, dim, column in (("fused", 542, "fused"), ("deep", 512, "deep")):
        run = ClusterRun.objects.create(
            model=model, space=space, k=n_classes, n_samples=len(ids), active=True
        )
        ClusterCentroid.objects.bulk_create(
            ClusterCentroid(run=run, label=i, centroid=rng.random(dim, dtype=np.float32))
            for i in range(n_classes)
        )
        clustering.ensure_partition(run=run)
        with transaction.atomic(), connection.cursor() as cursor:
            # Every vector in a random cluster, half precision: what a K-means run writes.
            cursor.execute(
                f"INSERT INTO {searchtable.SEARCH_TABLE} (feature_id, run_id, cluster, scan_vector)"
                f" SELECT id, %s, floor(random() * %s)::int, {column}::halfvec"
                " FROM retrieval_garmentfeature WHERE model_id = %s",
                [run.pk, n_classes, model.pk],
            )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("SELECT pg_database_size(current_database())")
        database_bytes = cursor.fetchone()[0]
    return {
        "garments": len(ids),
        "categories": n_classes,
        "fill_seconds": round(time.monotonic() - started, 1),
        "database_bytes": database_bytes,
    }


def raw_copy(*, var: Path, env: dict[str, str]) -> dict:
    """The baseline, in the same run: what the tools alone take for the same data, a plain
    ``pg_dump -Fc`` (same binary, same server) and a plain copy of the media and models
    folders, without the command's snapshot, checksums, manifest and checks."""
    from django.conf import settings

    from retrieval.backup.archive import _postgres_env, postgres_tool

    scratch = var / "raw-copy"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    started = time.monotonic()
    subprocess.run(
        [str(postgres_tool("pg_dump")), "-Fc", "-f", str(scratch / "plain.dump")],
        env={**env, **_postgres_env()}, check=True,
    )  # fmt: skip
    dump_seconds = time.monotonic() - started
    started = time.monotonic()
    shutil.copytree(settings.MEDIA_ROOT, scratch / "media")
    shutil.copytree(settings.RETRIEVAL_MODELS_DIR, scratch / "models")
    copy_seconds = time.monotonic() - started
    result = {
        "baseline_pg_dump_seconds": round(dump_seconds, 1),
        "baseline_pg_dump_bytes": (scratch / "plain.dump").stat().st_size,
        "baseline_copy_seconds": round(copy_seconds, 1),
    }
    shutil.rmtree(scratch)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, default=SAMPLE)
    parser.add_argument("--limit", type=int, default=39717)
    parser.add_argument("--var", type=Path, default=ROOT / "var" / "bench-backup")
    parser.add_argument("--keep", action="store_true", help="Keep the install and backup.")
    args = parser.parse_args()

    python = sys.executable
    env = {**os.environ, "DJANGO_VAR_DIR": str(args.var.resolve()), "PYTHONUNBUFFERED": "1"}
    for key in ("DATABASE_URL", "MEDIA_ROOT", "RETRIEVAL_MODELS_DIR"):
        env.pop(key, None)
    subprocess.run([python, "-m", "fashionsite.embedded", "stop", str(args.var)], env=env)
    shutil.rmtree(args.var, ignore_errors=True)
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)

    os.environ.update({k: v for k, v in env.items() if k == "DJANGO_VAR_DIR"})
    for key in ("DATABASE_URL", "MEDIA_ROOT", "RETRIEVAL_MODELS_DIR"):
        os.environ.pop(key, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
    from fashionsite.embedded import ensure_services

    ensure_services()
    import django

    django.setup()
    from django.conf import settings
    from django.db import connections

    result = fill(catalog=args.catalog, limit=args.limit)
    connections.close_all()
    target = args.var / "backup"
    started = time.monotonic()
    done = subprocess.run(
        [python, "manage.py", "backup", str(target)], cwd=ROOT, env=env, text=True,
        capture_output=True,
    )  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode != 0:
        print(done.stdout, done.stderr, file=sys.stderr)
        return 1
    manifest = json.loads((target / "manifest.json").read_text())
    files, total = tree_bytes(target)
    baseline = raw_copy(var=args.var, env=env)
    result.update(
        {
            "backup_seconds": round(seconds, 1),
            "backup_bytes": total,
            "backup_files": files,
            "dump_bytes": (target / "database.dump").stat().st_size,
            "media_bytes": tree_bytes(settings.MEDIA_ROOT)[1],
            "models_bytes": tree_bytes(settings.RETRIEVAL_MODELS_DIR)[1],
            "counts": manifest["counts"],
            **baseline,
            "load_average": os.getloadavg(),
        }
    )
    print(json.dumps(result, indent=2))
    if not args.keep:
        subprocess.run([python, "-m", "fashionsite.embedded", "stop", str(args.var)], env=env)
        shutil.rmtree(args.var, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
