"""Shared fixtures: real PostgreSQL, real Redis, real Celery worker processes. Nothing is mocked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_ZIP = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"


def database_url_for(settings_dict: dict) -> str:
    """A DATABASE_URL naming the database Django is connected to (the test database in tests)."""
    user = quote(settings_dict.get("USER") or "")
    password = quote(settings_dict.get("PASSWORD") or "")
    host = settings_dict.get("HOST") or ""
    port = settings_dict.get("PORT") or ""
    name = settings_dict["NAME"]
    if host.startswith("/"):  # Unix socket directory
        return f"postgresql://{user}:{password}@/{name}?host={host}"
    return f"postgresql://{user}:{password}@{host}:{port}/{name}"


class WorkerProcess:
    """A real ``celery worker`` subprocess bound to the test database and the test Redis."""

    def __init__(self, *, name: str, queues: str, extra_env: dict[str, str] | None = None):
        from django.db import connection

        self.name = name
        env = os.environ.copy()
        env.update(
            DATABASE_URL=database_url_for(connection.settings_dict),
            REDIS_URL=settings.REDIS_URL,
            DJANGO_VAR_DIR=str(settings.VAR_DIR),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra_env or {})
        self.log_path = settings.VAR_DIR / f"worker-{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "fashionsite",
                "worker",
                "-Q",
                queues,
                "-n",
                f"{name}@%h",
                "--pool",
                "solo",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        from fashionsite.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log_path.read_text()}")
            replies = app.control.ping(timeout=0.5) or []
            if any(any(key.startswith(f"{self.name}@") for key in r) for r in replies):
                return
        raise RuntimeError(f"worker {self.name} not ready:\n{self.log_path.read_text()}")

    def stop(self, *, kill: bool = False) -> None:
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker) -> Iterator[WorkerProcess]:
    """One worker on both queues for the whole session (tasks see committed data only)."""
    from fashionsite.celery import app

    with django_db_blocker.unblock():
        app.control.purge()
        worker = WorkerProcess(
            name="testworker",
            queues=f"{settings.CELERY_TASK_DEFAULT_QUEUE},{settings.FEATURES_QUEUE}",
        )
        try:
            worker.wait_ready()
            yield worker
        finally:
            worker.stop()


@pytest.fixture
def sample_zip() -> Path:
    if not SAMPLE_ZIP.exists():
        pytest.skip(f"sample catalogue not found at {SAMPLE_ZIP}")
    return SAMPLE_ZIP
