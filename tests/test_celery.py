"""A task round-trips through the real Redis broker to a real worker process and back."""

import pytest
from django.db import connection

from fashionsite.celery import app
from retrieval import tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_task_round_trip_through_redis_and_a_worker_process(celery_worker):
    result = tasks.probe.delay()
    reply = result.get(timeout=30)
    # The worker is another process that reached the same (test) database through the broker.
    assert reply["database"] == connection.settings_dict["NAME"]
    assert not reply["worker"].endswith(f":{__import__('os').getpid()}")


def test_celery_configuration_is_json_late_ack_prefetch_one():
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    queue_names = {q.name for q in conf.task_queues}
    assert {"default", "features"} <= queue_names
    assert conf.task_time_limit > conf.task_soft_time_limit > 0
