"""Faults, each against the real services: Redis down or hung (SIGSTOP) while staff upload and
shoppers search. Nothing is mocked: the test session's own embedded Redis (var/test/) is stopped
(or suspended) and started again, with real worker processes.

PostgreSQL restarted during searches: tests/faults/test_postgres_restart.py.

The third fault of issue #8, a worker killed mid-batch (its garments all end ready), is
tests/faults/test_worker_killed.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.test import Client

from fashionsite import embedded
from retrieval import indexing
from retrieval.jobs import publishing
from retrieval.models import Category, EvaluationReport, FeatureModel, Garment, ImportJob
from retrieval.tokens import issue_token
from tests.catalogue_zips import make_catalogue, row
from tests.conftest import wait_until
from tests.factories import CategoryFactory, jpeg_bytes

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

T = TypeVar("T")

# Generous: long enough for a loaded 2-core machine, short enough to report a hang.
HANG_SECONDS = 60.0


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()`` in another thread; fail (rather than hang the session) if it takes longer."""

    def run() -> T:
        try:
            return call()
        finally:
            connections.close_all()  # this thread's connections

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(run).result(timeout=seconds)
    except FutureTimeout:
        pytest.fail(f"hung: no answer within {seconds} s")
    finally:
        pool.shutdown(wait=False)  # never wait here for a call that hangs


# --------------------------------------------------------------------------- Redis down


@contextlib.contextmanager
def redis_stopped() -> Iterator[None]:
    """Stop the test session's Redis; always start it again (on its port) and wait for it."""
    if not settings.EMBEDDED_REDIS:
        pytest.skip("stops the embedded Redis; REDIS_URL points elsewhere")
    datadir = settings.VAR_DIR / "redis"
    assert embedded.stop_redis(datadir)
    try:
        yield
    finally:
        url = embedded.ensure_redis(datadir)  # returns once it answers PING
        # The same port: every process that resolved REDIS_URL before reconnects by itself.
        assert url == settings.REDIS_URL


def healthz(client) -> tuple[int, dict]:
    response = client.get("/healthz")
    return response.status_code, response.json()


def admin_upload(admin_client, *, sku: str, category: Category):
    """Staff add a garment with a photo in the admin."""
    return admin_client.post(
        "/admin/retrieval/garment/add/",
        {
            "sku": sku,
            "title": "Coat uploaded in the admin",
            "description": "",
            "category": category.pk,
            "colour": "Green",
            "attributes": "{}",
            "image": SimpleUploadedFile("coat.jpg", jpeg_bytes((0, 140, 60))),
        },
    )


def candidate_model(*, like: FeatureModel) -> FeatureModel:
    """A trained, inactive model to activate: the live model's head and knobs under a new name
    (activating the live model itself is refused before any queueing: "already live")."""
    return FeatureModel.objects.create(
        name=f"{like.name}-candidate",
        backbone=like.backbone,
        backbone_dim=like.backbone_dim,
        head_file=like.head_file,
        classes=like.classes,
        colour_variant=like.colour_variant,
        colour_weight=like.colour_weight,
        normalize_deep=like.normalize_deep,
        metrics={"val_accuracy": like.metrics.get("val_accuracy")},
        status=FeatureModel.Status.READY,
    )


def admin_activate(admin_client, *, model: FeatureModel):
    """Staff activate ``model`` as the admin offers it (issue #16): the list's "activate"
    action leads to the side-by-side confirmation page, whose "Yes, make it live" POST queues
    the re-indexing; the final page (the list, with its message) after following redirects."""
    action = admin_client.post(
        "/admin/retrieval/featuremodel/",
        {"action": "activate_selected", "_selected_action": [model.pk]},
    )
    confirm_url = f"/admin/retrieval/featuremodel/{model.pk}/activate/"
    assert (action.status_code, action["Location"]) == (302, confirm_url)
    page = admin_client.get(confirm_url)
    assert page.status_code == 200 and 'id="model-comparison"' in page.content.decode()
    assert f"Yes, make {model.name} live" in page.content.decode()
    return admin_client.post(confirm_url, follow=True)


