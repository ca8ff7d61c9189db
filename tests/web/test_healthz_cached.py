"""/healthz answers monitors from a cached probe, shows details to staff only, and answers
HEAD like GET (issue #17, point 8). Real PostgreSQL and Redis; no worker listens on the Redis
database the tests point at, so the probe's verdict is "down: workers"."""

from __future__ import annotations

import dataclasses
import time

import pytest

from retrieval import health

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def no_workers(settings):
    # A Redis database no worker listens on (the session worker may be up on the real one).
    settings.REDIS_URL = settings.REDIS_URL.rsplit("/", 1)[0] + "/8"
    settings.RETRIEVAL_HEALTH_CACHE_SECONDS = 5
    with health._probes_lock:
        health._probes.clear()
    return settings


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_anonymous_monitors_get_the_verdict_only(client, no_workers):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "down", "down": ["workers"]}


def test_staff_get_a_fresh_probe_with_every_detail(admin_client, no_workers):
    response = admin_client.get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert body["services"]["database"]["detail"].startswith("ok (pgvector ")
    assert body["services"]["workers"]["detail"] == "no worker is running"


def test_anonymous_calls_answer_from_the_cached_probe_and_refresh_it_in_the_background(
    client, no_workers
):
    client.get("/healthz")  # the process's first probe
    key = health._probe_key()
    first = health._probes[key]
    for _ in range(20):
        assert client.get("/healthz").status_code == 503
    assert health._probes[key] is first  # no probe ran for these

    # Stale: answered from it at once, while a background thread probes again.
    stale = dataclasses.replace(first, report={**first.report, "marker": True}, at=0.0)
    with health._probes_lock:
        health._probes[key] = stale
    response = client.get("/healthz")
    assert response.status_code == 503
    assert wait_until(lambda: health._probes[key] is not stale)
    assert "marker" not in health._probes[key].report
    assert not health._refreshing


def test_head_answers_like_get(client, no_workers):
    get, head = client.get("/healthz"), client.head("/healthz")
    assert head.status_code == get.status_code == 503
    assert head.content == b""
    assert head["Content-Type"] == get["Content-Type"]
    home_get, home_head = client.get("/"), client.head("/")
    assert home_head.status_code == home_get.status_code == 200
    assert home_head.content == b""
