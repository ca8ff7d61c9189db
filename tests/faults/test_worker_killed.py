"""Issue #8's "worker killed mid-batch" fault, with real worker processes and the real CNN
(tests/faults/test_outages.py has the Redis and PostgreSQL outages)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.core.files.base import ContentFile

from fashionsite.celery import app
from retrieval.jobs import tasks
from retrieval.models import BackboneFeature, Garment, GarmentFeature
from tests.conftest import WorkerProcess, wait_until
from tests.factories import CategoryFactory, GarmentFactory, jpeg_bytes

pytestmark = pytest.mark.faults


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_nothing():
    """SIGKILL the worker while it indexes; its tasks are redelivered (acks_late) to a second
    worker and every garment ends ready, each with exactly one set of vectors.

    Issue #8's "worker killed mid-batch" fault (tests/test_faults.py has the other faults).
    """
    queue = "features-killtest"
    category = CategoryFactory(name="Killtest")
    garments = [
        GarmentFactory(
            category=category,
            status=Garment.Status.PENDING,
            image=ContentFile(jpeg_bytes((i, 100, 200 - i)), name=f"k{i}.jpg"),
        )
        for i in range(96)
    ]
    ids = [g.pk for g in garments]
    env = {"CELERY_VISIBILITY_TIMEOUT": "4", "RETRIEVAL_BATCH_SIZE": "8"}
    first = WorkerProcess(name="doomed", queues=queue, extra_env=env)
    second = None
    try:
        first.wait_ready()
        for start in range(0, len(ids), 32):
            tasks.index_garments.apply_async(args=[ids[start : start + 32]], queue=queue)
        assert wait_until(
            lambda: Garment.objects.filter(id__in=ids, status=Garment.Status.PROCESSING).exists(),
            timeout=60,
            interval=0.1,
        )
        os.kill(first.process.pid, signal.SIGKILL)
        first.stop()
        assert Garment.objects.filter(id__in=ids).exclude(status=Garment.Status.READY).exists()
        # A worker gives unacknowledged messages older than the visibility timeout back to
        # the queue as it starts, and after that only every ~100 s (kombu scans on one call
        # in 10, every 10 s): let the killed worker's message age past the timeout first, so
        # the rescuer takes it back at once instead of up to 100 s later on a slow machine.
        time.sleep(float(env["CELERY_VISIBILITY_TIMEOUT"]) + 1)
        second = WorkerProcess(name="rescuer", queues=queue, extra_env=env)
        second.wait_ready()
        assert wait_until(
            lambda: (
                not Garment.objects.filter(id__in=ids).exclude(status=Garment.Status.READY).exists()
            ),
            timeout=180,
        ), list(Garment.objects.filter(id__in=ids).values_list("status", "error").distinct())
    finally:
        first.stop()
        if second is not None:
            second.stop()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)
    assert BackboneFeature.objects.filter(garment_id__in=ids).count() == len(ids)
    assert GarmentFeature.objects.filter(garment_id__in=ids).count() == 0  # no model trained
