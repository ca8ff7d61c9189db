"""Indexing against real PostgreSQL, Redis and the real CNN: bad images fail alone, a garment
is claimed by one worker at a time, and the sweep requeues stuck garments (minding the
features queue's backlog)."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile

from fashionsite.celery import app
from retrieval import catalogue, indexing
from retrieval.jobs import publishing
from retrieval.models import BackboneFeature, Garment
from tests.catalogue_zips import png_bomb
from tests.factories import GarmentFactory, jpeg_bytes


@pytest.mark.django_db
@pytest.mark.slow
def test_indexing_fails_bad_images_with_their_reason_and_indexes_the_rest(bad_catalogue):
    """Imports refuse images that do not decode, but a stored file can still go bad (a disk
    error, a file replaced behind the site's back): indexing fails that garment with the
    reason, never the batch."""
    catalogue.import_catalog(source=bad_catalogue)
    # 107 (trailing bytes after a valid JPEG, under the default size limit) is fine.
    assert set(Garment.objects.values_list("sku", flat=True)) == {"100", "107"}
    category = Garment.objects.get(sku="100").category
    for sku, data in {
        "101": b"<html>not an image</html>",
        "102": jpeg_bytes()[:300],
        "103": png_bomb(),
    }.items():
        GarmentFactory(
            sku=sku,
            category=category,
            status=Garment.Status.PENDING,
            image=ContentFile(data, name=f"{sku}.jpg"),
        )
    ids = list(Garment.objects.values_list("id", flat=True))
    result = indexing.index_garments(garment_ids=ids)
    status = {g.sku: (g.status, g.error) for g in Garment.objects.all()}
    assert status["100"][0] == Garment.Status.READY
    assert status["101"] == (Garment.Status.FAILED, status["101"][1])
    assert "not an image" in status["101"][1]
    assert status["102"][0] == Garment.Status.FAILED and status["102"][1]
    assert status["103"][0] == Garment.Status.FAILED and "too large" in status["103"][1]
    ready = set(Garment.objects.filter(id__in=result.ready).values_list("sku", flat=True))
    assert ready == {"100", "107"} and len(result.failed) == 3
    assert BackboneFeature.objects.count() == 2


@pytest.mark.django_db
def test_a_garment_is_claimed_by_one_worker_at_a_time():
    garment = GarmentFactory(status=Garment.Status.PENDING)
    assert indexing.claim_garments(garment_ids=[garment.pk], claim="task-a") == [garment.pk]
    assert indexing.claim_garments(garment_ids=[garment.pk], claim="task-b") == []
    # The same task redelivered after its worker died takes it back at once.
    assert indexing.claim_garments(garment_ids=[garment.pk], claim="task-a") == [garment.pk]


def garment_under_a_dead_lease() -> Garment:
    """A processing garment whose worker took it long ago and died."""
    garment = GarmentFactory(status=Garment.Status.PROCESSING)
    Garment.objects.filter(pk=garment.pk).update(
        claimed_by="dead-task", claimed_at="2000-01-01T00:00Z"
    )
    return garment


@pytest.mark.django_db
def test_stuck_garments_are_requeued(settings):
    garment = garment_under_a_dead_lease()
    assert indexing.requeue_stuck_garments() == 1
    garment.refresh_from_db()
    assert garment.status == Garment.Status.PENDING and garment.claimed_by == ""


@pytest.mark.django_db(transaction=True)
def test_the_sweep_leaves_old_pending_garments_alone_while_their_queue_holds_a_backlog(
    private_features_queue, caplog
):
    """A large import on a slow machine: the features queue holds more than
    RETRIEVAL_STUCK_MINUTES of work, so garments waiting in it are pending and old. The sweep
    queues nothing more for them while tasks wait; what was never queued (NOT_QUEUED) is
    queued at once all the same; once the queue has drained (here: emptied, as by a Redis
    that lost its data) the garments still pending are queued again."""
    waiting = [GarmentFactory(status=Garment.Status.PENDING).pk for _ in range(3)]
    indexing.enqueue_indexing(garment_ids=waiting)  # autocommit: published at once
    assert publishing.features_backlog() == 1
    old = "2000-01-01T00:00Z"
    Garment.objects.filter(id__in=waiting).update(updated_at=old)

    caplog.set_level("INFO", logger="retrieval.indexing")
    assert indexing.requeue_stuck_garments() == 0
    assert publishing.features_backlog() == 1  # no duplicate behind the backlog
    assert "3 pending for over" in caplog.text and "1 tasks still wait" in caplog.text
    assert indexing.requeue_stuck_garments() == 0  # nor at the next sweep
    assert publishing.features_backlog() == 1

    # Never queued (Redis was down at upload): queued at once, backlog or not.
    unsent = GarmentFactory(status=Garment.Status.PENDING, error=publishing.NOT_QUEUED)
    Garment.objects.filter(pk=unsent.pk).update(updated_at=old)
    assert indexing.requeue_stuck_garments() == 1
    assert publishing.features_backlog() == 2
    unsent.refresh_from_db()
    assert (unsent.status, unsent.error) == (Garment.Status.PENDING, "")
    assert set(
        Garment.objects.filter(id__in=waiting).values_list("status", "updated_at__year")
    ) == {(Garment.Status.PENDING, 2000)}  # untouched

    # The backlog is gone (drained, or lost): the old pending garments have no task left.
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(private_features_queue)
    assert publishing.features_backlog() == 0
    assert indexing.requeue_stuck_garments() == 3
    assert publishing.features_backlog() == 1  # one task for the three (one chunk)
    assert indexing.requeue_stuck_garments() == 0  # fresh again, and queued


@pytest.mark.django_db(transaction=True)
def test_the_sweep_still_requeues_stale_leases_while_the_queue_holds_a_backlog(
    private_features_queue,
):
    """A processing garment under an old lease: its worker died after taking its task, so no
    backlog is hiding a task of it; the sweep takes it back as before."""
    GarmentFactory(status=Garment.Status.PENDING)  # something waits in the queue
    indexing.enqueue_indexing(garment_ids=list(Garment.objects.values_list("id", flat=True)))
    assert publishing.features_backlog() == 1
    garment = garment_under_a_dead_lease()
    assert indexing.requeue_stuck_garments() == 1
    garment.refresh_from_db()
    assert garment.status == Garment.Status.PENDING and garment.claimed_by == ""
    assert publishing.features_backlog() == 2
