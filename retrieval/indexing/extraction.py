"""Indexing: claim garments, run the CNN over their images, store the CNN cache and vectors."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from retrieval.jobs.publishing import workers_available
from retrieval.models import (
    FEATURE_VERSION,
    BackboneFeature,
    ExampleFeature,
    ExamplePhoto,
    FeatureModel,
    Garment,
    GarmentFeature,
)
from retrieval.selectors import active_model

log = logging.getLogger(__name__)

# Garments per indexing task: one CNN call for many images, small enough to redo after a crash.
INDEX_CHUNK = 64


@dataclass
class IndexResult:
    ready: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # claimed by another worker, or gone


@functools.cache
def _configured_backbone(name: str, weights_path: str | None) -> str:
    from retrieval import features

    # Resolved once per process: "auto" looks for weight files and warns when it falls back.
    return features.resolve_backbone(name, weights_path=weights_path)


def current_backbone() -> str:
    """The backbone new CNN passes use: the active model's, else the configured one."""
    model = active_model()
    if model is not None:
        return model.backbone
    return _configured_backbone(settings.RETRIEVAL_BACKBONE, settings.RETRIEVAL_BACKBONE_WEIGHTS)


def claim_garments(*, garment_ids: Sequence[int], claim: str) -> list[int]:
    """Take the lease on garments so no other worker processes them at the same time.

    A garment is claimable when pending, or processing under this same claim (the task was
    redelivered after its worker died), or processing under a lease older than
    RETRIEVAL_STUCK_MINUTES (its worker is gone). One UPDATE: atomic against other workers.
    """
    now = timezone.now()
    stale = now - timedelta(minutes=settings.RETRIEVAL_STUCK_MINUTES)
    claimable = (
        Q(status=Garment.Status.PENDING)
        | Q(status=Garment.Status.PROCESSING, claimed_by=claim)
        | Q(status=Garment.Status.PROCESSING, claimed_at__lt=stale)
    )
    with transaction.atomic():
        ids = list(
            Garment.objects.select_for_update(skip_locked=True)
            .filter(claimable, id__in=garment_ids)
            .values_list("id", flat=True)
        )
        Garment.objects.filter(id__in=ids).update(
            status=Garment.Status.PROCESSING, claimed_by=claim, claimed_at=now, updated_at=now
        )
    return ids


def index_garments(*, garment_ids: Sequence[int], claim: str | None = None) -> IndexResult:
    """Extract and store the vectors of these garments: one CNN call for the whole batch.

    Idempotent: a garment is claimed first (see :func:`claim_garments`); vectors are upserted;
    only garments still under this claim are marked ready, so a garment re-queued meanwhile is
    never counted twice. A bad image fails its garment (with the reason), never the batch.
    """
    claim = claim or f"local-{uuid.uuid4().hex}"
    result = IndexResult()
    ids = claim_garments(garment_ids=garment_ids, claim=claim)
    result.skipped = sorted(set(garment_ids) - set(ids))
    if not ids:
        return result
    garments = {g.pk: g for g in Garment.objects.filter(id__in=ids)}
    model = active_model()
    backbone = model.backbone if model is not None else current_backbone()
    extract_and_store(
        garments=list(garments.values()), backbone=backbone, model=model, result=result
    )

    now = timezone.now()
    with transaction.atomic():
        mine = Garment.objects.filter(claimed_by=claim, status=Garment.Status.PROCESSING)
        mine.filter(id__in=result.ready).update(
            status=Garment.Status.READY, error="", claimed_by="", updated_at=now
        )
        for garment_id, reason in result.failed.items():
            mine.filter(id=garment_id).update(
                status=Garment.Status.FAILED, error=reason[:2000], claimed_by="", updated_at=now
            )
            GarmentFeature.objects.filter(garment_id=garment_id).delete()
    if model is not None and result.ready:
        _flag_near_duplicates(garment_ids=result.ready, model=model)
    return result


def _flag_near_duplicates(*, garment_ids: Sequence[int], model: FeatureModel) -> None:
    """Flag look-alike photos of freshly indexed garments for staff (never fails indexing:
    the vectors are stored and the garments ready whatever happens here)."""
    from retrieval.search.duplicates import flag_near_duplicates

    try:
        flag_near_duplicates(garment_ids=garment_ids, model=model)
    except Exception:
        log.exception("could not look for near-duplicates of %d garment(s)", len(garment_ids))


