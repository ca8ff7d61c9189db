"""Query sets for evaluation: held-out catalogue photos and external labelled photo sets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings

from retrieval.evaluation.metrics import Labelled

if TYPE_CHECKING:
    from retrieval.images import ImageSource
    from retrieval.models import FeatureModel


def held_out_queries(*, model, limit: int | None, seed: int, probs: bool = False) -> list[dict]:
    """The model's held-out test garments as queries, from their stored vectors.

    Each query: ``fused`` (542,) float32, ``label``, ``exclude`` (its own id), and with
    ``probs`` the head's category probabilities ``(C,)`` float32 from its cached pooled feature.
    """
    from retrieval.models import BackboneFeature, GarmentFeature

    test_ids = list(model.split.get("test", []))
    if limit is not None and len(test_ids) > limit:
        rng = np.random.default_rng(seed)
        test_ids = sorted(rng.choice(test_ids, size=limit, replace=False).tolist())
    rows = (
        GarmentFeature.objects.filter(model=model, garment_id__in=test_ids)
        .order_by("garment_id")
        .values_list("garment_id", "fused", "garment__category__name", "garment__colour")
    )
    queries = [
        {
            "id": gid,
            "fused": np.asarray(fused, dtype=np.float32),
            "label": Labelled(category=category, colour=colour or ""),
            "exclude": (gid,),
        }
        for gid, fused, category, colour in rows
    ]
    if probs and queries:
        from retrieval import features

        pooled = dict(
            BackboneFeature.objects.filter(
                backbone=model.backbone, garment_id__in=[q["id"] for q in queries]
            ).values_list("garment_id", "pooled")
        )
        queries = [q for q in queries if q["id"] in pooled]
        head = features.extractor_for(backbone=model.backbone, model=model).head
        if queries and head is not None:
            stacked = np.vstack([pooled[q["id"]] for q in queries]).astype(np.float32)
            for query, row in zip(queries, features.classify(head, stacked), strict=True):
                query["probs"] = row
    return queries


def read_query_set(*, path, category_field: str, limit: int | None):
    """Labelled query photos from a catalogue file (the import format), matched to the
    catalogue's categories by name (case-insensitive).

    Returns ``(items, skipped)``: items are ``(sku, image bytes, Labelled)`` for rows whose
    category the catalogue has; ``skipped`` counts the rows whose category it lacks.
    """
    from pathlib import Path

    from django.conf import settings

    from retrieval.catalogue.source import CatalogRow, CatalogSource, read_rows
    from retrieval.models import Category

    known = {name.lower(): name for name in Category.objects.values_list("name", flat=True)}
    items, skipped = [], 0
    with CatalogSource(
        Path(path),
        max_file_bytes=settings.RETRIEVAL_MAX_UPLOAD_BYTES,
        max_total_bytes=settings.RETRIEVAL_MAX_IMPORT_BYTES,
    ) as source:
        for item in read_rows(source, category_field=category_field, limit=limit):
            if not isinstance(item, CatalogRow):
                continue
            if item.category.lower() not in known:
                skipped += 1
                continue
            label = Labelled(category=known[item.category.lower()], colour=item.colour)
            items.append((item.sku, source.read(item.image), label))
    return items, skipped


def extract_queries(*, extractor, sources, flip: bool, crop: str, batch: int = 32):
    """Run query photos through :meth:`FeatureExtractor.extract_query`, a batch at a time.

    sources: ``[(key, image source)]``. Returns ``(keys, features, errors)``: the keys that
    decoded, the features dict with one row per key (``pooled`` (N, D), ``rgb10`` (N, 10, 3),
    ``fused`` (N, 542), ``probs`` (N, C) float32 ...), and ``[(key, reason)]`` for the rest.
    """
    from retrieval.images import INPUT_SIZE, ImageError, open_image

    keys, parts, errors = [], [], []
    for start in range(0, len(sources), batch):
        photos = []
        for key, src in sources[start : start + batch]:
            try:
                # Decoded here so one bad photo fails alone; large photos at >= 2x the input.
                photo = open_image(
                    src,
                    max_pixels=extractor.max_pixels,
                    draft_size=(2 * INPUT_SIZE, 2 * INPUT_SIZE),
                )
            except ImageError as exc:
                errors.append((key, str(exc)))
                continue
            keys.append(key)
            photos.append(photo)
        if photos:
            parts.append(extractor.extract_query(photos, flip=flip, crop=crop))
    if not parts:
        return [], {}, errors
    return keys, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, errors


def photo_queries(
    *, model: FeatureModel, items: Sequence[tuple[str, ImageSource, Labelled]]
) -> tuple[list[dict], int]:
    """Query photos run through the CNN as a shopper's photo is in the shop (the same
    :meth:`FeatureExtractor.extract_query`, RETRIEVAL_QUERY_CROP / _FLIP), never stored.

    items: ``[(id, image source, Labelled)]``. Returns ``(queries, unreadable)``: each query
    has ``fused`` (542,) and ``probs`` (C,) float32, ``label``, ``exclude`` = ().
    """
    from retrieval import features

    if not items:
        return [], 0
    extractor = features.extractor_for(backbone=model.backbone, model=model)
    keys, out, errors = extract_queries(
        extractor=extractor,
        sources=[(i, source) for i, (_, source, _) in enumerate(items)],
        flip=settings.RETRIEVAL_QUERY_FLIP,
        crop=settings.RETRIEVAL_QUERY_CROP,
    )
    queries = [
        {
            "id": items[key][0],
            "fused": out["fused"][row],
            "probs": out["probs"][row],
            "label": items[key][2],
            "exclude": (),
        }
        for row, key in enumerate(keys)
    ]
    return queries, len(errors)


def external_queries(*, model, path, category_field: str, limit: int | None):
    """Query images from a labelled catalogue file, run through the CNN as a shopper's photo
    would be (RETRIEVAL_QUERY_CROP / _FLIP), never stored."""
    items, skipped = read_query_set(path=path, category_field=category_field, limit=limit)
    queries, unreadable = photo_queries(model=model, items=items)
    return queries, skipped + unreadable


def example_queries(*, model: FeatureModel, limit: int | None = None) -> tuple[list[dict], int]:
    """The held-out example photos (senders never trained on, issue #14) as query photos.

    Returns ``(queries, skipped)``; ids are the photos' keys (they are not garments).
    """
    from retrieval.models import ExamplePhoto

    photos = ExamplePhoto.objects.filter(role=ExamplePhoto.Role.HOLDOUT).select_related("category")
    items: list[tuple[str, ImageSource, Labelled]] = []
    skipped = 0
    for photo in photos.order_by("key")[:limit]:
        if not photo.image:
            skipped += 1
            continue
        source: ImageSource
        try:
            source = photo.image.path
        except NotImplementedError:
            with photo.image.open("rb") as handle:
                source = handle.read(settings.RETRIEVAL_MAX_UPLOAD_BYTES + 1)
        items.append((f"example:{photo.key}", source, Labelled(category=photo.category.name)))
    queries, unreadable = photo_queries(model=model, items=items)
    return queries, skipped + unreadable
