"""A task round-trips through the real Redis broker to a real worker process and back."""

import pytest
from django.db import connection

from fashionsite.celery import app
from retrieval.jobs import tasks

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


def test_beat_prunes_media_daily_at_another_hour_than_kmeans(settings):
    from celery import Celery
    from celery.schedules import crontab

    from fashionsite import celery as celery_module

    schedule = app.conf.beat_schedule
    entry = schedule["prune-media"]
    assert entry["task"] == "retrieval.tasks.prune_media" == tasks.prune_media.name
    assert entry["schedule"] == crontab(minute="30", hour="4")
    assert schedule["rebuild-clusters"]["schedule"].hour != entry["schedule"].hour
    # The schedule comes from the setting (read when the app is configured).
    settings.RETRIEVAL_PRUNE_MEDIA_SCHEDULE = "15 2 * * 0"
    # Not the current app: shared tasks published later in the session must keep using ours.
    fresh = Celery("schedule-check", set_as_current=False)
    celery_module._configure(fresh)
    assert fresh.conf.beat_schedule["prune-media"]["schedule"] == crontab(
        minute="15", hour="2", day_of_week="0"
    )
