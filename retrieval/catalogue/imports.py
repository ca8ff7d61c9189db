"""Bulk catalogue imports: a zip or folder of styles.csv + images, in batches, resumable by sku."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from retrieval.catalogue.duplicates import exact_duplicate
from retrieval.catalogue.garments import get_or_create_category
from retrieval.catalogue.media import (
    STORAGE_UNAVAILABLE,
    MediaStorageError,
    delete_images_after_commit,
    delete_stored_image,
    store_image,
)
from retrieval.catalogue.uploads import image_digest
from retrieval.indexing import enqueue_indexing
from retrieval.jobs.publishing import NOT_QUEUED, publish, take_unqueued
from retrieval.models import (
    Category,
    Garment,
    ImportJob,
)

if TYPE_CHECKING:
    from retrieval.catalogue.source import CatalogRow, CatalogSource

log = logging.getLogger(__name__)


# Rows per bulk write during an import.
IMPORT_BATCH = 500


class ImportLeaseLost(Exception):
    """Another run took the job over (this one was presumed dead): stop, touching nothing."""


def _new_claim() -> str:
    """A lease token for a run outside Celery (manage.py): host, process and a nonce."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:64]


def _lease_cutoff() -> datetime:
    return timezone.now() - timedelta(minutes=settings.RETRIEVAL_STUCK_MINUTES)


def _claim_job(*, job: ImportJob, claim: str) -> bool:
    """Take the job's lease: free, already ours (a redelivered task), or left by a dead run."""
    now = timezone.now()
    free = (
        ~Q(status=ImportJob.Status.RUNNING)
        | Q(claimed_by__in=["", claim])
        | Q(heartbeat_at__lt=_lease_cutoff())
        | Q(heartbeat_at__isnull=True)
    )
    taken = ImportJob.objects.filter(free, pk=job.pk).update(
        status=ImportJob.Status.RUNNING,
        claimed_by=claim,
        heartbeat_at=now,
        attempts=F("attempts") + 1,
        error="",
        finished_at=None,
    )
    if taken:
        job.refresh_from_db()
    return bool(taken)


def _holds_lease(*, job: ImportJob, claim: str) -> bool:
    """Whether this run still holds the job, its row locked until the transaction ends."""
    mine = ImportJob.objects.select_for_update().filter(pk=job.pk, claimed_by=claim)
    return bool(list(mine.values_list("pk", flat=True)))


def import_catalog(
    *,
    source: Path,
    category_field: str = "articleType",
    limit: int | None = None,
    job: ImportJob | None = None,
    claim: str | None = None,
    progress: Callable[[ImportJob], None] | None = None,
) -> ImportJob:
    """Import (or update, by sku) every valid row of a catalogue zip/folder; queue indexing.

    Problems (which row or file, and why) are recorded on the job and the rest continues.
    Re-importing the same catalogue changes nothing: rows whose fields and image bytes are
    unchanged are left alone.

    Resumable: ``job`` may be one that ran before (a redelivered task, a rescued or failed
    job). Its run re-reads the whole file, skips the rows an earlier run imported (by sku,
    unchanged) and counts each row once: a garment the job already holds was counted by the
    run that wrote it. ``claim`` is the run's lease token (the Celery task id; made up when
    None): a redelivery of the same task takes the job straight back, another run of a job
    whose lease is fresh leaves it alone. A run that fails for any reason marks the job
    failed with the reason (rows already imported are kept); one that dies outright leaves
    its lease to age, for :func:`rescue_stalled_imports`.
    """
    from retrieval.catalogue.source import CatalogError, CatalogSource, Problem, read_rows

    if job is None:
        job = ImportJob.objects.create(
            source=str(source), category_field=category_field, limit=limit
        )
    claim = claim or _new_claim()
    if not _claim_job(job=job, claim=claim):
        log.info("import %s is being run elsewhere (lease %s): left alone", job.pk, job.claimed_by)
        job.refresh_from_db()
        return job
    problems: list[dict] = []
    try:
        with CatalogSource(
            Path(source),
            max_file_bytes=settings.RETRIEVAL_MAX_UPLOAD_BYTES,
            max_total_bytes=settings.RETRIEVAL_MAX_IMPORT_BYTES,
        ) as catalog:
            problems.extend(p.as_dict() for p in catalog.problems)
            batch = []
            for item in read_rows(catalog, category_field=category_field, limit=limit):
                if isinstance(item, Problem):
                    problems.append(item.as_dict())
                    continue
                batch.append(item)
                if len(batch) >= IMPORT_BATCH:
                    _import_batch(
                        job=job, claim=claim, catalog=catalog, rows=batch, problems=problems
                    )
                    batch = []
                    # The admin's import page polls the job: problems show as they are found.
                    ImportJob.objects.filter(pk=job.pk).update(problems=problems[:5000])
                    if progress is not None:
                        progress(job)
            if batch:
                _import_batch(job=job, claim=claim, catalog=catalog, rows=batch, problems=problems)
    except ImportLeaseLost:
        log.warning("import %s was taken over by another run: this one stops", job.pk)
        job.refresh_from_db()
        return job
    except (CatalogError, MediaStorageError) as exc:
        job.status = ImportJob.Status.FAILED
        job.error = str(exc)
    except Exception as exc:
        # Whatever it was (a bug, a database error mid-batch), the job must not stay
        # "running" for ever: failed, with the reason; its batches so far are kept.
        log.exception("import %s stopped", job.pk)
        job.status = ImportJob.Status.FAILED
        job.error = (
            f"the import stopped: {exc.__class__.__name__}: {exc}"[:2000]
            + " (rows imported so far are kept; resume it to import the rest)"
        )
    else:
        job.status = ImportJob.Status.DONE
    job.problems = problems[:5000]  # keep the report bounded for a pathological file
    job.finished_at = timezone.now()
    job.claimed_by = ""
    with transaction.atomic():
        if not _holds_lease(job=job, claim=claim):
            log.warning("import %s was taken over by another run: its result is left", job.pk)
            job.refresh_from_db()
            return job
        job.save()
    if job.status == ImportJob.Status.DONE and job.upload:
        # The archive was read in full: its images are garments' files now. A failed import
        # keeps it (the error may be worth a look, e.g. a truncated upload).
        job.upload.delete(save=False)
        ImportJob.objects.filter(pk=job.pk).update(upload="")
    if progress is not None:
        progress(job)
    return job


