"""Shared fixtures: real PostgreSQL, real Redis, real Celery worker processes. Nothing is mocked."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_ZIP = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"
# Screenshots of the browser tests (gitignored).
OUTPUT = ROOT / "test-output"
# The two screens every shopper-facing browser test runs on: a desktop and a phone.
SCREENS: dict[str, dict[str, Any]] = {
    "desktop": {"viewport": {"width": 1280, "height": 900}},
    "phone": {
        "viewport": {"width": 375, "height": 812},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    },
}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
]


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


def stop_process(process: subprocess.Popen, *, kill: bool = False) -> None:
    """SIGTERM (or SIGKILL) a child process and reap it; SIGKILL if it outlives 30 s."""
    if process.poll() is not None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def service_env(**extra: str) -> dict[str, str]:
    """The environment of a child process (worker, web server) bound to the test database and
    the test Redis, plus ``extra``."""
    from django.db import connection

    env = os.environ.copy()
    env.update(
        DATABASE_URL=database_url_for(connection.settings_dict),
        REDIS_URL=settings.REDIS_URL,
        DJANGO_VAR_DIR=str(settings.VAR_DIR),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess:
    """A real ``celery worker`` subprocess bound to the test database and the test Redis."""

    def __init__(
        self,
        *,
        name: str,
        queues: str,
        extra_env: dict[str, str] | None = None,
        supervised: bool = False,
    ):
        """``supervised``: started again whenever it exits, as ``runsite`` restarts the site's
        workers (Celery's consumer can die on a broker connection lost at the wrong moment,
        e.g. during a fault test's Redis stop). Off for workers a test kills on purpose."""
        self.name = name
        self._env = service_env(**(extra_env or {}))
        self.log_path = settings.VAR_DIR / f"worker-{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self._args = [
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
        ]
        self.restarts = 0
        self._stopping = threading.Event()
        self.process = self._start()
        self._watcher: threading.Thread | None = None
        if supervised:
            self._watcher = threading.Thread(target=self._watch, name=f"watch-{name}", daemon=True)
            self._watcher.start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            self._args, cwd=ROOT, env=self._env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self.process.poll() is not None and not self._stopping.is_set():
                self._log.write(f"\n--- exited ({self.process.returncode}): started again\n")
                self._log.flush()
                self.restarts += 1
                self.process = self._start()

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
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        stop_process(self.process, kill=kill)
        self._log.close()


