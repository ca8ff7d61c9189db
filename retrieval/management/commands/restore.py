"""python manage.py restore DIR [--force]: bring a backup back into an (empty) install."""

from __future__ import annotations

from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from retrieval import backup


class Command(BaseCommand):
    help = (
        "Restore a backup made by `manage.py backup`: garments, vectors, feature models, the "
        "active model and K-means runs, images and trained heads. Checks the whole backup "
        "first (manifest, versions, checksums) and changes nothing if anything is wrong. "
        "Refuses an install that is not empty unless --force. Stop the site's web and "
        "workers first."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("directory", type=Path, help="A directory written by backup.")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Replace the contents of an install that is not empty.",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Only verify the backup (manifest, versions, checksums, dump); change nothing.",
        )

    def handle(self, *args, directory: Path, force: bool, check: bool, **options) -> None:
        try:
            if check:
                manifest = backup.verify_backup(directory)
                self.stdout.write(
                    self.style.SUCCESS(
                        f"{directory} is a complete backup of version {manifest['version']} "
                        f"made {manifest['created_at']} ({len(manifest['files'])} files)"
                    )
                )
                return
            result = backup.restore_backup(
                directory=directory, force=force, progress=self.stdout.write
            )
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from exc
        if result.pending_migrations:
            self.stdout.write(
                f"the backup predates {len(result.pending_migrations)} migrations: migrating"
            )
            call_command("migrate", interactive=False, verbosity=0)
        for table, (expected, found) in result.mismatched_counts.items():
            self.stderr.write(f"{table}: {found} rows, the backup's manifest says {expected}")
        active = result.manifest["active"]["model"]
        self.stdout.write(
            self.style.SUCCESS(
                f"restored {result.manifest['counts'].get('retrieval_garment', 0)} garments and "
                f"{result.files} files from {result.directory} in {result.seconds:.1f} s; "
                f"active model {active}"
            )
        )
