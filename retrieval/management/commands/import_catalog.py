"""python manage.py import_catalog PATH [--limit N] [--category-field articleType] [--wait]
    [--examples PATH] [--train]
python manage.py import_catalog --resume JOB_ID [--wait]"""

from __future__ import annotations

import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from retrieval import catalogue, indexing, training
from retrieval.models import Garment, ImportJob


class Command(BaseCommand):
    help = (
        "Import a catalogue zip or folder (styles.csv + images/); garments are indexed by workers."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", type=Path, nargs="?")
        parser.add_argument(
            "--resume",
            type=int,
            metavar="JOB_ID",
            help="Run a failed or stalled import again, from its own source: the rows not "
            "imported yet are imported, each row is counted once.",
        )
        parser.add_argument("--limit", type=int, default=None, help="Import at most N valid rows.")
        parser.add_argument("--category-field", default="articleType")
        parser.add_argument(
            "--train",
            action="store_true",
            help="With --wait: then train and activate a model if none is active yet, or "
            "rebuild the K-means clusters after a large import.",
        )
        parser.add_argument(
            "--examples",
            type=Path,
            default=None,
            metavar="PATH",
            help="Then import the labelled example photos of PATH (import_examples; with the "
            "RETRIEVAL_EXAMPLE_HOLDOUT split): after the catalogue's categories exist and "
            "before --train, so the first model learns from them.",
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help="Return when every imported garment is ready or failed (indexes here when no "
            "worker is running).",
        )

    def handle(
        self,
        *args,
        path: Path | None,
        resume: int | None,
        limit,
        category_field: str,
        wait: bool,
        train: bool,
        examples: Path | None = None,
        **options,
    ):
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")
        previous = None
        if resume is not None:
            previous = ImportJob.objects.filter(pk=resume).first()
            if previous is None:
                raise CommandError(f"no import {resume}")
            if previous.status == ImportJob.Status.DONE:
                raise CommandError(f"import {resume} is done already")
            path = Path(previous.upload.path if previous.upload else previous.source)
            category_field, limit = previous.category_field, previous.limit
        elif path is None:
            raise CommandError("give the catalogue's PATH, or --resume JOB_ID")
        started = time.monotonic()

        def progress(job: ImportJob) -> None:
            self.stdout.write(
                f"  {job.rows} rows read: {job.created} new, {job.updated} updated, "
                f"{job.unchanged} unchanged"
            )

        job = catalogue.import_catalog(
            source=path, category_field=category_field, limit=limit, job=previous, progress=progress
        )
        if job.status == ImportJob.Status.RUNNING:
            raise CommandError(f"import {job.pk} is being run elsewhere right now (left alone)")
        if job.status == ImportJob.Status.FAILED:
            raise CommandError(f"import failed: {job.error}")
        for problem in job.problems[:50]:
            where = ", ".join(
                f"{key} {problem[key]}" for key in ("row", "sku", "file") if problem.get(key)
            )
            self.stderr.write(f"  skipped ({where}): {problem['reason']}")
        if len(job.problems) > 50:
            self.stderr.write(f"  ... and {len(job.problems) - 50} more problems (see the admin)")
        self.stdout.write(
            f"import {job.pk}: {job.created} new, {job.updated} updated, {job.unchanged} "
            f"unchanged, {len(job.problems)} problems"
        )
        if examples is not None:
            self._import_examples(examples)
        if not wait:
            return
        garments = Garment.objects.filter(import_job=job)
        last = [0.0]

        def report() -> None:
            if time.monotonic() - last[0] >= 10:
                last[0] = time.monotonic()
                p = catalogue.import_progress(job=job)
                self.stdout.write(
                    f"  indexing: {p['ready']} ready, {p['failed']} failed, {p['pending']} to go"
                )

        counts = indexing.wait_for_garments(garments=garments, progress=report)
        elapsed = time.monotonic() - started
        ready = counts.get(Garment.Status.READY, 0)
        failed = counts.get(Garment.Status.FAILED, 0)
        rate = (ready + failed) / elapsed if elapsed else 0.0
        self.stdout.write(
            self.style.SUCCESS(
                f"done in {elapsed:.0f}s: {ready} ready, {failed} failed ({rate:.1f} garments/s)"
            )
        )
        failures = garments.filter(status=Garment.Status.FAILED).values_list("sku", "error")
        for sku, error in failures[:50]:
            self.stderr.write(f"  failed {sku}: {error}")
        if train:
            self.stdout.write(training.after_import(job=job))

    def _import_examples(self, path: Path) -> None:
        """The example photos, reported; a file that cannot be read is a warning (the
        catalogue is in and trains without them), never a failed import."""
        from django.conf import settings

        try:
            report = catalogue.import_example_photos(
                source=path, holdout=settings.RETRIEVAL_EXAMPLE_HOLDOUT
            )
        except (catalogue.CatalogError, catalogue.MediaStorageError) as exc:
            self.stderr.write(f"example photos from {path} not imported: {exc}")
            return
        self.stdout.write(f"example photos from {path}: {report.summary()}")