def queued_activations(*, queue: str) -> list[list]:
    """The positional arguments of each ``reindex_model`` message waiting in ``queue`` (a Redis
    list of Celery messages: JSON, the body base64-encoded JSON ``[args, kwargs, embed]``)."""
    client = redis.Redis.from_url(str(settings.REDIS_URL))
    found = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "retrieval.tasks.reindex_model":
            found.append(json.loads(base64.b64decode(message["body"]))[0])
    return found


def assert_nothing_changed_then_activation_queues_once(
    *, admin_client, live: FeatureModel, model: FeatureModel, queue: str
) -> None:
    """After an outage: the evaluation failed saying why, the live model still serves, the
    candidate is untouched and nothing was queued to run later; once Redis answers, the
    activation's confirmation queues the candidate's re-index, once."""
    report = EvaluationReport.objects.get()
    assert report.status == EvaluationReport.Status.FAILED
    assert "Redis (the task queue) was unavailable" in report.error
    live.refresh_from_db()
    model.refresh_from_db()
    assert live.active and live.status == FeatureModel.Status.READY
    assert not model.active and model.status == FeatureModel.Status.READY
    assert queued_activations(queue=queue) == []
    response = within(HANG_SECONDS, lambda: admin_activate(admin_client, model=model))
    assert f"Re-indexing for {model.name}" in response.content.decode()
    assert queued_activations(queue=queue) == [[model.pk]]


@pytest.fixture
def unconsumed_training_queue(settings) -> Iterator[str]:
    """Training tasks routed to a queue no worker consumes, so a test can see what was queued
    (the session's worker would otherwise run the re-indexing); emptied afterwards."""
    queue = "training-fault-test"
    settings.TRAINING_QUEUE = queue
    client = redis.Redis.from_url(str(settings.REDIS_URL))
    client.delete(queue)
    yield queue
    client.delete(queue, f"_kombu.binding.{queue}")  # the list and kombu's route to it


def api_upload(api: Client, *, sku: str, category: Category):
    """Staff add a garment with a photo through the API (``api`` carries a staff token)."""
    return api.post(
        "/api/v1/garments/",
        {
            "sku": sku,
            "title": "Coat uploaded through the API",
            "category": category.slug,
            "colour": "Red",
            "image": SimpleUploadedFile("api.jpg", jpeg_bytes((200, 10, 10))),
        },
    )


@pytest.mark.slow
def test_uploads_while_redis_is_down_stay_pending_and_are_indexed_once_it_is_back(
    celery_worker, admin_client, admin_user, tmp_path
):
    restarts = celery_worker.restarts
    category = CategoryFactory(name="Outage coats")
    api = Client(HTTP_AUTHORIZATION=f"Token {issue_token(user=admin_user).key}")
    catalogue = make_catalogue(
        tmp_path / "outage.zip",
        row("OUT-10", category="Outage coats") + row("OUT-11", category="Outage coats"),
        {"OUT-10.jpg": jpeg_bytes((20, 120, 40)), "OUT-11.jpg": jpeg_bytes((120, 20, 40))},
    )

    with redis_stopped():
        status, body = healthz(admin_client)
        assert status == 503 and "redis" in body["down"], body

        # The admin: the upload succeeds (no hang, no error) and the garment waits, pending.
        response = within(
            HANG_SECONDS,
            lambda: admin_upload(admin_client, sku="OUT-1", category=category),
        )
        assert response.status_code == 302, response.content[:2000]

        # The API, as staff with a token: 201, status pending.
        response = within(
            HANG_SECONDS,
            lambda: api_upload(api, sku="OUT-2", category=category),
        )
        assert response.status_code == 201, response.content[:2000]
        assert response.json()["status"] == "pending"
        api_garment = response.json()["id"]

        # An import started in the admin: the job is kept, pending.
        with open(catalogue, "rb") as handle:
            response = within(
                HANG_SECONDS,
                lambda: admin_client.post(
                    "/admin/retrieval/importjob/add/",
                    {"upload": handle, "category_field": "articleType", "limit": ""},
                ),
            )
        assert response.status_code == 302, response.content[:2000]

        uploaded = Garment.objects.filter(sku__in=["OUT-1", "OUT-2"])
        assert {g.status for g in uploaded} == {Garment.Status.PENDING}
        # Staff see why they wait: the garment's error (the admin's form, the API) says so.
        assert {g.error for g in uploaded} == {publishing.NOT_QUEUED}
        shown = api.get(f"/api/v1/garments/{api_garment}/").json()
        assert (shown["status"], shown["error"]) == ("pending", publishing.NOT_QUEUED)
        job = ImportJob.objects.latest("created_at")
        assert (job.status, job.error) == (ImportJob.Status.PENDING, publishing.NOT_QUEUED)

    # Redis is back: the worker reconnects and queues the sweep (no beat runs in tests), which
    # queues what was never queued: the two uploads are indexed, the import runs and its
    # garments are indexed in turn.
    skus = ["OUT-1", "OUT-2", "OUT-10", "OUT-11"]
    assert wait_until(
        lambda: Garment.objects.filter(sku__in=skus, status=Garment.Status.READY).count() == 4,
        timeout=240,
    ), list(Garment.objects.values_list("sku", "status", "error"))
    assert not Garment.objects.filter(sku__in=skus).exclude(error="").exists()
    job.refresh_from_db()
    assert (job.status, job.error, job.created) == (ImportJob.Status.DONE, "", 2)
    assert wait_until(lambda: healthz(admin_client)[0] == 200, timeout=HANG_SECONDS)
    assert celery_worker.restarts == restarts  # the same worker, never restarted