def resume_import(*, job: ImportJob) -> bool:
    """Queue a failed (or stalled) uploaded import again (admin): it imports the rows not
    imported yet and counts each row once. False for a job that has no uploaded file (run
    ``manage.py import_catalog --resume ID`` where its source is), that is done, or whose
    run is alive (its lease is fresh)."""
    if not job.upload:
        return False
    alive = Q(status=ImportJob.Status.RUNNING, heartbeat_at__gte=_lease_cutoff())
    with transaction.atomic():
        updated = (
            ImportJob.objects.filter(pk=job.pk)
            .exclude(alive | Q(status=ImportJob.Status.DONE))
            .update(
                status=ImportJob.Status.PENDING,
                claimed_by="",
                error="",
                attempts=0,
                finished_at=None,
            )
        )
        if updated:
            start_import(job=job)
    return bool(updated)


# Runs of one import the sweep starts before it gives up on it (marks it failed).
MAX_IMPORT_ATTEMPTS = 3


def rescue_stalled_imports(*, older_than: timedelta | None = None) -> int:
    """Imports left "running" by a run that died (worker killed, manage.py stopped): no batch
    renewed their lease for ``older_than`` (RETRIEVAL_STUCK_MINUTES).

    An uploaded import is queued again (it resumes: see :func:`import_catalog`), until its
    runs have died MAX_IMPORT_ATTEMPTS times; one started by ``manage.py import_catalog``
    (whose source a worker may not see), or out of attempts, is marked failed with the
    reason, to be resumed by hand. Rows FOR UPDATE SKIP LOCKED: a job whose batch is being
    written right now (it holds its row) is alive, and concurrent sweeps take a job once.
    """
    cutoff = timezone.now() - (older_than or timedelta(minutes=settings.RETRIEVAL_STUCK_MINUTES))
    stale = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    with transaction.atomic():
        stalled = list(
            ImportJob.objects.select_for_update(skip_locked=True)
            .filter(stale, status=ImportJob.Status.RUNNING)
            .order_by("pk")
        )
        for job in stalled:
            job.claimed_by = ""
            if job.upload and job.attempts < MAX_IMPORT_ATTEMPTS:
                job.status = ImportJob.Status.PENDING
                job.error = ""
                job.save(update_fields=["status", "claimed_by", "error"])
                start_import(job=job)
                continue
            job.status = ImportJob.Status.FAILED
            job.finished_at = timezone.now()
            how = (
                f"resume it from the admin (its runs died {job.attempts} times: look for "
                "a row that stops the worker)"
                if job.upload
                else f"run manage.py import_catalog --resume {job.pk} where its source is"
            )
            job.error = (
                f"the import stopped without finishing (no progress since {job.heartbeat_at}:"
                f" its process died); rows imported so far are kept: {how}"
            )
            job.save(update_fields=["status", "claimed_by", "error", "finished_at"])
    if stalled:
        log.warning("sweep: rescued %d stalled imports", len(stalled))
    return len(stalled)


