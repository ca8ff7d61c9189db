"""The hourly roll-up of the search log (:class:`retrieval.models.SearchHour`).

Aggregating the raw rows of a 30- or 90-day range took 3-9 s at 1M recorded searches (one
row per search, a sort per percentile). The dashboard, its CSV and the staff API read one
row per closed hour and predicted category instead (2,160 hours x the categories for 90
days), plus the raw rows of the hours not rolled up yet (the open hour, when beat is on
time): the same :class:`HourRow` either way, so both parts are added up by one code path.

A row holds counters (searches, searches with any click, with a click at rank 1 / within 5
/ within 10, low-confidence searches), a latency histogram with fixed buckets
(:data:`BUCKET_EDGES_MS`; p50 and p95 are read from the summed histograms, interpolated
inside a bucket, so they are within a bucket's width, 10%, of the exact percentile) and the
hour's slowest searches. The beat task (:func:`rollup_searches`, every 5 minutes) rolls up
the hours closed since its last run and recomputes the hours whose searches got a click
since then; an hour is always recomputed whole from its raw rows (idempotent).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from retrieval.models import SearchClick, SearchHour, SearchLog, SearchRollupState

HOUR = timedelta(hours=1)
#: Latency buckets (ms): [0, 1), then 10% wider each, up to 1.1**122 ms (~113 s); the last
#: bucket is everything above. ``(124,)`` float64.
BUCKET_EDGES_MS: np.ndarray = np.concatenate([[0.0], 1.1 ** np.arange(123, dtype=np.float64)])
BUCKETS = len(BUCKET_EDGES_MS)
#: Slowest searches kept per roll-up row (and shown by the dashboard).
SLOWEST = 10
#: An hour is closed this long after its end: a search's row is written after its response,
#: so the last searches of an hour may arrive a moment after it ends.
GRACE = timedelta(minutes=2)
#: Clicks are looked for this far before the last run: a click committed just after a run
#: may carry a time just before it (its transaction's start).
CLICK_MARGIN = timedelta(minutes=5)


@dataclass
class HourRow:
    """The searches of one hour (UTC) and predicted category, stored or computed from raw rows.

    local: the hour's start in the site's time zone (naive); hist: ``(BUCKETS,)`` int64
    latency counts; slowest: (latency ms, search id), slowest first.
    """

    hour: datetime
    local: datetime
    category: str
    searches: int
    clicked: int
    clicked_at_1: int
    clicked_at_5: int
    clicked_at_10: int
    low_confidence: int
    hist: np.ndarray
    slowest: list[tuple[float, uuid.UUID]] = field(default_factory=list)


def floor_hour(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(when: datetime) -> datetime:
    floor = floor_hour(when)
    return floor if floor == when else floor + HOUR


def histogram(latencies_ms: list[float] | np.ndarray) -> np.ndarray:
    """``(BUCKETS,)`` int64 counts of ``latencies_ms`` in the fixed buckets."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    index = np.searchsorted(BUCKET_EDGES_MS, np.maximum(values, 0.0), side="right") - 1
    return np.bincount(index, minlength=BUCKETS).astype(np.int64)


