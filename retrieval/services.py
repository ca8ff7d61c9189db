"""Writes and orchestration: catalogue changes, imports, indexing, models.

Views, the API, tasks and management commands are thin and call these functions. Heavy
modules (torch via retrieval.features, numpy) are imported inside the functions that need
them, so the web request path stays light.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from retrieval import search
from retrieval.models import (
    FEATURE_VERSION,
    BackboneFeature,
    Category,
    FeatureModel,
    Garment,
    GarmentFeature,
    ImportJob,
)

log = logging.getLogger(__name__)

# Garments per indexing task: one CNN call for many images, small enough to redo after a crash.
INDEX_CHUNK = 64
# Rows per bulk write during an import.
IMPORT_BATCH = 500


# --------------------------------------------------------------------------- catalogue


def get_or_create_category(*, name: str) -> Category:
    name = name.strip()
    category = Category.objects.filter(name__iexact=name).first()
    if category is None:
        category = Category(name=name)
        category.save()
    return category


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    Category.objects.filter(parent_id__in=source_ids).update(parent=target)
    Category.objects.filter(id__in=source_ids).delete()
    return moved


def validate_upload(*, upload) -> None:
    """Refuse an uploaded image over the size limit, or that does not decode (ValidationError)."""
    from django.core.exceptions import ValidationError

    from retrieval import images

    limit = settings.RETRIEVAL_MAX_UPLOAD_BYTES
    if upload.size is not None and upload.size > limit:
        raise ValidationError(f"image too large: {upload.size} bytes, the limit is {limit}")
    try:
        upload.seek(0)
        images.open_image(
            upload.read(limit + 1), max_pixels=settings.RETRIEVAL_MAX_PIXELS, name=upload.name
        )
    except images.ImageError as exc:
        raise ValidationError(str(exc)) from exc
    finally:
        upload.seek(0)


def save_garment(*, garment: Garment, image_changed: bool) -> Garment:
    """Create or update a garment (admin, API); a new image is indexed after commit."""
    with transaction.atomic():
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
    return garment


# --------------------------------------------------------------------------- indexing queue


def enqueue_indexing(*, garment_ids: Iterable[int]) -> None:
    """Queue feature extraction for these garments once the current transaction commits.

    If the broker is down the garments simply stay pending: the periodic sweep
    (:func:`requeue_stuck_garments`) queues them again once it is back. Nothing is lost.
    """
    ids = sorted(set(garment_ids))
    if not ids:
        return

    def send() -> None:
        from retrieval import tasks

        for start in range(0, len(ids), INDEX_CHUNK):
            chunk = ids[start : start + INDEX_CHUNK]
            try:
                tasks.index_garments.apply_async(args=[chunk], retry=False)
            except Exception as exc:  # kombu raises transport-specific errors
                log.warning("broker unavailable, %d garments stay pending: %s", len(chunk), exc)
                return

    transaction.on_commit(send)


def mark_for_reindex(*, garment_ids: Sequence[int]) -> int:
    """Set garments back to pending and queue them (admin action "re-index")."""
    with transaction.atomic():
        count = Garment.objects.filter(id__in=garment_ids).update(
            status=Garment.Status.PENDING, error="", claimed_by="", updated_at=timezone.now()
        )
        enqueue_indexing(garment_ids=garment_ids)
    return count


def requeue_stuck_garments(*, older_than: timedelta | None = None) -> int:
    """Queue again garments left pending or processing for too long (a lost task, Redis down)."""
    if older_than is None:
        older_than = timedelta(minutes=settings.RETRIEVAL_STUCK_MINUTES)
    cutoff = timezone.now() - older_than
    stuck = list(
        Garment.objects.filter(
            Q(status=Garment.Status.PENDING, updated_at__lt=cutoff)
            | Q(status=Garment.Status.PROCESSING, claimed_at__lt=cutoff)
        ).values_list("id", flat=True)
    )
    if stuck:
        with transaction.atomic():
            # Release leases so the new task may claim them.
            Garment.objects.filter(id__in=stuck).update(
                status=Garment.Status.PENDING, claimed_by="", updated_at=timezone.now()
            )
            enqueue_indexing(garment_ids=stuck)
        log.info("re-queued %d stuck garments", len(stuck))
    return len(stuck)


# --------------------------------------------------------------------------- indexing


@dataclass
class IndexResult:
    ready: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # claimed by another worker, or gone


def active_model() -> FeatureModel | None:
    return FeatureModel.objects.filter(active=True).first()


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
    return result


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
    extractor = search.extractor_for(backbone=backbone, model=model)
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
    from retrieval import clustering

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


# --------------------------------------------------------------------------- bulk import


def import_catalog(
    *,
    source: Path,
    category_field: str = "articleType",
    limit: int | None = None,
    job: ImportJob | None = None,
    progress=None,
) -> ImportJob:
    """Import (or update, by sku) every valid row of a catalogue zip/folder; queue indexing.

    Problems (which row or file, and why) are recorded on the job and the rest continues.
    Re-importing the same catalogue changes nothing: rows whose fields and image bytes are
    unchanged are left alone.
    """
    from retrieval.catalog import CatalogError, CatalogSource, Problem, read_rows

    if job is None:
        job = ImportJob.objects.create(
            source=str(source), category_field=category_field, limit=limit
        )
    job.status = ImportJob.Status.RUNNING
    job.save(update_fields=["status"])
    problems: list[dict] = []
    try:
        with CatalogSource(
            Path(source),
            max_file_bytes=settings.RETRIEVAL_MAX_UPLOAD_BYTES,
            max_total_bytes=settings.RETRIEVAL_MAX_IMPORT_BYTES,
        ) as catalog:
            problems.extend(p.as_dict() for p in catalog.problems)
            batch = []
            for item in read_rows(catalog, category_field=category_field, limit=limit):
                if isinstance(item, Problem):
                    problems.append(item.as_dict())
                    continue
                batch.append(item)
                if len(batch) >= IMPORT_BATCH:
                    _import_batch(job=job, catalog=catalog, rows=batch, problems=problems)
                    batch = []
                    if progress is not None:
                        progress(job)
            if batch:
                _import_batch(job=job, catalog=catalog, rows=batch, problems=problems)
    except CatalogError as exc:
        job.status = ImportJob.Status.FAILED
        job.error = str(exc)
    else:
        job.status = ImportJob.Status.DONE
    job.problems = problems[:5000]  # keep the report bounded for a pathological file
    job.finished_at = timezone.now()
    job.save()
    if progress is not None:
        progress(job)
    return job


def start_import(*, job: ImportJob) -> None:
    """Queue an uploaded import (admin) for a worker, after the job row is committed."""

    def send() -> None:
        from retrieval import tasks

        try:
            tasks.import_catalog.delay(job.pk)
        except Exception as exc:  # broker down: say so on the job rather than lose it silently
            ImportJob.objects.filter(pk=job.pk).update(
                error=f"could not queue the import (broker unavailable: {exc}); retry later"
            )

    transaction.on_commit(send)


def _import_batch(*, job: ImportJob, catalog, rows: list, problems: list[dict]) -> None:
    from retrieval.catalog import CatalogError

    categories: dict[str, Category] = {}
    existing = {g.sku: g for g in Garment.objects.filter(sku__in=[r.sku for r in rows])}
    to_index: list[int] = []
    unchanged: list[int] = []
    with transaction.atomic():
        for row in rows:
            try:
                data = catalog.read(row.image)
            except (CatalogError, OSError, KeyError) as exc:
                problems.append(
                    {"row": row.row, "sku": row.sku, "file": row.image, "reason": str(exc)}
                )
                continue
            if not data:
                problems.append(
                    {"row": row.row, "sku": row.sku, "file": row.image, "reason": "empty file"}
                )
                continue
            key = row.category.lower()
            if key not in categories:
                categories[key] = get_or_create_category(name=row.category)
            category = categories[key]
            digest = image_digest(data)
            garment = existing.get(row.sku)
            fields = {
                "title": row.title,
                "category_id": category.pk,
                "colour": row.colour,
                "attributes": {**row.attributes, "image_sha256": digest},
            }
            job.rows += 1
            if garment is None:
                garment = Garment(sku=row.sku, import_job=job, **fields)
                garment.image.save(Path(row.image).name, ContentFile(data), save=False)
                garment.save()
                job.created += 1
                to_index.append(garment.pk)
                continue
            image_changed = garment.attributes.get("image_sha256") != digest
            changed = image_changed or any(
                getattr(garment, name) != value for name, value in fields.items()
            )
            if not changed:
                job.unchanged += 1
                unchanged.append(garment.pk)
                continue
            for name, value in fields.items():
                setattr(garment, name, value)
            garment.import_job = job
            if image_changed:
                garment.image.save(Path(row.image).name, ContentFile(data), save=False)
                garment.status = Garment.Status.PENDING
                garment.error = ""
                to_index.append(garment.pk)
            garment.save()
            job.updated += 1
        # Unchanged garments still belong to this import: its progress and --wait cover them.
        Garment.objects.filter(id__in=unchanged).update(import_job=job)
        job.save(update_fields=["rows", "created", "updated", "unchanged"])
        enqueue_indexing(garment_ids=to_index)


def import_progress(*, job: ImportJob) -> dict:
    """Counts of the job's garments by status (what the admin progress bar shows)."""
    counts = dict(
        Garment.objects.filter(import_job=job)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    total = sum(counts.values())
    done = counts.get(Garment.Status.READY, 0) + counts.get(Garment.Status.FAILED, 0)
    return {
        "status": job.status,
        "rows": job.rows,
        "garments": total,
        "ready": counts.get(Garment.Status.READY, 0),
        "failed": counts.get(Garment.Status.FAILED, 0),
        "pending": counts.get(Garment.Status.PENDING, 0) + counts.get(Garment.Status.PROCESSING, 0),
        "percent": round(100.0 * done / total, 1) if total else (100.0 if job.finished_at else 0),
        "problems": len(job.problems),
    }


def after_import(*, job: ImportJob) -> str:
    """Make an imported catalogue searchable: train the first model, or re-cluster after a
    large import (at least 10% new garments). Returns what was done, for the log."""
    from retrieval import clustering

    model = active_model()
    if model is None:
        model = train_model(category_field="category")
        accuracy = model.metrics.get("val_accuracy")
        return f"trained and activated {model.name} (validation accuracy {accuracy})"
    total = GarmentFeature.objects.filter(model=model).count()
    if job.created and job.created >= 0.1 * max(total, 1):
        run = clustering.build_clusters(model=model)
        return f"re-clustered: k={run.k} over {run.n_samples} garments"
    return "model and clusters kept"


def workers_available(*, timeout: float = 1.0) -> bool:
    """Whether any Celery worker consumes the features queue right now."""
    from fashionsite.celery import app

    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # broker down: nobody will pick anything up
        return False
    return any(q["name"] == settings.FEATURES_QUEUE for queues in replies.values() for q in queues)


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


# --------------------------------------------------------------------------- models


def split_catalogue(
    *,
    skus: Sequence[str],
    labels: Sequence[str],
    seed: int = 0,
    val: float = 0.1,
    test: float = 0.1,
) -> dict[str, list[int]]:
    """Per-category train / validation / held-out test split (indices into ``skus``).

    Deterministic: within each category garments are ordered by a seeded hash of their sku,
    so the split never depends on import order and a garment keeps its side across runs.
    Categories with fewer than 3 garments go to train only.
    """
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    split: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for members in by_label.values():
        members.sort(key=lambda i: hashlib.sha1(f"{seed}:{skus[i]}".encode()).hexdigest())
        n = len(members)
        n_test = max(1, round(n * test)) if n >= 3 else 0
        n_val = max(1, round(n * val)) if n >= 3 else 0
        split["test"] += members[:n_test]
        split["val"] += members[n_test : n_test + n_val]
        split["train"] += members[n_test + n_val :]
    return split


def ensure_backbone_features(*, backbone: str, progress=None) -> int:
    """Run the CNN for garments that have no cached features under ``backbone`` yet."""
    missing = list(
        Garment.objects.filter(category__active=True)
        .exclude(status=Garment.Status.FAILED)
        .exclude(backbone_features__backbone=backbone)
        .order_by("id")
    )
    done = 0
    for start in range(0, len(missing), 256):
        chunk = missing[start : start + 256]
        extract_and_store(garments=chunk, backbone=backbone, model=None, result=IndexResult())
        done += len(chunk)
        if progress is not None:
            progress({"stage": "extracting", "done": done, "total": len(missing)})
    return len(missing)


def load_backbone_features(*, backbone: str, category_field: str = "category"):
    """Cached CNN features of every usable garment, with its training label.

    Returns (garment ids (N,) int64, skus, labels (N,) str, pooled (N, D) float32).
    """
    import numpy as np

    rows = (
        BackboneFeature.objects.filter(backbone=backbone, garment__category__active=True)
        .exclude(garment__status=Garment.Status.FAILED)
        .order_by("garment_id")
        .values_list(
            "garment_id",
            "garment__sku",
            "garment__category__name",
            "garment__attributes",
            "pooled",
        )
    )
    ids, skus, labels, pooled = [], [], [], []
    for gid, sku, category, attributes, vector in rows.iterator(chunk_size=2000):
        label = category if category_field == "category" else (attributes or {}).get(category_field)
        if not label:
            continue
        ids.append(gid)
        skus.append(sku)
        labels.append(label)
        pooled.append(vector)
    if not ids:
        return np.empty(0, np.int64), [], np.empty(0, object), None
    return (
        np.asarray(ids, np.int64),
        skus,
        np.asarray(labels, dtype=object),
        np.vstack(pooled).astype(np.float32),
    )


def new_feature_model(*, backbone: str, progress: dict | None = None) -> FeatureModel:
    """A model row (status training) with the configured colour knobs, named for its backbone
    and creation time; training fills in the head, classes and metrics."""
    from retrieval import features

    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return FeatureModel.objects.create(
        name=f"{backbone}-{stamp}-{uuid.uuid4().hex[:6]}",
        backbone=backbone,
        backbone_dim=features.POOLED_DIMS[backbone],
        colour_variant=settings.RETRIEVAL_COLOUR,
        colour_weight=settings.RETRIEVAL_COLOUR_WEIGHT,
        status=FeatureModel.Status.TRAINING,
        progress=progress or {},
    )


def train_model(
    *,
    backbone: str | None = None,
    epochs: int | None = None,
    category_field: str = "category",
    seed: int = 0,
    activate: bool = True,
    model: FeatureModel | None = None,
    progress=None,
) -> FeatureModel:
    """Train the head on the catalogue's categories and register (and activate) a new model.

    Split per category into train / validation / held-out test (fixed seed; evaluation queries
    with the test part); train FC1+FC2 on cached pooled backbone features (running the CNN
    first for garments that have none); save the head atomically; recompute every garment's
    vectors from the cache (no second CNN pass); fit K-means; switch the active model only
    when all of that is done. Progress is saved on the model row (the admin shows it).
    ``model``: a row created beforehand (status training) by whoever queued the training.
    """
    import numpy as np

    from retrieval import clustering, features

    backbone = features.resolve_backbone(
        backbone or (model.backbone if model else settings.RETRIEVAL_BACKBONE),
        weights_path=settings.RETRIEVAL_BACKBONE_WEIGHTS,
    )
    if model is None:
        model = new_feature_model(backbone=backbone)

    def report(state: dict) -> None:
        FeatureModel.objects.filter(pk=model.pk).update(progress=state)
        if progress is not None:
            progress(state)

    try:
        ensure_backbone_features(backbone=backbone, progress=report)
        ids, skus, labels, pooled = load_backbone_features(
            backbone=backbone, category_field=category_field
        )
        classes = sorted(set(labels.tolist()))
        if len(classes) < 2:
            raise ValueError(
                f"need garments in at least 2 categories to train (found {len(classes)}); "
                "import a catalogue first"
            )
        y = np.asarray([classes.index(label) for label in labels], np.int64)
        split = split_catalogue(skus=skus, labels=labels.tolist(), seed=seed)
        train, val = np.asarray(split["train"]), np.asarray(split["val"])

        def on_epoch(epoch: int, total: int, metrics: dict) -> None:
            report({"stage": "training", "epoch": epoch, "epochs": total, **metrics})

        started = time.perf_counter()
        head, metrics = features.train_head(
            pooled[train],
            y[train],
            num_classes=len(classes),
            epochs=epochs,
            seed=seed,
            val_pooled=pooled[val] if len(val) else None,
            val_labels=y[val] if len(val) else None,
            class_names=classes,
            backbone=backbone,
            progress=on_epoch,
        )
        metrics.update(
            train_seconds=round(time.perf_counter() - started, 2),
            n_train=len(train),
            n_val=len(val),
            n_test=len(split["test"]),
            category_field=category_field,
        )
        model.head_file = f"heads/{model.name}.pt"
        features.save_head(settings.RETRIEVAL_MODELS_DIR / model.head_file, head)
        model.backbone_dim = pooled.shape[1]
        model.classes = classes
        model.metrics = metrics
        model.split = {"seed": seed, "test": ids[split["test"]].tolist(), "val": ids[val].tolist()}
        model.status = FeatureModel.Status.INDEXING
        model.save()
        recompute_vectors(model=model, progress=report)
        if activate:
            report({"stage": "clustering"})
            clustering.build_clusters(model=model)
            activate_model(model=model)
        else:
            FeatureModel.objects.filter(pk=model.pk).update(status=FeatureModel.Status.READY)
        report({"stage": "done"})
    except Exception as exc:
        FeatureModel.objects.filter(pk=model.pk).update(
            status=FeatureModel.Status.FAILED, error=f"{exc.__class__.__name__}: {exc}"[:2000]
        )
        raise
    model.refresh_from_db()
    return model


def recompute_vectors(*, model: FeatureModel, progress=None, only_missing: bool = False) -> int:
    """Compute the model's searchable vectors from the cached CNN features (no CNN pass).

    Returns the number of garments written.
    """
    import numpy as np

    extractor = search.extractor_for(backbone=model.backbone, model=model)
    queryset = BackboneFeature.objects.filter(backbone=model.backbone).exclude(
        garment__status=Garment.Status.FAILED
    )
    if only_missing:
        queryset = queryset.exclude(garment__features__model=model)
    ids = list(queryset.order_by("garment_id").values_list("garment_id", flat=True))
    written = 0
    for start in range(0, len(ids), 4096):
        chunk = ids[start : start + 4096]
        rows = BackboneFeature.objects.filter(backbone=model.backbone, garment_id__in=chunk)
        rows = rows.order_by("garment_id").values_list("garment_id", "pooled", "rgb")

        gids, pooled, rgb = zip(*rows, strict=True)
        out = extractor.from_stored(
            np.vstack(pooled).astype(np.float32), np.asarray(rgb, np.float32).reshape(-1, 10, 3)
        )
        store_garment_features(model=model, garment_ids=list(gids), fused=out["fused"])
        written += len(gids)
        if progress is not None:
            progress({"stage": "vectors", "done": written, "total": len(ids)})
    return written


def activate_model(*, model: FeatureModel) -> None:
    """Make ``model`` the one searches and workers use, in one transaction."""
    with transaction.atomic():
        FeatureModel.objects.filter(active=True).exclude(pk=model.pk).update(active=False)
        FeatureModel.objects.filter(pk=model.pk).update(
            active=True, status=FeatureModel.Status.READY, activated_at=timezone.now()
        )
    # Garments indexed by workers while the model was being built (under the previous model)
    # have cached CNN features but no vectors for this model yet.
    recompute_vectors(model=model, only_missing=True)
    # Their new garment ready status stays as is; they are searchable now.


def reindex_and_activate(*, model: FeatureModel) -> None:
    """Re-index the catalogue for ``model`` in chunks with visible progress, then switch.

    Searches keep serving the previous model's vectors until this model's are complete.
    """
    from retrieval import clustering

    def report(state: dict) -> None:
        FeatureModel.objects.filter(pk=model.pk).update(progress=state)

    FeatureModel.objects.filter(pk=model.pk).update(status=FeatureModel.Status.INDEXING)
    ensure_backbone_features(backbone=model.backbone, progress=report)
    recompute_vectors(model=model, progress=report)
    report({"stage": "clustering"})
    clustering.build_clusters(model=model)
    activate_model(model=model)
    report({"stage": "done"})


def queue_training(*, backbone: str | None = None, epochs: int | None = None) -> FeatureModel:
    """Create the model row (visible progress in the admin) and queue its training."""
    from retrieval import features, tasks

    backbone = features.resolve_backbone(
        backbone or settings.RETRIEVAL_BACKBONE, weights_path=settings.RETRIEVAL_BACKBONE_WEIGHTS
    )
    model = new_feature_model(backbone=backbone, progress={"stage": "queued"})
    transaction.on_commit(lambda: tasks.train_model.delay(model.pk, epochs))
    return model
