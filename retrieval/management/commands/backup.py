"""python manage.py backup DIR: database, media files and trained models, while the site runs."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from retrieval import backup


class Command(BaseCommand):
    help = (
        "Back up this install into DIR (new or empty): a consistent pg_dump of the database, "
        "the garment images and import archives it names, the trained heads, and a manifest "
        "(versions, row counts, SHA-256 of every file). Safe while the site runs."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("directory", type=Path, help="Where to write the backup.")

    def handle(self, *args, directory: Path, **options) -> None:
        try:
            result = backup.make_backup(directory=directory, progress=self.stdout.write)
        except backup.BackupError as exc:
            raise CommandError(f"backup failed, nothing was written to {directory}: {exc}") from exc
        manifest = result.manifest
        counts = manifest["counts"]
        self.stdout.write(
            f"{counts.get('retrieval_garment', 0)} garments, "
            f"{counts.get('retrieval_featuremodel', 0)} feature models, "
            f"{len(manifest['files'])} files; active model {manifest['active']['model']}"
        )
        for entry in result.missing:
            self.stderr.write(
                f"missing (deleted while backing up?): {entry['area']}/{entry['path']}"
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"backup written to {result.directory}: {result.bytes} bytes in "
                f"{result.seconds:.1f} s"
            )
        )
