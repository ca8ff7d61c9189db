"""Search analytics: the dashboard at 1M recorded searches, and what recording adds to a search.

``dashboard``: on a private embedded PostgreSQL (DJANGO_VAR_DIR=var/bench-searchlog), writes
``--rows`` searches spread over the last 90 days (plus a click on ~35% of them, up to 2
minutes after the search) with one INSERT ... SELECT (again with ``--fill``), VACUUM
ANALYZE, rolls the closed hours up (the beat task's function, timed: its first run covers all
90 days; the next, as beat 5 minutes on, the hours of the last clicks), then times,
alternating in the same run:

- the product: ``analytics.search_stats`` (roll-up rows + the open hour's raw rows), the whole
  admin dashboard page and its CSV (Django test client, logged in), last 30 and 90 days;
- the baseline, raw rows only: the same selector with ``rollups=False`` (every row through
  the roll-up's aggregate), and the first version's SQL (one GROUPING SETS aggregate with
  exact percentiles over the raw rows, the clicks join, the slowest by a sort).

``recording``: on a small trained catalogue in the same var dir (300 garments of the shared
sample, imported, indexed and trained by the product's code on the first run), times API
searches by photo through the Django test client (the whole request, the after-response write
included, as the worker spends it) with RETRIEVAL_SEARCH_LOG on and off, alternating one by
one in the same run; the part inside the request (the record made, its write registered for
after the response) alone; and the write alone (one INSERT and its commit per search, as in
production, where it runs after the response's last byte).

    nice -n 10 .venv/bin/python bench/bench_search_log.py dashboard --rows 1000000 --fill
    nice -n 10 .venv/bin/python bench/bench_search_log.py recording --searches 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"
sys.path.insert(0, str(ROOT))


def boot() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
    os.environ.setdefault("DJANGO_VAR_DIR", str(ROOT / "var" / "bench-searchlog"))
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
    SELECT id, 1 + floor(random() * random() * 10)::int AS rank,
           least(now(), created_at + random() * interval '2 minutes') AS at
    FROM retrieval_searchlog WHERE random() < 0.35
), ins AS (
    INSERT INTO retrieval_searchclick (search_id, garment_id, rank, created_at)
    SELECT id, rank, rank, at FROM picked RETURNING search_id, rank
)
UPDATE retrieval_searchlog l SET clicks = 1, first_click_rank = ins.rank
FROM ins WHERE l.id = ins.search_id
"""

# The first version's aggregation of the raw rows (commit 83f43e6), for the baseline.
OLD_AGGREGATE_SQL = """
SELECT GROUPING(day, hour, cat) AS g, day, hour, cat, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
       count(*) FILTER (WHERE confidence IS NULL OR confidence < %(low)s),
       count(*) FILTER (WHERE first_click_rank <= 1),
       count(*) FILTER (WHERE first_click_rank <= 5),
       count(*) FILTER (WHERE first_click_rank <= 10),
       count(*) FILTER (WHERE first_click_rank IS NULL)
FROM (
    SELECT (created_at AT TIME ZONE %(tz)s)::date AS day,
           extract(hour FROM created_at AT TIME ZONE %(tz)s)::int AS hour,
           predicted_category AS cat, latency_ms, confidence, first_click_rank
    FROM retrieval_searchlog
    WHERE created_at >= %(start)s AND created_at < %(end)s
) AS s
GROUP BY GROUPING SETS ((day), (hour), (cat), ())
"""
OLD_CLICKS_SQL = """
SELECT c.rank, count(*) FROM retrieval_searchclick AS c
JOIN retrieval_searchlog AS l ON l.id = c.search_id
WHERE l.created_at >= %(start)s AND l.created_at < %(end)s
GROUP BY c.rank ORDER BY c.rank
"""
OLD_SLOWEST_SQL = """
SELECT id, latency_ms FROM retrieval_searchlog
WHERE created_at >= %(start)s AND created_at < %(end)s ORDER BY latency_ms DESC LIMIT 10
"""


def p50_max(values: list[float]) -> list[int]:
    return [round(statistics.median(values)), round(max(values))]


