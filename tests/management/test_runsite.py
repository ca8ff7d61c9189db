"""``make run`` (manage.py runsite) from the outside (issue #17, points 1-4 and 10).

A real runsite process on a free loopback port, against the test database and the test Redis
(its own var/ folder): debug off, slow clients and over-limit bodies, a killed Celery worker,
a stop, and a start after a half-finished stop. Everything bounded: at most 20 slow sockets
sending a few bytes each for a few seconds, no body actually sent over the limit, every wait
with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from django.conf import settings

from tests.conftest import ROOT, service_env

pytestmark = pytest.mark.slow

ADMIN = "runsite-test-admin"
START_SECONDS = 180  # a cold start on a busy two-core machine: migrate, collectstatic, boot


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, *, timeout: float = 10) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET; errors answered by the site included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


class Site:
    """One ``manage.py runsite`` process and the var/ folder it runs in."""

    def __init__(self, var_dir: Path, port: int) -> None:
        var_dir.mkdir(exist_ok=True)
        self.var_dir = var_dir
        self.port = port
        self.log_path = var_dir / f"runsite-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = service_env(
            DJANGO_VAR_DIR=str(self.var_dir),
            WEB_CONCURRENCY="1",  # four web threads: what ten slow clients used to exhaust
            DJANGO_SUPERUSER_USERNAME=ADMIN,
            DJANGO_SUPERUSER_PASSWORD="a-long-test-password",
        )
        env.pop("DJANGO_DEBUG", None)  # make run's default
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait_stopped
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runsite", "--no-import", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_up(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"runsite exited:\n{self.log()[-3000:]}")
            if "fashionsite is up" not in self.log():
                time.sleep(1)
                continue
            with contextlib.suppress(OSError):
                if get(self.port, "/api/v1/categories/", timeout=5)[0] == 200:
                    return
            time.sleep(1)
        raise AssertionError(f"runsite did not come up:\n{self.log()[-3000:]}")

    def pid(self, name: str) -> int:
        return int((self.var_dir / "run" / f"{name}.pid").read_text())

    def descendants(self) -> list[psutil.Process]:
        assert self.process is not None
        return psutil.Process(self.process.pid).children(recursive=True)

    def wait_stopped(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self._log.close()


def kill_everything(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


@pytest.fixture(scope="module")
def var_dir(django_db_setup, django_db_blocker) -> Iterator[Path]:
    path = settings.VAR_DIR / "rs"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
    with django_db_blocker.unblock():
        from django.contrib.auth import get_user_model

        get_user_model().objects.filter(username=ADMIN).delete()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def site(var_dir) -> Iterator[Site]:
    site = Site(var_dir / "a", free_port())
    site.start()
    try:
        site.wait_up()
        yield site
    finally:
        left = site.descendants() if site.process and site.process.poll() is None else []
        if site.process and site.process.poll() is None:
            site.process.send_signal(signal.SIGINT)
        site.wait_stopped(60)
        kill_everything(left)


def test_make_run_serves_with_debug_off_and_json_errors_under_the_api(site):
    status, kind, body = get(site.port, "/api/no/such/endpoint")
    assert (status, kind) == (404, "application/json")
    assert json.loads(body)["error"]["code"] == "not_found"
    status, kind, body = get(site.port, "/no/such/page/")
    assert status == 404 and kind.startswith("text/html")
    # Debug's 404 page lists the URL patterns; the shop's page does not.
    assert b"URLconf" not in body and b"urlpatterns" not in body
    assert "debug off" in site.log()
    # Static files are still served (whitenoise, from the collected files).
    status, _kind, body = get(site.port, "/static/js/search.js")
    assert status == 200 and body


@pytest.mark.parametrize("path", ["/", "/api/v1/search/", "/admin/retrieval/garment/add/"])
def test_an_over_limit_body_is_refused_before_it_is_sent(site, path):
    with socket.create_connection(("127.0.0.1", site.port), timeout=15) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 300000000\r\n\r\n"
        )
        answer = sock.recv(4096)  # answered although not one byte of the body was sent
    assert answer.startswith(b"HTTP/1.1 413")
    if path.startswith("/api/"):
        assert b"payload_too_large" in answer


def slow_client(port: int, index: int, stop: threading.Event) -> None:
    """A byte (or a header line) every half second: a body that never ends, headers that
    never end; at most 12 seconds."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5) as sock:
        if index % 2:
            sock.sendall(
                b"POST /api/v1/search/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            )
        else:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and not stop.is_set():
            sock.sendall(b"x" if index % 2 else b"X-Slow: 1\r\n")
            stop.wait(0.5)


def test_slow_clients_do_not_freeze_the_site(site):
    stop = threading.Event()
    clients = [
        threading.Thread(target=slow_client, args=(site.port, i, stop), daemon=True)
        for i in range(20)
    ]
    for client in clients:
        client.start()
    try:
        time.sleep(2)  # every slow client is connected and sending
        answers = [get(site.port, "/api/v1/categories/", timeout=8)[0] for _ in range(5)]
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=15)
    assert answers == [200] * 5


def test_a_killed_worker_is_started_again_and_the_site_keeps_serving(site):
    worker = site.pid("worker")
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if site.pid("worker") != worker and psutil.pid_exists(site.pid("worker")):
                break
        time.sleep(0.5)
    assert site.pid("worker") != worker
    assert psutil.Process(site.pid("worker")).is_running()
    assert site.process is not None and site.process.poll() is None
    assert get(site.port, "/api/v1/categories/")[0] == 200
    assert "worker exited with status -9" in site.log()


def test_a_start_after_a_half_finished_stop_recovers_and_a_stop_ends_everything(var_dir):
    port = free_port()
    first = Site(var_dir / "b", port)
    first.start()
    second = Site(var_dir / "b", port)
    try:
        first.wait_up()
        # The supervisor dies and leaves its front, web, worker and beat running.
        left = first.descendants()
        assert first.process is not None
        first.process.kill()
        first.wait_stopped(10)
        assert any(p.is_running() for p in left)

        second.start()
        second.wait_up()
        assert "left over from an earlier run" in second.log()
        for process in left:
            assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
        started = second.descendants()
        assert started

        assert second.process is not None
        second.process.send_signal(signal.SIGINT)  # Ctrl-C
        assert second.wait_stopped(60) is not None
        gone, alive = psutil.wait_procs(started, timeout=5)
        assert alive == []
        with socket.socket() as sock:
            # The port is free again (as a server binds it: connections in TIME_WAIT remain).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
        assert not (var_dir / "b" / "run" / "web.pid").exists()
    finally:
        for site in (first, second):
            if site.process is not None and site.process.poll() is None:
                kill_everything(site.descendants())
                site.process.kill()