def test_the_sweep_with_redis_down_does_not_hang_and_requeues_by_age_as_before():
    """The sweep cannot ask Redis how much work waits: it gives up within the connect timeout
    and falls back to the age alone; the publish fails too, so the garment is marked
    NOT_QUEUED, which the sweep queues at once when Redis is back."""
    from tests.factories import GarmentFactory

    garment = GarmentFactory(status=Garment.Status.PENDING)
    Garment.objects.filter(pk=garment.pk).update(updated_at="2000-01-01T00:00Z")
    with redis_stopped():
        started = time.monotonic()
        assert within(HANG_SECONDS, publishing.features_backlog) is None
        assert time.monotonic() - started < 4 * settings.REDIS_CONNECT_TIMEOUT + 2
        assert within(HANG_SECONDS, indexing.requeue_stuck_garments) == 1
        # (Checked before Redis is back: a running worker's sweep would then queue it.)
        garment.refresh_from_db()
        assert (garment.status, garment.error) == (Garment.Status.PENDING, publishing.NOT_QUEUED)


@pytest.mark.slow
def test_training_asked_for_while_redis_is_down_waits_and_runs_once_it_is_back(
    celery_worker, admin_client
):
    with redis_stopped():
        response = within(
            HANG_SECONDS, lambda: admin_client.post("/admin/retrieval/featuremodel/train/")
        )
        assert response.status_code == 302, response.content[:2000]
        model = FeatureModel.objects.get()
        assert (model.status, model.error) == (FeatureModel.Status.TRAINING, publishing.NOT_QUEUED)

    # Back: the sweep queues the training and the worker runs it. The catalogue is empty, so
    # the training ends failed, saying why: it ran.
    assert wait_until(
        lambda: FeatureModel.objects.get(pk=model.pk).status == FeatureModel.Status.FAILED,
        timeout=120,
    ), FeatureModel.objects.values_list("status", "error").first()
    model.refresh_from_db()
    assert "at least 2 categories" in model.error


