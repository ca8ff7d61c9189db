"""Liveness of the services the site depends on: database, broker and feature workers."""

from __future__ import annotations

import functools

from django.conf import settings
from django.db import connection
from django.db.utils import Error as DatabaseError

# A health probe must answer quickly even when a service hangs.
PROBE_TIMEOUT_SECONDS = 2.0


def check_database() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
    except DatabaseError as exc:
        connection.close()  # a broken connection must not be reused by the next request
        return False, f"unreachable: {exc.__class__.__name__}: {str(exc).strip()[:200]}"
    if row is None:
        return False, "pgvector extension is not installed (CREATE EXTENSION vector)"
    return True, f"ok (pgvector {row[0]})"


@functools.cache
def _redis_client(url: str):
    """A Redis client with the connect and read timeouts, one per URL and process."""
    import redis

    return redis.Redis.from_url(
        url,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
    )


def ping_redis(url: str | None = None) -> Exception | None:
    """None when the Redis at ``url`` (default REDIS_URL) answers a PING within
    REDIS_CONNECT_TIMEOUT / REDIS_SOCKET_TIMEOUT, else the error (``redis.TimeoutError``:
    it accepts connections but does not answer; ``redis.ConnectionError``: it is down)."""
    import redis

    try:
        _redis_client(url or settings.REDIS_URL).ping()
    except redis.RedisError as exc:
        return exc
    return None


def check_redis() -> tuple[bool, str]:
    error = ping_redis()
    if error is not None:
        return False, f"unreachable: {error.__class__.__name__}: {error}"
    return True, "ok"


def check_workers() -> tuple[bool, str, list[str]]:
    """Workers that answer a broadcast ping; the features queue must have a consumer."""
    from fashionsite.celery import app

    try:
        # The broker named by settings (not the app's cached pool): what /healthz reports on.
        with app.connection_for_write(settings.REDIS_URL) as conn:
            inspect = app.control.inspect(timeout=PROBE_TIMEOUT_SECONDS, connection=conn)
            replies = inspect.active_queues() or {}
    except Exception as exc:  # kombu raises several transport-specific errors
        return False, f"cannot ask workers: {exc.__class__.__name__}: {exc}", []
    names = sorted(replies)
    queues = {q["name"] for worker_queues in replies.values() for q in worker_queues}
    if not names:
        return False, "no worker is running", []
    if settings.FEATURES_QUEUE not in queues:
        return False, f"no worker consumes the '{settings.FEATURES_QUEUE}' queue", names
    return True, f"ok ({len(names)} worker{'s' if len(names) != 1 else ''})", names


def health_report() -> tuple[bool, dict]:
    """``(healthy, report)``; the report names each service's state."""
    db_ok, db_detail = check_database()
    redis_ok, redis_detail = check_redis()
    if redis_ok:
        workers_ok, workers_detail, names = check_workers()
    else:
        workers_ok, workers_detail, names = False, "unknown: redis is down", []
    services = {
        "database": {"ok": db_ok, "detail": db_detail},
        "redis": {"ok": redis_ok, "detail": redis_detail},
        "workers": {"ok": workers_ok, "detail": workers_detail, "names": names},
    }
    healthy = db_ok and redis_ok and workers_ok
    down = [name for name, state in services.items() if not state["ok"]]
    return healthy, {"status": "ok" if healthy else "down", "down": down, "services": services}