def dashboard(rows: int, repeats: int, fill: bool) -> dict:
    boot()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from retrieval import analytics
    from retrieval.models import SearchHour, SearchLog, SearchRollupState

    have = SearchLog.objects.count()
    out: dict = {}
    if have != rows or fill:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE retrieval_searchlog CASCADE")
            cursor.execute(FILL_SQL, [rows])
            cursor.execute(CLICKS_SQL)
        out["fill s"] = round(time.perf_counter() - started)
    connection.ensure_connection()
    old = connection.connection.autocommit
    connection.connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE retrieval_searchlog")
        cursor.execute("VACUUM ANALYZE retrieval_searchclick")
        cursor.execute("SELECT pg_total_relation_size('retrieval_searchlog')")
        size = cursor.fetchone()[0]
    connection.connection.autocommit = old
    # The first roll-up: every closed hour of the 90 days (what beat does once, then an hour
    # at a time), timed from an empty roll-up.
    SearchHour.objects.all().delete()
    SearchRollupState.objects.all().delete()
    started = time.perf_counter()
    done = analytics.rollup_searches()
    out["first roll-up (90 days) s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    later = analytics.rollup_searches()  # as beat 5 minutes on: the last clicks' hours
    out["next roll-up s"] = round(time.perf_counter() - started, 2)
    out["next roll-up hours"] = later.hours
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE retrieval_searchhour")
        cursor.execute("SELECT pg_total_relation_size('retrieval_searchhour')")
        hour_bytes = cursor.fetchone()[0]
    user, _ = get_user_model().objects.get_or_create(
        username="bench", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    out.update(
        {
            "rows": SearchLog.objects.count(),
            "log bytes": size,
            "roll-up rows": SearchHour.objects.count(),
            "roll-up bytes": hour_bytes,
            "rolled up through": done.through.isoformat() if done.through else None,
        }
    )
    for days in (30, 90):
        start, end = analytics.period(days=days)
        params: dict[str, Any] = {"start": start, "end": end, "low": 0.5, "tz": settings.TIME_ZONE}
        timings: dict[str, list[float]] = {
            k: [] for k in ("selector", "page", "csv", "raw selector", "first version SQL")
        }
        stats = raw = None
        for _ in range(repeats):
            t = time.perf_counter()
            stats = analytics.search_stats(start=start, end=end)
            timings["selector"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            response = client.get(
                "/admin/retrieval/searchlog/dashboard/",
                {"start": start.date().isoformat(), "end": end.date().isoformat()},
            )
            timings["page"].append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200
            t = time.perf_counter()
            response = client.get(
                "/admin/retrieval/searchlog/dashboard/",
                {"start": start.date().isoformat(), "format": "csv"},
            )
            timings["csv"].append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200
            t = time.perf_counter()
            raw = analytics.search_stats(start=start, end=end, rollups=False)
            timings["raw selector"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.execute(OLD_AGGREGATE_SQL, params)
                cursor.fetchall()
                cursor.execute(OLD_CLICKS_SQL, params)
                cursor.fetchall()
                cursor.execute(OLD_SLOWEST_SQL, params)
                cursor.fetchall()
            timings["first version SQL"].append((time.perf_counter() - t) * 1000)
        assert stats is not None and raw is not None
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) "
                "FROM retrieval_searchlog WHERE created_at >= %(start)s AND created_at < %(end)s",
                params,
            )
            exact = cursor.fetchone()
        out[f"last {days} days"] = {
            "searches": stats.searches,
            "same as raw rows": stats.searches == raw.searches
            and stats.ctr == raw.ctr
            and stats.per_day == raw.per_day,
            "p50/p95 ms (histogram)": [stats.latency_p50_ms, stats.latency_p95_ms],
            "p50/p95 ms (exact)": [round(exact[0], 1), round(exact[1], 1)],
            **{f"{k} ms p50/max": p50_max(v) for k, v in timings.items()},
        }
    return out


def ensure_catalogue():
    from retrieval import catalogue, indexing, training
    from retrieval.models import FeatureModel, Garment

    if not FeatureModel.objects.filter(active=True).exists():
        Garment.objects.all().delete()
        job = catalogue.import_catalog(source=SAMPLE, limit=300)
        indexing.wait_for_garments(
            garments=Garment.objects.filter(import_job=job), poll_seconds=0.5
        )
        training.train_model(epochs=20)


def recording(searches: int) -> dict:
    boot()
    from django.conf import settings
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client

    from retrieval import analytics
    from retrieval.models import Garment

    ensure_catalogue()
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
    for i in range(-10, searches * 2):  # 10 warm-up searches first
        on = i % 2 == 0
        settings.RETRIEVAL_SEARCH_LOG = on
        upload = SimpleUploadedFile("q.jpg", photos[(i // 2) % len(photos)])
        t = time.perf_counter()
        response = client.post("/api/v1/search/", {"image": upload, "top": 10})
        elapsed = (time.perf_counter() - t) * 1000
        assert response.status_code == 200, response.content[:300]
        if i >= 0:
            timings[on].append(elapsed)
    settings.RETRIEVAL_SEARCH_LOG = True
    # The write alone (what runs after the response), one search per INSERT as in production.
    write: list[float] = []
    for _ in range(300):
        record = analytics.SearchRecord(
            channel="api", mode="fused", top=10, filters={}, latency_ms=50.0,
            garment_ids=list(range(1, 11)), predicted_category="Tshirts",
            confidence=0.9, model="bench",
        )  # fmt: skip
        t = time.perf_counter()
        analytics.save_searches(records=[record])
        write.append((time.perf_counter() - t) * 1000)
    # The part inside the request: making the record of a real search's result (the id the
    # answer names, its hits) and registering the after-response write.
    from django.http import HttpResponse

    from retrieval import search

    found = search.search_photo(image=photos[0], top=10)
    inside: list[float] = []
    for _ in range(1000):
        t = time.perf_counter()
        answer = HttpResponse(b"")
        made = analytics.SearchRecord.of(result=found.result, channel="api", top=10, filters={})
        analytics.record_search(answer, made)
        inside.append((time.perf_counter() - t) * 1000)
    on_ms, off_ms = timings[True], timings[False]
    # Paired: search i with recording on against the off one just after it (same photo).
    pairs = [a - b for a, b in zip(on_ms, off_ms, strict=True)]
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
        "added p50 ms (difference of medians)": round(
            statistics.median(on_ms) - statistics.median(off_ms), 2
        ),
        "added ms, median of paired differences": round(statistics.median(pairs), 2),
        "inside the request (record made, write registered) ms p50/p90": [
            round(statistics.median(inside), 4),
            round(statistics.quantiles(inside, n=10)[-1], 4),
        ],
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
    parser.add_argument("--fill", action="store_true", help="write the rows again")
    parser.add_argument("--searches", type=int, default=200)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.what == "dashboard":
        result = dashboard(args.rows, args.repeats, args.fill)
    else:
        result = recording(args.searches)
    result["machine"] = f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()}"
    result["total s"] = round(time.perf_counter() - started)
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