def extract_and_store(
    *, garments: Sequence[Garment], backbone: str, model: FeatureModel | None, result: IndexResult
) -> None:
    """Run the CNN over the garments' images and upsert their cache and searchable vectors.

    Decoding and resizing run in DataLoader worker processes (RETRIEVAL_LOADER_WORKERS) while
    the model's thread runs the CNN.
    """
    from retrieval import images

    def source(garment: Garment):
        def read() -> bytes:
            with garment.image.open("rb") as handle:
                data = handle.read(settings.RETRIEVAL_MAX_UPLOAD_BYTES + 1)
            if len(data) > settings.RETRIEVAL_MAX_UPLOAD_BYTES:
                raise images.ImageError(
                    f"image too large: over {settings.RETRIEVAL_MAX_UPLOAD_BYTES} bytes",
                    name=garment.image.name,
                )
            return data

        # A path is picklable for the DataLoader's worker processes; remote storage is read here.
        try:
            return garment.image.path
        except NotImplementedError:
            return read()

    by_id = {g.pk: g for g in garments}
    items = []
    for garment in garments:
        if not garment.image:
            result.failed[garment.pk] = "no image"
            continue
        items.append((garment.pk, source(garment)))
    from retrieval import features  # torch: loaded by the processes that run the CNN only

    extractor = features.extractor_for(backbone=backbone, model=model)
    workers = settings.RETRIEVAL_LOADER_WORKERS if len(items) > 8 else 0
    for batch in extractor.extract_paths(
        items, batch_size=settings.RETRIEVAL_BATCH_SIZE, num_workers=workers
    ):
        for key, reason in batch.errors:
            result.failed[key] = reason
        if not batch.keys:
            continue
        out = batch.features
        store_backbone_features(
            garments=[by_id[k] for k in batch.keys],
            backbone=backbone,
            pooled=out["pooled"],
            positions=out["positions"],
            rgb=out["rgb10"].reshape(len(batch.keys), -1),
        )
        if model is not None:
            store_garment_features(model=model, garment_ids=batch.keys, fused=out["fused"])
        result.ready.extend(batch.keys)


def store_backbone_features(
    *, garments: Sequence[Garment], backbone: str, pooled, positions, rgb
) -> None:
    """Upsert the CNN cache rows.

    pooled: (N, D) float32; positions: (N, 10) int; rgb: (N, 30) float32 in 0..255.
    """
    rows = [
        BackboneFeature(
            garment_id=garment.pk,
            backbone=backbone,
            version=FEATURE_VERSION,
            image_name=garment.image.name,
            pooled=pooled[i],
            positions=[int(p) for p in positions[i]],
            rgb=[float(v) for v in rgb[i]],
        )
        for i, garment in enumerate(garments)
    ]
    BackboneFeature.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["garment", "backbone"],
        update_fields=["version", "image_name", "pooled", "positions", "rgb", "created_at"],
    )


def store_garment_features(*, model: FeatureModel, garment_ids: Sequence[int], fused) -> None:
    """Upsert searchable vectors. fused: (N, 542) float32; its first 512 values (the deep part
    as fused, i.e. L2-normalised where the model says so) are stored as the deep vector.

    Each vector also goes into the search partitions of the model's active K-means runs,
    labelled by its nearest centroid there, so garments indexed between two runs are found by
    cluster search right away (in the same transaction: never searchable half-written).
    """
    from retrieval.search import clustering

    rows = [
        GarmentFeature(garment_id=garment_id, model=model, deep=fused[i, :512], fused=fused[i])
        for i, garment_id in enumerate(garment_ids)
    ]
    with transaction.atomic():
        GarmentFeature.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["garment", "model"],
            update_fields=["deep", "fused", "created_at"],
        )
        clustering.add_to_active_runs(model=model, garment_ids=garment_ids)


