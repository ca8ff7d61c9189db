"""python manage.py prune_models [--keep N] [--dry-run]: model retirement, by hand."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from retrieval import training


class Command(BaseCommand):
    help = (
        "Drop the search-table partitions of feature models that are not active, and the "
        "vectors of all but the N most recently active of them (training.retire_inactive_models; "
        "it also runs after every activation). Never touches the active model, heads or the "
        "CNN cache; searches never wait."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--keep",
            type=int,
            default=None,
            help=f"Previous models whose vectors are kept (default RETRIEVAL_KEEP_MODELS, "
            f"now {settings.RETRIEVAL_KEEP_MODELS}).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Say what would go; change nothing."
        )

    def handle(self, *args, keep, dry_run, **options) -> None:
        if keep is not None and keep < 0:
            raise CommandError("--keep must be 0 or more")
        report = training.retire_inactive_models(keep=keep, dry_run=dry_run)
        lines = report.lines() or ["no inactive models"]
        for line in lines:
            self.stdout.write(f"  {line}")
        if report.failed_runs:
            self.stderr.write(
                f"partitions of runs {report.failed_runs} are still in use: run it again later"
            )
        verdict = "dry run: nothing changed" if dry_run else "done"
        self.stdout.write(self.style.SUCCESS(f"{verdict} (keep {report.keep})"))
