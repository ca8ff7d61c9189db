"""Imports that meet oversized CSV fields, die half-way, are redelivered or rescued by the
sweep, and two imports creating one category at once (issue #17, point 5). Real PostgreSQL;
races are made deterministic with an uncommitted row (tests.blocking)."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from retrieval import catalogue
from retrieval.catalogue import imports
from retrieval.jobs import tasks
from retrieval.models import Category, Garment, ImportJob
from tests.blocking import race
from tests.factories import jpeg_bytes

HEADER = (
    "id,image,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName\n"
)


def row(sku: str, category: str = "Tshirts", title: str | None = None) -> str:
    title = title or f"Tee {sku}"
    return f"{sku},{sku}.jpg,Men,Apparel,Topwear,{category},Red,Summer,2012,Casual,{title}\n"


def catalogue_zip(path, rows: str, skus: list[str]) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("styles.csv", HEADER + rows)
        for n, sku in enumerate(skus):
            zf.writestr(f"images/{sku}.jpg", jpeg_bytes((20 + 40 * n % 200, 40, 200)))
    return path.read_bytes()


class WorkerDied(BaseException):
    """What a SIGKILL looks like from inside: nothing of the run's own handling runs."""


def die_after_first_batch(job: ImportJob) -> None:
    raise WorkerDied


@pytest.mark.django_db
def test_a_csv_field_over_the_csv_limit_is_a_row_problem_and_the_rest_is_imported(tmp_path):
    rows = row("1") + row("2", title="x" * 140_000) + row("3")
    catalogue_zip(tmp_path / "c.zip", rows, ["1", "2", "3"])
    job = catalogue.import_catalog(source=tmp_path / "c.zip")
    assert job.status == ImportJob.Status.DONE, job.error
    assert sorted(Garment.objects.values_list("sku", flat=True)) == ["1", "3"]
    assert (job.rows, job.created) == (2, 2)
    [problem] = job.problems
    assert problem["row"] == 2
    assert "field larger than field limit" in problem["reason"]


@pytest.mark.django_db
def test_an_import_that_fails_is_marked_failed_with_the_reason_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "IMPORT_BATCH", 2)
    catalogue_zip(tmp_path / "c.zip", row("1") + row("2") + row("3"), ["1", "2", "3"])

    def broken(job: ImportJob) -> None:
        if job.status == ImportJob.Status.RUNNING:  # mid-run; not the final report
            raise RuntimeError("the disk went away")

    job = catalogue.import_catalog(source=tmp_path / "c.zip", progress=broken)
    job.refresh_from_db()
    assert job.status == ImportJob.Status.FAILED
    assert "RuntimeError: the disk went away" in job.error
    assert job.claimed_by == "" and job.finished_at is not None
    assert Garment.objects.count() == 2  # the first batch is kept

    resumed = catalogue.import_catalog(source=tmp_path / "c.zip", job=job)
    assert resumed.pk == job.pk
    assert resumed.status == ImportJob.Status.DONE, resumed.error
    assert resumed.error == ""
    assert Garment.objects.filter(import_job=job).count() == 3
    assert (resumed.rows, resumed.created, resumed.updated, resumed.unchanged) == (3, 3, 0, 0)


@pytest.mark.django_db
def test_a_redelivered_import_task_resumes_and_counts_each_row_once(
    tmp_path, monkeypatch, settings
):
    settings.MEDIA_ROOT = tmp_path / "media"
    monkeypatch.setattr(imports, "IMPORT_BATCH", 2)
    skus = [str(n) for n in range(1, 6)]
    data = catalogue_zip(tmp_path / "c.zip", "".join(row(s) for s in skus), skus)
    job = ImportJob(source="c.zip")
    job.upload.save("c.zip", ContentFile(data))

    # The worker runs the task and dies after its first batch: the job stays running.
    with pytest.raises(WorkerDied):
        catalogue.import_catalog(
            source=Path(job.upload.path), job=job, claim="task-1", progress=die_after_first_batch
        )
    job.refresh_from_db()
    assert job.status == ImportJob.Status.RUNNING
    assert (job.rows, job.created) == (2, 2)

    # The broker redelivers the same task (same id: it takes its lease straight back).
    result = tasks.import_catalog.apply(args=[job.pk], task_id="task-1").get()
    job.refresh_from_db()
    assert job.status == ImportJob.Status.DONE, job.error
    assert (job.rows, job.created, job.updated, job.unchanged) == (5, 5, 0, 0)
    assert result["garments"] == 5
    assert job.attempts == 2


