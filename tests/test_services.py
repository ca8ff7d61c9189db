"""Ingestion and indexing against real PostgreSQL, Redis, the real CNN and real worker processes."""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile

import numpy as np
import pytest
from django.core.files.base import ContentFile
from PIL import Image

from fashionsite.celery import app
from retrieval import catalogue, indexing, training
from retrieval.jobs import publishing, tasks
from retrieval.models import BackboneFeature, Garment, GarmentFeature, ImportJob
from tests.conftest import WorkerProcess
from tests.factories import CategoryFactory, GarmentFactory, jpeg_bytes

HEADER = (
    "id,image,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName\n"
)


def row(sku, category="Tshirts", colour="Red", title=None, image=None):
    image = image or f"{sku}.jpg"
    title = title or f"Tee {sku}"
    return f"{sku},{image},Men,Apparel,Topwear,{category},{colour},Summer,2012,Casual,{title}\n"


def png_bomb() -> bytes:
    """A tiny PNG that claims 30000 x 30000 pixels (900 MP): refused from its header."""
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def make_catalogue(path, rows: str, images: dict[str, bytes], *, csv_bytes: bytes | None = None):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("styles.csv", csv_bytes if csv_bytes is not None else HEADER + rows)
        for name, data in images.items():
            zf.writestr(f"images/{name}", data)
    return path


def wait_until(predicate, timeout=120.0, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture
def bad_catalogue(tmp_path):
    good = jpeg_bytes((20, 40, 200))
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
        "107.jpg": good + b"\0" * 300_000,
    }
    path = make_catalogue(tmp_path / "bad.zip", rows, images)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("../../escape.txt", b"x")
    return path


@pytest.mark.django_db
def test_import_reports_each_bad_row_and_keeps_the_rest(bad_catalogue, settings):
    settings.RETRIEVAL_MAX_UPLOAD_BYTES = 200_000
    job = catalogue.import_catalog(source=bad_catalogue)
    assert job.status == ImportJob.Status.DONE
    reasons = {(p["sku"] or p["file"]): p["reason"] for p in job.problems}
    assert "missing" in reasons["104"]
    assert "empty articleType" in reasons["105"]
    assert "duplicate" in reasons["100"]
    assert "unsafe" in reasons["106"]
    assert "limit" in reasons["107"]
    assert "unsafe" in reasons["../../escape.txt"]
    # Images are decoded (and re-encoded) as they are imported: what does not decode is
    # refused with its reason, like any other bad row.
    assert "not an image" in reasons["101"]
    assert "truncated" in reasons["102"]
    assert "too large" in reasons["103"]
    # Refused rows are not stored; the rest are, pending indexing.
    assert set(Garment.objects.values_list("sku", flat=True)) == {"100"}
    assert job.created == 1


@pytest.mark.django_db
@pytest.mark.slow
def test_indexing_fails_bad_images_with_their_reason_and_indexes_the_rest(bad_catalogue):
    """Imports refuse images that do not decode, but a stored file can still go bad (a disk
    error, a file replaced behind the site's back): indexing fails that garment with the
    reason, never the batch."""
    catalogue.import_catalog(source=bad_catalogue)
    # 107 (trailing bytes after a valid JPEG, under the default size limit) is fine.
    assert set(Garment.objects.values_list("sku", flat=True)) == {"100", "107"}
    category = Garment.objects.get(sku="100").category
    for sku, data in {
        "101": b"<html>not an image</html>",
        "102": jpeg_bytes()[:300],
        "103": png_bomb(),
    }.items():
        GarmentFactory(
            sku=sku,
            category=category,
            status=Garment.Status.PENDING,
            image=ContentFile(data, name=f"{sku}.jpg"),
        )
    ids = list(Garment.objects.values_list("id", flat=True))
    result = indexing.index_garments(garment_ids=ids)
    status = {g.sku: (g.status, g.error) for g in Garment.objects.all()}
    assert status["100"][0] == Garment.Status.READY
    assert status["101"] == (Garment.Status.FAILED, status["101"][1])
    assert "not an image" in status["101"][1]
    assert status["102"][0] == Garment.Status.FAILED and status["102"][1]
    assert status["103"][0] == Garment.Status.FAILED and "too large" in status["103"][1]
    ready = set(Garment.objects.filter(id__in=result.ready).values_list("sku", flat=True))
    assert ready == {"100", "107"} and len(result.failed) == 3
    assert BackboneFeature.objects.count() == 2


