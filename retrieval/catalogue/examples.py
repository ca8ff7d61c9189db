"""Example photos: labelled shoppers' photos that train the model and are never shown.

A departure from the paper (issue #14, docs/method.md "Example photos"): the head learns from
the catalogue's studio photos AND from real photos shoppers took at home, which lifted the
shoppers' p@5 from 0.595 to 0.809 on held-out senders (docs/benchmarks.md). They are their own
table (:class:`retrieval.models.ExamplePhoto`), not garments, so no shop page, search or API
response can return them.

The split between training and evaluation is by sender, never by photo: a sender's photos
share a background, a phone and a light, and a model tested on photos of a sender it trained
on would be measured on what it memorised. :func:`example_role` hashes the sender, so the
split never depends on import order and a re-import keeps every photo on its side.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.files.base import File
from django.db import IntegrityError, transaction

from retrieval.catalogue.media import delete_stored_image, store_image
from retrieval.catalogue.source import CatalogError, CatalogRow, CatalogSource, Problem, read_rows
from retrieval.models import Category, ExamplePhoto

log = logging.getLogger(__name__)

#: The column of the shoppers' photos' file naming who took each photo.
SENDER_COLUMN = "sender"


@dataclass
class ExampleImportReport:
    """What an import of example photos did: rows created, rows already there (by key), the
    rows and files skipped with the reason, and how many of the file's photos are on each
    side of the split (``roles``: {"train": n, "holdout": n}, created or already present)."""

    created: int = 0
    already_present: int = 0
    problems: list[Problem] = field(default_factory=list)
    roles: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        roles = ", ".join(f"{n} {role}" for role, n in sorted(self.roles.items())) or "none"
        return (
            f"{self.created} new, {self.already_present} already present, "
            f"{len(self.problems)} problems; by role: {roles}"
        )


def example_role(*, sender: str, key: str, holdout: float) -> str:
    """``holdout`` when the sender's hash falls below ``holdout`` (0..1), else ``train``.

    Deterministic (sha1 of ``"examples:" + sender``), so all of a sender's photos land on one
    side, in any import order and across re-imports; a photo without a sender is split by its
    own key. ``holdout`` = 0 trains on every photo.
    """
    token = f"examples:{sender}" if sender else f"examples:key:{key}"
    fraction = int(hashlib.sha1(token.encode()).hexdigest()[:8], 16) / 2**32
    return ExamplePhoto.Role.HOLDOUT if fraction < holdout else ExamplePhoto.Role.TRAIN


def save_example_photo(*, photo: ExamplePhoto, upload: File | None = None) -> ExamplePhoto:
    """Save one example photo (the admin's add form): the upload, if any, is re-encoded and
    stored first; its role follows the split (RETRIEVAL_EXAMPLE_HOLDOUT) when it is new."""
    if upload is not None:
        store_image(row=photo, source=upload, name=getattr(upload, "name", None))
    if photo.pk is None:
        photo.role = example_role(
            sender=photo.sender, key=photo.key, holdout=settings.RETRIEVAL_EXAMPLE_HOLDOUT
        )
    photo.save()
    return photo


def import_example_photos(*, source: Path, holdout: float) -> ExampleImportReport:
    """Import the labelled photos of a zip/folder in the catalogue format (``styles.csv`` with
    ``id``, ``image``, ``articleType`` and ``sender``; ``images/``) as example photos.

    The category is ``articleType`` matched to an existing category by name, case-insensitive.
    Idempotent by ``id`` (the photo's key): a photo already imported is counted, not read
    again; its role is recomputed (it changes only when ``holdout`` does). Bad input is
    reported and skipped, never a failed run: an unreadable or oversized photo, a category
    the catalogue lacks, a missing image, an unsafe member. Raises CatalogError only when
    the whole file is unusable (not a zip, no styles.csv) and MediaStorageError when the
    media storage refuses writes.
    """
    from retrieval import images

    report = ExampleImportReport()
    known = {c.name.lower(): c for c in Category.objects.all()}
    existing = dict(ExamplePhoto.objects.values_list("key", "role"))
    with CatalogSource(
        Path(source),
        max_file_bytes=settings.RETRIEVAL_MAX_UPLOAD_BYTES,
        max_total_bytes=settings.RETRIEVAL_MAX_IMPORT_BYTES,
    ) as catalog:
        report.problems.extend(catalog.problems)
        rows = read_rows(catalog, category_field="articleType", extra_columns=(SENDER_COLUMN,))
        for item in rows:
            if not isinstance(item, CatalogRow):
                report.problems.append(item)
                continue
            sender = item.attributes.get(SENDER_COLUMN, "")[:100]
            role = example_role(sender=sender, key=item.sku, holdout=holdout)
            if item.sku in existing:
                if existing[item.sku] != role:
                    ExamplePhoto.objects.filter(key=item.sku).update(role=role)
                report.already_present += 1
                report.roles[role] = report.roles.get(role, 0) + 1
                continue
            category = known.get(item.category.lower())
            if category is None:
                report.problems.append(
                    Problem(
                        row=item.row,
                        sku=item.sku,
                        reason=f"category {item.category!r} is not in the catalogue",
                    )
                )
                continue
            photo = ExamplePhoto(
                key=item.sku,
                category=category,
                sender=sender,
                role=role,
                source=str(source)[-255:],
            )
            try:
                store_image(row=photo, source=catalog.read(item.image), name=item.image)
            except (images.ImageError, CatalogError) as exc:
                report.problems.append(
                    Problem(row=item.row, sku=item.sku, file=item.image, reason=str(exc))
                )
                continue
            try:
                with transaction.atomic():
                    photo.save()
            except IntegrityError:
                # Imported meanwhile by another run (same key): that row stands.
                delete_stored_image(photo.image.name or "", model=ExamplePhoto)
                report.already_present += 1
            else:
                report.created += 1
            existing[item.sku] = role
            report.roles[role] = report.roles.get(role, 0) + 1
    return report
