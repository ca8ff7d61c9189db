"""Signal receivers of the retrieval app (connected in RetrievalConfig.ready)."""

from __future__ import annotations

import functools

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from retrieval.models import ExamplePhoto, Garment


@receiver(post_delete, sender=Garment, dispatch_uid="retrieval.garment_image_file")
def delete_image_of_deleted_garment(sender, instance: Garment, **kwargs) -> None:
    """A deleted garment's image file goes once the deletion commits (kept on a rollback).

    A signal rather than the service functions: every way a garment is deleted sends it, the
    admin's delete page (``obj.delete()``), its bulk "delete selected" action and the API's
    DELETE (``queryset.delete()`` / ``instance.delete()``), a shell's queryset delete, and a
    cascade from another model; code paths of our own would each have to remember. (Garment
    rows already cascade to their vectors, so their deletes were never "fast" deletes that
    skip signals; this receiver costs no extra query per row.) Only raw SQL and TRUNCATE
    bypass it: ``manage.py prune_media`` finds what they leave.
    """
    from retrieval import catalogue

    catalogue.delete_images_after_commit([instance.image.name])


@receiver(post_delete, sender=ExamplePhoto, dispatch_uid="retrieval.example_image_file")
def delete_image_of_deleted_example(
    sender: type[ExamplePhoto], instance: ExamplePhoto, **kwargs: object
) -> None:
    """A deleted example photo's file goes once the deletion commits (each stored example
    file has a fresh name of its own: no other row can name it)."""
    from retrieval.catalogue.media import delete_stored_image

    if instance.image:
        transaction.on_commit(
            functools.partial(delete_stored_image, instance.image.name or "", model=ExamplePhoto),
            robust=True,
        )