@pytest.mark.django_db
def test_non_utf8_csv_is_imported_and_reported(tmp_path):
    csv = (HEADER + row("200", title="Café tee")).encode("latin-1")
    path = make_catalogue(tmp_path / "c.zip", "", {"200.jpg": jpeg_bytes()}, csv_bytes=csv)
    job = catalogue.import_catalog(source=path)
    assert Garment.objects.get(sku="200").title == "Café tee"
    assert any("not UTF-8" in p["reason"] for p in job.problems)


@pytest.mark.django_db
def test_reimport_changes_nothing_and_updates_by_sku(tmp_path):
    images = {f"{i}.jpg": jpeg_bytes((40 * (i - 300), 0, 0)) for i in range(300, 305)}
    rows = "".join(row(str(i)) for i in range(300, 305))
    path = make_catalogue(tmp_path / "c.zip", rows, images)
    first = catalogue.import_catalog(source=path)
    before = {g.sku: (g.pk, g.updated_at, g.image.name) for g in Garment.objects.all()}
    second = catalogue.import_catalog(source=path)
    after = {g.sku: (g.pk, g.updated_at, g.image.name) for g in Garment.objects.all()}
    assert (first.created, second.created, second.updated, second.unchanged) == (5, 0, 0, 5)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert {k: v[2] for k, v in after.items()} == {k: v[2] for k, v in before.items()}

    # A changed title updates that garment in place, never a duplicate.
    rows = rows.replace("Tee 302", "Better tee")
    third = catalogue.import_catalog(source=make_catalogue(tmp_path / "d.zip", rows, images))
    assert (third.created, third.updated, third.unchanged) == (0, 1, 4)
    assert Garment.objects.get(sku="302").title == "Better tee"
    assert Garment.objects.count() == 5


@pytest.mark.django_db
def test_categories_are_created_from_the_chosen_column_and_merge_moves_garments(tmp_path):
    rows = row("400", category="Tshirts") + row("401", category="tshirts") + row("402", "Shirts")
    images = {f"{i}.jpg": jpeg_bytes((40 * (i - 400), 0, 0)) for i in (400, 401, 402)}
    catalogue.import_catalog(source=make_catalogue(tmp_path / "c.zip", rows, images))
    tshirts = Garment.objects.get(sku="400").category
    assert Garment.objects.get(sku="401").category == tshirts  # case-insensitive match
    shirts = Garment.objects.get(sku="402").category
    moved = catalogue.merge_categories(sources=[shirts], target=tshirts)
    assert moved == 1
    assert set(Garment.objects.values_list("category", flat=True)) == {tshirts.pk}


def garment_under_a_dead_lease() -> Garment:
    """A processing garment whose worker took it long ago and died."""
    garment = GarmentFactory(status=Garment.Status.PROCESSING)
    Garment.objects.filter(pk=garment.pk).update(
        claimed_by="dead-task", claimed_at="2000-01-01T00:00Z"
    )
    return garment


@pytest.mark.django_db
def test_stuck_garments_are_requeued(settings):
    garment = garment_under_a_dead_lease()
    assert indexing.requeue_stuck_garments() == 1
    garment.refresh_from_db()
    assert garment.status == Garment.Status.PENDING and garment.claimed_by == ""


@pytest.fixture
def private_features_queue(settings):
    """CNN tasks go to a queue of this test's own, which no worker consumes (the session's
    worker, once started, consumes the features queue): what waits there stays there."""
    settings.FEATURES_QUEUE = "features-sweeptest"

    def purge() -> None:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(settings.FEATURES_QUEUE)

    purge()
    yield settings.FEATURES_QUEUE
    purge()