def wait_until(predicate, timeout=120.0, interval=0.5):
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker) -> Iterator[WorkerProcess]:
    """One worker on both queues for the whole session (tasks see committed data only)."""
    from fashionsite.celery import app

    with django_db_blocker.unblock():
        app.control.purge()
        worker = WorkerProcess(
            name="testworker",
            queues=f"{settings.CELERY_TASK_DEFAULT_QUEUE},{settings.FEATURES_QUEUE},"
            f"{settings.TRAINING_QUEUE}",
            supervised=True,
        )
        try:
            worker.wait_ready()
            yield worker
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, driven by Playwright), one per browser test module.

    Playwright's sync API runs an event loop in this thread, and while it runs Django keeps a
    separate set of database connections (asgiref's context-local storage). Those are closed
    with the browser: one left open across a PostgreSQL restart (the fault tests) was handed,
    dead, to the next browser module ("terminating connection due to administrator command").
    """
    from django.db import connections

    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install chromium chromium-driver")
    # The ORM calls the tests make here (fixtures, the flush after each test) are synchronous.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_api.sync_playwright() as playwright:
            connections.close_all()
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                yield chromium
            finally:
                chromium.close()
                connections.close_all()


@pytest.fixture
def site(browser, live_server, trained_catalogue, settings) -> str:
    """The live server's address, serving the site and its media (tests/live_urls.py) over the
    trained catalogue, without the search throttle (the browser tests search many times)."""
    settings.ROOT_URLCONF = "tests.live_urls"
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"search": None},
    }
    OUTPUT.mkdir(exist_ok=True)
    return live_server.url


@pytest.fixture
def sample_zip() -> Path:
    if not SAMPLE_ZIP.exists():
        pytest.skip(f"sample catalogue not found at {SAMPLE_ZIP}")
    return SAMPLE_ZIP


@pytest.fixture
def bad_catalogue(tmp_path):
    """A catalogue zip with one good row and one of each kind of bad row (and member)."""
    from tests.catalogue_zips import make_catalogue, png_bomb, row
    from tests.factories import jpeg_bytes

    good = jpeg_bytes((20, 40, 200))
    # Another photo: the same pixels as 100's would be skipped as an exact duplicate.
    other = jpeg_bytes((200, 40, 20))
    rows = (
        row("100")
        + row("101")  # not an image
        + row("102")  # truncated JPEG
        + row("103")  # decompression bomb
        + row("104")  # missing image file
        + row("105", category="")  # empty category
        + row("100", title="duplicate")  # duplicate sku in the same file
        + row("106", image="../../etc/passwd")  # traversal in the CSV
        + row("107")  # over the upload size limit (set in the test)
    )
    images = {
        "100.jpg": good,
        "101.jpg": b"<html>not an image</html>",
        "102.jpg": good[: len(good) // 2],
        "103.jpg": png_bomb(),
        "105.jpg": good,
        "107.jpg": other + b"\0" * 300_000,
    }
    path = make_catalogue(tmp_path / "bad.zip", rows, images)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("../../escape.txt", b"x")
    return path


@pytest.fixture
def private_features_queue(settings):
    """CNN tasks go to a queue of this test's own, which no worker consumes (the session's
    worker, once started, consumes the features queue): what waits there stays there."""
    from fashionsite.celery import app

    settings.FEATURES_QUEUE = "features-sweeptest"

    def purge() -> None:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(settings.FEATURES_QUEUE)

    purge()
    yield settings.FEATURES_QUEUE
    purge()


# --------------------------------------------------------------------------- trained catalogue


class CatalogueSnapshot:
    """A searchable catalogue, trained once per test session and restorable in about a second.

    Building it (import a few hundred garments of the shared sample, run the CNN, train the
    head, fit K-means, activate) takes about a minute, so it happens once per session; its rows
    are then kept in memory as PostgreSQL COPY dumps, table by table. Tests use it through the
    ``trained_catalogue`` fixture, which puts those rows back, committed, whenever they are not
    there (a transactional test's flush, e.g. every live-server test, removes them), and removes
    them again at the end of each module, so other modules see the empty database they expect.
    Image files and the head file stay on disk (under var/test/) until the session ends;
    deleting garments deletes their image files once committed (``remove``, a live-server
    test's delete), so the images are kept in memory too and written back by ``ensure``.
    """

    def __init__(self, *, ids: dict, model_id: int, head_file: str, files: list[str]):
        self.ids = ids  # model class -> [primary keys]
        self.model_id = model_id
        self.head_file = head_file  # relative to RETRIEVAL_MODELS_DIR
        self.files = files  # media paths of the garments' images
        self.dumps: dict[str, bytes] = {}  # table -> COPY text
        self.media_root = Path(settings.MEDIA_ROOT)  # where the images were stored
        self.images: dict[str, bytes] = {}  # media path -> the image file's bytes

    @staticmethod
    def tables():
        from retrieval import models as m

        # Restore order (foreign keys point backwards).
        return [
            m.ImportJob,
            m.Category,
            m.Garment,
            m.BackboneFeature,
            m.FeatureModel,
            m.GarmentFeature,
            m.ClusterRun,
            m.ClusterCentroid,
            m.SearchRow,
        ]

    def _where(self, model) -> str:
        """The snapshot's rows of a table (search rows are keyed by run, not by id)."""
        from retrieval import models as m

        if model is m.SearchRow:
            runs = ",".join(str(int(pk)) for pk in self.ids[m.ClusterRun]) or "NULL"
            return f"run_id IN ({runs})"
        return "id IN (" + (",".join(str(int(pk)) for pk in self.ids[model]) or "NULL") + ")"

    @classmethod
    def build(cls, *, source: Path, limit: int) -> CatalogueSnapshot:
        from retrieval import catalogue, indexing, training
        from retrieval import models as m

        job = catalogue.import_catalog(source=source, limit=limit)
        assert job.status == m.ImportJob.Status.DONE, job.error
        garments = m.Garment.objects.filter(import_job=job)
        # Indexes here unless a session worker (celery_worker) is consuming the queue.
        indexing.wait_for_garments(garments=garments, poll_seconds=0.5)
        model = training.train_model(epochs=20)
        garment_ids = sorted(garments.values_list("id", flat=True))
        ids = {
            m.ImportJob: [job.pk],
            m.Category: sorted(set(garments.values_list("category_id", flat=True))),
            m.Garment: garment_ids,
            m.BackboneFeature: sorted(
                m.BackboneFeature.objects.filter(garment_id__in=garment_ids).values_list(
                    "id", flat=True
                )
            ),
            m.FeatureModel: [model.pk],
            m.GarmentFeature: sorted(model.features.values_list("id", flat=True)),
            m.ClusterRun: sorted(model.cluster_runs.values_list("id", flat=True)),
            m.ClusterCentroid: sorted(
                m.ClusterCentroid.objects.filter(run__model=model).values_list("id", flat=True)
            ),
            m.SearchRow: [],  # selected by run (see _where)
        }
        files = list(garments.values_list("image", flat=True))
        snapshot = cls(ids=ids, model_id=model.pk, head_file=model.head_file, files=files)
        snapshot.dumps = snapshot._dump()
        snapshot.images = {name: (snapshot.media_root / name).read_bytes() for name in files}
        return snapshot

    def _restore_images(self) -> None:
        for name, data in self.images.items():
            path = self.media_root / name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

    def _dump(self) -> dict[str, bytes]:
        from django.db import connection

        dumps = {}
        with connection.cursor() as cursor:
            for model in self.tables():
                table = model._meta.db_table
                query = f"COPY (SELECT * FROM {table} WHERE {self._where(model)}) TO STDOUT"
                with cursor.copy(query) as copy:
                    dumps[table] = b"".join(bytes(block) for block in copy)
        return dumps

    def present(self) -> bool:
        from retrieval import models as m

        garments = self.ids[m.Garment]
        return m.FeatureModel.objects.filter(
            pk=self.model_id, active=True
        ).exists() and m.Garment.objects.filter(pk__in=garments).count() == len(garments)

    def ensure(self) -> None:
        """Put the catalogue's rows back unless they are all there; make its model active."""
        from django.db import connection, transaction

        from retrieval import models as m
        from retrieval.search import clustering

        self._restore_images()
        if self.present():
            return
        self.remove()
        with transaction.atomic():
            m.FeatureModel.objects.filter(active=True).update(active=False)
            with connection.cursor() as cursor:
                for model in self.tables():
                    table = model._meta.db_table
                    if model is m.SearchRow:
                        # The runs' partitions may have been dropped meanwhile.
                        for run in m.ClusterRun.objects.filter(pk__in=self.ids[m.ClusterRun]):
                            clustering.ensure_partition(run=run)
                    with cursor.copy(f"COPY {table} FROM STDIN") as copy:
                        copy.write(self.dumps[table])
                    if model is m.SearchRow:
                        continue  # no id sequence
                    # A test may have reset the sequences: keep new rows clear of ours.
                    cursor.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"GREATEST((SELECT MAX(id) FROM {table}), "
                        f"nextval(pg_get_serial_sequence('{table}', 'id'))))"
                    )

    def remove(self) -> None:
        from retrieval import models as m

        m.FeatureModel.objects.filter(pk=self.model_id).delete()
        m.Garment.objects.filter(pk__in=self.ids[m.Garment]).delete()
        m.Category.objects.filter(pk__in=self.ids[m.Category], garments__isnull=True).delete()
        m.ImportJob.objects.filter(pk__in=self.ids[m.ImportJob]).delete()

    def delete_files(self) -> None:
        from django.core.files.storage import default_storage

        from retrieval import models as m

        for name in self.files:
            default_storage.delete(name)
        if self.head_file:
            m.FeatureModel(head_file=self.head_file).head_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def trained_catalogue_snapshot(django_db_setup, django_db_blocker) -> Iterator[CatalogueSnapshot]:
    """Built once per session: 300 garments of the shared sample, a trained active model."""
    if not SAMPLE_ZIP.exists():
        pytest.skip(f"sample catalogue not found at {SAMPLE_ZIP}")
    with django_db_blocker.unblock():
        snapshot = CatalogueSnapshot.build(source=SAMPLE_ZIP, limit=300)
        snapshot.remove()
    yield snapshot
    with django_db_blocker.unblock():
        snapshot.remove()
    snapshot.delete_files()


@pytest.fixture(scope="module")
def _trained_catalogue_module(trained_catalogue_snapshot, django_db_blocker):
    with django_db_blocker.unblock():
        trained_catalogue_snapshot.ensure()
    yield trained_catalogue_snapshot
    with django_db_blocker.unblock():
        trained_catalogue_snapshot.remove()


@pytest.fixture
def trained_catalogue(_trained_catalogue_module, django_db_blocker) -> CatalogueSnapshot:
    """A trained, active model over 300 real garments, committed (a live server sees it).

    Use in read-only tests (``db`` or ``transactional_db``); a test may change rows inside its
    own transaction (rolled back). Restored, if a flush removed it, before each test.
    """
    with django_db_blocker.unblock():
        _trained_catalogue_module.ensure()
    return _trained_catalogue_module


# --------------------------------------------------------------------------- settings helpers


@pytest.fixture
def no_search_throttle(settings):
    """Anonymous searches are not throttled (the throttle has its own tests)."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"search": None},
    }


@pytest.fixture
def fast_password_hashing(settings):
    """Logins hash a password per test; tests that are not about hashing use a cheap one."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def media_root(settings, tmp_path) -> Path:
    """A private, empty MEDIA_ROOT for the test."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT
