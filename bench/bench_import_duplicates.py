"""What the duplicate checks cost a catalogue import, and near-duplicate flagging at indexing.

``import``: on a private embedded PostgreSQL + Redis (DJANGO_VAR_DIR=var/bench-import-dups),
imports ``--rows`` rows of the shared sample catalogue into an emptied catalogue, alternating
runs with the checks as shipped (pixel digest, indexed exact-duplicate lookup per row,
perceptual hash) and runs with those three replaced by no-ops (the baseline: the import
before issue #16), ``--rounds`` times each. Indexing is queued, not run (no worker), so the
time is the import's own.

``flagging``: on the catalogue of bench/bench_duplicates.py (var/bench-dups, a trained model),
times ``flag_near_duplicates`` per garment (what indexing adds per indexed garment) against
the CNN's own time per garment in the same run.

    nice -n 10 .venv/bin/python bench/bench_import_duplicates.py import --rows 10000 --rounds 2
    nice -n 10 .venv/bin/python bench/bench_import_duplicates.py flagging --garments 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"
sys.path.insert(0, str(ROOT))


def boot(var: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
    os.environ["DJANGO_VAR_DIR"] = str(ROOT / "var" / var)
    from fashionsite.embedded import ensure_services

    ensure_services()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def import_runs(rows: int, rounds: int) -> dict:
    boot("bench-import-dups")
    import shutil

    from django.conf import settings
    from django.db import connection

    from retrieval import catalogue, images
    from retrieval.catalogue import imports

    real = (images.pixel_digest, images.perceptual_hash, imports.exact_duplicate)

    def checks(on: bool) -> None:
        if on:
            images.pixel_digest, images.perceptual_hash, imports.exact_duplicate = real
        else:
            images.pixel_digest = lambda img: ""
            images.perceptual_hash = lambda img: b""
            imports.exact_duplicate = lambda **kw: None

    times: dict[str, list[float]] = {"with checks": [], "without (baseline)": []}
    for _ in range(rounds):
        for on in (True, False):
            with connection.cursor() as cursor:
                cursor.execute(
                    "TRUNCATE retrieval_garment, retrieval_importjob, retrieval_category CASCADE"
                )
            shutil.rmtree(Path(settings.MEDIA_ROOT) / "garments", ignore_errors=True)
            checks(on)
            started = time.perf_counter()
            job = catalogue.import_catalog(source=SAMPLE, limit=rows)
            elapsed = time.perf_counter() - started
            label = "with checks" if on else "without (baseline)"
            times[label].append(elapsed)
            dups = sum(1 for p in job.problems if p.get("code") == "duplicate_image")
            print(
                f"{label}: {job.rows} rows in {elapsed:.1f} s ({dups} duplicates)", file=sys.stderr
            )
    checks(True)
    with_, without = (statistics.median(times[k]) for k in times)
    return {
        "rows": rows,
        "runs s": {k: [round(v, 1) for v in vs] for k, vs in times.items()},
        "median s": {"with checks": round(with_, 1), "without (baseline)": round(without, 1)},
        "checks' share of the import": round((with_ - without) / without, 4),
    }


def flagging(garments: int) -> dict:
    boot("bench-dups")
    import numpy as np

    from retrieval.features import extractor_for
    from retrieval.models import Garment
    from retrieval.search.duplicates import flag_near_duplicates
    from retrieval.selectors import active_model

    model = active_model()
    assert model is not None, "run bench/bench_duplicates.py first"
    ids = list(Garment.objects.filter(status="ready").order_by("id").values_list("id", flat=True))[
        :garments
    ]
    flag_near_duplicates(garment_ids=ids[:5], model=model)  # warm-up
    started = time.perf_counter()
    flag_near_duplicates(garment_ids=ids, model=model)
    flag_ms = (time.perf_counter() - started) * 1000 / len(ids)
    extractor = extractor_for(backbone=model.backbone, model=model)
    items = []
    for garment in Garment.objects.filter(pk__in=ids):
        items.append((garment.pk, garment.image.path))
    list(extractor.extract_paths(items[:32], batch_size=32))  # warm-up
    started = time.perf_counter()
    n = sum(len(b.keys) for b in extractor.extract_paths(items, batch_size=32))
    cnn_ms = (time.perf_counter() - started) * 1000 / n
    return {
        "garments": len(ids),
        "flagging ms per garment": round(flag_ms, 2),
        "CNN ms per garment (batches of 32)": round(cnn_ms, 2),
        "flagging / CNN": round(flag_ms / cnn_ms, 3),
        "catalogue": int(np.int64(Garment.objects.count())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["import", "flagging"])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--garments", type=int, default=300)
    args = parser.parse_args()
    if args.what == "import":
        result = import_runs(args.rows, args.rounds)
    else:
        result = flagging(args.garments)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