def start_import(*, job: ImportJob) -> None:
    """Queue an uploaded import (admin) for a worker, after the job row is committed.

    With the broker down the job stays pending, marked NOT_QUEUED (staff see why), and
    :func:`requeue_unqueued_imports` queues it once Redis is back.
    """

    def send() -> None:

        error = publish("retrieval.tasks.import_catalog", args=[job.pk])
        if error is not None:
            log.warning("broker unavailable, import %s waits until it is back: %s", job.pk, error)
            ImportJob.objects.filter(pk=job.pk, status=ImportJob.Status.PENDING).update(
                error=NOT_QUEUED
            )

    transaction.on_commit(send)


def requeue_unqueued_imports() -> int:
    """Queue the import jobs whose task never reached the broker (see :func:`start_import`).

    FOR UPDATE SKIP LOCKED and the mark cleared in the same transaction: concurrent sweeps
    queue a job once (two imports of one job at a time would race on its rows).
    """
    with transaction.atomic():
        jobs = take_unqueued(ImportJob.objects.filter(status=ImportJob.Status.PENDING))
        for job_id in jobs:
            start_import(job=ImportJob(pk=job_id))
    if jobs:
        log.info("re-queued %d import jobs", len(jobs))
    return len(jobs)


def _import_batch(
    *,
    job: ImportJob,
    claim: str,
    catalog: CatalogSource,
    rows: list[CatalogRow],
    problems: list[dict],
) -> None:
    """One transaction of rows. Images are re-encoded and stored (:func:`store_image`)
    before their rows are written; if the batch fails, the files it stored are removed; once
    it commits, the files of the images it replaced are deleted. The job's counts and lease
    are written in the same transaction as its garments: a garment the job holds has been
    counted (what makes a resumed run count each row once)."""
    from retrieval import images
    from retrieval.catalogue.source import CatalogError

    # Categories first, each committed on its own (get_or_create_category is safe against
    # concurrent creators): inside the batch, a new category's row would stay locked until
    # the batch commits, and two imports creating each other's categories could deadlock.
    # A row refused below may so leave an empty category behind.
    categories: dict[str, Category] = {}
    for row in rows:
        key = row.category.lower()
        if key not in categories:
            categories[key] = get_or_create_category(name=row.category)
    existing = {g.sku: g for g in Garment.objects.filter(sku__in=[r.sku for r in rows])}
    to_index: list[int] = []
    unchanged: list[int] = []
    stored: list[str] = []
    replaced: list[str] = []  # the files of the images this batch replaces
    counts = (job.rows, job.created, job.updated, job.unchanged)
    try:
        with transaction.atomic():
            # The lease, locked until commit: a run presumed dead that wakes up stops here.
            if not _holds_lease(job=job, claim=claim):
                raise ImportLeaseLost(f"import {job.pk} is no longer claimed by {claim}")
            for row in rows:

                def problem(reason: str, row=row) -> None:
                    problems.append(
                        {"row": row.row, "sku": row.sku, "file": row.image, "reason": reason}
                    )

                try:
                    data = catalog.read(row.image)
                except (CatalogError, OSError, KeyError) as exc:
                    problem(str(exc))
                    continue
                if not data:
                    problem("empty file")
                    continue
                category = categories[row.category.lower()]
                # Of the catalogue's bytes, not the stored JPEG's: a re-import compares sources.
                digest = image_digest(data)
                garment = existing.get(row.sku)
                fields = {
                    "title": row.title,
                    "category_id": category.pk,
                    "colour": row.colour,
                    "gender": row.gender,
                    "season": row.season,
                    "usage": row.usage,
                    "year": row.year,
                    "attributes": {**row.attributes, "image_sha256": digest},
                }
                created = garment is None
                # Written (and counted) by an earlier run of this job: not counted again.
                counted = garment is not None and garment.import_job_id == job.pk
                image_changed = created or garment.attributes.get("image_sha256") != digest
                if not image_changed and all(
                    getattr(garment, name) == value for name, value in fields.items()
                ):
                    if not counted:
                        job.rows += 1
                        job.unchanged += 1
                    unchanged.append(garment.pk)
                    continue
                if created:
                    garment = Garment(sku=row.sku)
                if image_changed:
                    assert garment is not None  # created above when new
                    previous = "" if created else garment.image.name
                    try:
                        decoded = images.open_image(
                            data, max_pixels=settings.RETRIEVAL_MAX_PIXELS, name=row.image
                        )
                    except images.ImageError as exc:  # the row is refused, the garment kept
                        problem(exc.reason)
                        continue
                    # The same pixels as another garment's photo (this batch's rows are
                    # saved already, so a repeat within the file is caught too): skipped.
                    pixels = images.pixel_digest(decoded)
                    duplicate = exact_duplicate(digest=pixels, exclude_pk=garment.pk)
                    if duplicate is not None:
                        problems.append(
                            {
                                "row": row.row,
                                "sku": row.sku,
                                "file": row.image,
                                "reason": f"skipped: {duplicate.message}",
                                "code": "duplicate_image",
                                "duplicate_of": duplicate.garment_id,
                                "duplicate_sku": duplicate.sku,
                            }
                        )
                        continue
                    try:
                        stored.append(
                            store_image(row=garment, source=decoded, name=row.image, digest=pixels)
                        )
                    except images.ImageError as exc:  # the row is refused, the garment kept
                        problem(exc.reason)
                        continue
                    if previous:
                        replaced.append(previous)
                    garment.status = Garment.Status.PENDING
                    garment.error = ""
                for name, value in fields.items():
                    setattr(garment, name, value)
                garment.import_job = job
                garment.save()
                if created:
                    job.rows += 1
                    job.created += 1
                elif not counted:
                    job.rows += 1
                    job.updated += 1
                if image_changed:
                    to_index.append(garment.pk)
            # Unchanged garments still belong to this import: its progress and --wait cover them.
            Garment.objects.filter(id__in=unchanged).update(import_job=job)
            job.heartbeat_at = timezone.now()
            job.save(update_fields=["rows", "created", "updated", "unchanged", "heartbeat_at"])
            enqueue_indexing(garment_ids=to_index)
            delete_images_after_commit(replaced)  # kept if the batch rolls back
    except Exception:
        job.rows, job.created, job.updated, job.unchanged = counts  # the batch's rows are gone
        for name in stored:
            delete_stored_image(name)
        raise


def save_import_job(*, job: ImportJob) -> ImportJob:
    """Save an uploaded import (admin): its row and its zip, then queue it after commit.

    Raises :class:`MediaStorageError` when the media storage refuses the zip (no row then).
    """
    try:
        job.save()
    except OSError as exc:
        log.error("media storage refused the import upload %s: %s", job.upload.name, exc)
        raise MediaStorageError(STORAGE_UNAVAILABLE) from exc
    start_import(job=job)
    return job


def import_progress(*, job: ImportJob) -> dict:
    """Counts of the job's garments by status (what the admin progress bar shows)."""
    counts = dict(
        Garment.objects.filter(import_job=job)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    total = sum(counts.values())
    done = counts.get(Garment.Status.READY, 0) + counts.get(Garment.Status.FAILED, 0)
    return {
        "status": job.status,
        "rows": job.rows,
        "garments": total,
        "ready": counts.get(Garment.Status.READY, 0),
        "failed": counts.get(Garment.Status.FAILED, 0),
        "pending": counts.get(Garment.Status.PENDING, 0) + counts.get(Garment.Status.PROCESSING, 0),
        "percent": round(100.0 * done / total, 1) if total else (100.0 if job.finished_at else 0),
        "problems": len(job.problems),
        "problem_list": [
            {
                "where": ", ".join(f"{k} {p[k]}" for k in ("row", "sku", "file") if p.get(k)),
                "reason": p.get("reason", ""),
            }
            for p in job.problems[:200]
        ],
        "error": job.error,
        "finished": job.finished_at is not None,
        "new_categories": unknown_categories(job=job),
    }


def unknown_categories(*, job: ImportJob) -> list[str]:
    """Categories of the job's garments that the live model was not trained on: their garments
    are searchable, but the model cannot predict them until it is retrained."""
    from retrieval.selectors import active_model

    model = active_model()
    names = set(
        Garment.objects.filter(import_job=job).values_list("category__name", flat=True).distinct()
    )
    if model is None:
        return []
    return sorted(names - set(model.classes))
