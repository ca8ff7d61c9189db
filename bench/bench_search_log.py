"""Search analytics: the dashboard at 1M recorded searches, and what recording adds to a search.

``dashboard``: on a private embedded PostgreSQL (DJANGO_VAR_DIR=var/bench-searchlog), writes
``--rows`` searches spread over the last 90 days (plus clicks on ~35% of them) with one
INSERT ... SELECT, VACUUM ANALYZE, then times ``analytics.search_stats`` (the selector) and
the whole admin dashboard page (Django test client, logged in) over the last 30 and 90 days.

``recording``: on the catalogue of bench/bench_duplicates.py (var/bench-dups: a trained
model), times API searches by photo through the Django test client (the whole request, the
after-response write included, as the worker spends it) with RETRIEVAL_SEARCH_LOG on and off,
alternating one by one in the same run, and the write alone.

    nice -n 10 .venv/bin/python bench/bench_search_log.py dashboard --rows 1000000
    nice -n 10 .venv/bin/python bench/bench_search_log.py recording --searches 200
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
    from django.conf import settings

    settings.ALLOWED_HOSTS = ["*"]  # the test client's "testserver"


FILL_SQL = """
INSERT INTO retrieval_searchlog (id, created_at, channel, mode, top, filters, latency_ms,
    garment_ids, predicted_category, confidence, model, photo, clicks, first_click_rank)
SELECT gen_random_uuid(),
       now() - (random() * interval '90 days'),
       CASE WHEN random() < 0.7 THEN 'web' ELSE 'api' END,
       CASE WHEN random() < 0.8 THEN 'fused' ELSE 'deep' END,
       10, '{}'::jsonb,
       40 + random() * 60 + CASE WHEN random() < 0.02 THEN 500 ELSE 0 END,
       ARRAY[1,2,3,4,5,6,7,8,9,10],
       (ARRAY['Tshirts','Shirts','Jeans','Kurtas','Watches','Casual Shoes','Handbags',
              'Tops','Sports Shoes','Heels','Sunglasses','Wallets'])[1 + floor(random()*12)::int],
       random(), 'bench', '',
       0, NULL
FROM generate_series(1, %s)
"""
CLICKS_SQL = """
WITH picked AS (
    SELECT id, 1 + floor(random() * random() * 10)::int AS rank
    FROM retrieval_searchlog WHERE random() < 0.35
), ins AS (
    INSERT INTO retrieval_searchclick (search_id, garment_id, rank, created_at)
    SELECT id, rank, rank, now() FROM picked RETURNING search_id, rank
)
UPDATE retrieval_searchlog l SET clicks = 1, first_click_rank = ins.rank
FROM ins WHERE l.id = ins.search_id
"""


def dashboard(rows: int, repeats: int) -> dict:
    boot("bench-searchlog")
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from retrieval import analytics
    from retrieval.models import SearchLog

    have = SearchLog.objects.count()
    if have != rows:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE retrieval_searchlog CASCADE")
            cursor.execute(FILL_SQL, [rows])
            cursor.execute(CLICKS_SQL)
        print(f"filled {rows} rows in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    connection.ensure_connection()
    old = connection.connection.autocommit
    connection.connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE retrieval_searchlog")
        cursor.execute("VACUUM ANALYZE retrieval_searchclick")
        cursor.execute("SELECT pg_total_relation_size('retrieval_searchlog')")
        size = cursor.fetchone()[0]
    connection.connection.autocommit = old
    user, _ = get_user_model().objects.get_or_create(
        username="bench", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    out: dict = {"rows": SearchLog.objects.count(), "table_bytes": size}
    for days in (30, 90):
        start, end = analytics.period(days=days)
        stats = None
        selector, page, csv = [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            stats = analytics.search_stats(start=start, end=end)
            selector.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            response = client.get(
                "/admin/retrieval/searchlog/dashboard/",
                {"start": start.date().isoformat(), "end": end.date().isoformat()},
            )
            page.append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200
            t = time.perf_counter()
            client.get(
                "/admin/retrieval/searchlog/dashboard/",
                {"start": start.date().isoformat(), "format": "csv"},
            )
            csv.append((time.perf_counter() - t) * 1000)
        assert stats is not None
        out[f"last {days} days"] = {
            "searches": stats.searches,
            "selector ms p50/max": [round(statistics.median(selector)), round(max(selector))],
            "dashboard page ms p50/max": [round(statistics.median(page)), round(max(page))],
            "csv ms p50/max": [round(statistics.median(csv)), round(max(csv))],
        }
    return out


def recording(searches: int) -> dict:
    boot("bench-dups")
    from django.conf import settings
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client

    from retrieval import analytics
    from retrieval.models import Garment, SearchLog

    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"search": None},
    }
    photos = []
    for garment in Garment.objects.filter(status="ready").order_by("id")[:50]:
        with garment.image.open("rb") as fh:
            photos.append(fh.read())
    client = Client()
    timings: dict[bool, list[float]] = {True: [], False: []}
    write: list[float] = []
    for i in range(-10, searches * 2):  # 10 warm-up searches first
        on = i % 2 == 0
        settings.RETRIEVAL_SEARCH_LOG = on
        upload = SimpleUploadedFile("q.jpg", photos[i % len(photos)])
        t = time.perf_counter()
        response = client.post("/api/v1/search/", {"image": upload, "top": 10})
        elapsed = (time.perf_counter() - t) * 1000
        assert response.status_code == 200, response.content[:300]
        if i >= 0:
            timings[on].append(elapsed)
    settings.RETRIEVAL_SEARCH_LOG = True
    # The write alone (what runs after the response), one search per INSERT as in production.
    template = SearchLog.objects.order_by("-created_at").first()
    assert template is not None
    for _ in range(200):
        record = analytics.SearchRecord(
            channel="api", mode="fused", top=10, filters={}, latency_ms=50.0,
            garment_ids=list(template.garment_ids), predicted_category="Tshirts",
            confidence=0.9, model="bench",
        )  # fmt: skip
        t = time.perf_counter()
        analytics.save_searches([record])
        write.append((time.perf_counter() - t) * 1000)
    on_ms, off_ms = timings[True], timings[False]
    return {
        "searches each": searches,
        "recording on: request ms p50/p90": [
            round(statistics.median(on_ms), 2),
            round(statistics.quantiles(on_ms, n=10)[-1], 2),
        ],
        "recording off: request ms p50/p90": [
            round(statistics.median(off_ms), 2),
            round(statistics.quantiles(off_ms, n=10)[-1], 2),
        ],
        "added p50 ms": round(statistics.median(on_ms) - statistics.median(off_ms), 2),
        "the write alone ms p50/p90": [
            round(statistics.median(write), 3),
            round(statistics.quantiles(write, n=10)[-1], 3),
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["dashboard", "recording"])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--searches", type=int, default=200)
    args = parser.parse_args()
    if args.what == "dashboard":
        result = dashboard(args.rows, args.repeats)
    else:
        result = recording(args.searches)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
