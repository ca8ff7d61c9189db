"""Liveness of the services the site depends on: database, broker and feature workers.

A full probe takes seconds (asking the workers waits out PROBE_TIMEOUT_SECONDS for their
replies), so /healthz answers from :func:`cached_health_report`: the last probe of this
process, refreshed in a background thread once older than RETRIEVAL_HEALTH_CACHE_SECONDS.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, connections
from django.db.utils import Error as DatabaseError

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Probe:
    """One health probe: its verdict, its report (:func:`health_report`) and when it ended
    (time.monotonic())."""

    healthy: bool
    report: dict
    at: float


_probes: dict[tuple, Probe] = {}
_refreshing: set[tuple] = set()
_probes_lock = threading.Lock()


def _probe_key() -> tuple:
    """What a probe's answer depends on: a settings change (tests) is a new cache entry."""
    return (settings.REDIS_URL, settings.FEATURES_QUEUE, connection.settings_dict.get("NAME"))


def fresh_health_report() -> tuple[bool, dict]:
    """Probe now (seconds at worst) and keep the result for :func:`cached_health_report`."""
    key = _probe_key()
    healthy, report = health_report()
    with _probes_lock:
        _probes[key] = Probe(healthy=healthy, report=report, at=time.monotonic())
    return healthy, report


def _refresh_in_background(key: tuple) -> None:
    with _probes_lock:
        if key in _refreshing:
            return
        _refreshing.add(key)

    def refresh() -> None:
        try:
            fresh_health_report()
        except Exception:  # a probe reports failures itself; this is a bug: keep the old one
            log.exception("health probe failed")
        finally:
            connections.close_all()  # this thread's connections only
            with _probes_lock:
                _refreshing.discard(key)

    threading.Thread(target=refresh, name="health-probe", daemon=True).start()


def cached_health_report(*, max_age: float | None = None) -> tuple[bool, dict]:
    """The last probe of this process, at once; older than ``max_age`` seconds
    (RETRIEVAL_HEALTH_CACHE_SECONDS) it is still answered, and a background thread probes
    again (one at a time), so no request waits for a probe, however many clients poll.
    The first call of a process probes (a few seconds at worst)."""
    if max_age is None:
        max_age = settings.RETRIEVAL_HEALTH_CACHE_SECONDS
    key = _probe_key()
    with _probes_lock:
        probe = _probes.get(key)
    if probe is None:
        return fresh_health_report()
    if time.monotonic() - probe.at > max_age:
        _refresh_in_background(key)
    return probe.healthy, probe.report


def public_report(report: dict) -> dict:
    """What anyone may see: the verdict and the names of the services down; never worker
    host names, versions or error texts (staff see those)."""
    return {"status": report["status"], "down": list(report["down"])}