@pytest.mark.django_db(transaction=True)
def test_the_sweep_leaves_old_pending_garments_alone_while_their_queue_holds_a_backlog(
    private_features_queue, caplog
):
    """A large import on a slow machine: the features queue holds more than
    RETRIEVAL_STUCK_MINUTES of work, so garments waiting in it are pending and old. The sweep
    queues nothing more for them while tasks wait; what was never queued (NOT_QUEUED) is
    queued at once all the same; once the queue has drained (here: emptied, as by a Redis
    that lost its data) the garments still pending are queued again."""
    waiting = [GarmentFactory(status=Garment.Status.PENDING).pk for _ in range(3)]
    indexing.enqueue_indexing(garment_ids=waiting)  # autocommit: published at once
    assert publishing.features_backlog() == 1
    old = "2000-01-01T00:00Z"
    Garment.objects.filter(id__in=waiting).update(updated_at=old)

    caplog.set_level("INFO", logger="retrieval.indexing")
    assert indexing.requeue_stuck_garments() == 0
    assert publishing.features_backlog() == 1  # no duplicate behind the backlog
    assert "3 pending for over" in caplog.text and "1 tasks still wait" in caplog.text
    assert indexing.requeue_stuck_garments() == 0  # nor at the next sweep
    assert publishing.features_backlog() == 1

    # Never queued (Redis was down at upload): queued at once, backlog or not.
    unsent = GarmentFactory(status=Garment.Status.PENDING, error=publishing.NOT_QUEUED)
    Garment.objects.filter(pk=unsent.pk).update(updated_at=old)
    assert indexing.requeue_stuck_garments() == 1
    assert publishing.features_backlog() == 2
    unsent.refresh_from_db()
    assert (unsent.status, unsent.error) == (Garment.Status.PENDING, "")
    assert set(
        Garment.objects.filter(id__in=waiting).values_list("status", "updated_at__year")
    ) == {(Garment.Status.PENDING, 2000)}  # untouched

    # The backlog is gone (drained, or lost): the old pending garments have no task left.
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(private_features_queue)
    assert publishing.features_backlog() == 0
    assert indexing.requeue_stuck_garments() == 3
    assert publishing.features_backlog() == 1  # one task for the three (one chunk)
    assert indexing.requeue_stuck_garments() == 0  # fresh again, and queued


@pytest.mark.django_db(transaction=True)
def test_the_sweep_still_requeues_stale_leases_while_the_queue_holds_a_backlog(
    private_features_queue,
):
    """A processing garment under an old lease: its worker died after taking its task, so no
    backlog is hiding a task of it; the sweep takes it back as before."""
    GarmentFactory(status=Garment.Status.PENDING)  # something waits in the queue
    indexing.enqueue_indexing(garment_ids=list(Garment.objects.values_list("id", flat=True)))
    assert publishing.features_backlog() == 1
    garment = garment_under_a_dead_lease()
    assert indexing.requeue_stuck_garments() == 1
    garment.refresh_from_db()
    assert garment.status == Garment.Status.PENDING and garment.claimed_by == ""
    assert publishing.features_backlog() == 2


def test_cnn_tasks_are_routed_to_the_features_queue_named_by_settings(settings):
    router = app.amqp.router
    for name in ("index_garments", "reindex_model", "train_model"):
        route = router.route({}, f"retrieval.tasks.{name}")
        assert route["queue"].name == settings.FEATURES_QUEUE
    assert router.route({}, "retrieval.tasks.requeue_stuck")["queue"].name == "default"
    settings.FEATURES_QUEUE = "features-elsewhere"
    assert router.route({}, "retrieval.tasks.index_garments")["queue"].name == "features-elsewhere"
    # An explicit queue still wins (tests/test_services.py's killed-worker test relies on it).
    assert router.route({"queue": "mine"}, "retrieval.tasks.index_garments")["queue"].name == (
        "mine"
    )


@pytest.mark.django_db
def test_a_garment_is_claimed_by_one_worker_at_a_time():
    garment = GarmentFactory(status=Garment.Status.PENDING)
    assert indexing.claim_garments(garment_ids=[garment.pk], claim="task-a") == [garment.pk]
    assert indexing.claim_garments(garment_ids=[garment.pk], claim="task-b") == []
    # The same task redelivered after its worker died takes it back at once.
    assert indexing.claim_garments(garment_ids=[garment.pk], claim="task-a") == [garment.pk]


