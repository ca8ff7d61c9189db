"""The search analytics' numbers: one selector behind the admin dashboard, its CSV export and
the staff API (``GET /api/v1/stats/searches/``), computed by SQL aggregates.

Two statements for the whole date range, whatever its size: one GROUPING SETS aggregate over
the searches (per day, per hour of day, per predicted category, and the totals, from the
covering index on ``created_at``: an index-only scan), one for the clicks per rank; and the
slowest searches (the ``latency_ms`` index). Measured at 1M searches in docs/benchmarks.md.
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from retrieval.models import SearchClick, SearchLog

#: Click-through is reported at these ranks (a click on any of the first k results).
CTR_RANKS = (1, 5, 10)
#: How many categories and slow searches the dashboard lists.
TOP_CATEGORIES = 10
SLOWEST = 10


@dataclass(frozen=True)
class DayCount:
    day: date
    searches: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None


@dataclass(frozen=True)
class CategoryCount:
    category: str  # "" when the search had no prediction
    searches: int
    share: float


@dataclass(frozen=True)
class RankClicks:
    rank: int
    clicks: int
    ctr: float  # clicks at this rank / searches


@dataclass(frozen=True)
class SlowSearch:
    id: uuid.UUID
    created_at: datetime
    channel: str
    mode: str
    latency_ms: float
    predicted_category: str


@dataclass(frozen=True)
class SearchStats:
    """Searches by photo between ``start`` (inclusive) and ``end`` (exclusive)."""

    start: datetime
    end: datetime
    searches: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    low_confidence_threshold: float
    low_confidence: int
    low_confidence_share: float
    ctr: dict[int, float]  # k -> share of searches with a click on one of the first k
    without_click: int
    without_click_share: float
    per_day: list[DayCount] = field(default_factory=list)
    per_hour: list[int] = field(default_factory=list)  # 24 counts, local time
    top_categories: list[CategoryCount] = field(default_factory=list)
    clicks_per_rank: list[RankClicks] = field(default_factory=list)
    slowest: list[SlowSearch] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready (the staff API's body)."""
        body = asdict(self)
        body["ctr"] = {f"at_{k}": v for k, v in self.ctr.items()}
        return body