@pytest.mark.django_db
def test_another_run_leaves_an_import_alone_while_its_lease_is_fresh(tmp_path):
    catalogue_zip(tmp_path / "c.zip", row("1"), ["1"])
    job = ImportJob.objects.create(
        source="c.zip",
        status=ImportJob.Status.RUNNING,
        claimed_by="task-alive",
        heartbeat_at=timezone.now(),
    )
    again = catalogue.import_catalog(source=tmp_path / "c.zip", job=job, claim="task-other")
    assert again.status == ImportJob.Status.RUNNING
    assert again.claimed_by == "task-alive"
    assert not Garment.objects.exists()


@pytest.mark.django_db
def test_the_sweep_rescues_imports_whose_run_died(
    tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.RETRIEVAL_STUCK_MINUTES = 15
    long_ago = timezone.now() - timedelta(hours=1)
    data = catalogue_zip(tmp_path / "c.zip", row("1") + row("2"), ["1", "2"])
    uploaded = ImportJob(source="c.zip", status=ImportJob.Status.RUNNING, claimed_by="task-dead")
    uploaded.upload.save("c.zip", ContentFile(data))
    ImportJob.objects.filter(pk=uploaded.pk).update(heartbeat_at=long_ago, attempts=1)
    from_command = ImportJob.objects.create(
        source=str(tmp_path / "c.zip"),
        status=ImportJob.Status.RUNNING,
        claimed_by="host:123:abc",
        heartbeat_at=long_ago,
        attempts=1,
    )
    out_of_attempts = ImportJob(source="d.zip", status=ImportJob.Status.RUNNING)
    out_of_attempts.upload.save("d.zip", ContentFile(data))
    ImportJob.objects.filter(pk=out_of_attempts.pk).update(
        heartbeat_at=long_ago, attempts=imports.MAX_IMPORT_ATTEMPTS
    )
    alive = ImportJob.objects.create(
        source="e.zip",
        status=ImportJob.Status.RUNNING,
        claimed_by="task-alive",
        heartbeat_at=timezone.now(),
    )

    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert catalogue.rescue_stalled_imports() == 3
    assert len(queued) == 1  # the uploaded job's task, published after commit
    uploaded.refresh_from_db()
    assert (uploaded.status, uploaded.claimed_by) == (ImportJob.Status.PENDING, "")
    from_command.refresh_from_db()
    assert from_command.status == ImportJob.Status.FAILED
    assert f"import_catalog --resume {from_command.pk}" in from_command.error
    out_of_attempts.refresh_from_db()
    assert out_of_attempts.status == ImportJob.Status.FAILED
    assert "resume it from the admin" in out_of_attempts.error
    alive.refresh_from_db()
    assert alive.status == ImportJob.Status.RUNNING
    assert catalogue.rescue_stalled_imports() == 0  # idempotent

    # The queued task runs the rescued job to the end; the manage.py one resumes by hand.
    tasks.import_catalog.apply(args=[uploaded.pk], task_id="task-new").get()
    uploaded.refresh_from_db()
    assert uploaded.status == ImportJob.Status.DONE, uploaded.error
    assert (uploaded.rows, uploaded.created) == (2, 2)


@pytest.mark.django_db
def test_import_catalog_resume_continues_a_failed_command_import(tmp_path):
    from django.core.management import call_command

    catalogue_zip(tmp_path / "c.zip", row("1") + row("2"), ["1", "2"])
    job = ImportJob.objects.create(
        source=str(tmp_path / "c.zip"), status=ImportJob.Status.FAILED, error="stopped"
    )
    call_command("import_catalog", "--resume", str(job.pk), stdout=io.StringIO())
    job.refresh_from_db()
    assert job.status == ImportJob.Status.DONE
    assert (job.rows, job.created) == (2, 2)


@pytest.mark.django_db(transaction=True)
def test_two_importers_creating_one_category_at_once_both_get_it():
    # Another import's transaction has just created "Shirts" (same slug), not committed yet.
    outcome = race(
        "INSERT INTO retrieval_category (name, slug, active, created_at, updated_at) "
        "VALUES (%s, %s, true, now(), now())",
        ["Shirts", "shirts"],
        lambda: catalogue.get_or_create_category(name="shirts"),
    )
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].name == "Shirts"
    assert Category.objects.count() == 1
