"""/healthz reports the real state of the database, Redis and the workers."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
def test_healthz_ok_when_database_redis_and_a_worker_are_up(admin_client, celery_worker):
    response = admin_client.get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["services"]["database"]["ok"]
    assert body["services"]["redis"]["ok"]
    assert any(name.startswith("testworker@") for name in body["services"]["workers"]["names"])


@pytest.mark.faults
def test_healthz_503_names_the_missing_workers(admin_client, settings):
    # A Redis database no worker listens on (the session worker may be up on the real one).
    settings.REDIS_URL = settings.REDIS_URL.rsplit("/", 1)[0] + "/9"
    response = admin_client.get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert "workers" in body["down"]
    assert body["services"]["database"]["ok"]


@pytest.mark.faults
def test_healthz_503_names_redis_when_it_is_unreachable(admin_client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = admin_client.get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert "redis" in body["down"]
    assert body["services"]["redis"]["ok"] is False
