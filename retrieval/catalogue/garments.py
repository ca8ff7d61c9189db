"""Catalogue edits: categories, moves and merges, saving a garment (admin, API)."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import IntegrityError, transaction
from django.utils import timezone

from retrieval.catalogue.media import (
    delete_images_after_commit,
    delete_stored_image,
    store_image,
)
from retrieval.catalogue.uploads import read_upload
from retrieval.indexing import enqueue_indexing
from retrieval.models import (
    BackboneFeature,
    Category,
    ExamplePhoto,
    Garment,
    GarmentFeature,
    unique_slug,
)

# Attempts at creating a category while concurrent creations keep taking its slug.
CATEGORY_CREATE_ATTEMPTS = 5


class CategoryNameTaken(ValueError):
    """A category of that name (compared case-insensitively) exists already."""

    def __init__(self, category: Category):
        super().__init__(f"a category named {category.name!r} already exists")
        self.category = category


def create_category(
    *, name: str, slug: str = "", parent: Category | None = None, active: bool = True
) -> Category:
    """Create a category (API, imports); :class:`CategoryNameTaken` when the name exists.

    Safe against concurrent creators: the insert runs in a savepoint, and when another
    transaction created the same name, or took the slug just made from it, in the meantime
    (the unique index waits for it to commit, then refuses), the name is looked up again and
    a fresh slug made, instead of failing the caller's transaction. A slug the caller gave
    that is taken is the caller's conflict: the IntegrityError is raised.
    """
    name = name.strip()
    for _attempt in range(CATEGORY_CREATE_ATTEMPTS):
        existing = Category.objects.filter(name__iexact=name).first()
        if existing is not None:
            raise CategoryNameTaken(existing)
        category = Category(name=name, slug=slug or unique_slug(name), parent=parent, active=active)
        try:
            with transaction.atomic():
                category.save()
        except IntegrityError:
            if slug and Category.objects.filter(slug=slug).exists():
                raise
            continue
        return category
    raise IntegrityError(
        f"category {name!r} could not be created: its slug kept being taken "
        f"({CATEGORY_CREATE_ATTEMPTS} attempts)"
    )


def get_or_create_category(*, name: str) -> Category:
    """The category named ``name`` (case-insensitively), created if there is none; safe
    against concurrent creators (:func:`create_category`)."""
    try:
        return create_category(name=name)
    except CategoryNameTaken as taken:
        return taken.category


@transaction.atomic
def move_garments(*, garment_ids: Sequence[int], category: Category) -> int:
    """Move garments to another category (an admin action); their vectors stay valid."""
    return Garment.objects.filter(id__in=garment_ids).update(
        category=category, updated_at=timezone.now()
    )


@transaction.atomic
def merge_categories(*, sources: Sequence[Category], target: Category) -> int:
    """Move every garment of ``sources`` into ``target`` and delete the sources."""
    source_ids = [c.pk for c in sources if c.pk != target.pk]
    moved = Garment.objects.filter(category_id__in=source_ids).update(
        category=target, updated_at=timezone.now()
    )
    # Example photos (training only) follow their garments' category; they PROTECT it.
    ExamplePhoto.objects.filter(category_id__in=source_ids).update(category=target)
    Category.objects.filter(parent_id__in=source_ids).update(parent=target)
    Category.objects.filter(id__in=source_ids).delete()
    return moved


def save_garment(*, garment: Garment, image_changed: bool) -> Garment:
    """Create or update a garment (admin, API); a new image is re-encoded, stored, and
    indexed after commit.

    Nothing is half-saved: a new upload is stored first (:func:`store_image`), so
    when the storage refuses it (:class:`MediaStorageError`) no row is written and nothing
    is queued; when the database write then fails, the stored file is removed again.
    A replaced image's file is deleted once the new one is committed (never before: a
    rollback leaves the row naming the old file, and the file there).
    """
    from django.core.exceptions import ValidationError

    from retrieval import images

    stored = None
    # An upload assigned but not stored yet (the check FileField.pre_save itself makes).
    if image_changed and garment.image and not garment.image._committed:
        upload = garment.image.file
        try:
            stored = store_image(row=garment, source=read_upload(upload), name=upload.name)
        except images.ImageError as exc:  # callers validate first; this is the backstop
            raise ValidationError({"image": str(exc)}) from exc
    try:
        with transaction.atomic():
            replaced = None
            if stored is not None and garment.pk is not None:
                # The file the row names now, deleted after commit. Locked, so of two
                # replacements at once the second replaces (and deletes) the first one's file.
                replaced = (
                    Garment.objects.select_for_update()
                    .filter(pk=garment.pk)
                    .values_list("image", flat=True)
                    .first()
                )
            reindex = image_changed or garment.pk is None
            if reindex:
                garment.status = Garment.Status.PENDING
                garment.error = ""
                garment.claimed_by = ""
            garment.save()
            if reindex:
                # Vectors of the previous image would match the wrong picture: drop them now.
                GarmentFeature.objects.filter(garment=garment).delete()
                BackboneFeature.objects.filter(garment=garment).delete()
                enqueue_indexing(garment_ids=[garment.pk])
            if replaced and replaced != stored:
                delete_images_after_commit([replaced])
    except Exception:
        if stored is not None:
            delete_stored_image(stored)
        raise
    return garment