@pytest.mark.slow
def test_activate_and_evaluate_while_redis_is_down_say_so_and_change_nothing(
    trained_catalogue, admin_client, unconsumed_training_queue
):
    """The admin's other background jobs: a clear message, no error page, nothing half-done;
    the activation, confirmed again once Redis is back, is queued (once)."""

    live = FeatureModel.objects.get(active=True)
    model = candidate_model(like=live)
    with redis_stopped():
        response = within(
            HANG_SECONDS,
            lambda: admin_activate(admin_client, model=model),
        )
        assert response.status_code == 200
        assert "Redis (the task queue) is unavailable" in response.content.decode()
        response = within(
            HANG_SECONDS,
            lambda: admin_client.post("/admin/retrieval/evaluationreport/run/", follow=True),
        )
        assert response.status_code == 200
    assert_nothing_changed_then_activation_queues_once(
        admin_client=admin_client, live=live, model=model, queue=unconsumed_training_queue
    )


@pytest.mark.slow
def test_search_by_photo_works_while_redis_is_down(trained_catalogue, client, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"search": "30/min"},  # counted in Redis: must fail open
    }
    garment = Garment.objects.filter(status=Garment.Status.READY).first()
    with garment.image.open("rb") as handle:
        photo = handle.read()
    with redis_stopped():
        response = within(
            HANG_SECONDS,
            lambda: client.post(
                "/api/v1/search/", {"image": SimpleUploadedFile("q.jpg", photo), "top": 5}
            ),
        )
    assert response.status_code == 200, response.content[:2000]
    assert garment.pk in [hit["id"] for hit in response.json()["results"]]


# --------------------------------------------------------------------------- Redis hung

# A hung Redis (stopped, a network partition) accepts connections (the kernel does) and never
# answers. Each call that reaches it gives up after REDIS_SOCKET_TIMEOUT (2 s); this bound is
# for liveness on a loaded 2-core machine, not a speed claim.
HUNG_BOUND_SECONDS = 15.0


@contextlib.contextmanager
def redis_hung() -> Iterator[None]:
    """SIGSTOP the test session's redis-server: connections stay open, nothing answers.
    Always SIGCONT it again, and wait until it answers."""
    if not settings.EMBEDDED_REDIS:
        pytest.skip("stops the embedded Redis; REDIS_URL points elsewhere")
    pid = int((settings.VAR_DIR / "redis" / "redis.pid").read_text().strip())
    assert b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
        assert wait_until(client.ping, timeout=HANG_SECONDS)


def timed(call: Callable[[], T]) -> tuple[T, float]:
    """``call()``'s result and the seconds it took (failing past HANG_SECONDS)."""
    started = time.monotonic()
    result = within(HANG_SECONDS, call)
    return result, time.monotonic() - started


def test_a_hung_redis_is_sent_no_task_and_the_sweep_is_queued_once_it_answers(caplog):
    """A publish to a Redis that does not answer gives up after one PING timeout and sends
    nothing: a task sent now would run when Redis wakes, after its work was marked NOT_QUEUED
    and queued again by the sweep. This process queues the sweep once Redis answers."""
    queue = "hung-redis-test"  # no worker consumes it: what reached Redis stays there

    def probe():
        return publishing.publish("retrieval.tasks.probe", args=[], queue=queue)

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(queue)
    try:
        assert probe() is None
        assert client.llen(queue) == 1  # the route works: a publish lands in that list
        with caplog.at_level(logging.INFO, logger="retrieval.jobs.publishing"):
            with redis_hung():
                error, seconds = timed(
                    lambda: publishing.publish("retrieval.tasks.probe", args=[], queue=queue)
                )
                assert isinstance(error, redis.TimeoutError), error
                assert seconds < HUNG_BOUND_SECONDS  # measured 2.0 s (one PING timeout)
            assert wait_until(lambda: "sweep queued" in caplog.text, timeout=HANG_SECONDS)
        time.sleep(1)  # had anything been sent to the stopped server, it has run by now
        assert client.llen(queue) == 1
    finally:
        client.delete(queue)