def ensure_backbone_features(*, backbone: str, progress=None) -> int:
    """Run the CNN for garments that have no cached features under ``backbone`` yet."""
    missing = list(
        Garment.objects.filter(category__active=True)
        .exclude(status=Garment.Status.FAILED)
        .exclude(backbone_features__backbone=backbone)
        .order_by("id")
    )
    done = 0
    if progress is not None and missing:  # the stage's start, for its elapsed time and pace
        progress({"stage": "extracting", "done": 0, "total": len(missing)})
    for start in range(0, len(missing), 256):
        chunk = missing[start : start + 256]
        extract_and_store(garments=chunk, backbone=backbone, model=None, result=IndexResult())
        done += len(chunk)
        if progress is not None:
            progress({"stage": "extracting", "done": done, "total": len(missing)})
    return len(missing)


def ensure_example_features(
    *, backbone: str, progress: Callable[[dict], None] | None = None
) -> dict[int, str]:
    """Run the CNN for the training example photos (role train) that have no cached pooled
    feature under ``backbone`` (or one from an older FEATURE_VERSION): the same extractor and
    batch path as the garments', on the plain photo (no query-time crop or flip), so the head
    sees shoppers' photos as it sees garments. Returns {photo id: reason} for the photos that
    could not be read (skipped by training, never a failed run)."""
    from retrieval import features

    # One cache row matching both backbone and version (an exclude() over the relation could
    # match them on two different rows).
    cached = ExampleFeature.objects.filter(
        photo=OuterRef("pk"), backbone=backbone, version=FEATURE_VERSION
    )
    missing = list(
        ExamplePhoto.objects.filter(role=ExamplePhoto.Role.TRAIN)
        .exclude(Exists(cached))
        .order_by("id")
    )
    failed: dict[int, str] = {}
    if not missing:
        return failed

    def source(photo: ExamplePhoto) -> str | bytes:
        try:
            return photo.image.path
        except NotImplementedError:
            with photo.image.open("rb") as handle:
                return handle.read(settings.RETRIEVAL_MAX_UPLOAD_BYTES + 1)

    extractor = features.extractor_for(backbone=backbone, model=None)
    done = 0
    if progress is not None:  # the stage's start, for its elapsed time and pace
        progress({"stage": "extracting_examples", "done": 0, "total": len(missing)})
    for start in range(0, len(missing), 256):
        chunk = [p for p in missing[start : start + 256] if p.image]
        failed.update({p.pk: "no image" for p in missing[start : start + 256] if not p.image})
        items = [(p.pk, source(p)) for p in chunk]
        workers = settings.RETRIEVAL_LOADER_WORKERS if len(items) > 8 else 0
        for batch in extractor.extract_paths(
            items, batch_size=settings.RETRIEVAL_BATCH_SIZE, num_workers=workers
        ):
            failed.update(dict(batch.errors))
            if not batch.keys:
                continue
            ExampleFeature.objects.bulk_create(
                [
                    ExampleFeature(
                        photo_id=key,
                        backbone=backbone,
                        version=FEATURE_VERSION,
                        pooled=batch.features["pooled"][i],
                    )
                    for i, key in enumerate(batch.keys)
                ],
                update_conflicts=True,
                unique_fields=["photo", "backbone"],
                update_fields=["version", "pooled", "created_at"],
            )
        done += len(chunk)
        if progress is not None:
            progress({"stage": "extracting_examples", "done": done, "total": len(missing)})
    return failed


def wait_for_garments(
    *, garments, poll_seconds: float = 2.0, progress=None, index_locally_if_no_worker=True
) -> dict:
    """Block until every garment in the queryset is ready or failed.

    With no worker consuming the features queue, index here, in this process, instead of
    hanging (``import_catalog --wait`` on a machine where nothing else runs).
    """
    while True:
        pending = list(
            garments.filter(
                status__in=[Garment.Status.PENDING, Garment.Status.PROCESSING]
            ).values_list("id", flat=True)
        )
        if not pending:
            break
        if index_locally_if_no_worker and not workers_available():
            for start in range(0, len(pending), INDEX_CHUNK):
                index_garments(garment_ids=pending[start : start + INDEX_CHUNK])
                if progress is not None:
                    progress()
            # Those under another (dead) worker's lease are re-claimed once it goes stale.
            if garments.filter(status=Garment.Status.PENDING).exists():
                continue
        if progress is not None:
            progress()
        time.sleep(poll_seconds)
    return dict(garments.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
