"""python manage.py prune_media [--dry-run] [--older-than MINUTES]: delete the image files
under MEDIA_ROOT/garments that no garment references (orphans of earlier versions, crashes,
raw SQL deletes)."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from retrieval import catalogue


class Command(BaseCommand):
    help = (
        "List and delete the files under MEDIA_ROOT/garments that no garment references, "
        "older than --older-than minutes (newer ones may belong to an upload in flight)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="List the orphans, delete nothing."
        )
        parser.add_argument(
            "--older-than",
            type=int,
            default=60,
            metavar="MINUTES",
            help="Only files last modified at least this long ago (default 60).",
        )

    def handle(self, *args, dry_run: bool, older_than: int, **options) -> None:
        if older_than < 1:
            raise CommandError("--older-than must be at least 1 minute")
        result = catalogue.prune_media(older_than=timedelta(minutes=older_than), dry_run=dry_run)
        failed = set(result.failed)
        for name in result.orphans:
            if dry_run:
                self.stdout.write(f"would delete {name}")
            elif name in failed:
                self.stderr.write(f"could not delete {name} (see the log)")
            else:
                self.stdout.write(f"deleted {name}")
        summary = (
            f"{len(result.orphans)} unreferenced file(s), {result.orphan_bytes} bytes: "
            + ("dry run, nothing deleted" if dry_run else f"{len(result.deleted)} deleted")
            + f"; {result.recent} newer than {older_than} minutes kept; "
            f"{result.referenced} in use"
        )
        self.stdout.write(self.style.SUCCESS(summary) if not failed else summary)
        if failed:
            raise CommandError(f"{len(failed)} file(s) could not be deleted")