# --------------------------------------------------------------------------- real workers


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_upload_is_indexed_by_a_worker_after_commit(celery_worker):
    category = CategoryFactory(name="Jackets")
    garment = Garment(sku="U1", title="Upload", category=category, colour="Blue")
    garment.image.save("u1.jpg", ContentFile(jpeg_bytes((0, 0, 200))), save=False)
    catalogue.save_garment(garment=garment, image_changed=True)
    assert wait_until(lambda: Garment.objects.get(pk=garment.pk).status == Garment.Status.READY)
    assert BackboneFeature.objects.filter(garment=garment).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_nothing():
    """SIGKILL the worker while it indexes; its tasks are redelivered (acks_late) to a second
    worker and every garment ends ready, each with exactly one set of vectors.

    Issue #8's "worker killed mid-batch" fault (tests/test_faults.py has the other faults).
    """
    queue = "features-killtest"
    category = CategoryFactory(name="Killtest")
    garments = [
        GarmentFactory(
            category=category,
            status=Garment.Status.PENDING,
            image=ContentFile(jpeg_bytes((i, 100, 200 - i)), name=f"k{i}.jpg"),
        )
        for i in range(96)
    ]
    ids = [g.pk for g in garments]
    env = {"CELERY_VISIBILITY_TIMEOUT": "4", "RETRIEVAL_BATCH_SIZE": "8"}
    first = WorkerProcess(name="doomed", queues=queue, extra_env=env)
    second = None
    try:
        first.wait_ready()
        for start in range(0, len(ids), 32):
            tasks.index_garments.apply_async(args=[ids[start : start + 32]], queue=queue)
        assert wait_until(
            lambda: Garment.objects.filter(id__in=ids, status=Garment.Status.PROCESSING).exists(),
            timeout=60,
            interval=0.1,
        )
        os.kill(first.process.pid, signal.SIGKILL)
        first.stop()
        assert Garment.objects.filter(id__in=ids).exclude(status=Garment.Status.READY).exists()
        # A worker gives unacknowledged messages older than the visibility timeout back to
        # the queue as it starts, and after that only every ~100 s (kombu scans on one call
        # in 10, every 10 s): let the killed worker's message age past the timeout first, so
        # the rescuer takes it back at once instead of up to 100 s later on a slow machine.
        time.sleep(float(env["CELERY_VISIBILITY_TIMEOUT"]) + 1)
        second = WorkerProcess(name="rescuer", queues=queue, extra_env=env)
        second.wait_ready()
        assert wait_until(
            lambda: (
                not Garment.objects.filter(id__in=ids).exclude(status=Garment.Status.READY).exists()
            ),
            timeout=180,
        ), list(Garment.objects.filter(id__in=ids).values_list("status", "error").distinct())
    finally:
        first.stop()
        if second is not None:
            second.stop()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)
    assert BackboneFeature.objects.filter(garment_id__in=ids).count() == len(ids)
    assert GarmentFeature.objects.filter(garment_id__in=ids).count() == 0  # no model trained


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_import_wait_indexes_in_process_when_no_worker_runs(tmp_path):
    from django.core.management import call_command

    images = {f"{i}.jpg": jpeg_bytes((i % 255, 50, 50)) for i in range(500, 520)}
    rows = "".join(row(str(i)) for i in range(500, 520))
    path = make_catalogue(tmp_path / "c.zip", rows, images)
    out = io.StringIO()
    call_command("import_catalog", str(path), "--wait", stdout=out, stderr=io.StringIO())
    assert "20 ready, 0 failed" in out.getvalue()
    assert Garment.objects.filter(status=Garment.Status.READY).count() == 20


# --------------------------------------------------------------------------- model change


