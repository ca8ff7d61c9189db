"""Garment image files in the media storage: re-encoded writes, deletion after commit, pruning
orphans.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from retrieval.models import ExamplePhoto, Garment

log = logging.getLogger(__name__)


class MediaStorageError(Exception):
    """The media storage refused to write an upload (disk full or read-only, a lost mount).

    ``str(err)`` is fit to show to a person; the underlying OSError (with paths) is logged.
    """


STORAGE_UNAVAILABLE = (
    "the file could not be stored: the media storage is not writable right now. "
    "Nothing was saved; try again later."
)


def store_image(
    *, row: Garment | ExamplePhoto, source, name: str | None = None, digest: str | None = None
) -> str:
    """Re-encode an untrusted image as a fresh JPEG and write it to the media storage under a
    server-chosen name in the folder of ``row``'s image field; ``row.image`` then names the file
    (the row is not saved here). ``row``: a garment, or an example photo (training only).

    Every stored image comes through here (admin, API, imports): the site serves these bytes,
    so never the client's bytes, file name or extension (see retrieval.images.reencode_jpeg).

    For a garment, the fingerprints of the decoded pixels (``row.pixel_hash``, ``row.phash``,
    ``row.thumbnail``: exact and near duplicates, :mod:`retrieval.catalogue.duplicates`) are
    set from the same decode. ``source`` may also be an image the caller decoded already with
    :func:`images.open_image` (and ``digest`` its :func:`images.pixel_digest`, when the caller
    computed it already).

    Returns the stored name. Raises ``images.ImageError`` (not a usable image, nothing
    written) or :class:`MediaStorageError` (the storage refused the write, nothing left).
    """
    from PIL import Image

    from retrieval import images

    if isinstance(source, Image.Image):
        decoded = source
    else:
        decoded = images.open_image(source, max_pixels=settings.RETRIEVAL_MAX_PIXELS, name=name)
    jpeg = images.encode_jpeg(decoded)
    field = type(row)._meta.get_field("image")
    target = field.generate_filename(row, f"{uuid.uuid4().hex}.jpg")
    try:
        stored = field.storage.save(target, ContentFile(jpeg), max_length=field.max_length)
    except OSError as exc:
        log.error("media storage refused %s: %s", target, exc)
        # a partial file, e.g. the disk filled up mid-write
        delete_stored_image(target, model=type(row))
        raise MediaStorageError(STORAGE_UNAVAILABLE) from exc
    row.image = stored
    if isinstance(row, Garment):
        row.pixel_hash = digest or images.pixel_digest(decoded)
        row.phash = images.perceptual_hash(decoded)
        row.thumbnail = images.thumbnail_signature(decoded)
    return stored


def delete_stored_image(name: str, *, model: type[Garment] | type[ExamplePhoto] = Garment) -> None:
    """Remove a file stored for a row of ``model`` that was then not saved (best effort:
    logged)."""
    try:
        model._meta.get_field("image").storage.delete(name)
    except OSError as exc:
        log.warning("could not remove the unsaved image %s: %s", name, exc)


# Where garment images are stored in the media storage (Garment.image's upload_to).
GARMENT_MEDIA_DIR = "garments"


# Names per ``image IN (...)`` lookup (indexed: Garment.Meta.indexes).
_NAMES_PER_QUERY = 1000


def _referenced_images(names: Sequence[str]) -> set[str]:
    """Those of ``names`` that some garment row still names as its image."""
    referenced: set[str] = set()
    for start in range(0, len(names), _NAMES_PER_QUERY):
        chunk = names[start : start + _NAMES_PER_QUERY]
        referenced.update(Garment.objects.filter(image__in=chunk).values_list("image", flat=True))
    return referenced


def delete_images_after_commit(names: Iterable[str]) -> None:
    """Delete these stored garment images once the current transaction commits: the files a
    replacement or a deletion left without a row.

    After commit, so a rollback never loses the file its row still names (the callback is
    then discarded with the transaction). Outside a transaction it runs at once.
    """
    wanted = sorted({name for name in names if name})
    if wanted:
        transaction.on_commit(functools.partial(delete_unreferenced_images, wanted), robust=True)


def delete_unreferenced_images(names: Sequence[str]) -> list[str]:
    """Delete those of these stored garment images that no garment references; best effort.

    Every stored name is unique (:func:`store_image` names a file by a fresh uuid, an
    import keeps the name of an unchanged image), but a row can still be pointed at another
    garment's file by hand (shell, data fix, an old migration's rows): such a file is kept
    while any garment names it. Never raises: a failure is logged and the file is left for
    ``manage.py prune_media``. Returns the names deleted.
    """
    names = list(names)
    try:
        referenced = _referenced_images(names)
    except Exception as exc:  # the database unreachable: cannot tell they are unused, keep them
        log.warning(
            "kept %d image(s) to delete: could not check that no garment uses them "
            "(prune_media removes them later): %s",
            len(names),
            exc,
        )
        return []
    storage = Garment._meta.get_field("image").storage
    deleted = []
    for name in names:
        if name in referenced:
            log.info("kept image %s: another garment still uses it", name)
            continue
        try:
            storage.delete(name)
        except Exception as exc:  # OSError, or a remote storage's own error: never fail
            log.warning("could not delete the image %s (left for prune_media): %s", name, exc)
        else:
            deleted.append(name)
    return deleted


@dataclass
class MediaPruneResult:
    """What :func:`prune_media` found under MEDIA_ROOT/garments."""

    orphans: list[str] = field(default_factory=list)  # unreferenced, old enough
    deleted: list[str] = field(default_factory=list)  # of those, deleted (none on a dry run)
    failed: list[str] = field(default_factory=list)  # of those, not deletable (logged)
    orphan_bytes: int = 0
    recent: int = 0  # unreferenced but newer than the cut-off: possibly an upload in flight
    referenced: int = 0


def _stored_garment_files(storage, folder: str) -> Iterable[str]:
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in sorted(files):
        yield f"{folder}/{name}"
    for sub in sorted(folders):
        yield from _stored_garment_files(storage, f"{folder}/{sub}")


def prune_media(*, older_than: timedelta, dry_run: bool = False) -> MediaPruneResult:
    """Find (and unless ``dry_run``, delete) the files under MEDIA_ROOT/garments that no
    garment references: files orphaned before replacements and deletions removed their
    files, or left by a crash or a raw SQL delete (``manage.py prune_media``).

    Only files older than ``older_than`` are taken: an upload stores its file before its row
    is committed (an import batch, a slow request), so a recent unreferenced file may be one
    that is about to be referenced. Reads the storage folder by folder and checks the names
    against the database in chunks (indexed), so memory stays flat at any catalogue size.
    """
    storage = Garment._meta.get_field("image").storage
    cutoff = timezone.now() - older_than
    result = MediaPruneResult()

    def check(chunk: list[str]) -> None:
        referenced = _referenced_images(chunk)
        result.referenced += len(referenced)
        for name in chunk:
            if name in referenced:
                continue
            try:
                modified = storage.get_modified_time(name)
                size = storage.size(name)
            except FileNotFoundError:  # deleted meanwhile
                continue
            if modified > cutoff:
                result.recent += 1
                continue
            result.orphans.append(name)
            result.orphan_bytes += size
            if dry_run:
                continue
            try:
                storage.delete(name)
            except Exception as exc:  # logged, counted; the rest goes on
                log.warning("prune_media could not delete %s: %s", name, exc)
                result.failed.append(name)
            else:
                result.deleted.append(name)

    chunk: list[str] = []
    for name in _stored_garment_files(storage, GARMENT_MEDIA_DIR):
        chunk.append(name)
        if len(chunk) >= _NAMES_PER_QUERY:
            check(chunk)
            chunk = []
    if chunk:
        check(chunk)
    if result.deleted:
        log.info(
            "prune_media deleted %d unreferenced image(s), %d bytes",
            len(result.deleted),
            result.orphan_bytes,
        )
    return result
