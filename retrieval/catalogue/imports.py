"""Bulk catalogue imports: a zip or folder of styles.csv + images, in batches, resumable by sku."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from retrieval.catalogue.duplicates import exact_duplicate
from retrieval.catalogue.garments import get_or_create_category
from retrieval.catalogue.media import (
    STORAGE_UNAVAILABLE,
    MediaStorageError,
    delete_images_after_commit,
    delete_stored_image,
    store_garment_image,
)
from retrieval.catalogue.uploads import image_digest
from retrieval.indexing import enqueue_indexing
from retrieval.jobs.publishing import NOT_QUEUED, publish, take_unqueued
from retrieval.models import (
    Category,
    Garment,
    ImportJob,
)

log = logging.getLogger(__name__)


# Rows per bulk write during an import.
IMPORT_BATCH = 500


def import_catalog(
    *,
    source: Path,
    category_field: str = "articleType",
    limit: int | None = None,
    job: ImportJob | None = None,
    progress=None,
) -> ImportJob:
    """Import (or update, by sku) every valid row of a catalogue zip/folder; queue indexing.

    Problems (which row or file, and why) are recorded on the job and the rest continues.
    Re-importing the same catalogue changes nothing: rows whose fields and image bytes are
    unchanged are left alone.
    """
    from retrieval.catalogue.source import CatalogError, CatalogSource, Problem, read_rows

    if job is None:
        job = ImportJob.objects.create(
            source=str(source), category_field=category_field, limit=limit
        )
    job.status = ImportJob.Status.RUNNING
    job.save(update_fields=["status"])
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
                    _import_batch(job=job, catalog=catalog, rows=batch, problems=problems)
                    batch = []
                    if progress is not None:
                        progress(job)
            if batch:
                _import_batch(job=job, catalog=catalog, rows=batch, problems=problems)
    except (CatalogError, MediaStorageError) as exc:
        job.status = ImportJob.Status.FAILED
        job.error = str(exc)
    else:
        job.status = ImportJob.Status.DONE
    job.problems = problems[:5000]  # keep the report bounded for a pathological file
    job.finished_at = timezone.now()
    job.save()
    if progress is not None:
        progress(job)
    return job


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


def _import_batch(*, job: ImportJob, catalog, rows: list, problems: list[dict]) -> None:
    """One transaction of rows. Images are re-encoded and stored (:func:`store_garment_image`)
    before their rows are written; if the batch fails, the files it stored are removed; once
    it commits, the files of the images it replaced are deleted."""
    from retrieval import images
    from retrieval.catalogue.source import CatalogError

    categories: dict[str, Category] = {}
    existing = {g.sku: g for g in Garment.objects.filter(sku__in=[r.sku for r in rows])}
    to_index: list[int] = []
    unchanged: list[int] = []
    stored: list[str] = []
    replaced: list[str] = []  # the files of the images this batch replaces
    counts = (job.rows, job.created, job.updated, job.unchanged)
    try:
        with transaction.atomic():
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
                key = row.category.lower()
                if key not in categories:
                    categories[key] = get_or_create_category(name=row.category)
                category = categories[key]
                # Of the catalogue's bytes, not the stored JPEG's: a re-import compares sources.
                digest = image_digest(data)
                garment = existing.get(row.sku)
                fields = {
                    "title": row.title,
                    "category_id": category.pk,
                    "colour": row.colour,
                    "attributes": {**row.attributes, "image_sha256": digest},
                }
                created = garment is None
                image_changed = created or garment.attributes.get("image_sha256") != digest
                if not image_changed and all(
                    getattr(garment, name) == value for name, value in fields.items()
                ):
                    job.rows += 1
                    job.unchanged += 1
                    unchanged.append(garment.pk)
                    continue
                if created:
                    garment = Garment(sku=row.sku)
                if image_changed:
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
                    duplicate = exact_duplicate(
                        digest=pixels, exclude_pk=None if created else existing[row.sku].pk
                    )
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
                            store_garment_image(
                                garment=garment, source=decoded, name=row.image, digest=pixels
                            )
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
                job.rows += 1
                if created:
                    job.created += 1
                else:
                    job.updated += 1
                if image_changed:
                    to_index.append(garment.pk)
            # Unchanged garments still belong to this import: its progress and --wait cover them.
            Garment.objects.filter(id__in=unchanged).update(import_job=job)
            job.save(update_fields=["rows", "created", "updated", "unchanged"])
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
    }