@pytest.mark.django_db
@pytest.mark.slow
def test_reindex_and_activate_switches_searches_to_a_complete_new_model(trained_catalogue):
    """A new model (another colour variant) is re-indexed in full, clustered, then switched
    to; garments the new model had no vectors for (and one without a CNN cache) are covered."""
    from retrieval import search
    from retrieval.models import ClusterRun, FeatureModel, SearchRow

    old = FeatureModel.objects.get(active=True)
    new = training.train_model(epochs=2, activate=False)
    try:
        new.colour_variant = "paper"
        new.save(update_fields=["colour_variant"])
        assert FeatureModel.objects.get(active=True) == old  # still serving the old one
        ready = Garment.objects.filter(status=Garment.Status.READY)
        # Incomplete on purpose: vectors missing for some garments, a CNN cache for one.
        dropped = list(ready.values_list("id", flat=True)[:5])
        GarmentFeature.objects.filter(model=new, garment_id__in=dropped).delete()
        BackboneFeature.objects.filter(garment_id=dropped[0]).delete()

        training.reindex_and_activate(model=new)

        new.refresh_from_db()
        old.refresh_from_db()
        assert new.active and not old.active
        assert new.status == FeatureModel.Status.READY and new.progress["stage"] == "done"
        assert set(new.features.values_list("garment_id", flat=True)) == set(
            ready.values_list("id", flat=True)
        )
        runs = ClusterRun.objects.filter(model=new, active=True)
        assert set(runs.values_list("space", flat=True)) == {"fused", "deep"}
        feature_ids = set(new.features.values_list("id", flat=True))
        for run in runs:  # every vector is in each active run's search partition, labelled
            rows = SearchRow.objects.filter(run=run)
            assert set(rows.values_list("feature_id", flat=True)) == feature_ids
            assert not rows.filter(cluster__isnull=True).exists()
        assert BackboneFeature.objects.filter(garment_id=dropped[0]).count() == 1
        # The paper's colour variant was applied: its colour part differs from the old one's.
        garment = Garment.objects.get(pk=dropped[1])
        result = search.more_like_this(garment=garment, top=5)
        assert result.model == new.name and len(result.hits) == 5
        old_vec = GarmentFeature.objects.get(model=old, garment=garment).fused
        new_vec = GarmentFeature.objects.get(model=new, garment=garment).fused
        assert not np.allclose(np.asarray(old_vec)[-30:], np.asarray(new_vec)[-30:])
    finally:
        new.head_path.unlink(missing_ok=True)


@pytest.mark.django_db
@pytest.mark.slow
def test_switching_back_to_a_retired_model_reuses_its_vectors_and_fits_kmeans(trained_catalogue):
    """The full path with the real head: a new model is trained and activated, the sweep drops
    the previous model's partitions but keeps its vectors; switching back (the admin's
    "Activate", i.e. reindex_and_activate) recomputes only its missing and outdated vectors,
    fits new K-means runs, and its searches are clustered again."""
    from django.utils import timezone

    from retrieval import search
    from retrieval.models import ClusterRun, FeatureModel
    from retrieval.search import clustering

    old = FeatureModel.objects.get(active=True)
    assert old.vectors_key == training.vectors_key(old)  # set when it was trained
    old_runs = set(old.cluster_runs.filter(active=True).values_list("id", flat=True))
    new = training.train_model(epochs=2)  # activated
    try:
        assert FeatureModel.objects.get(active=True) == new
        report = training.retire_inactive_models(keep=1)
        assert [item.name for item in report.models] == [old.name]
        assert not set(clustering.partition_run_ids()) & old_runs
        stamps = dict(old.features.values_list("garment_id", "created_at"))
        assert len(stamps) == Garment.objects.filter(status=Garment.Status.READY).count()
        # Meanwhile (under the new model): one garment's image re-read by the CNN (its cache
        # row is newer than the old model's vector), another's vector of the old model gone.
        touched, missing = sorted(stamps)[:2]
        BackboneFeature.objects.filter(garment_id=touched).update(created_at=timezone.now())
        GarmentFeature.objects.filter(model=old, garment_id=missing).delete()

        training.reindex_and_activate(model=old)

        old.refresh_from_db()
        assert old.active and old.status == FeatureModel.Status.READY
        after = dict(old.features.values_list("garment_id", "created_at"))
        assert set(after) == set(stamps)
        recomputed = {g for g in after if after[g] != stamps.get(g)}
        assert recomputed == {touched, missing}  # the other vectors were reused as they are
        runs = ClusterRun.objects.filter(model=old, active=True)
        assert set(runs.values_list("space", flat=True)) == {"fused", "deep"}
        assert not set(runs.values_list("id", flat=True)) & old_runs  # fitted anew
        assert set(runs.values_list("id", flat=True)) <= set(clustering.partition_run_ids())
        garment = Garment.objects.get(pk=missing)
        result = search.more_like_this(garment=garment, top=5)
        assert result.model == old.name and len(result.hits) == 5 and result.clusters
        # The sweep after this switch retires the new model the same way.
        training.retire_inactive_models(keep=1)
        assert not set(new.cluster_runs.values_list("id", flat=True)) & set(
            clustering.partition_run_ids()
        )
    finally:
        new.head_path.unlink(missing_ok=True)
