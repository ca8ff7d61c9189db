"""Near-duplicate photos: flagged when a garment is indexed, for staff to review.

A near-duplicate is a resized, re-compressed, lightly cropped or brightened copy of another
garment's photo. The signal was chosen by measurement (bench/bench_duplicates.py,
docs/benchmarks.md "Duplicate photos"): candidates are the garment's
``RETRIEVAL_NEAR_DUPLICATE_CANDIDATES`` nearest garments by fused vector (the clustered search
any search uses, a few ms), and a candidate is flagged when at most
``RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS`` of the two 256-bit perceptual hashes' bits differ
(:func:`retrieval.images.hash_distance`: the shapes) and their colour thumbnails are at most
``RETRIEVAL_NEAR_DUPLICATE_PHOTO`` apart (:func:`retrieval.images.thumbnail_distance`, 1 - a
correlation: the colours; a colourway of one product is shot alike but differs here). The
fused distance alone confused distinct garments of one category shot alike; the 64-bit pHash
(the first rule) separated copies from distinct studio shots poorly on small photos.
Flags are never refusals (exact copies are refused on upload: retrieval.catalogue.duplicates).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from django.conf import settings
from django.db.models import Q

from retrieval import images
from retrieval.models import FeatureModel, Garment, GarmentFeature, NearDuplicate
from retrieval.search.ranking import search_vectors

log = logging.getLogger(__name__)


def _as_bytes(value: bytes | memoryview | None) -> bytes:
    """A BinaryField's value as bytes (PostgreSQL hands back a memoryview; the queries below
    exclude NULL)."""
    assert value is not None
    return bytes(value)


def is_near_duplicate(*, phash_bits: int, photo_distance: float) -> bool:
    """The rule, for a candidate among the garment's nearest by fused vector (settings
    ``RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS`` and ``RETRIEVAL_NEAR_DUPLICATE_PHOTO``)."""
    return (
        phash_bits <= settings.RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS
        and photo_distance <= settings.RETRIEVAL_NEAR_DUPLICATE_PHOTO
    )


def flag_near_duplicates(*, garment_ids: Sequence[int], model: FeatureModel) -> int:
    """Flag the garments (just indexed under ``model``) whose photo looks like another
    garment's: one :class:`NearDuplicate` per pair, the older garment as the original.
    Idempotent; a pair seen before (open, merged or declared different) is not flagged
    again. Returns the number of new flags."""
    vectors = dict(
        GarmentFeature.objects.filter(model=model, garment_id__in=list(garment_ids)).values_list(
            "garment_id", "fused"
        )
    )
    fingerprints = {
        pk: (_as_bytes(thumbnail), _as_bytes(phash))
        for pk, thumbnail, phash in Garment.objects.filter(
            pk__in=list(vectors), thumbnail__isnull=False, phash__isnull=False
        ).values_list("id", "thumbnail", "phash")
    }
    flags: list[NearDuplicate] = []
    for garment_id, (thumbnail, phash) in fingerprints.items():
        result = search_vectors(
            fused=np.asarray(vectors[garment_id], dtype=np.float32),
            model=model,
            top=settings.RETRIEVAL_NEAR_DUPLICATE_CANDIDATES,
            mode="fused",
            include_hidden=True,
            exclude_garment_ids=(garment_id,),
            one_per_product=False,
        )
        near = {h.garment_id: h.distance for h in result.hits}
        if not near:
            continue
        others = Garment.objects.filter(
            pk__in=list(near), thumbnail__isnull=False, phash__isnull=False
        )
        for other_id, other_thumbnail, other_phash in others.values_list(
            "id", "thumbnail", "phash"
        ):
            bits = images.hash_distance(phash, _as_bytes(other_phash))
            photo = images.thumbnail_distance(thumbnail, _as_bytes(other_thumbnail))
            if is_near_duplicate(phash_bits=bits, photo_distance=photo):
                newer, older = max(garment_id, other_id), min(garment_id, other_id)
                flags.append(
                    NearDuplicate(
                        garment_id=newer,
                        original_id=older,
                        phash_distance=bits,
                        fused_distance=near[other_id],
                        photo_distance=photo,
                    )
                )
    if not flags:
        return 0
    pairs = Q()
    for flag in flags:
        pairs |= Q(garment_id=flag.garment_id, original_id=flag.original_id)
    seen = set(NearDuplicate.objects.filter(pairs).values_list("garment_id", "original_id"))
    new = {
        (f.garment_id, f.original_id): f for f in flags if (f.garment_id, f.original_id) not in seen
    }
    created = NearDuplicate.objects.bulk_create(new.values(), ignore_conflicts=True)
    if created:
        log.info("flagged %d possible duplicate photo(s)", len(created))
    return len(created)
