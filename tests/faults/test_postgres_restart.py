"""PostgreSQL restarted under searches, against the real services: the test session's own embedded
PostgreSQL (var/test/) is stopped and started again while a real gunicorn web process answers
shoppers. (Redis down or hung: tests/faults/test_outages.py.)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connections

from fashionsite import embedded
from retrieval import catalogue
from retrieval.models import Garment
from tests.conftest import ROOT, service_env, stop_process, wait_until
from tests.factories import CategoryFactory, jpeg_bytes

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

# Generous: long enough for a loaded 2-core machine, short enough to report a hang.
HANG_SECONDS = 60.0


def reconnect_django() -> None:
    """This process's connection died with the server: drop it so the next query reconnects."""
    connections.close_all()


@pytest.mark.parametrize(
    ("path", "content_type", "text"),
    [("/api/v1/garments/", "application/json", "database_unavailable"),
     ("/categories/", "text/html", "temporarily unavailable")],
)  # fmt: skip
def test_a_database_outage_raised_outside_a_view_is_a_503_too(rf, path, content_type, text):
    """handler500, called by Django while it handles an exception a middleware raised (e.g.
    saving the session): a database outage is answered as from a view (503, Retry-After)."""
    from django.db import OperationalError

    from retrieval.web.views import server_error

    try:
        raise OperationalError("connection to server failed: No such file or directory")
    except OperationalError:
        response = server_error(rf.get(path))
    assert response.status_code == 503
    assert response["Content-Type"].startswith(content_type)
    assert response["Retry-After"]
    assert text in response.content.decode()
    # Any other error stays a 500.
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        assert server_error(rf.get(path)).status_code == 500