@pytest.mark.slow
def test_uploads_and_training_while_redis_hangs_answer_in_bounded_time_and_run_once_it_is_back(
    celery_worker, admin_client, admin_user
):
    restarts = celery_worker.restarts
    category = CategoryFactory(name="Hung coats")
    api = Client(HTTP_AUTHORIZATION=f"Token {issue_token(user=admin_user).key}")

    with redis_hung():
        (status, body), seconds = timed(lambda: healthz(admin_client))
        assert status == 503 and "redis" in body["down"], body
        assert seconds < HUNG_BOUND_SECONDS  # measured 2.2 s

        # The admin: the upload answers (no hang, no error) and the garment waits, pending.
        response, seconds = timed(
            lambda: admin_upload(admin_client, sku="HUNG-1", category=category)
        )
        assert response.status_code == 302, response.content[:2000]
        assert seconds < HUNG_BOUND_SECONDS  # measured 2.1 s

        # The API, as staff with a token: 201, pending.
        response, seconds = timed(lambda: api_upload(api, sku="HUNG-2", category=category))
        assert response.status_code == 201, response.content[:2000]
        assert response.json()["status"] == "pending"
        assert seconds < HUNG_BOUND_SECONDS  # measured 2.1 s

        # The admin's "train": the model waits, queued.
        response, seconds = timed(lambda: admin_client.post("/admin/retrieval/featuremodel/train/"))
        assert response.status_code == 302, response.content[:2000]
        # Measured 4.3 s, about 2 s of it importing torch (the first training request here).
        assert seconds < HUNG_BOUND_SECONDS

        uploaded = Garment.objects.filter(sku__in=["HUNG-1", "HUNG-2"])
        assert {(g.status, g.error) for g in uploaded} == {
            (Garment.Status.PENDING, publishing.NOT_QUEUED)
        }
        model = FeatureModel.objects.get()
        assert (model.status, model.error) == (FeatureModel.Status.TRAINING, publishing.NOT_QUEUED)

    # Redis answers again. The worker's connections stayed open (nothing to reconnect), so
    # this process, whose publishes failed, queues the sweep: both uploads are indexed, and
    # the training runs (one category only, so it ends failed, saying why: it ran).
    assert wait_until(
        lambda: uploaded.filter(status=Garment.Status.READY).count() == 2, timeout=240
    ), list(uploaded.values_list("sku", "status", "error"))
    assert not uploaded.exclude(error="").exists()
    assert wait_until(
        lambda: FeatureModel.objects.get(pk=model.pk).status == FeatureModel.Status.FAILED,
        timeout=120,
    ), FeatureModel.objects.values_list("status", "error").first()
    assert "at least 2 categories" in FeatureModel.objects.get(pk=model.pk).error
    assert wait_until(lambda: healthz(admin_client)[0] == 200, timeout=HANG_SECONDS)
    assert celery_worker.restarts == restarts  # the same worker, never restarted


@pytest.mark.slow
def test_activate_evaluate_and_search_while_redis_hangs_answer_in_bounded_time(
    trained_catalogue, admin_client, client, settings, unconsumed_training_queue
):

    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"search": "30/min"},  # counted in Redis: must fail open
    }
    live = FeatureModel.objects.get(active=True)
    model = candidate_model(like=live)
    garment = Garment.objects.filter(status=Garment.Status.READY).first()
    with garment.image.open("rb") as handle:
        photo = handle.read()
    with redis_hung():
        response, seconds = timed(lambda: admin_activate(admin_client, model=model))
        assert response.status_code == 200
        assert "Redis (the task queue) is unavailable" in response.content.decode()
        assert seconds < HUNG_BOUND_SECONDS  # measured 2.1 s
        response, seconds = timed(
            lambda: admin_client.post("/admin/retrieval/evaluationreport/run/", follow=True)
        )
        assert response.status_code == 200
        assert seconds < HUNG_BOUND_SECONDS  # measured 2.0 s
        response, seconds = timed(
            lambda: client.post(
                "/api/v1/search/", {"image": SimpleUploadedFile("q.jpg", photo), "top": 5}
            )
        )
        assert response.status_code == 200, response.content[:2000]
        assert garment.pk in [hit["id"] for hit in response.json()["results"]]
        assert seconds < HUNG_BOUND_SECONDS  # measured 0.6 s (the throttle gives up after 0.5 s)
    assert_nothing_changed_then_activation_queues_once(
        admin_client=admin_client, live=live, model=model, queue=unconsumed_training_queue
    )
