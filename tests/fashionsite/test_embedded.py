"""Embedded PostgreSQL and Redis: reuse on a second start, no loss on stop, recovery after kill."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings

from fashionsite import embedded

pytestmark = pytest.mark.slow


@pytest.fixture
def scratch(request) -> Path:
    # Inside the project tree: pgserver runs PostgreSQL as an unprivileged user when we are root.
    path = settings.VAR_DIR / f"scratch-{request.node.name[:40]}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
    embedded.stop_postgres(path / "pg")
    embedded.stop_redis(path / "redis")
    shutil.rmtree(path, ignore_errors=True)


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def test_postgres_second_start_reuses_the_running_server(scratch):
    url = embedded.ensure_postgres(scratch / "pg")
    pid = postmaster_pid(scratch / "pg")
    assert embedded.ensure_postgres(scratch / "pg") == url
    assert postmaster_pid(scratch / "pg") == pid
    with psycopg.connect(url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        assert conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector").fetchone()[0] == 1.0


@pytest.mark.faults
def test_postgres_stop_loses_nothing_and_a_killed_server_recovers(scratch):
    pgdata = scratch / "pg"
    url = embedded.ensure_postgres(pgdata)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1)")
    assert embedded.stop_postgres(pgdata)
    url = embedded.ensure_postgres(pgdata)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO kept VALUES (2)")

    os.kill(postmaster_pid(pgdata), signal.SIGKILL)  # a crash: stale postmaster.pid left behind
    time.sleep(0.5)
    url = embedded.ensure_postgres(pgdata)
    with psycopg.connect(url) as conn:
        assert [r[0] for r in conn.execute("SELECT n FROM kept ORDER BY n")] == [1, 2]


@pytest.mark.faults
def test_redis_second_start_reuses_stop_keeps_data_and_kill_recovers(scratch):
    datadir = scratch / "redis"
    url = embedded.ensure_redis(datadir)
    assert embedded.ensure_redis(datadir) == url
    redis.Redis.from_url(url).set("kept", "1")

    assert embedded.stop_redis(datadir)  # SIGTERM: Redis flushes its append-only file
    # Back on the same port: processes that resolved the URL before find it again.
    assert embedded.ensure_redis(datadir) == url
    client = redis.Redis.from_url(url)
    assert client.get("kept") == b"1"

    client.set("also", "2")
    time.sleep(1.5)  # appendfsync everysec: what was written a second ago is on disk
    pid = int((datadir / "redis.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert embedded.ensure_redis(datadir) == url
    client = redis.Redis.from_url(url)
    assert client.get("kept") == b"1"
    assert client.get("also") == b"2"