class WebServer:
    """A real gunicorn web process (as ``make run`` starts it) on the test database."""

    def __init__(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = service_env(
            # As in production: no debug pages, so a 500 would show as one.
            DJANGO_DEBUG="false",
            DJANGO_SECRET_KEY="fault-test-secret-key-not-for-production-0123456789",
            DJANGO_SECURE_SSL_REDIRECT="false",
            DJANGO_ALLOWED_HOSTS="127.0.0.1",
            RETRIEVAL_SEARCH_THROTTLE="off",
            RETRIEVAL_TORCH_THREADS="1",
        )
        self.log_path = settings.VAR_DIR / "web-faults.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "fashionsite.wsgi:application",
                "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--threads", "2",
                "--timeout", "120",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log_path.read_text()}")
            try:
                return requests.get(f"{self.url}/healthz", timeout=5).status_code in {200, 503}
            except requests.RequestException:
                return False

        if not wait_until(answers, timeout=90):
            raise RuntimeError(f"gunicorn not ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@dataclass
class Answer:
    kind: str  # "api" (search by photo) or "site" (a page)
    started: float  # time.monotonic()
    finished: float
    status: int | None
    body: str = ""
    retry_after: str | None = None
    error: str = ""  # a transport error (timeout, connection refused): never expected


@dataclass
class Shopper:
    """Searches by photo through the API and browses the site's pages, in a loop."""

    server: WebServer
    photo: bytes
    garment_id: int
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def calls(self):
        base = self.server.url
        files = {"image": ("query.jpg", self.photo, "image/jpeg")}
        yield (
            "api",
            lambda: requests.post(
                f"{base}/api/v1/search/", files=files, data={"top": "5"}, timeout=HANG_SECONDS
            ),
        )
        yield "site", lambda: requests.get(f"{base}/", timeout=HANG_SECONDS)
        yield "site", lambda: requests.get(f"{base}/categories/", timeout=HANG_SECONDS)
        yield (
            "site",
            lambda: requests.get(f"{base}/garments/{self.garment_id}/", timeout=HANG_SECONDS),
        )

    def run(self) -> None:
        while not self.stop.is_set():
            for kind, send in self.calls():
                started = time.monotonic()
                try:
                    response = send()
                except requests.RequestException as exc:
                    self.answers.append(
                        Answer(kind, started, time.monotonic(), None, error=repr(exc))
                    )
                    continue
                self.answers.append(
                    Answer(
                        kind,
                        started,
                        time.monotonic(),
                        response.status_code,
                        response.text[:2000],
                        response.headers.get("Retry-After"),
                    )
                )

    def seen(self, *, status: int, since: float = 0.0) -> bool:
        """Both kinds (API search, site page) answered ``status`` to a request sent since."""
        kinds = {a.kind for a in self.answers if a.status == status and a.started >= since}
        return kinds == {"api", "site"}


@pytest.mark.slow
def test_postgres_restart_during_searches_answers_503_then_serves_again_without_restarts(
    trained_catalogue, celery_worker
):
    if not settings.EMBEDDED_POSTGRES:
        pytest.skip("restarts the embedded PostgreSQL; DATABASE_URL points elsewhere")
    restarts = celery_worker.restarts
    pgdata = settings.VAR_DIR / "postgres"
    garment = Garment.objects.filter(status=Garment.Status.READY).first()
    with garment.image.open("rb") as handle:
        photo = handle.read()
    server = WebServer()
    shopper = Shopper(server=server, photo=photo, garment_id=garment.pk)
    thread = threading.Thread(target=shopper.run, daemon=True)
    try:
        server.wait_ready()
        thread.start()
        assert wait_until(lambda: shopper.seen(status=200), timeout=120), shopper.answers[-5:]

        outage_began = time.monotonic()
        assert embedded.stop_postgres(pgdata)
        try:
            assert wait_until(
                lambda: shopper.seen(status=503, since=outage_began), timeout=HANG_SECONDS
            ), shopper.answers[-5:]

            # /healthz names the database as what is down, once its cached probe is refreshed
            # (anonymous callers get a probe at most RETRIEVAL_HEALTH_CACHE_SECONDS old, #17).
            def healthz():
                return requests.get(f"{server.url}/healthz", timeout=HANG_SECONDS)

            assert wait_until(lambda: healthz().status_code == 503, timeout=HANG_SECONDS)
            assert "database" in healthz().json()["down"], healthz().json()
        finally:
            embedded.ensure_postgres(pgdata)  # the same data directory, the same socket
            recovered = time.monotonic()
            reconnect_django()

        assert wait_until(
            lambda: shopper.seen(status=200, since=recovered), timeout=HANG_SECONDS
        ), shopper.answers[-5:]
        assert wait_until(
            lambda: requests.get(f"{server.url}/healthz", timeout=HANG_SECONDS).status_code == 200,
            timeout=HANG_SECONDS,
        )
    finally:
        shopper.stop.set()
        thread.join(timeout=2 * HANG_SECONDS)
        server.stop()
    log = server.log_path.read_text()

    # No answer hung or failed at the transport level, and each was a 200 or a clear 503.
    assert not [a for a in shopper.answers if a.error], [a for a in shopper.answers if a.error]
    assert {a.status for a in shopper.answers} <= {200, 503}, {
        (a.kind, a.status, a.body[:200]) for a in shopper.answers if a.status != 200
    }
    before = [a for a in shopper.answers if a.finished < outage_began]
    after = [a for a in shopper.answers if a.started >= recovered]
    assert before and {a.status for a in before} == {200}
    # Recovered at once: the web process replaced its broken connections by itself.
    assert after and {a.status for a in after} == {200}, [(a.kind, a.body[:200]) for a in after]
    unavailable = [a for a in shopper.answers if a.status == 503]
    assert unavailable
    for answer in unavailable:
        assert answer.retry_after is not None
        if answer.kind == "api":
            error = json.loads(answer.body)["error"]
            assert error["code"] == "database_unavailable"
            assert "database is unavailable" in error["message"]
        else:
            assert "temporarily unavailable" in answer.body
    # One web process served throughout: gunicorn booted its worker once (a worker killed for
    # hanging would have been booted again).
    assert log.count("Booting worker") == 1, log

    # The worker, never restarted either, indexes a garment saved after the restart.
    category = CategoryFactory(name="After restart")
    new = Garment(sku="AFTER-1", title="Indexed after the restart", category=category)
    new.image.save("after.jpg", ContentFile(jpeg_bytes((10, 10, 200))), save=False)
    catalogue.save_garment(garment=new, image_changed=True)
    assert wait_until(
        lambda: Garment.objects.get(pk=new.pk).status == Garment.Status.READY, timeout=120
    ), Garment.objects.filter(pk=new.pk).values_list("status", "error").first()
    assert celery_worker.restarts == restarts  # the same worker, never restarted
