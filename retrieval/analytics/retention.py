"""Retention of the search log and its roll-up: RETRIEVAL_SEARCH_LOG_DAYS, pruned daily by beat."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from retrieval.analytics.rollup import floor_hour
from retrieval.models import SearchHour, SearchLog

log = logging.getLogger(__name__)

#: Rows per DELETE: bounded transactions and locks at any log size.
PRUNE_CHUNK = 20_000

# A chunk of the oldest searches, by the created_at index; their clicks go by the cascade.
_CHUNK_SQL = f"""
SELECT id, photo FROM {SearchLog._meta.db_table}
WHERE created_at < %s ORDER BY created_at LIMIT %s
"""


def prune_search_log(*, days: int | None = None) -> int:
    """Delete the searches (and their clicks, and kept photos) older than ``days`` days
    (default RETRIEVAL_SEARCH_LOG_DAYS), in chunks, and the roll-up's hours that ended
    before then. Idempotent. Returns the searches deleted."""
    from django.core.files.storage import default_storage

    days = settings.RETRIEVAL_SEARCH_LOG_DAYS if days is None else days
    cutoff = timezone.now() - timedelta(days=days)
    deleted = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(_CHUNK_SQL, [cutoff, PRUNE_CHUNK])
            rows = cursor.fetchall()
        if not rows:
            break
        SearchLog.objects.filter(id__in=[r[0] for r in rows]).delete()
        deleted += len(rows)
        for _, photo in rows:
            if photo:
                try:
                    default_storage.delete(photo)
                except OSError as exc:
                    log.warning("could not delete the kept search photo %s: %s", photo, exc)
        if len(rows) < PRUNE_CHUNK:
            break
    SearchHour.objects.filter(hour__lt=floor_hour(cutoff)).delete()
    if deleted:
        log.info("pruned %d searches older than %d days", deleted, days)
    return deleted
