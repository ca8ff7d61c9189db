"""Near-duplicate photos: flagged when a garment is indexed, for staff to review.

A near-duplicate is a resized, re-compressed, lightly cropped or brightened copy of another
garment's photo. The signal was chosen by measurement (bench/bench_duplicates.py,
docs/benchmarks.md "Duplicate photos"): candidates are the garment's nearest garments by
fused vector (the clustered search any search uses, a few ms), and a candidate is flagged
when both its fused distance and the Hamming distance of the two perceptual hashes
(:func:`retrieval.images.perceptual_hash`) are small: the vector alone confuses distinct
garments of one category shot alike, the hash alone misses cropped copies and costs a scan.
Flags are never refusals (exact copies are refused on upload: retrieval.catalogue.duplicates).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from django.db.models import Q

from retrieval.models import FeatureModel, Garment, GarmentFeature, NearDuplicate
from retrieval.search.ranking import search_vectors

log = logging.getLogger(__name__)

#: Nearest garments looked at per indexed garment.
CANDIDATES = 5
#: The rule (docs/benchmarks.md, "Duplicate photos"): flagged when both hold.
NEAR_FUSED_DISTANCE = 0.3
NEAR_PHASH_BITS = 4


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit perceptual hashes (stored as signed bigints)."""
    return ((a ^ b) & 0xFFFFFFFFFFFFFFFF).bit_count()


def is_near_duplicate(*, fused_distance: float, phash_bits: int) -> bool:
    return fused_distance <= NEAR_FUSED_DISTANCE and phash_bits <= NEAR_PHASH_BITS


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
    hashes = dict(
        Garment.objects.filter(pk__in=list(vectors), phash__isnull=False).values_list("id", "phash")
    )
    flags: list[NearDuplicate] = []
    for garment_id, phash in hashes.items():
        if phash is None:  # filtered above; for the type checker
            continue
        result = search_vectors(
            fused=np.asarray(vectors[garment_id], dtype=np.float32),
            model=model,
            top=CANDIDATES,
            mode="fused",
            include_hidden=True,
            exclude_garment_ids=(garment_id,),
            one_per_product=False,
        )
        near = {h.garment_id: h.distance for h in result.hits}
        if not near:
            continue
        other_hashes = Garment.objects.filter(pk__in=list(near), phash__isnull=False)
        for other_id, other_phash in other_hashes.values_list("id", "phash"):
            if other_phash is None:  # filtered above; for the type checker
                continue
            bits = hamming(phash, other_phash)
            if is_near_duplicate(fused_distance=near[other_id], phash_bits=bits):
                newer, older = max(garment_id, other_id), min(garment_id, other_id)
                flags.append(
                    NearDuplicate(
                        garment_id=newer,
                        original_id=older,
                        phash_distance=bits,
                        fused_distance=near[other_id],
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