def percentile(hist: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram's latencies, interpolated linearly inside its
    bucket (the overflow bucket answers its lower edge); None when it counts nothing."""
    total = int(hist.sum())
    if total == 0:
        return None
    target = q * total
    cumulative = np.cumsum(hist)
    k = int(np.searchsorted(cumulative, target, side="left"))
    k = min(k, BUCKETS - 1)
    lo = float(BUCKET_EDGES_MS[k])
    if k == BUCKETS - 1:
        return lo
    hi = float(BUCKET_EDGES_MS[k + 1])
    before = float(cumulative[k - 1]) if k else 0.0
    inside = float(hist[k]) or 1.0
    return lo + (hi - lo) * min(1.0, max(0.0, (target - before) / inside))


# One row per (hour, predicted category) of the raw searches in [start, end).
RAW_SQL = f"""
SELECT date_trunc('hour', created_at, 'UTC') AS hour, predicted_category, count(*),
       count(*) FILTER (WHERE first_click_rank IS NOT NULL),
       count(*) FILTER (WHERE first_click_rank <= 1),
       count(*) FILTER (WHERE first_click_rank <= 5),
       count(*) FILTER (WHERE first_click_rank <= 10),
       count(*) FILTER (WHERE confidence IS NULL OR confidence < %(low)s),
       array_agg(latency_ms),
       (array_agg(latency_ms ORDER BY latency_ms DESC))[1:{SLOWEST}],
       (array_agg(id ORDER BY latency_ms DESC))[1:{SLOWEST}]
FROM {SearchLog._meta.db_table}
WHERE created_at >= %(start)s AND created_at < %(end)s
GROUP BY 1, 2
ORDER BY 1, 2
"""


def raw_hours(*, start: datetime, end: datetime, low: float | None = None) -> list[HourRow]:
    """The roll-up rows of the raw searches in ``[start, end)``, computed now (not stored).
    ``low``: the low-confidence threshold (default RETRIEVAL_SEARCH_LOW_CONFIDENCE)."""
    low = settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE if low is None else low
    if start >= end:
        return []
    with connection.cursor() as cursor:
        cursor.execute(RAW_SQL, {"start": start, "end": end, "low": low})
        rows = cursor.fetchall()
    zone = timezone.get_current_timezone()
    out = []
    for hour, category, n, clicked, at1, at5, at10, low_n, latencies, slow_ms, slow_ids in rows:
        out.append(
            HourRow(
                hour=hour,
                local=hour.astimezone(zone).replace(tzinfo=None),
                category=category,
                searches=n,
                clicked=clicked,
                clicked_at_1=at1,
                clicked_at_5=at5,
                clicked_at_10=at10,
                low_confidence=low_n,
                hist=histogram(latencies),
                slowest=list(zip(slow_ms, slow_ids, strict=True)),
            )
        )
    return out


@dataclass
class Tally:
    """Roll-up rows added up: what the dashboard shows, before shares and percentiles.

    totals: ``(6,)`` int64: searches, with any click, with a click at 1, within 5, within 10,
    low-confidence; per_hour: ``(24,)`` int64 searches per hour of the day (site time);
    day_hists: ``(BUCKETS,)`` int64 latency counts per day; slowest: (latency ms, search id).
    """

    totals: np.ndarray = field(default_factory=lambda: np.zeros(6, dtype=np.int64))
    per_day: dict[date, int] = field(default_factory=dict)
    day_hists: dict[date, np.ndarray] = field(default_factory=dict)
    per_hour: np.ndarray = field(default_factory=lambda: np.zeros(24, dtype=np.int64))
    per_category: dict[str, int] = field(default_factory=dict)
    slowest: list[tuple[float, uuid.UUID]] = field(default_factory=list)

    def add_day(self, day: date, searches: int, hist: np.ndarray | None = None) -> None:
        self.per_day[day] = self.per_day.get(day, 0) + searches
        if hist is not None:
            if day in self.day_hists:
                self.day_hists[day] = self.day_hists[day] + hist
            else:
                self.day_hists[day] = hist.astype(np.int64)

    def add_category(self, category: str, searches: int) -> None:
        self.per_category[category] = self.per_category.get(category, 0) + searches

    def add(self, other: Tally) -> None:
        self.totals += other.totals
        self.per_hour += other.per_hour
        for day, n in other.per_day.items():
            self.add_day(day, n)
        for day, hist in other.day_hists.items():
            self.add_day(day, 0, hist)
        for category, n in other.per_category.items():
            self.add_category(category, n)
        self.slowest = sorted([*self.slowest, *other.slowest], key=lambda p: -p[0])[:SLOWEST]


def tally_rows(rows: list[HourRow]) -> Tally:
    """Add up roll-up rows held in memory (the raw part of a range)."""
    tally = Tally()
    for r in rows:
        tally.totals += (
            r.searches, r.clicked, r.clicked_at_1, r.clicked_at_5, r.clicked_at_10,
            r.low_confidence,
        )  # fmt: skip
        tally.add_day(r.local.date(), r.searches, r.hist)
        tally.per_hour[r.local.hour] += r.searches
        tally.add_category(r.category, r.searches)
        tally.slowest = sorted([*tally.slowest, *r.slowest], key=lambda p: -p[0])[:SLOWEST]
    return tally


# The stored rows of [start, end) added up in SQL, per day, per hour of the day and per
# category (site time). GROUPING(day, hr, cat): 3 = a day, 5 = an hour, 6 = a category.
STORED_TALLY_SQL = f"""
SELECT GROUPING(day, hr, cat), day, hr, cat, sum(searches), sum(clicked), sum(clicked_at_1),
       sum(clicked_at_5), sum(clicked_at_10), sum(low_confidence)
FROM (
    SELECT (hour AT TIME ZONE %(tz)s)::date AS day,
           extract(hour FROM hour AT TIME ZONE %(tz)s)::int AS hr,
           predicted_category AS cat, searches, clicked, clicked_at_1, clicked_at_5,
           clicked_at_10, low_confidence
    FROM {SearchHour._meta.db_table}
    WHERE hour >= %(start)s AND hour < %(end)s
) AS s
GROUP BY GROUPING SETS ((day), (hr), (cat))
"""
# Their histograms, one buffer per day (rows of BUCKETS int32), summed by numpy.
STORED_HISTS_SQL = f"""
SELECT (hour AT TIME ZONE %(tz)s)::date, string_agg(latency_hist, ''::bytea)
FROM {SearchHour._meta.db_table}
WHERE hour >= %(start)s AND hour < %(end)s
GROUP BY 1
"""
# The slowest searches among stored rows: the SLOWEST rows with the slowest maxima hold them
# all (any search slower than another row's maximum beats that row's every search).
STORED_SLOWEST_SQL = f"""
SELECT slowest_ms, slowest_ids FROM {SearchHour._meta.db_table}
WHERE hour >= %(start)s AND hour < %(end)s
ORDER BY max_latency_ms DESC LIMIT {SLOWEST}
"""


def tally_stored(*, start: datetime, end: datetime) -> Tally:
    """Add up the stored roll-up rows of the hours in ``[start, end)``: three statements
    whatever the range (a row per day, hour and category; a histogram buffer per day; the
    slowest)."""
    tally = Tally()
    if start >= end:
        return tally
    params: dict[str, Any] = {"start": start, "end": end, "tz": settings.TIME_ZONE}
    with connection.cursor() as cursor:
        cursor.execute(STORED_TALLY_SQL, params)
        sums = cursor.fetchall()
        cursor.execute(STORED_HISTS_SQL, params)
        hists = cursor.fetchall()
        cursor.execute(STORED_SLOWEST_SQL, params)
        slow = cursor.fetchall()
    for grouping, day, hr, category, *counts in sums:
        if grouping == 3:
            tally.totals += np.asarray(counts, dtype=np.int64)
            tally.add_day(day, int(counts[0]))
        elif grouping == 5:
            tally.per_hour[hr] += int(counts[0])
        elif grouping == 6:
            tally.add_category(category, int(counts[0]))
    for day, buffer in hists:
        matrix = np.frombuffer(bytes(buffer), dtype="<i4").reshape(-1, BUCKETS)
        tally.add_day(day, 0, matrix.sum(axis=0, dtype=np.int64))
    found = [pair for ms, ids in slow for pair in zip(ms, ids, strict=True)]
    tally.slowest = sorted(found, key=lambda p: -p[0])[:SLOWEST]
    return tally


def rollup_hours(*, start: datetime, end: datetime) -> int:
    """(Re)compute and store the roll-up of the hours in ``[start, end)`` (whole hours) from
    their raw rows; hours without searches keep no row. Returns the rows stored."""
    assert floor_hour(start) == start and floor_hour(end) == end, "whole hours only"
    rows = raw_hours(start=start, end=end)
    now = timezone.now()
    with transaction.atomic():
        SearchHour.objects.filter(hour__gte=start, hour__lt=end).delete()
        SearchHour.objects.bulk_create(
            [
                SearchHour(
                    hour=r.hour,
                    predicted_category=r.category,
                    searches=r.searches,
                    clicked=r.clicked,
                    clicked_at_1=r.clicked_at_1,
                    clicked_at_5=r.clicked_at_5,
                    clicked_at_10=r.clicked_at_10,
                    low_confidence=r.low_confidence,
                    latency_hist=r.hist.astype("<i4").tobytes(),
                    max_latency_ms=r.slowest[0][0] if r.slowest else 0.0,
                    slowest_ids=[i for _, i in r.slowest],
                    slowest_ms=[ms for ms, _ in r.slowest],
                    computed_at=now,
                )
                for r in rows
            ],
            batch_size=2000,
        )
    return len(rows)


@dataclass(frozen=True)
class RollupDone:
    hours: int  # hours (re)computed
    through: datetime | None  # hours before it are rolled up


# Closed hours already rolled up whose searches got a click since ``since``.
CLICKED_HOURS_SQL = f"""
SELECT DISTINCT date_trunc('hour', l.created_at, 'UTC')
FROM {SearchClick._meta.db_table} AS c
JOIN {SearchLog._meta.db_table} AS l ON l.id = c.search_id
WHERE c.created_at >= %(since)s AND l.created_at < %(through)s
"""


def _runs(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted hours as (first, last) runs of consecutive hours."""
    runs: list[tuple[datetime, datetime]] = []
    for hour in hours:
        if runs and hour - runs[-1][1] == HOUR:
            runs[-1] = (runs[-1][0], hour)
        else:
            runs.append((hour, hour))
    return runs


def rolled_up_through() -> datetime | None:
    """Hours before this are in the roll-up (None: nothing rolled up yet)."""
    return SearchRollupState.objects.filter(pk=1).values_list("through", flat=True).first()


def rollup_searches(*, now: datetime | None = None) -> RollupDone:
    """Roll up the hours closed since the last run (on the first run: since the oldest
    search), and recompute the rolled-up hours whose searches got a click since the last
    run. Idempotent; runs one at a time (the state row is locked)."""
    now = now or timezone.now()
    closed = floor_hour(now - GRACE)
    hours = 0
    with transaction.atomic():
        SearchRollupState.objects.get_or_create(pk=1)
        state = SearchRollupState.objects.select_for_update().get(pk=1)
        start = state.through
        if start is None:
            oldest = SearchLog.objects.order_by("created_at").values_list("created_at").first()
            start = floor_hour(oldest[0]) if oldest else closed
        if start < closed:
            rollup_hours(start=start, end=closed)
            hours += int((closed - start) / HOUR)
        through = max(start, closed)
        if state.clicks_checked is not None:
            params: dict[str, Any] = {
                "since": state.clicks_checked - CLICK_MARGIN,
                "through": min(start, through),
            }
            with connection.cursor() as cursor:
                cursor.execute(CLICKED_HOURS_SQL, params)
                clicked = sorted(row[0] for row in cursor.fetchall())
            for first, last in _runs(clicked):  # one pass per run of consecutive hours
                rollup_hours(start=first, end=last + HOUR)
            hours += len(clicked)
        state.through = through
        state.clicks_checked = now
        state.save(update_fields=["through", "clicks_checked"])
    return RollupDone(hours=hours, through=through)
