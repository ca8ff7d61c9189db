"""A known search log, shared by the analytics tests and the dashboard's browser test."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from retrieval import analytics

# (when, latency ms, predicted category, confidence, clicked rank or None); site time.
KNOWN = [
    ((2026, 3, 1, 9, 0), 10.0, "Tshirts", 0.9, 1),
    ((2026, 3, 1, 9, 30), 20.0, "Tshirts", 0.8, None),
    ((2026, 3, 1, 21, 0), 30.0, "Shirts", 0.3, 3),
    ((2026, 3, 2, 9, 0), 40.0, "Tshirts", 0.95, None),
    ((2026, 3, 2, 10, 0), 50.0, "Jeans", 0.45, 12),
    ((2026, 3, 2, 23, 59), 1000.0, "", None, None),
]


def record(
    *,
    when: datetime,
    latency: float = 10.0,
    category: str = "Tshirts",
    confidence: float | None = 0.9,
    channel: str = "api",
) -> analytics.SearchRecord:
    return analytics.SearchRecord(
        channel=channel,
        mode="fused",
        top=20,
        filters={},
        latency_ms=latency,
        garment_ids=list(range(101, 121)),
        predicted_category=category,
        confidence=confidence,
        model="m",
        created_at=when,
    )


def known_log() -> dict:
    """Six searches on 2026-03-01 and 02 (site time), clicks at ranks 1, 3 and 12, and one
    search a second before the range (never counted)."""
    zone = timezone.get_current_timezone()
    searches = [
        record(when=datetime(*when, tzinfo=zone), latency=latency, category=cat, confidence=conf)
        for when, latency, cat, conf, _ in KNOWN
    ]
    start = datetime(2026, 3, 1, tzinfo=zone)
    before = record(when=start - timedelta(seconds=1), latency=5000.0, channel="web")
    analytics.save_searches(records=[*searches, before])
    for search, (*_, rank) in zip(searches, KNOWN, strict=True):
        if rank is not None:
            assert analytics.save_click(search_id=search.id, garment_id=100 + rank)
    return {"start": start, "end": start + timedelta(days=2), "records": searches}
