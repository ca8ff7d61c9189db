"""Duplicate photos: exact copies refused on the way in, near-copies reviewed by staff.

An exact duplicate is a photo whose decoded pixels (:func:`retrieval.images.pixel_digest`) are
those of a garment already in the catalogue, whatever the file's bytes or name: the admin form
and the API refuse it unless staff allow it, an import skips the row and reports it.
Near-duplicates are flagged by indexing (:mod:`retrieval.search.duplicates`) and reviewed
here: "same product" merges the two garments' product groups (search then shows one of them),
"different products" closes the flag for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone
from PIL import Image

from retrieval import images
from retrieval.models import Garment, NearDuplicate
from retrieval.search.duplicates import flag_near_duplicates
from retrieval.selectors import active_model


@dataclass(frozen=True)
class ExactDuplicate:
    """The garment already holding a photo's pixels."""

    garment_id: int
    sku: str
    title: str

    @property
    def message(self) -> str:
        return (
            f"this photo is already the photo of garment {self.garment_id} "
            f"(sku {self.sku}, {self.title!r}): the same pixels"
        )


class DuplicateImage(Exception):
    """An upload whose pixels are those of another garment (``duplicate``)."""

    def __init__(self, duplicate: ExactDuplicate) -> None:
        self.duplicate = duplicate
        super().__init__(duplicate.message)


def exact_duplicate(*, digest: str, exclude_pk: int | None = None) -> ExactDuplicate | None:
    """The garment (other than ``exclude_pk``) whose photo has these decoded pixels
    (``digest``: :func:`retrieval.images.pixel_digest`), oldest first; None when none has.
    An indexed lookup (Garment.Meta.indexes)."""
    if not digest:
        return None
    rows = Garment.objects.filter(pixel_hash=digest)
    if exclude_pk is not None:
        rows = rows.exclude(pk=exclude_pk)
    row = rows.order_by("id").values_list("id", "sku", "title").first()
    return ExactDuplicate(*row) if row is not None else None


def check_upload(*, image: Image.Image, garment: Garment | None) -> None:
    """Refuse a decoded upload (``image``, from :func:`retrieval.catalogue.decode_upload`)
    whose pixels another garment already has: raises :class:`DuplicateImage`.
    ``garment``: the garment being edited (its own photo is no duplicate), None for a new one."""
    found = exact_duplicate(
        digest=images.pixel_digest(image), exclude_pk=garment.pk if garment else None
    )
    if found is not None:
        raise DuplicateImage(found)


def read_and_check_upload(
    *, upload: UploadedFile, garment: Garment | None, allow_duplicate: bool
) -> None:
    """Decode an upload (the limits of every upload) and refuse an exact duplicate unless
    ``allow_duplicate``. Raises ImageError or :class:`DuplicateImage`; the upload is left
    rewound for the caller to store."""
    from retrieval.catalogue.uploads import decode_upload, read_upload

    try:
        image = decode_upload(read_upload(upload), name=upload.name)
        if not allow_duplicate:
            check_upload(image=image, garment=garment)
    finally:
        upload.seek(0)


def open_flags(*, garment: Garment) -> list[NearDuplicate]:
    """The garment's near-duplicate flags still to review (either side of the pair)."""
    from django.db.models import Q

    return list(
        NearDuplicate.objects.filter(Q(garment=garment) | Q(original=garment))
        .filter(status=NearDuplicate.Status.OPEN)
        .select_related("garment", "original")
    )


@transaction.atomic
def merge_same_product(*, flag: NearDuplicate, user: Any = None) -> int:
    """Staff confirmed the pair shows one product: both garments (and the groups they were
    already in) become one product group, keyed by the group's smallest garment id; search
    then shows only the best-scored of them. Returns the group key."""
    pair = list(
        Garment.objects.select_for_update()
        .filter(pk__in=[flag.garment_id, flag.original_id])
        .values_list("id", "product_group")
    )
    keys = {gid for gid, _ in pair} | {group for _, group in pair if group is not None}
    members = Garment.objects.filter(pk__in=keys) | Garment.objects.filter(product_group__in=keys)
    ids = set(members.values_list("id", flat=True))
    group = min(ids)
    Garment.objects.filter(pk__in=ids).update(product_group=group, updated_at=timezone.now())
    _close(flag=flag, status=NearDuplicate.Status.SAME, user=user)
    return group


def mark_different_products(*, flag: NearDuplicate, user: Any = None) -> None:
    """Staff said the pair are different products: the flag is closed and never raised again
    (flagging skips pairs it has seen, whatever their status)."""
    _close(flag=flag, status=NearDuplicate.Status.DIFFERENT, user=user)


def _close(*, flag: NearDuplicate, status: str, user: Any) -> None:
    flag.status = status
    flag.reviewed_at = timezone.now()
    flag.reviewed_by = user if user is not None and user.is_authenticated else None
    flag.save(update_fields=["status", "reviewed_at", "reviewed_by"])


@dataclass(frozen=True)
class FingerprintReport:
    """What :func:`fingerprint_stored_photos` did: garments fingerprinted, garments whose
    stored file could not be read (ids; left unfingerprinted, never compared), and the
    near-duplicate flags raised among them under the active model (0 without one)."""

    fingerprinted: int
    unreadable: list[int]
    flagged: int


def fingerprint_stored_photos(*, batch_size: int = 200) -> FingerprintReport:
    """Fingerprint the garments stored before duplicates were detected (migration 0011 left
    their ``pixel_hash`` empty and ``phash``/``thumbnail`` NULL), from their stored JPEG, then
    flag the near-duplicates among them and the rest of the catalogue under the active model.

    The bytes a garment was uploaded with are gone (every photo is stored re-encoded), so its
    ``pixel_hash`` becomes that of the stored photo: a re-upload of the photo the shop serves
    is then refused as exact, a re-upload of the original file is caught as a near-duplicate
    (the pHash and thumbnail survive re-encoding). Idempotent: fingerprinted garments are
    skipped. ``batch_size`` garments are decoded and saved per transaction.
    """
    pending = Garment.objects.filter(phash__isnull=True).exclude(image="").order_by("id")
    done: list[int] = []
    unreadable: list[int] = []
    last = 0
    while True:
        batch = list(pending.filter(id__gt=last).only("id", "image")[:batch_size])
        if not batch:
            break
        last = batch[-1].id
        fingerprinted = []
        for garment in batch:
            try:
                with garment.image.open("rb") as fh:
                    decoded = images.open_image(fh.read())
            except (OSError, images.ImageError):
                unreadable.append(garment.id)
                continue
            garment.pixel_hash = images.pixel_digest(decoded)
            garment.phash = images.perceptual_hash(decoded)
            garment.thumbnail = images.thumbnail_signature(decoded)
            fingerprinted.append(garment)
        with transaction.atomic():
            Garment.objects.bulk_update(fingerprinted, ["pixel_hash", "phash", "thumbnail"])
        done += [g.id for g in fingerprinted]
    model = active_model()
    flagged = 0
    if model is not None:
        for start in range(0, len(done), batch_size):
            flagged += flag_near_duplicates(
                garment_ids=done[start : start + batch_size], model=model
            )
    return FingerprintReport(fingerprinted=len(done), unreadable=unreadable, flagged=flagged)
