"""python manage.py fingerprint_photos: fingerprint the photos of garments stored before
duplicate detection (migration 0011), then flag near-duplicates among them."""

from django.core.management.base import BaseCommand

from retrieval import catalogue


class Command(BaseCommand):
    help = (
        "Compute the duplicate fingerprints of garments stored before duplicate detection "
        "(from their stored photo) and flag their near-duplicates under the active model. "
        "Safe to run again: fingerprinted garments are skipped."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--batch-size", type=int, default=200)

    def handle(self, *args, batch_size: int, **options) -> None:
        report = catalogue.fingerprint_stored_photos(batch_size=max(1, batch_size))
        for garment_id in report.unreadable:
            self.stderr.write(f"garment {garment_id}: its stored photo could not be read")
        self.stdout.write(
            self.style.SUCCESS(
                f"{report.fingerprinted} garment(s) fingerprinted, "
                f"{len(report.unreadable)} unreadable, {report.flagged} possible duplicate(s) "
                "flagged for review"
            )
        )
