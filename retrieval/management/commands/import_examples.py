"""python manage.py import_examples PATH [--holdout X]"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from retrieval import catalogue


class Command(BaseCommand):
    help = (
        "Import labelled example photos (styles.csv with articleType and sender, images/): "
        "they train the model and are never shown in the shop."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument(
            "--holdout",
            type=float,
            default=None,
            help="Share of senders held out for evaluation, 0..0.9 (default: "
            "RETRIEVAL_EXAMPLE_HOLDOUT).",
        )

    def handle(self, *args, path: Path, holdout: float | None, **options):
        holdout = settings.RETRIEVAL_EXAMPLE_HOLDOUT if holdout is None else holdout
        if not 0 <= holdout <= 0.9:
            raise CommandError("--holdout must be from 0 to 0.9")
        try:
            report = catalogue.import_example_photos(source=path, holdout=holdout)
        except (catalogue.CatalogError, catalogue.MediaStorageError) as exc:
            raise CommandError(f"example photos not imported: {exc}") from exc
        for problem in report.problems[:50]:
            fields = (("row", problem.row), ("id", problem.sku), ("file", problem.file))
            where = ", ".join(f"{key} {value}" for key, value in fields if value)
            self.stderr.write(f"  skipped ({where}): {problem.reason}")
        if len(report.problems) > 50:
            self.stderr.write(f"  ... and {len(report.problems) - 50} more problems")
        self.stdout.write(f"example photos from {path}: {report.summary()}")
