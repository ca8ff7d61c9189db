"""``make run``: migrate, ensure a staff account, then serve and supervise the whole site.

The processes, each in its own process group (so a stop reaches their children too):

- ``front``: the buffering front (fashionsite.front) on HOST:PORT; slow clients cost it a
  coroutine, never a web thread, and bodies over the limit are refused before they are read;
- ``web``: gunicorn (gthread) on a Unix socket in ``var/run/`` only the front connects to;
- ``worker`` and ``beat``: Celery;
- ``import``: the background catalogue import, once.

Supervision: a process that dies is started again after a backoff (1 s, doubling up to 60 s,
reset once it has run a minute), logged; the site keeps serving meanwhile. The embedded
PostgreSQL and Redis (where DATABASE_URL / REDIS_URL are unset) are checked every few seconds
and started again when they stop answering (fashionsite.embedded.revive).

Stopping: Ctrl-C, SIGINT or SIGTERM sends SIGTERM to every process group, waits at most
``--stop-timeout`` seconds, then SIGKILLs what is left (a second Ctrl-C: at once). A start after
a half-finished stop (this supervisor killed, a web process still holding the port) ends what
the earlier run left behind, found from the pid files in ``var/run/`` and the port's holder.
The embedded PostgreSQL and Redis keep running so a restart is instant (``make stop``).

Debug is off unless DJANGO_DEBUG=true: with DJANGO_DEBUG unset, the served processes get
DJANGO_DEBUG=false with the settings plain HTTP on this machine needs (the development secret
key, no HTTPS redirect or secure-only cookies, media served by Django); see
:func:`serving_environment`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from fashionsite import embedded
from retrieval.http import limits
from retrieval.models import Garment

log = logging.getLogger("fashionsite.runsite")

# Garments imported, indexed and trained on before the rest of a catalogue is imported.
FIRST_SLICE = 2000
# A process that ran this long before dying starts again after the shortest backoff.
STABLE_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 60.0
# How often the embedded servers are checked.
WATCH_SECONDS = 3.0
# Processes restarted when they die (the import runs once).
SUPERVISED = ("front", "web", "worker", "trainer", "beat")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def backoff_seconds(failures: int) -> float:
    """Seconds before the ``failures``-th restart in a row: 1, 2, 4, ... at most 60."""
    return min(MAX_BACKOFF_SECONDS, 2.0 ** max(0, failures - 1))


def serving_environment(environ: Mapping[str, str], *, secret_key_file: Path) -> dict[str, str]:
    """The environment of the served processes: debug off unless DJANGO_DEBUG says otherwise.

    DJANGO_DEBUG set (true or false, in the environment or .env): as given, so false means
    production settings (your secret key, HTTPS redirect, secure cookies). Unset: debug off
    for a site served over plain HTTP on this machine: the development secret key (generated
    once into ``secret_key_file``), no HTTPS redirect, cookies not marked secure-only, media
    served by Django; each of these unless set explicitly.
    """
    env = dict(environ)
    if env.get("DJANGO_DEBUG", "").strip():
        return env
    env["DJANGO_DEBUG"] = "false"
    if not env.get("DJANGO_SECRET_KEY", "").strip():
        env["DJANGO_SECRET_KEY"] = embedded.ensure_secret_key(secret_key_file)
    env.setdefault("DJANGO_SECURE_SSL_REDIRECT", "false")
    env.setdefault("DJANGO_SECURE_COOKIES", "false")
    env.setdefault("DJANGO_SECURE_HSTS_SECONDS", "0")
    env.setdefault("DJANGO_SERVE_MEDIA", "true")
    return env


# --------------------------------------------------------------------------- process groups


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def end_groups(
    pgids: list[int],
    *,
    timeout: float,
    kill_now: Callable[[], bool] = lambda: False,
    children: Iterable[subprocess.Popen] = (),
) -> None:
    """SIGTERM every group, wait up to ``timeout`` s for all to go, then SIGKILL the rest.

    ``kill_now``: when it returns true the wait ends early (a second Ctrl-C). ``children``:
    this process's own children among them, reaped as they exit (a zombie still counts as a
    member of its group).
    """
    children = list(children)

    def alive() -> bool:
        for child in children:
            child.poll()
        return any(group_alive(p) for p in pgids)

    for pgid in pgids:
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive() and not kill_now():
        time.sleep(0.1)
    for pgid in pgids:
        if group_alive(pgid):
            log.warning("process group %d outlived SIGTERM: SIGKILL", pgid)
            signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive():
        time.sleep(0.05)


def ours(process: psutil.Process) -> bool:
    """Whether ``process`` is one this checkout's ``make run`` starts (same folder, our code)."""
    try:
        cmdline = " ".join(process.cmdline())
        cwd = process.cwd()
    except (psutil.Error, OSError):
        return False
    return cwd == str(settings.BASE_DIR) and any(
        marker in cmdline
        for marker in ("fashionsite.front", "fashionsite.wsgi", "celery -A fashionsite", "runsite")
    )


