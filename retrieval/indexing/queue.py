"""Queueing indexing work after commit, and the sweep that recovers garments whose task was lost."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from retrieval.indexing.extraction import INDEX_CHUNK
from retrieval.jobs.publishing import NOT_QUEUED, features_backlog, publish
from retrieval.models import (
    Garment,
)

log = logging.getLogger(__name__)


def enqueue_indexing(*, garment_ids: Iterable[int]) -> None:
    """Queue feature extraction for these garments once the current transaction commits.

    Never fails the caller (an upload, an import) and never waits long: with the broker down
    the publish gives up within seconds (CELERY_* retry settings), the garments stay pending
    marked NOT_QUEUED, and :func:`requeue_stuck_garments` queues them once Redis is back
    (workers run it as they reconnect, and beat periodically). Nothing is lost.
    """
    ids = sorted(set(garment_ids))
    if not ids:
        return

    def send() -> None:

        for start in range(0, len(ids), INDEX_CHUNK):
            error = publish(
                "retrieval.tasks.index_garments", args=[ids[start : start + INDEX_CHUNK]]
            )
            if error is not None:
                unsent = ids[start:]
                log.warning(
                    "broker unavailable, %d garments stay pending until it is back: %s",
                    len(unsent),
                    error,
                )
                _mark_not_queued(garment_ids=unsent)
                return

    transaction.on_commit(send)


def _mark_not_queued(*, garment_ids: Sequence[int]) -> None:
    try:
        Garment.objects.filter(id__in=garment_ids, status=Garment.Status.PENDING).update(
            error=NOT_QUEUED
        )
    except DatabaseError as exc:  # both services down: the age-based sweep still finds them
        log.warning("could not mark %d garments as not queued: %s", len(garment_ids), exc)


def mark_for_reindex(*, garment_ids: Sequence[int]) -> int:
    """Set garments back to pending and queue them (admin action "re-index")."""
    with transaction.atomic():
        count = Garment.objects.filter(id__in=garment_ids).update(
            status=Garment.Status.PENDING, error="", claimed_by="", updated_at=timezone.now()
        )
        enqueue_indexing(garment_ids=garment_ids)
    return count


def requeue_stuck_garments(*, older_than: timedelta | None = None) -> int:
    """Queue again garments whose indexing task never reached the broker, or was lost.

    - pending and marked NOT_QUEUED (the publish failed, Redis was down): at once, whatever
      their age: no lease or timeout is involved, as no task exists;
    - pending for longer than ``older_than`` (RETRIEVAL_STUCK_MINUTES): a task the broker
      accepted but lost (Redis restarted without persisting it), but only while the features
      queue is empty (see below);
    - processing under a lease older than ``older_than``: its worker died and the task was
      not redelivered.

    Why the features queue must be empty for the second case: during a large import on a
    slow machine the queue legitimately holds more than ``older_than`` of work, and the
    garments waiting in it are pending and old; re-queueing them would only add duplicates
    behind them, at every sweep. Tasks are taken in order, so while any task still waits we
    cannot tell a lost task from one not reached yet, and wait: once the backlog has drained
    (or been lost: the queue is then empty), a garment still pending and old has no task and
    the next sweep queues it. A queue nobody consumes (no feature worker) is never re-queued
    into either, which would not help. When the broker cannot be asked (it is down: the
    publish would fail too and mark them NOT_QUEUED), the age alone decides, as before. The
    count is taken before the rows are locked, so a task published meanwhile can only make
    this sweep re-queue too much, never too little. Processing garments are not affected:
    their lease starts when a worker takes their task, not when it was queued.

    Rows are taken FOR UPDATE SKIP LOCKED, so sweeps running at once (several workers
    reconnecting) queue each garment once. Returns the number of garments queued.
    """
    if older_than is None:
        older_than = timedelta(minutes=settings.RETRIEVAL_STUCK_MINUTES)
    cutoff = timezone.now() - older_than
    not_queued = Q(status=Garment.Status.PENDING, error=NOT_QUEUED)
    pending_old = Q(status=Garment.Status.PENDING, updated_at__lt=cutoff) & ~Q(error=NOT_QUEUED)
    stale_lease = Q(status=Garment.Status.PROCESSING, claimed_at__lt=cutoff)
    backlog = features_backlog() if Garment.objects.filter(pending_old).exists() else 0
    wanted = not_queued | stale_lease
    if not backlog:  # 0: nothing waits; None: the broker cannot say
        wanted |= pending_old
    with transaction.atomic():
        stuck = list(
            Garment.objects.select_for_update(skip_locked=True)
            .filter(wanted)
            .values_list("id", flat=True)
        )
        if stuck:
            # Release leases so the new task may claim them.
            Garment.objects.filter(id__in=stuck).update(
                status=Garment.Status.PENDING, error="", claimed_by="", updated_at=timezone.now()
            )
            enqueue_indexing(garment_ids=stuck)
    if backlog:
        skipped = Garment.objects.filter(pending_old).count()
        log.info(
            "sweep: re-queued %d garments; %d pending for over %s left alone: %d tasks "
            "still wait in the '%s' queue",
            len(stuck),
            skipped,
            older_than,
            backlog,
            settings.FEATURES_QUEUE,
        )
    elif stuck:
        log.info(
            "sweep: re-queued %d garments (not queued, pending or processing for over %s%s)",
            len(stuck),
            older_than,
            "; the broker could not be asked for its backlog" if backlog is None else "",
        )
    return len(stuck)
