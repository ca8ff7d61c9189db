"""``make run``: migrate, ensure a staff account, then web + worker + beat in the foreground.

Ctrl-C (or SIGTERM) stops all of them. The embedded PostgreSQL and Redis keep running so a
restart is instant and loses nothing (``make stop`` stops them).
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from retrieval.models import Garment

# Garments imported, indexed and trained on before the rest of a catalogue is imported.
FIRST_SLICE = 2000


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Command(BaseCommand):
    help = "Run the whole site (web, Celery worker, Celery beat) in the foreground."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--catalog",
            default=os.environ.get("CATALOG", ""),
            help="Catalogue zip or folder to import in the background (default: the shared "
            "sample when the catalogue is empty).",
        )
        parser.add_argument("--no-import", action="store_true", help="Never import a catalogue.")

    def handle(self, *args, host: str, port: int, catalog: str, no_import: bool, **options) -> None:
        if not port_is_free(host, port):
            raise CommandError(f"port {port} on {host} is busy: stop what uses it or set PORT=")
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("database migrated")
        self._ensure_admin()

        env = os.environ.copy()
        # Children attach to the services this process resolved; no second embedded start.
        env.update(DATABASE_URL=settings.DATABASE_URL, REDIS_URL=settings.REDIS_URL)
        env["DJANGO_VAR_DIR"] = str(settings.VAR_DIR)
        python = sys.executable
        queues = f"{settings.CELERY_TASK_DEFAULT_QUEUE},{settings.FEATURES_QUEUE}"
        commands = {
            "web": [
                python, "-m", "gunicorn", "fashionsite.wsgi:application",
                "--bind", f"{host}:{port}",
                "--workers", os.environ.get("WEB_CONCURRENCY", "2"),
                "--threads", "4",
                "--timeout", "120",
                "--access-logfile", "-",
            ],
            "worker": [
                python, "-m", "celery", "-A", "fashionsite", "worker",
                "-Q", queues, "--concurrency", "1", "-n", "worker@%h", "--loglevel", "INFO",
            ],
            # Training and whole-catalogue re-indexing: their own worker, so new garments
            # are indexed by the one above while a model trains.
            "trainer": [
                python, "-m", "celery", "-A", "fashionsite", "worker",
                "-Q", settings.TRAINING_QUEUE, "--concurrency", "1", "-n", "trainer@%h",
                "--loglevel", "INFO",
            ],
            "beat": [
                python, "-m", "celery", "-A", "fashionsite", "beat", "--loglevel", "INFO",
                "--schedule", str(settings.VAR_DIR / "celerybeat-schedule"),
            ],
        }  # fmt: skip
        # On a small machine web, worker and database share the cores: one torch thread per
        # web process avoids OpenMP spin-waits on a busy core (docs/benchmarks.md).
        web_env = {**env, "RETRIEVAL_TORCH_THREADS": os.environ.get("RETRIEVAL_TORCH_THREADS", "1")}
        processes: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            for name, command in commands.items():
                processes[name] = subprocess.Popen(
                    command, env=web_env if name == "web" else env, cwd=settings.BASE_DIR
                )
            self.stdout.write(
                self.style.SUCCESS(f"fashionsite is up on http://{host}:{port}/ (Ctrl-C stops it)")
            )
            importer = self._start_import(catalog, no_import, env)
            if importer is not None:
                processes["import"] = importer
            while not stopping:
                for name, process in list(processes.items()):
                    code = process.poll()
                    if code is None:
                        continue
                    if name == "import":
                        self.stdout.write(f"catalogue import finished (exit {code})")
                        del processes[name]
                        continue
                    raise CommandError(f"{name} exited with status {code}; stopping the site")
                time.sleep(0.5)
        finally:
            self._stop_all(processes)

    def _stop_all(self, processes: dict[str, subprocess.Popen]) -> None:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
        self.stdout.write("stopped web, worker and beat (the embedded databases keep running)")

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

    def _start_import(self, catalog: str, no_import: bool, env: dict) -> subprocess.Popen | None:
        if no_import:
            return None
        path = Path(catalog) if catalog else None
        if path is None:
            if Garment.objects.exists() or not settings.SAMPLE_CATALOG.exists():
                return None
            path = settings.SAMPLE_CATALOG
        if not path.exists():
            raise CommandError(f"CATALOG={catalog!r} does not exist")
        self.stdout.write(f"importing {path} in the background; the site fills up as you watch")
        # First a slice, so a model is trained and search works within minutes; then the
        # rest (re-reading the slice is free: the import is idempotent).
        manage = f"{shlex.quote(sys.executable)} manage.py import_catalog {shlex.quote(str(path))}"
        script = f"{manage} --limit {FIRST_SLICE} --wait --train && {manage} --wait --train"
        return subprocess.Popen(["/bin/sh", "-c", script], env=env, cwd=settings.BASE_DIR)