@dataclass
class Child:
    """One supervised process."""

    name: str
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restart: bool = True


class Command(BaseCommand):
    help = "Run the whole site (front, web, Celery worker and beat) in the foreground."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--catalog",
            default=os.environ.get("CATALOG", ""),
            help="Catalogue zip or folder to import in the background (default, when the "
            "catalogue is empty: the shared sample, else the demo subset demo/catalogue.zip).",
        )
        parser.add_argument("--no-import", action="store_true", help="Never import a catalogue.")
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=15.0,
            help="Seconds a stop waits for processes after SIGTERM before SIGKILL.",
        )

    # ----------------------------------------------------------------- start

    def handle(
        self,
        *args,
        host: str,
        port: int,
        catalog: str,
        no_import: bool,
        stop_timeout: float,
        **options,
    ) -> None:
        self.run_dir = settings.VAR_DIR / "run"
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)  # gunicorn trusts whatever connects to its socket here
        self.recover(host, port)
        if not port_is_free(host, port):
            raise CommandError(f"port {port} on {host} is busy: stop what uses it or set PORT=")
        self.pid_file("runsite").write_text(str(os.getpid()))
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("database migrated")
        self._ensure_admin()

        env = os.environ.copy()
        # Children attach to the services this process resolved; no second embedded start.
        env.update(DATABASE_URL=settings.DATABASE_URL, REDIS_URL=settings.REDIS_URL)
        env["DJANGO_VAR_DIR"] = str(settings.VAR_DIR)
        env["PYTHONUNBUFFERED"] = "1"
        served = serving_environment(env, secret_key_file=settings.VAR_DIR / "secret_key")
        debug = served["DJANGO_DEBUG"].lower() in {"1", "true", "yes", "on"}
        self._collect_static(served, debug=debug)
        children = self._children(host, port, served)
        self.children = {child.name: child for child in children}
        self.stopping = False
        self.kill_now = False

        def stop(*_: object) -> None:
            if self.stopping:
                self.kill_now = True  # a second Ctrl-C: SIGKILL now
            self.stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            for child in children:
                self._start(child)
            self.stdout.write(
                self.style.SUCCESS(
                    f"fashionsite is up on http://{host}:{port}/ (debug {'on' if debug else 'off'};"
                    " Ctrl-C stops it)"
                )
            )
            importer = self._start_import(catalog, no_import, served)
            if importer is not None:
                self.children["import"] = importer
            self._supervise()
        finally:
            self._stop_all(stop_timeout)

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _children(self, host: str, port: int, env: dict[str, str]) -> list[Child]:
        python = sys.executable
        socket_path = self.run_dir / "web.sock"
        spool = settings.VAR_DIR / "tmp"
        spool.mkdir(mode=0o700, exist_ok=True)
        # The limits Django enforces (retrieval.http.limits), so the front never spools a body
        # Django would refuse; catalogue imports in the admin may be larger than a photo.
        path_limits = []
        if (imports := limits.import_path_prefix()) is not None:
            path_limits = ["--path-limit", f"{imports}={limits.body_limit(imports)}"]
        queues = f"{settings.CELERY_TASK_DEFAULT_QUEUE},{settings.FEATURES_QUEUE}"
        # On a small machine web, worker and database share the cores: one torch thread per
        # web process avoids OpenMP spin-waits on a busy core (docs/benchmarks.md).
        web_env = {**env, "RETRIEVAL_TORCH_THREADS": env.get("RETRIEVAL_TORCH_THREADS", "1")}
        return [
            Child("web", [
                python, "-m", "gunicorn", "fashionsite.wsgi:application",
                "--bind", f"unix:{socket_path}",
                "--workers", env.get("WEB_CONCURRENCY", "2"),
                "--threads", "4",
                "--timeout", "120",
                "--graceful-timeout", str(10),
                # The front sends each client's address first (PROXY protocol v1): Django sees
                # it as REMOTE_ADDR, as if nothing stood between.
                "--proxy-protocol", "v1",
                "--access-logfile", "-",
                # gunicorn's control socket lives in the home folder, one for every checkout.
                "--no-control-socket",
            ], web_env),
            Child("front", [
                python, "-m", "fashionsite.front",
                "--bind", f"{host}:{port}",
                "--upstream", str(socket_path),
                "--max-body", str(limits.body_limit("/")),
                *path_limits,
                "--spool-dir", str(spool),
                "--grace", str(10),
            ], env),
            Child("worker", [
                python, "-m", "celery", "-A", "fashionsite", "worker",
                "-Q", queues, "--concurrency", "1", "-n", "worker@%h", "--loglevel", "INFO",
            ], env),
            # Training and whole-catalogue re-indexing: their own worker, so new garments are
            # indexed by the one above while a model trains.
            Child("trainer", [
                python, "-m", "celery", "-A", "fashionsite", "worker",
                "-Q", settings.TRAINING_QUEUE, "--concurrency", "1", "-n", "trainer@%h",
                "--loglevel", "INFO",
            ], env),
            Child("beat", [
                python, "-m", "celery", "-A", "fashionsite", "beat", "--loglevel", "INFO",
                "--schedule", str(settings.VAR_DIR / "celerybeat-schedule"),
            ], env),
        ]  # fmt: skip

    def _collect_static(self, env: dict[str, str], *, debug: bool) -> None:
        """With debug off whitenoise serves STATIC_ROOT only: collect it (quick when current)."""
        if debug:
            return
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
            env=env,
            cwd=settings.BASE_DIR,
            check=True,
        )

    def _start(self, child: Child) -> None:
        # Its own session and process group: a stop reaches its children (gunicorn's workers,
        # Celery's pool), and the terminal's Ctrl-C reaches only this supervisor, which stops
        # them in order.
        child.process = subprocess.Popen(
            child.command, env=child.env, cwd=settings.BASE_DIR, start_new_session=True
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        self.pid_file(child.name).write_text(str(child.process.pid))

    # ----------------------------------------------------------------- supervise

    def _supervise(self) -> None:
        next_watch = time.monotonic() + WATCH_SECONDS
        while not self.stopping:
            now = time.monotonic()
            for child in list(self.children.values()):
                self._check(child, now)
            if now >= next_watch:
                self._watch_services()
                next_watch = time.monotonic() + WATCH_SECONDS
            time.sleep(0.25)

    def _check(self, child: Child, now: float) -> None:
        process = child.process
        if process is None:
            if child.restart_at is not None and now >= child.restart_at:
                log.warning("starting %s again", child.name)
                self._start(child)
            return
        code = process.poll()
        if code is None:
            return
        # Whatever it left in its group (a pool child, a stuck gunicorn worker) goes with it.
        signal_group(process.pid, signal.SIGKILL)
        child.process = None
        self.pid_file(child.name).unlink(missing_ok=True)
        if not child.restart:
            self.stdout.write(f"catalogue {child.name} finished (exit {code})")
            del self.children[child.name]
            return
        ran = now - child.started_at
        child.failures = 1 if ran >= STABLE_SECONDS else child.failures + 1
        delay = backoff_seconds(child.failures)
        child.restart_at = now + delay
        log.warning(
            "%s exited with status %s after %.0f s; starting it again in %.0f s",
            child.name,
            code,
            ran,
            delay,
        )

    def _watch_services(self) -> None:
        """Start the embedded PostgreSQL / Redis again when they stop answering."""
        if not (settings.EMBEDDED_POSTGRES or settings.EMBEDDED_REDIS):
            return
        try:
            revived = embedded.revive(
                settings.VAR_DIR,
                postgres=settings.EMBEDDED_POSTGRES,
                redis=settings.EMBEDDED_REDIS,
            )
        except embedded.EmbeddedServiceError as exc:
            log.error("an embedded server is down and could not be started, retrying: %s", exc)
            return
        for name in revived:
            log.warning("the embedded %s had stopped answering: started it again", name)

    # ----------------------------------------------------------------- stop and recover

    def _stop_all(self, timeout: float) -> None:
        processes = [c.process for c in getattr(self, "children", {}).values() if c.process]
        end_groups(
            [p.pid for p in processes],
            timeout=timeout,
            kill_now=lambda: self.kill_now,
            children=processes,
        )
        for name in [*SUPERVISED, "import", "runsite"]:
            self.pid_file(name).unlink(missing_ok=True)
        self.stdout.write(
            "stopped front, web, worker and beat (the embedded databases keep running)"
        )

    def recover(self, host: str, port: int) -> None:
        """End what an earlier run of this checkout left behind (a half-finished stop)."""
        previous = self._read_pid("runsite")
        if previous and previous != os.getpid() and psutil.pid_exists(previous):
            with contextlib.suppress(psutil.Error):
                if ours(psutil.Process(previous)):
                    raise CommandError(
                        f"make run is already running (pid {previous}): stop it first"
                    )
        leftovers: set[int] = set()
        for name in [*SUPERVISED, "import"]:
            pid = self._read_pid(name)
            if pid and psutil.pid_exists(pid):
                with contextlib.suppress(psutil.Error):
                    if ours(psutil.Process(pid)):
                        leftovers.add(os.getpgid(pid))
            self.pid_file(name).unlink(missing_ok=True)
        # Processes started for this var/ (their command line names its run directory), also
        # those whose pid file is gone; then whatever of ours holds the port (an older layout).
        for process in psutil.process_iter(["cmdline"]):
            if str(self.run_dir) in " ".join(process.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error, ProcessLookupError):
                    leftovers.add(os.getpgid(process.pid))
        for pid in self._port_holders(host, port):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if ours(psutil.Process(pid)):
                    leftovers.add(os.getpgid(pid))
        leftovers.discard(os.getpgrp())
        if leftovers:
            log.warning(
                "ending %d process group(s) left over from an earlier run: %s",
                len(leftovers),
                ", ".join(map(str, sorted(leftovers))),
            )
            end_groups(sorted(leftovers), timeout=10)

    def _read_pid(self, name: str) -> int | None:
        try:
            return int(self.pid_file(name).read_text().strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _port_holders(host: str, port: int) -> set[int]:
        holders = set()
        with contextlib.suppress(psutil.Error, OSError):
            for conn in psutil.net_connections(kind="tcp"):
                if (
                    conn.status == psutil.CONN_LISTEN
                    and conn.laddr
                    and conn.laddr.port == port
                    and conn.laddr.ip in {host, "0.0.0.0", "::"}
                    and conn.pid
                ):
                    holders.add(conn.pid)
        return holders

    # ----------------------------------------------------------------- admin, import

    def _ensure_admin(self) -> None:
        User = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
        user = User.objects.filter(username=username).first()
        if user is not None:
            if password and not user.check_password(password):
                user.set_password(password)
                user.save(update_fields=["password"])
            return
        generated = not password
        password = password or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email=email, password=password)
        if generated:
            self.stdout.write(
                self.style.WARNING(
                    f"created admin account {username!r} with password {password!r} "
                    "(shown once; set DJANGO_SUPERUSER_PASSWORD to choose it)"
                )
            )
        else:
            self.stdout.write(f"created admin account {username!r}")

    def _start_import(self, catalog: str, no_import: bool, env: dict) -> Child | None:
        if no_import:
            return None
        path = Path(catalog) if catalog else default_catalog()
        if path is None:
            return None
        if not path.exists():
            raise CommandError(f"CATALOG={catalog!r} does not exist")
        self.stdout.write(
            f"importing {path} in the background; the site fills up as you watch "
            "(the home page shows the progress)"
        )
        script = import_script(path=path)
        child = Child("import", ["/bin/sh", "-c", script], env, restart=False)
        self._start(child)
        return child


def import_script(*, path: Path) -> str:
    """The shell line of the first start's background import of ``path``: the catalogue,
    the example photos of RETRIEVAL_EXAMPLE_PHOTOS, then the first training."""
    manage = f"{shlex.quote(sys.executable)} manage.py import_catalog {shlex.quote(str(path))}"
    examples = settings.RETRIEVAL_EXAMPLE_PHOTOS
    if examples and Path(examples).exists():
        # Imported once the catalogue's rows (its categories) are in and before the first
        # training, which then learns from them too (issue #14); on both runs of the
        # chain: photos of a category the first slice lacks come in with the rest.
        manage += f" --examples {shlex.quote(str(examples))}"
    if path == settings.DEMO_CATALOG:
        # Small: one import, one training (a slice first would train twice).
        script = f"{manage} --wait --train"
    else:
        # First a slice, so a model is trained and search works within minutes; then
        # the rest (re-reading the slice is free: the import is idempotent).
        script = f"{manage} --limit {FIRST_SLICE} --wait --train && {manage} --wait --train"
    return script


def default_catalog() -> Path | None:
    """What an empty catalogue is filled with when no CATALOG is given: the shared sample
    where it exists, else the demo subset in the repository (None: not empty, or neither)."""
    if Garment.objects.exists():
        return None
    for path in (settings.SAMPLE_CATALOG, settings.DEMO_CATALOG):
        if path.exists():
            return path
    return None
