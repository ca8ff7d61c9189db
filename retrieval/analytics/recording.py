"""Recording searches by photo and clicks on their results, after the response is sent.

A search is written once its answer has gone out (the response's close, which the WSGI
server calls after the last byte; Django's test client too), so recording never delays an
answer, and a failed write is logged, never shown. The record's id (a UUID) exists before
the row: the answer names it (``search_id``) and a click names it back. Clicks are written
the same way, one statement each (the click, and the search's click count and best rank).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpResponse
from django.utils import timezone
from PIL import Image

from retrieval.models import SearchClick, SearchLog
from retrieval.search import SearchResult

log = logging.getLogger(__name__)

#: Folder of the media storage where kept query photos go (RETRIEVAL_SEARCH_LOG_PHOTOS).
PHOTO_DIR = "searches"


@dataclass
class SearchRecord:
    """One search about to be recorded; ``id`` is what the answer names as ``search_id``."""

    channel: str
    mode: str
    top: int
    filters: dict
    latency_ms: float
    garment_ids: list[int]
    predicted_category: str
    confidence: float | None
    model: str
    created_at: datetime = field(default_factory=timezone.now)
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    photo: Image.Image | None = None

    @classmethod
    def of(
        cls,
        *,
        result: SearchResult,
        channel: str,
        top: int,
        filters: dict,
        photo: Image.Image | None = None,
    ) -> SearchRecord:
        """The record of a search's result (its hits in rank order, the head's prediction)."""
        return cls(
            channel=channel,
            mode=result.mode,
            top=top,
            filters=filters,
            latency_ms=result.took_ms,
            garment_ids=[h.garment_id for h in result.hits],
            predicted_category=result.predicted_category or "",
            confidence=result.confidence,
            model=result.model,
            photo=photo if settings.RETRIEVAL_SEARCH_LOG_PHOTOS else None,
        )


def enabled() -> bool:
    """RETRIEVAL_SEARCH_LOG: record searches (on unless turned off)."""
    return bool(settings.RETRIEVAL_SEARCH_LOG)


def after_response(response: HttpResponse, work: Callable[[], object]) -> None:
    """Run ``work`` once the response has been sent (its close()); a failure is logged."""

    def run() -> None:
        # DB errors and storage errors alike: the answer is out, the shopper never sees this.
        try:
            # A savepoint: a failed write never poisons a transaction the caller still uses.
            with transaction.atomic():
                work()
        except Exception:  # never the shopper's problem: the answer is out already
            log.exception("could not record search analytics")

    # Django calls these closers from HttpResponse.close(), before request_finished.
    response._resource_closers.append(run)  # type: ignore[attr-defined]


def record_search(response: HttpResponse, record: SearchRecord) -> None:
    """Write ``record`` after ``response`` is sent (see :func:`after_response`)."""
    after_response(response, lambda: save_searches(records=[record]))


def save_searches(*, records: list[SearchRecord]) -> None:
    """Write search records in one INSERT (and their kept photos, when the setting says so)."""
    rows = []
    for record in records:
        photo = _store_photo(record) if record.photo is not None else ""
        rows.append(
            SearchLog(
                id=record.id,
                created_at=record.created_at,
                channel=record.channel,
                mode=record.mode,
                top=record.top,
                filters=record.filters,
                latency_ms=record.latency_ms,
                garment_ids=record.garment_ids,
                predicted_category=record.predicted_category[:100],
                confidence=record.confidence,
                model=record.model[:100],
                photo=photo,
            )
        )
    SearchLog.objects.bulk_create(rows, ignore_conflicts=True)


def _store_photo(record: SearchRecord) -> str:
    """Keep the query photo (RETRIEVAL_SEARCH_LOG_PHOTOS) as a fresh JPEG (pixels only: no
    metadata of the shopper's file); its media path."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from retrieval import images

    assert record.photo is not None
    name = f"{PHOTO_DIR}/{record.created_at:%Y/%m}/{record.id.hex}.jpg"
    return default_storage.save(name, ContentFile(images.encode_jpeg(record.photo)))


# One statement per click: the click (once per search and garment, its rank read from the
# search's own list, so a client cannot claim another rank), then the search's click count
# and best rank. Nothing happens for an unknown search or a garment it did not list.
CLICK_SQL = f"""
WITH s AS (
    SELECT id, array_position(garment_ids, %(garment)s) AS rank
    FROM {SearchLog._meta.db_table} WHERE id = %(search)s
), clicked AS (
    INSERT INTO {SearchClick._meta.db_table} (search_id, garment_id, rank, created_at)
    SELECT id, %(garment)s, rank, now() FROM s WHERE rank IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING search_id, rank
)
UPDATE {SearchLog._meta.db_table} AS l
SET clicks = l.clicks + 1,
    first_click_rank = LEAST(COALESCE(l.first_click_rank, c.rank), c.rank)
FROM clicked AS c WHERE l.id = c.search_id
"""


def parse_search_id(raw: str | None) -> uuid.UUID | None:
    """A ``search_id`` from a query string, or None for anything that is not a UUID."""
    if not raw or len(raw) > 64:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def save_click(*, search_id: uuid.UUID, garment_id: int) -> bool:
    """Record that a result of a search was opened; False when the search is unknown (pruned,
    never recorded) or did not list the garment, or the click was recorded before."""
    with connection.cursor() as cursor:
        cursor.execute(CLICK_SQL, {"search": search_id, "garment": garment_id})
        return cursor.rowcount > 0


def record_click(response: HttpResponse, *, search_id: uuid.UUID, garment_id: int) -> None:
    """Record a click after ``response`` is sent (see :func:`after_response`)."""
    after_response(response, lambda: save_click(search_id=search_id, garment_id=garment_id))
