"""Publishing Celery tasks from services: bounded, by task name, and recovery when the broker is
back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)


# The error of a pending garment (import job, training) whose task never reached the
# broker. The sweep queues these at once, whatever their age; staff see why they wait.
NOT_QUEUED = (
    "not queued yet: Redis (the task broker) was unavailable; queued again automatically "
    "once it is back"
)


# How often a process whose publish failed asks whether the broker answers again.
RECOVERY_POLL_SECONDS = 1.0


def _broker_ping() -> Exception | None:
    """None when the broker answers a PING within REDIS_SOCKET_TIMEOUT, else the error."""
    from fashionsite.celery import app
    from retrieval import health

    return health.ping_redis(app.conf.broker_url)


def publish(task: str, *, args: list, **options: Any) -> Exception | None:
    """Send the task named ``task`` (its Celery name, e.g. ``retrieval.tasks.index_garments``)
    now; the broker's error, if it is unavailable, else None. ``options``: Celery's publish
    options (``queue``...). By name, so services never import the tasks module (which imports
    them): routing by name (fashionsite.celery.route_task) applies as before.

    A broker that accepts connections but does not answer (a hung server, a partition) is
    not sent the task: it would run it once it answers again, after the caller marked the
    work NOT_QUEUED and the sweep queued it a second time. So a PING comes first, bounded by
    REDIS_SOCKET_TIMEOUT; a refused connection (down) falls through to the publish, retried
    briefly (CELERY_TASK_PUBLISH_RETRY_POLICY: a blip, not an outage). No result is kept
    (nothing reads these results, and keeping one would make the publish wait on Redis a
    second time, as the result backend). On an error the caller marks the work NOT_QUEUED and
    the sweep is the real retry: this process queues it once the broker answers again.
    """
    import redis

    from fashionsite.celery import app

    error = _broker_ping()
    if isinstance(error, redis.TimeoutError):
        recover_when_broker_answers()
        return error
    try:
        app.send_task(task, args=args, ignore_result=True, **options)
    except Exception as exc:  # kombu raises transport-specific errors
        recover_when_broker_answers()
        return exc
    return None


_recovery_lock = threading.Lock()


_recovery_wanted = False


_recovery_thread: threading.Thread | None = None


def _forget_recovery_thread() -> None:
    # A forked child (a prefork worker) has no such thread, and a fresh lock.
    global _recovery_lock, _recovery_wanted, _recovery_thread
    _recovery_lock, _recovery_wanted, _recovery_thread = threading.Lock(), False, None


os.register_at_fork(after_in_child=_forget_recovery_thread)


def recover_when_broker_answers() -> None:
    """Queue the sweep (requeue_stuck) from this process as soon as the broker answers again.

    Workers queue it as they reconnect, but a broker that hung and came back (stopped, a
    partition) leaves their connections open: nothing reconnects, and what this process
    could not queue would wait for beat's next sweep. One thread per process, started on
    demand; a failure while it waits makes it send one more sweep.
    """
    global _recovery_wanted, _recovery_thread
    with _recovery_lock:
        _recovery_wanted = True
        if _recovery_thread is None:
            _recovery_thread = threading.Thread(
                target=_recovery_loop, name="recover-when-broker-answers", daemon=True
            )
            _recovery_thread.start()


def _recovery_loop() -> None:
    global _recovery_wanted, _recovery_thread
    from fashionsite.celery import app

    while True:
        with _recovery_lock:
            if not _recovery_wanted:
                _recovery_thread = None
                return
            _recovery_wanted = False
        while True:
            time.sleep(RECOVERY_POLL_SECONDS)
            if _broker_ping() is not None:
                continue
            try:
                app.send_task("retrieval.tasks.requeue_stuck", ignore_result=True)
            except Exception as exc:  # gone again: keep waiting
                log.debug("sweep not queued yet: %s", exc)
                continue
            log.info("broker answers again: sweep queued")
            break


def features_backlog() -> int | None:
    """Tasks waiting in the features queue (not yet delivered to a worker), or None when the
    broker cannot be asked.

    Asked through the app's broker connection (REDIS_CONNECT_TIMEOUT to connect,
    REDIS_SOCKET_TIMEOUT to read), one attempt: the sweep never hangs on a broker that is
    down or stuck. On Redis a queue is one list per priority step (kombu's sub-queues);
    ``queue_declare`` counts them all (LLEN of each), and declaring changes nothing on Redis.
    Tasks a worker has taken but not acknowledged (acks_late) are not counted: their garments are
    processing, under a lease.
    """
    from fashionsite.celery import app

    timeout = settings.REDIS_CONNECT_TIMEOUT
    try:
        with app.connection_for_read(
            connect_timeout=timeout,
            transport_options={"socket_timeout": settings.REDIS_SOCKET_TIMEOUT, "max_retries": 1},
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            declared = conn.default_channel.queue_declare(queue=settings.FEATURES_QUEUE)
            return int(declared.message_count)
    except Exception as exc:  # kombu raises transport-specific errors
        log.warning(
            "sweep: cannot count the tasks waiting in the '%s' queue: %s: %s",
            settings.FEATURES_QUEUE,
            exc.__class__.__name__,
            exc,
        )
        return None


def workers_available(*, timeout: float = 1.0) -> bool:
    """Whether any Celery worker consumes the features queue right now."""
    from fashionsite.celery import app

    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # broker down: nobody will pick anything up
        return False
    return any(q["name"] == settings.FEATURES_QUEUE for queues in replies.values() for q in queues)


def take_unqueued(queryset) -> list[int]:
    """Ids of the rows of ``queryset`` marked NOT_QUEUED, locked FOR UPDATE SKIP LOCKED and
    unmarked, inside the caller's transaction: concurrent sweeps each take a row once."""
    ids = list(
        queryset.select_for_update(skip_locked=True)
        .filter(error=NOT_QUEUED)
        .values_list("id", flat=True)
    )
    queryset.model.objects.filter(id__in=ids).update(error="")
    return ids


class QueueUnavailable(RuntimeError):
    """The task broker (Redis) refused a publish: the work was not started."""