def period(*, days: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last ``days`` days, today included: from local midnight ``days - 1`` days ago."""
    now = timezone.localtime(now or timezone.now())
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)
    return start, now + timedelta(microseconds=1)


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _ms(value) -> float | None:
    return None if value is None else round(float(value), 2)


# GROUPING(day, hour, cat): 3 = per day (hour and category rolled up), 5 = per hour,
# 6 = per category, 7 = the totals.
AGGREGATE_SQL = f"""
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
    FROM {SearchLog._meta.db_table}
    WHERE created_at >= %(start)s AND created_at < %(end)s
) AS s
GROUP BY GROUPING SETS ((day), (hour), (cat), ())
"""

CLICKS_SQL = f"""
SELECT c.rank, count(*) FROM {SearchClick._meta.db_table} AS c
JOIN {SearchLog._meta.db_table} AS l ON l.id = c.search_id
WHERE l.created_at >= %(start)s AND l.created_at < %(end)s
GROUP BY c.rank ORDER BY c.rank
"""


def search_stats(
    *, start: datetime, end: datetime, low_confidence: float | None = None
) -> SearchStats:
    """The numbers of the searches recorded in ``[start, end)``; days and hours are local time
    (TIME_ZONE). ``low_confidence``: below it a search counts as low-confidence (default
    RETRIEVAL_SEARCH_LOW_CONFIDENCE; a search without a prediction counts too)."""
    low = settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE if low_confidence is None else low_confidence
    params: dict[str, Any] = {"start": start, "end": end, "low": low, "tz": settings.TIME_ZONE}
    with connection.cursor() as cursor:
        cursor.execute(AGGREGATE_SQL, params)
        rows = cursor.fetchall()
        cursor.execute(CLICKS_SQL, params)
        clicks = cursor.fetchall()
    total = next((r for r in rows if r[0] == 7), None)
    searches = total[4] if total else 0
    per_day = sorted(
        (DayCount(r[1], r[4], _ms(r[5]), _ms(r[6])) for r in rows if r[0] == 3),
        key=lambda d: d.day,
    )
    # Every day of the range, with 0 for days without searches (a chart's gaps are days).
    counted = {d.day: d for d in per_day}
    first = timezone.localtime(start).date()
    last = timezone.localtime(end - timedelta(microseconds=1)).date()
    days: list[DayCount] = []
    day = first
    while day <= last and len(days) < 3660:
        days.append(counted.get(day, DayCount(day, 0, None, None)))
        day += timedelta(days=1)
    hours = [0] * 24
    for r in rows:
        if r[0] == 5 and r[2] is not None:
            hours[int(r[2])] = r[4]
    categories = sorted(
        (CategoryCount(r[3], r[4], _share(r[4], searches)) for r in rows if r[0] == 6),
        key=lambda c: (-c.searches, c.category),
    )[:TOP_CATEGORIES]
    slowest = [
        SlowSearch(*row)
        for row in SearchLog.objects.filter(created_at__gte=start, created_at__lt=end)
        .order_by("-latency_ms")
        .values_list("id", "created_at", "channel", "mode", "latency_ms", "predicted_category")[
            :SLOWEST
        ]
    ]
    return SearchStats(
        start=start,
        end=end,
        searches=searches,
        latency_p50_ms=_ms(total[5]) if total else None,
        latency_p95_ms=_ms(total[6]) if total else None,
        low_confidence_threshold=low,
        low_confidence=total[7] if total else 0,
        low_confidence_share=_share(total[7], searches) if total else 0.0,
        ctr={k: _share(total[8 + i], searches) if total else 0.0 for i, k in enumerate(CTR_RANKS)},
        without_click=total[11] if total else 0,
        without_click_share=_share(total[11], searches) if total else 0.0,
        per_day=days,
        per_hour=hours,
        top_categories=categories,
        clicks_per_rank=[RankClicks(rank, n, _share(n, searches)) for rank, n in clicks],
        slowest=slowest,
    )


def stats_csv(stats: SearchStats) -> str:
    """The dashboard's numbers as CSV: one ``section, key, value[, value]`` row per number."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "key", "value", "extra"])
    writer.writerow(["period", "start", stats.start.isoformat(), ""])
    writer.writerow(["period", "end", stats.end.isoformat(), ""])
    writer.writerow(["totals", "searches", stats.searches, ""])
    writer.writerow(["totals", "latency p50 ms", stats.latency_p50_ms, ""])
    writer.writerow(["totals", "latency p95 ms", stats.latency_p95_ms, ""])
    writer.writerow(
        ["totals", f"low confidence (< {stats.low_confidence_threshold})", stats.low_confidence,
         stats.low_confidence_share]
    )  # fmt: skip
    for k, value in stats.ctr.items():
        writer.writerow(["click-through", f"at {k}", value, ""])
    writer.writerow(["totals", "without any click", stats.without_click, stats.without_click_share])
    for d in stats.per_day:
        writer.writerow(["per day", d.day.isoformat(), d.searches, ""])
        writer.writerow(["latency per day", d.day.isoformat(), d.latency_p50_ms, d.latency_p95_ms])
    for hour, count in enumerate(stats.per_hour):
        writer.writerow(["per hour", f"{hour:02d}", count, ""])
    for c in stats.top_categories:
        writer.writerow(["predicted category", c.category or "(none)", c.searches, c.share])
    for r in stats.clicks_per_rank:
        writer.writerow(["clicks per rank", r.rank, r.clicks, r.ctr])
    for s in stats.slowest:
        writer.writerow(["slowest", str(s.id), s.latency_ms, s.created_at.isoformat()])
    return out.getvalue()
