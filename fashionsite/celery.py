"""The Celery app: JSON only, late acks, one queue for CNN feature work apart from the rest."""

from __future__ import annotations

import logging
import os

from celery import Celery, bootsteps, signals
from celery.schedules import crontab
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")

app = Celery("fashionsite")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.on_configure.connect
def _ensure_services(sender: Celery, **_: object) -> None:
    """The worker's and beat's entry point to the embedded servers: before the app reads its
    configuration (the broker URL among it) from the settings, start or attach to them (once
    per process: in a web process or the test session its entry point already did)."""
    from fashionsite.embedded import ensure_services

    ensure_services()


@signals.import_modules.connect(sender=app)
def _check_settings(sender: Celery, **_: object) -> None:
    """A worker or beat with a bad RETRIEVAL_* choice stops with one line per error. Sent once
    they start, after Celery's Django fixup has loaded the apps (it is connected first)."""
    from retrieval.checks import exit_on_errors

    exit_on_errors()


def _cron(expr: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = expr.split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


# Tasks that run the CNN: routed to the features queue (settings.FEATURES_QUEUE).
FEATURE_TASKS = frozenset({"retrieval.tasks.index_garments"})
# Training and re-indexing a whole catalogue for a model (minutes to hours): their own queue
# (settings.TRAINING_QUEUE) and worker, so garments added meanwhile are indexed meanwhile.
TRAINING_TASKS = frozenset({"retrieval.tasks.reindex_model", "retrieval.tasks.train_model"})


def route_task(name: str, args, kwargs, options, task=None, **_: object) -> dict | None:
    """The features queue for CNN work, read from settings at each publish (so the sweep's
    count of waiting work and the routing always name the same queue, tests included); None:
    the default queue. A queue given to ``apply_async`` explicitly still wins."""
    from django.conf import settings

    if name in FEATURE_TASKS:
        return {"queue": settings.FEATURES_QUEUE}
    if name in TRAINING_TASKS:
        return {"queue": settings.TRAINING_QUEUE}
    return None


@app.on_after_configure.connect
def _configure(sender: Celery, **_: object) -> None:
    from django.conf import settings

    sender.conf.task_queues = (
        Queue(settings.CELERY_TASK_DEFAULT_QUEUE),
        Queue(settings.FEATURES_QUEUE),
        Queue(settings.TRAINING_QUEUE),
    )
    # CNN work goes to the features queue, so GPU machines can consume it alone.
    sender.conf.task_routes = (route_task,)
    sender.conf.beat_schedule = {
        "rebuild-clusters": {
            "task": "retrieval.tasks.rebuild_clusters",
            "schedule": _cron(settings.RETRIEVAL_KMEANS_SCHEDULE),
        },
        "requeue-stuck-garments": {
            "task": "retrieval.tasks.requeue_stuck",
            "schedule": settings.RETRIEVAL_SWEEP_MINUTES * 60.0,
        },
        "prune-media": {
            "task": "retrieval.tasks.prune_media",
            "schedule": _cron(settings.RETRIEVAL_PRUNE_MEDIA_SCHEDULE),
        },
        "prune-search-log": {
            "task": "retrieval.tasks.prune_search_log",
            "schedule": _cron(settings.RETRIEVAL_SEARCH_LOG_SCHEDULE),
        },
        # The dashboard's hourly roll-up: closed hours, and hours whose searches got clicks
        # since the last run (retrieval.analytics.rollup); every 5 minutes, so a closed
        # hour's late clicks show within 5 minutes and the open part read raw stays small.
        "rollup-searches": {
            "task": "retrieval.tasks.rollup_searches",
            "schedule": 300.0,
        },
    }


class SweepOnConnect(bootsteps.StartStopStep):
    """Each time this worker (re)connects to the broker, queue the sweep (requeue_stuck).

    Work whose task could not be published while Redis was down is then queued as soon as
    Redis is back and a worker sees it, not at the next beat tick. A consumer bootstep's
    start runs on every connection, including reconnections after an outage (worker_ready
    fires only once). Sweeps from several workers at once are harmless (they skip rows
    another sweep holds). A broker that hung and answers again leaves the connections open,
    so nothing reconnects: the process whose publish failed queues the sweep then
    (retrieval.publishing.recover_when_broker_answers).
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, parent) -> None:
        try:
            parent.app.send_task("retrieval.tasks.requeue_stuck", ignore_result=True)
        except Exception as exc:  # the broker went away again: beat's sweep remains
            logging.getLogger(__name__).warning("could not queue the sweep: %s", exc)


app.steps["consumer"].add(SweepOnConnect)
app.autodiscover_tasks(["retrieval.jobs"])
