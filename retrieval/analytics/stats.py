"""The search analytics' numbers: one selector behind the admin dashboard, its CSV export and
the staff API (``GET /api/v1/stats/searches/``).

Read from the hourly roll-up (:mod:`.rollup`) for the hours it holds and from the raw rows
for the rest of the range (the open hour, and any hour beat has not rolled up yet), added up
by one code path; days and hours are the site's time zone (TIME_ZONE; a zone whose offset is
not whole hours would split an hour between two days: the whole hour counts on the day it
starts). Latency percentiles come from the summed fixed-bucket histograms (within 10%).
Measured at 1M recorded searches in docs/benchmarks.md.
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
from django.conf import settings
from django.utils import timezone

from retrieval.analytics import rollup
from retrieval.analytics.rollup import BUCKETS, SLOWEST, percentile
from retrieval.models import SearchLog

#: Click-through is reported at these ranks (a click on any of the first k results).
CTR_RANKS = (1, 5, 10)
#: How many categories the dashboard lists.
TOP_CATEGORIES = 10


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
    slowest: list[SlowSearch] = field(default_factory=list)
    rolled_up_through: datetime | None = None  # hours before it came from the roll-up

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


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def tally(*, start: datetime, end: datetime, rollups: bool = True) -> rollup.Tally:
    """The searches of ``[start, end)`` added up: the stored roll-up for the whole hours
    before its mark, the raw rows for the rest (all of it with ``rollups=False``)."""
    through = rollup.rolled_up_through() if rollups else None
    first, last = rollup.ceil_hour(start), rollup.floor_hour(end)
    if through is not None:
        last = min(last, through)
    if through is None or last <= first:
        return rollup.tally_rows(rollup.raw_hours(start=start, end=end))
    total = rollup.tally_stored(start=first, end=last)
    total.add(rollup.tally_rows(rollup.raw_hours(start=start, end=first)))
    total.add(rollup.tally_rows(rollup.raw_hours(start=last, end=end)))
    return total


def search_stats(*, start: datetime, end: datetime, rollups: bool = True) -> SearchStats:
    """The numbers of the searches recorded in ``[start, end)``. ``rollups=False`` aggregates
    the raw rows only (the check of the roll-up, and the benchmark's baseline)."""
    through = rollup.rolled_up_through() if rollups else None
    sums = tally(start=start, end=end, rollups=rollups)
    zone = timezone.get_current_timezone()
    first_day = timezone.localtime(start, zone).date()
    last_day = timezone.localtime(end - timedelta(microseconds=1), zone).date()
    per_day: list[DayCount] = []
    total_hist = np.zeros(BUCKETS, dtype=np.int64)
    day = first_day
    while day <= last_day and len(per_day) < 3660:
        hist = sums.day_hists.get(day)
        if hist is not None:
            total_hist += hist
        per_day.append(
            DayCount(
                day,
                sums.per_day.get(day, 0),
                _ms(percentile(hist, 0.5)) if hist is not None else None,
                _ms(percentile(hist, 0.95)) if hist is not None else None,
            )
        )
        day += timedelta(days=1)
    searches, clicked, at1, at5, at10, low = (int(v) for v in sums.totals)
    top = sorted(sums.per_category.items(), key=lambda c: (-c[1], c[0]))[:TOP_CATEGORIES]
    slowest_ids = [i for _, i in sums.slowest[:SLOWEST]]
    found = SearchLog.objects.in_bulk(slowest_ids)
    slowest = [
        SlowSearch(s.id, s.created_at, s.channel, s.mode, s.latency_ms, s.predicted_category)
        for s in (found.get(i) for i in slowest_ids)
        if s is not None
    ]
    return SearchStats(
        start=start,
        end=end,
        searches=searches,
        latency_p50_ms=_ms(percentile(total_hist, 0.5)),
        latency_p95_ms=_ms(percentile(total_hist, 0.95)),
        low_confidence_threshold=settings.RETRIEVAL_SEARCH_LOW_CONFIDENCE,
        low_confidence=low,
        low_confidence_share=_share(low, searches),
        ctr={1: _share(at1, searches), 5: _share(at5, searches), 10: _share(at10, searches)},
        without_click=searches - clicked,
        without_click_share=_share(searches - clicked, searches),
        per_day=per_day,
        per_hour=[int(n) for n in sums.per_hour],
        top_categories=[CategoryCount(c, n, _share(n, searches)) for c, n in top],
        slowest=slowest,
        rolled_up_through=through,
    )


def stats_csv(stats: SearchStats) -> str:
    """The dashboard's numbers as CSV: one ``section, key, value, extra`` row per number."""
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
    for s in stats.slowest:
        writer.writerow(["slowest", str(s.id), s.latency_ms, s.created_at.isoformat()])
    return out.getvalue()
