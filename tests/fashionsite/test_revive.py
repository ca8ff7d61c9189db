"""The embedded PostgreSQL and Redis come back by themselves after kill -9 (issue #17, 4).

``make run``'s supervisor calls :func:`fashionsite.embedded.revive` every few seconds; here it is
called directly on scratch servers, so the test session's own servers are left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings

from fashionsite import embedded

pytestmark = pytest.mark.slow


@pytest.fixture
def var_dir(request) -> Iterator[Path]:
    # Inside the project tree: pgserver runs PostgreSQL as an unprivileged user when we are root.
    path = settings.VAR_DIR / f"scratch-{request.node.name[:40]}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
    embedded.stop_postgres(path / "postgres")
    embedded.stop_redis(path / "redis")
    shutil.rmtree(path, ignore_errors=True)


def test_killed_embedded_servers_are_started_again_on_their_addresses(var_dir):
    pg_url = embedded.ensure_postgres(var_dir / "postgres")
    redis_url = embedded.ensure_redis(var_dir / "redis")
    assert embedded.revive(var_dir, postgres=True, redis=True) == []  # both answer

    postmaster = int((var_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])
    os.kill(postmaster, signal.SIGKILL)
    os.kill(int((var_dir / "redis" / "redis.pid").read_text()), signal.SIGKILL)
    time.sleep(0.5)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()

    assert sorted(embedded.revive(var_dir, postgres=True, redis=True)) == ["postgres", "redis"]
    # The same socket and port: processes that resolved them before reconnect by themselves.
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert redis.Redis.from_url(redis_url).ping()
    assert embedded.revive(var_dir, postgres=True, redis=True) == []


def test_revive_leaves_alone_what_it_is_not_asked_to_watch(var_dir):
    assert embedded.revive(var_dir, postgres=False, redis=False) == []
    assert not (var_dir / "postgres").exists()
    assert not (var_dir / "redis").exists()
