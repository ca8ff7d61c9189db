"""Writes and orchestration: catalogue changes, imports, indexing, models.

Views, the API, tasks and management commands are thin and call these functions. Heavy
modules (torch via retrieval.features, numpy) are imported inside the functions that need
them, so the web request path stays light.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from retrieval import search
from retrieval.models import (
    FEATURE_VERSION,
    BackboneFeature,
    Category,
    ClusterRun,
    EvaluationReport,
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


class MediaStorageError(Exception):
    """The media storage refused to write an upload (disk full or read-only, a lost mount).

    ``str(err)`` is fit to show to a person; the underlying OSError (with paths) is logged.
    """


STORAGE_UNAVAILABLE = (
    "the file could not be stored: the media storage is not writable right now. "
    "Nothing was saved; try again later."
)


def store_garment_image(*, garment: Garment, source, name: str | None = None) -> str:
    """Re-encode an untrusted image as a fresh JPEG and write it to the media storage under a
    server-chosen name; ``garment.image`` then names the file (the row is not saved here).

    Every stored image comes through here (admin, API, imports): the site serves these bytes,
    so never the client's bytes, file name or extension (see retrieval.images.reencode_jpeg).

    Returns the stored name. Raises ``images.ImageError`` (not a usable image, nothing
    written) or :class:`MediaStorageError` (the storage refused the write, nothing left).
    """
    from retrieval import images

    jpeg = images.reencode_jpeg(source, max_pixels=settings.RETRIEVAL_MAX_PIXELS, name=name)
    field = Garment._meta.get_field("image")
    target = field.generate_filename(garment, f"{uuid.uuid4().hex}.jpg")
    try:
        stored = field.storage.save(target, ContentFile(jpeg), max_length=field.max_length)
    except OSError as exc:
        log.error("media storage refused %s: %s", target, exc)
        delete_stored_image(target)  # a partial file, e.g. the disk filled up mid-write
        raise MediaStorageError(STORAGE_UNAVAILABLE) from exc
    garment.image = stored
    return stored


def delete_stored_image(name: str) -> None:
    """Remove a file stored for a row that was then not saved (best effort: logged)."""
    try:
        Garment._meta.get_field("image").storage.delete(name)
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

    Every stored name is unique (:func:`store_garment_image` names a file by a fresh uuid, an
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
class PruneResult:
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


def prune_media(*, older_than: timedelta, dry_run: bool = False) -> PruneResult:
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
    result = PruneResult()

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


def _upload_bytes(upload) -> bytes:
    from django.core.exceptions import ValidationError

    limit = settings.RETRIEVAL_MAX_UPLOAD_BYTES
    upload.seek(0)
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise ValidationError(f"image too large: over {limit} bytes, the limit is {limit}")
    return data


def save_garment(*, garment: Garment, image_changed: bool) -> Garment:
    """Create or update a garment (admin, API); a new image is re-encoded, stored, and
    indexed after commit.

    Nothing is half-saved: a new upload is stored first (:func:`store_garment_image`), so
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
            stored = store_garment_image(
                garment=garment, source=_upload_bytes(upload), name=upload.name
            )
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


# --------------------------------------------------------------------------- indexing queue


# The error of a pending garment (import job, training) whose task never reached the
# broker. The sweep queues these at once, whatever their age; staff see why they wait.
NOT_QUEUED = (
    "not queued yet: Redis (the task broker) was unavailable; queued again automatically "
    "once it is back"
)


# How often a process whose publish failed asks whether the broker answers again.
SWEEP_POLL_SECONDS = 1.0


def _broker_ping() -> Exception | None:
    """None when the broker answers a PING within REDIS_SOCKET_TIMEOUT, else the error."""
    from fashionsite.celery import app
    from retrieval import health

    return health.ping_redis(app.conf.broker_url)


def _publish(task, *, args: list) -> Exception | None:
    """Send a task now; the broker's error, if it is unavailable, else None.

    A broker that accepts connections but does not answer (a hung server, a partition) is
    not sent the task: it would run it once it answers again, after the caller marked the
    work NOT_QUEUED and the sweep queued it a second time. So a PING comes first, bounded by
    REDIS_SOCKET_TIMEOUT; a refused connection (down) falls through to the publish, retried
    briefly (CELERY_TASK_PUBLISH_RETRY_POLICY: a blip, not an outage). No result is kept
    (nothing reads these results, and keeping one would make the publish wait on Redis a
    second time, as the result backend). On an error the caller marks the work NOT_QUEUED and
    the sweep is the real retry: this process queues it once the broker answers again.
    """
    import redis

    error = _broker_ping()
    if isinstance(error, redis.TimeoutError):
        sweep_when_broker_answers()
        return error
    try:
        task.apply_async(args=args, ignore_result=True)
    except Exception as exc:  # kombu raises transport-specific errors
        sweep_when_broker_answers()
        return exc
    return None


_sweep_lock = threading.Lock()
_sweep_wanted = False
_sweep_thread: threading.Thread | None = None


def _forget_sweep_thread() -> None:
    # A forked child (a prefork worker) has no such thread, and a fresh lock.
    global _sweep_lock, _sweep_wanted, _sweep_thread
    _sweep_lock, _sweep_wanted, _sweep_thread = threading.Lock(), False, None


os.register_at_fork(after_in_child=_forget_sweep_thread)


def sweep_when_broker_answers() -> None:
    """Queue the sweep (requeue_stuck) from this process as soon as the broker answers again.

    Workers queue it as they reconnect, but a broker that hung and came back (stopped, a
    partition) leaves their connections open: nothing reconnects, and what this process
    could not queue would wait for beat's next sweep. One thread per process, started on
    demand; a failure while it waits makes it send one more sweep.
    """
    global _sweep_wanted, _sweep_thread
    with _sweep_lock:
        _sweep_wanted = True
        if _sweep_thread is None:
            _sweep_thread = threading.Thread(
                target=_sweep_loop, name="sweep-when-broker-answers", daemon=True
            )
            _sweep_thread.start()


def _sweep_loop() -> None:
    global _sweep_wanted, _sweep_thread
    from fashionsite.celery import app

    while True:
        with _sweep_lock:
            if not _sweep_wanted:
                _sweep_thread = None
                return
            _sweep_wanted = False
        while True:
            time.sleep(SWEEP_POLL_SECONDS)
            if _broker_ping() is not None:
                continue
            try:
                app.send_task("retrieval.tasks.requeue_stuck", ignore_result=True)
            except Exception as exc:  # gone again: keep waiting
                log.debug("sweep not queued yet: %s", exc)
                continue
            log.info("broker answers again: sweep queued")
            break


def enqueue_indexing(*, garment_ids: Iterable[int]) -> None:
    """Queue feature extraction for these garments once the current transaction commits.

    Never fails the caller (an upload, an import) and never waits long: with the broker down
    the publish gives up within seconds (CELERY_* retry settings), the garments stay pending
    marked NOT_QUEUED, and :func:`requeue_stuck_garments` queues them once Redis is back
    (workers run it as they reconnect, and beat periodically). Nothing is lost.
    """
    ids = sorted(set(garment_ids))
    if not ids:
        return

    def send() -> None:
        from retrieval import tasks

        for start in range(0, len(ids), INDEX_CHUNK):
            error = _publish(tasks.index_garments, args=[ids[start : start + INDEX_CHUNK]])
            if error is not None:
                unsent = ids[start:]
                log.warning(
                    "broker unavailable, %d garments stay pending until it is back: %s",
                    len(unsent),
                    error,
                )
                _mark_not_queued(garment_ids=unsent)
                return

    transaction.on_commit(send)


def _mark_not_queued(*, garment_ids: Sequence[int]) -> None:
    try:
        Garment.objects.filter(id__in=garment_ids, status=Garment.Status.PENDING).update(
            error=NOT_QUEUED
        )
    except DatabaseError as exc:  # both services down: the age-based sweep still finds them
        log.warning("could not mark %d garments as not queued: %s", len(garment_ids), exc)


def mark_for_reindex(*, garment_ids: Sequence[int]) -> int:
    """Set garments back to pending and queue them (admin action "re-index")."""
    with transaction.atomic():
        count = Garment.objects.filter(id__in=garment_ids).update(
            status=Garment.Status.PENDING, error="", claimed_by="", updated_at=timezone.now()
        )
        enqueue_indexing(garment_ids=garment_ids)
    return count


def features_backlog() -> int | None:
    """Tasks waiting in the features queue (not yet delivered to a worker), or None when the
    broker cannot be asked.

    Asked through the app's broker connection (REDIS_CONNECT_TIMEOUT to connect,
    REDIS_SOCKET_TIMEOUT to read), one attempt: the sweep never hangs on a broker that is
    down or stuck. On Redis a queue is one list per priority step (kombu's sub-queues);
    ``queue_declare`` counts them all (LLEN of each), and declaring changes nothing on Redis.
    Tasks a worker has taken but not acknowledged (acks_late) are not counted: their garments are
    processing, under a lease.
    """
    from fashionsite.celery import app

    timeout = settings.REDIS_CONNECT_TIMEOUT
    try:
        with app.connection_for_read(
            connect_timeout=timeout,
            transport_options={"socket_timeout": settings.REDIS_SOCKET_TIMEOUT, "max_retries": 1},
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            declared = conn.default_channel.queue_declare(queue=settings.FEATURES_QUEUE)
            return int(declared.message_count)
    except Exception as exc:  # kombu raises transport-specific errors
        log.warning(
            "sweep: cannot count the tasks waiting in the '%s' queue: %s: %s",
            settings.FEATURES_QUEUE,
            exc.__class__.__name__,
            exc,
        )
        return None


def requeue_stuck_garments(*, older_than: timedelta | None = None) -> int:
    """Queue again garments whose indexing task never reached the broker, or was lost.

    - pending and marked NOT_QUEUED (the publish failed, Redis was down): at once, whatever
      their age: no lease or timeout is involved, as no task exists;
    - pending for longer than ``older_than`` (RETRIEVAL_STUCK_MINUTES): a task the broker
      accepted but lost (Redis restarted without persisting it), but only while the features
      queue is empty (see below);
    - processing under a lease older than ``older_than``: its worker died and the task was
      not redelivered.

    Why the features queue must be empty for the second case: during a large import on a
    slow machine the queue legitimately holds more than ``older_than`` of work, and the
    garments waiting in it are pending and old; re-queueing them would only add duplicates
    behind them, at every sweep. Tasks are taken in order, so while any task still waits we
    cannot tell a lost task from one not reached yet, and wait: once the backlog has drained
    (or been lost: the queue is then empty), a garment still pending and old has no task and
    the next sweep queues it. A queue nobody consumes (no feature worker) is never re-queued
    into either, which would not help. When the broker cannot be asked (it is down: the
    publish would fail too and mark them NOT_QUEUED), the age alone decides, as before. The
    count is taken before the rows are locked, so a task published meanwhile can only make
    this sweep re-queue too much, never too little. Processing garments are not affected:
    their lease starts when a worker takes their task, not when it was queued.

    Rows are taken FOR UPDATE SKIP LOCKED, so sweeps running at once (several workers
    reconnecting) queue each garment once. Returns the number of garments queued.
    """
    if older_than is None:
        older_than = timedelta(minutes=settings.RETRIEVAL_STUCK_MINUTES)
    cutoff = timezone.now() - older_than
    not_queued = Q(status=Garment.Status.PENDING, error=NOT_QUEUED)
    pending_old = Q(status=Garment.Status.PENDING, updated_at__lt=cutoff) & ~Q(error=NOT_QUEUED)
    stale_lease = Q(status=Garment.Status.PROCESSING, claimed_at__lt=cutoff)
    backlog = features_backlog() if Garment.objects.filter(pending_old).exists() else 0
    wanted = not_queued | stale_lease
    if not backlog:  # 0: nothing waits; None: the broker cannot say
        wanted |= pending_old
    with transaction.atomic():
        stuck = list(
            Garment.objects.select_for_update(skip_locked=True)
            .filter(wanted)
            .values_list("id", flat=True)
        )
        if stuck:
            # Release leases so the new task may claim them.
            Garment.objects.filter(id__in=stuck).update(
                status=Garment.Status.PENDING, error="", claimed_by="", updated_at=timezone.now()
            )
            enqueue_indexing(garment_ids=stuck)
    if backlog:
        skipped = Garment.objects.filter(pending_old).count()
        log.info(
            "sweep: re-queued %d garments; %d pending for over %s left alone: %d tasks "
            "still wait in the '%s' queue",
            len(stuck),
            skipped,
            older_than,
            backlog,
            settings.FEATURES_QUEUE,
        )
    elif stuck:
        log.info(
            "sweep: re-queued %d garments (not queued, pending or processing for over %s%s)",
            len(stuck),
            older_than,
            "; the broker could not be asked for its backlog" if backlog is None else "",
        )
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
    except (CatalogError, MediaStorageError) as exc:
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
    """Queue an uploaded import (admin) for a worker, after the job row is committed.

    With the broker down the job stays pending, marked NOT_QUEUED (staff see why), and
    :func:`requeue_unqueued_imports` queues it once Redis is back.
    """

    def send() -> None:
        from retrieval import tasks

        error = _publish(tasks.import_catalog, args=[job.pk])
        if error is not None:
            log.warning("broker unavailable, import %s waits until it is back: %s", job.pk, error)
            ImportJob.objects.filter(pk=job.pk, status=ImportJob.Status.PENDING).update(
                error=NOT_QUEUED
            )

    transaction.on_commit(send)


def _take_unqueued(queryset) -> list[int]:
    """Ids of the rows of ``queryset`` marked NOT_QUEUED, locked FOR UPDATE SKIP LOCKED and
    unmarked, inside the caller's transaction: concurrent sweeps each take a row once."""
    ids = list(
        queryset.select_for_update(skip_locked=True)
        .filter(error=NOT_QUEUED)
        .values_list("id", flat=True)
    )
    queryset.model.objects.filter(id__in=ids).update(error="")
    return ids


def requeue_unqueued_imports() -> int:
    """Queue the import jobs whose task never reached the broker (see :func:`start_import`).

    FOR UPDATE SKIP LOCKED and the mark cleared in the same transaction: concurrent sweeps
    queue a job once (two imports of one job at a time would race on its rows).
    """
    with transaction.atomic():
        jobs = _take_unqueued(ImportJob.objects.filter(status=ImportJob.Status.PENDING))
        for job_id in jobs:
            start_import(job=ImportJob(pk=job_id))
    if jobs:
        log.info("re-queued %d import jobs", len(jobs))
    return len(jobs)


def _import_batch(*, job: ImportJob, catalog, rows: list, problems: list[dict]) -> None:
    """One transaction of rows. Images are re-encoded and stored (:func:`store_garment_image`)
    before their rows are written; if the batch fails, the files it stored are removed; once
    it commits, the files of the images it replaced are deleted."""
    from retrieval import images
    from retrieval.catalog import CatalogError

    categories: dict[str, Category] = {}
    existing = {g.sku: g for g in Garment.objects.filter(sku__in=[r.sku for r in rows])}
    to_index: list[int] = []
    unchanged: list[int] = []
    stored: list[str] = []
    replaced: list[str] = []  # the files of the images this batch replaces
    counts = (job.rows, job.created, job.updated, job.unchanged)
    try:
        with transaction.atomic():
            for row in rows:

                def problem(reason: str, row=row) -> None:
                    problems.append(
                        {"row": row.row, "sku": row.sku, "file": row.image, "reason": reason}
                    )

                try:
                    data = catalog.read(row.image)
                except (CatalogError, OSError, KeyError) as exc:
                    problem(str(exc))
                    continue
                if not data:
                    problem("empty file")
                    continue
                key = row.category.lower()
                if key not in categories:
                    categories[key] = get_or_create_category(name=row.category)
                category = categories[key]
                # Of the catalogue's bytes, not the stored JPEG's: a re-import compares sources.
                digest = image_digest(data)
                garment = existing.get(row.sku)
                fields = {
                    "title": row.title,
                    "category_id": category.pk,
                    "colour": row.colour,
                    "attributes": {**row.attributes, "image_sha256": digest},
                }
                created = garment is None
                image_changed = created or garment.attributes.get("image_sha256") != digest
                if not image_changed and all(
                    getattr(garment, name) == value for name, value in fields.items()
                ):
                    job.rows += 1
                    job.unchanged += 1
                    unchanged.append(garment.pk)
                    continue
                if created:
                    garment = Garment(sku=row.sku)
                if image_changed:
                    previous = "" if created else garment.image.name
                    try:
                        stored.append(
                            store_garment_image(garment=garment, source=data, name=row.image)
                        )
                    except images.ImageError as exc:  # the row is refused, the garment kept
                        problem(exc.reason)
                        continue
                    if previous:
                        replaced.append(previous)
                    garment.status = Garment.Status.PENDING
                    garment.error = ""
                for name, value in fields.items():
                    setattr(garment, name, value)
                garment.import_job = job
                garment.save()
                job.rows += 1
                if created:
                    job.created += 1
                else:
                    job.updated += 1
                if image_changed:
                    to_index.append(garment.pk)
            # Unchanged garments still belong to this import: its progress and --wait cover them.
            Garment.objects.filter(id__in=unchanged).update(import_job=job)
            job.save(update_fields=["rows", "created", "updated", "unchanged"])
            enqueue_indexing(garment_ids=to_index)
            delete_images_after_commit(replaced)  # kept if the batch rolls back
    except Exception:
        job.rows, job.created, job.updated, job.unchanged = counts  # the batch's rows are gone
        for name in stored:
            delete_stored_image(name)
        raise


def save_import_job(*, job: ImportJob) -> ImportJob:
    """Save an uploaded import (admin): its row and its zip, then queue it after commit.

    Raises :class:`MediaStorageError` when the media storage refuses the zip (no row then).
    """
    try:
        job.save()
    except OSError as exc:
        log.error("media storage refused the import upload %s: %s", job.upload.name, exc)
        raise MediaStorageError(STORAGE_UNAVAILABLE) from exc
    start_import(job=job)
    return job


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


def vectors_key(model: FeatureModel) -> str:
    """What a model's vectors are a function of, besides each garment's CNN cache row: the
    head's bytes, the backbone, the colour knobs and FEATURE_VERSION ("" when the head file
    cannot be read: then vectors are never reused)."""
    digest = hashlib.sha256()
    if model.head_file:
        try:
            digest.update(model.head_path.read_bytes())
        except OSError:
            return ""
    knobs = [
        model.backbone,
        model.colour_variant,
        model.colour_weight,
        model.normalize_deep,
        FEATURE_VERSION,
    ]
    digest.update(json.dumps(knobs).encode())
    return digest.hexdigest()


def recompute_vectors(
    *, model: FeatureModel, progress=None, only_missing: bool = False, reuse: bool = False
) -> int:
    """Compute the model's searchable vectors from the cached CNN features (no CNN pass).

    Default: every vector, after which ``model.vectors_key`` records what they were computed
    with. ``only_missing``: garments with no vector of the model. ``reuse`` (a switch back to
    a previous model whose vectors were kept): when ``vectors_key`` still matches, garments
    whose vector is missing or older than their CNN cache row (re-extracted since, e.g. a
    re-index under another model of the same backbone); a new image deletes the garment's
    vectors, so it counts as missing. When the key does not match (a colour knob edited, the
    head replaced, vectors of a release before the key existed), every vector.

    Returns the number of garments written.
    """
    import numpy as np

    key = vectors_key(model)
    stored_key = FeatureModel.objects.filter(pk=model.pk).values_list("vectors_key", flat=True)
    reuse = reuse and bool(key) and stored_key.first() == key
    queryset = BackboneFeature.objects.filter(backbone=model.backbone).exclude(
        garment__status=Garment.Status.FAILED
    )
    if only_missing:
        queryset = queryset.exclude(garment__features__model=model)
    elif reuse:
        current = GarmentFeature.objects.filter(
            model=model, garment_id=OuterRef("garment_id"), created_at__gte=OuterRef("created_at")
        )
        queryset = queryset.exclude(Exists(current))
    ids = list(queryset.order_by("garment_id").values_list("garment_id", flat=True))
    # Loaded only when there is something to compute (a switch back often has nothing).
    extractor = search.extractor_for(backbone=model.backbone, model=model) if ids else None
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
    if not only_missing:  # every vector of the model is now computed with this key
        FeatureModel.objects.filter(pk=model.pk).update(vectors_key=key)
        model.vectors_key = key
    return written


def activate_model(*, model: FeatureModel) -> None:
    """Make ``model`` the one searches and workers use, in one transaction.

    The model needs vectors (a retired model whose vectors were deleted is activated through
    :func:`reindex_and_activate`, which recomputes them) and K-means runs: those a retired
    model lost are fitted here first, so its searches are clustered from the first one. Once
    the switch commits, the retention sweep (:func:`prune_inactive_models`) is queued: the
    model that was active until now loses its search partitions.
    """
    from retrieval import clustering

    if not GarmentFeature.objects.filter(model=model).exists():
        raise ValueError(
            f"model {model} has no vectors (never indexed, or deleted when it was retired): "
            "activate it with the admin's 'Activate the selected model', which recomputes "
            "them from the cached CNN features (services.reindex_and_activate)"
        )
    clustering.ensure_active_runs(model=model)
    with transaction.atomic():
        FeatureModel.objects.filter(active=True).exclude(pk=model.pk).update(active=False)
        FeatureModel.objects.filter(pk=model.pk).update(
            active=True, status=FeatureModel.Status.READY, activated_at=timezone.now()
        )
        transaction.on_commit(_queue_prune_after_activation)
    # Garments indexed by workers while the model was being built (under the previous model)
    # have cached CNN features but no vectors for this model yet.
    recompute_vectors(model=model, only_missing=True)
    # Their new garment ready status stays as is; they are searchable now.


def reindex_and_activate(*, model: FeatureModel) -> None:
    """Re-index the catalogue for ``model`` in chunks with visible progress, then switch.

    Searches keep serving the previous model's vectors until this model's are complete. A
    previous model whose vectors were kept (RETRIEVAL_KEEP_MODELS) has only its missing and
    outdated vectors computed again; its K-means runs are fitted anew (its partitions were
    dropped when it was retired).
    """
    from retrieval import clustering

    def report(state: dict) -> None:
        FeatureModel.objects.filter(pk=model.pk).update(progress=state)

    # Status indexing from here on: the retention sweep leaves the model alone meanwhile.
    FeatureModel.objects.filter(pk=model.pk).update(status=FeatureModel.Status.INDEXING, error="")
    try:
        ensure_backbone_features(backbone=model.backbone, progress=report)
        # A previous model whose vectors were kept (RETRIEVAL_KEEP_MODELS): only the missing
        # and outdated ones are computed again (all of them if a knob or the head changed).
        recompute_vectors(model=model, progress=report, reuse=True)
        report({"stage": "clustering"})
        clustering.build_clusters(model=model)
        activate_model(model=model)
    except Exception as exc:
        # Not left "indexing" for ever (the retention sweep skips models being indexed);
        # searches still use the previous model.
        FeatureModel.objects.filter(pk=model.pk, active=False).update(
            status=FeatureModel.Status.FAILED, error=f"{exc.__class__.__name__}: {exc}"[:2000]
        )
        raise
    report({"stage": "done"})


def queue_training(*, backbone: str | None = None, epochs: int | None = None) -> FeatureModel:
    """Create the model row (visible progress in the admin) and queue its training.

    With the broker down the model waits (status training, progress "queued") marked
    NOT_QUEUED, and :func:`requeue_unqueued_trainings` queues it once Redis is back.
    """
    from retrieval import features

    backbone = features.resolve_backbone(
        backbone or settings.RETRIEVAL_BACKBONE, weights_path=settings.RETRIEVAL_BACKBONE_WEIGHTS
    )
    model = new_feature_model(backbone=backbone, progress={"stage": "queued"})
    _send_training(model_id=model.pk, epochs=epochs)
    return model


def _send_training(*, model_id: int, epochs: int | None) -> None:
    def send() -> None:
        from retrieval import tasks

        error = _publish(tasks.train_model, args=[model_id, epochs])
        if error is not None:
            log.warning(
                "broker unavailable, training %s waits until it is back: %s", model_id, error
            )
            FeatureModel.objects.filter(pk=model_id, status=FeatureModel.Status.TRAINING).update(
                error=NOT_QUEUED
            )

    transaction.on_commit(send)


class QueueUnavailable(RuntimeError):
    """The task broker (Redis) refused a publish: the work was not started."""


def queue_activation(*, model: FeatureModel) -> None:
    """Queue re-indexing the catalogue for ``model`` and activating it (an admin action).

    Published at once (no row to wait for); with the broker down the staff member is told to
    retry (QueueUnavailable) rather than shown an error page: nothing changed yet.
    """
    from retrieval import tasks

    error = _publish(tasks.reindex_model, args=[model.pk])
    if error is not None:
        raise QueueUnavailable(
            f"Redis (the task queue) is unavailable, so {model} was not queued: try again "
            f"once /healthz shows redis up ({error.__class__.__name__})"
        )


def queue_evaluation(*, model: FeatureModel) -> EvaluationReport:
    """Create a running EvaluationReport for ``model`` and queue its evaluation after commit;
    with the broker down the report is marked failed with the reason (start it again later)."""
    from retrieval import tasks

    report = EvaluationReport.objects.create(model=model, parameters={"model": model.name})

    def send() -> None:
        error = _publish(tasks.evaluate, args=[report.pk])
        if error is not None:
            log.warning("broker unavailable, evaluation %s not started: %s", report.pk, error)
            EvaluationReport.objects.filter(pk=report.pk).update(
                status=EvaluationReport.Status.FAILED,
                error="not started: Redis (the task queue) was unavailable; start it again",
                finished_at=timezone.now(),
            )

    transaction.on_commit(send)
    return report


def requeue_unqueued_trainings() -> int:
    """Queue the trainings whose task never reached the broker (see :func:`queue_training`),
    with the default number of epochs (what the admin's button asks for)."""
    with transaction.atomic():
        ids = _take_unqueued(FeatureModel.objects.filter(status=FeatureModel.Status.TRAINING))
        for model_id in ids:
            _send_training(model_id=model_id, epochs=None)
    if ids:
        log.info("re-queued %d trainings", len(ids))
    return len(ids)


# --------------------------------------------------------------------------- model retention
#
# Per feature model the database holds (docs/benchmarks_search.md, 1M garments):
# - its vectors, GarmentFeature (2.6 GB heap + 2.6 GB TOAST): what re-ranking, exact mode and
#   a K-means fit read;
# - while it is active, one search-table partition per active K-means run, fused and deep
#   (1.1 GB + 37 MB of indexes each): what clustered searches scan.
# RETRIEVAL_MODELS_DIR holds its head (a few MB) and the CNN cache (BackboneFeature) is per
# backbone, shared by the models of that backbone; neither is touched here: with both, any
# model can be activated again.
#
# A model that is not active never reads its partitions again: every activation fits new
# K-means runs (reindex_and_activate, train_model; activate_model for runs that are missing),
# whose partitions are written from the vectors. So an inactive model's partitions are always
# dropped. Its vectors are what a switch back reuses (recompute_vectors(reuse=True): only the
# missing and outdated ones are computed again), so the RETRIEVAL_KEEP_MODELS most recently
# active previous models keep them; older ones lose them too (a switch back to one of those
# recomputes them from the CNN cache, as every activation did before vectors were reused).

# Models being built: their vectors and runs are being written, so they are left alone.
BUSY_STATUSES = (FeatureModel.Status.TRAINING, FeatureModel.Status.INDEXING)
# Vectors deleted per transaction: short transactions, nothing waits long on them.
VECTOR_DELETE_BATCH = 5000


@dataclass
class ModelPrune:
    """What the retention sweep did (a dry run: would do) to one inactive model."""

    model_id: int
    name: str
    runs: list[int] = field(default_factory=list)  # runs whose search partitions were dropped
    keeps_vectors: bool = True
    vectors: int = 0  # vectors deleted
    stopped: str = ""  # why it stopped before the end (the model became active or busy)

    def describe(self, *, dry_run: bool) -> str:
        verb = "would drop" if dry_run else "dropped"
        parts = []
        if self.runs:
            parts.append(f"{verb} the search partitions of runs {self.runs}")
        if self.keeps_vectors:
            parts.append("vectors kept (a switch back needs a K-means run only)")
        elif self.vectors:
            parts.append(f"{'would delete' if dry_run else 'deleted'} {self.vectors} vectors")
        text = "; ".join(parts) or "nothing to drop"
        return f"{self.name}: {text}" + (f" (stopped: {self.stopped})" if self.stopped else "")


@dataclass
class PruneReport:
    dry_run: bool
    keep: int
    models: list[ModelPrune] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # model name -> why left alone
    failed_runs: list[int] = field(default_factory=list)  # partitions to retry (in use)

    def lines(self) -> list[str]:
        out = [item.describe(dry_run=self.dry_run) for item in self.models]
        out += [f"{name}: left alone, {reason}" for name, reason in self.skipped.items()]
        if self.failed_runs:
            out.append(f"partitions of runs {self.failed_runs} not dropped yet (retried later)")
        return out

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "keep": self.keep,
            "models": {
                item.name: {
                    "runs": item.runs,
                    "keeps_vectors": item.keeps_vectors,
                    "vectors_deleted": item.vectors,
                    "stopped": item.stopped,
                }
                for item in self.models
            },
            "skipped": self.skipped,
            "failed_runs": self.failed_runs,
        }


def retirement_refusal(model: FeatureModel) -> str | None:
    """Why ``model``'s search data must not be dropped now, or None."""
    if model.active:
        return "it is the active model: searches read its search data"
    if model.status in BUSY_STATUSES:
        return f"it is being built (status {model.status}): its vectors and runs are being written"
    return None


def prune_inactive_models(
    *, keep: int | None = None, model_ids: Sequence[int] | None = None, dry_run: bool = False
) -> PruneReport:
    """Drop the search data of feature models that are not active; the retention sweep.

    Every inactive model (not being trained or indexed) loses its search-table partitions:
    its active runs are deactivated, then their partitions are detached CONCURRENTLY and
    dropped (:func:`retrieval.clustering.drop_partitions`; searches never wait; inside a
    transaction block a short locked drop, retried). The ``keep`` (RETRIEVAL_KEEP_MODELS)
    most recently active of them keep their vectors; the others' vectors are deleted in short
    batches. ``model_ids``: only these models, which lose their vectors too whatever ``keep``
    (the admin's "delete search data" action); the active model and models being built are
    refused (listed in ``skipped``). Never touches the active model, heads or the CNN cache.

    Idempotent: a second sweep finds nothing left. Partitions still read by a long
    transaction stay (``failed_runs``) until the next sweep. Every step re-reads the model
    under its row lock, so a switch back started meanwhile (which sets the model indexing, or
    active) stops the sweep for that model rather than racing it.
    """
    from retrieval import clustering

    keep = settings.RETRIEVAL_KEEP_MODELS if keep is None else keep
    if keep < 0:
        raise ValueError("keep must be 0 or more")
    report = PruneReport(dry_run=dry_run, keep=keep)
    explicit = model_ids is not None
    models = (
        FeatureModel.objects.all()
        if not explicit
        else FeatureModel.objects.filter(pk__in=list(model_ids))
    )
    candidates = []
    for model in models:
        reason = retirement_refusal(model)
        if reason is None:
            candidates.append(model)
        elif explicit or not model.active:
            report.skipped[model.name] = reason
    # Most recently active first (a model activated later was deactivated later); models
    # never activated (trained without activation, failed trainings) after those.
    candidates.sort(key=lambda m: m.created_at, reverse=True)
    candidates.sort(key=lambda m: (m.activated_at is not None, m.activated_at), reverse=True)
    keepers = set() if explicit else {m.pk for m in candidates[:keep]}
    partitions = set(clustering.partition_run_ids())
    for model in candidates:
        item = ModelPrune(model_id=model.pk, name=model.name, keeps_vectors=model.pk in keepers)
        report.models.append(item)
        if dry_run:
            run_ids = set(model.cluster_runs.values_list("id", flat=True))
            item.runs = sorted(run_ids & partitions)
            if not item.keeps_vectors:
                item.vectors = GarmentFeature.objects.filter(model=model).count()
            continue
        item.stopped = _deactivate_runs(model_id=model.pk)
        if item.stopped:
            continue
        run_ids = set(ClusterRun.objects.filter(model_id=model.pk).values_list("id", flat=True))
        runs = sorted(run_ids & set(clustering.partition_run_ids()))
        failed = clustering.drop_partitions(run_ids=runs)
        item.runs = [run_id for run_id in runs if run_id not in failed]
        report.failed_runs += failed
        if item.keeps_vectors:
            continue
        if failed:  # its rows still name these vectors: deleted by the sweep that drops them
            item.stopped = "vectors kept until its partitions are dropped"
            continue
        item.vectors, item.stopped = _delete_vectors(model_id=model.pk)
    if not dry_run:
        for line in report.lines():
            log.info("retention: %s", line)
    return report


def _locked_refusal(model_id: int) -> str | None:
    """:func:`retirement_refusal` of the model row, locked until the transaction ends: an
    activation (which updates the row) waits for the step that holds it, and the next step
    sees it. FOR NO KEY UPDATE: vectors of other models being written do not wait."""
    model = FeatureModel.objects.select_for_update(no_key=True).filter(pk=model_id).first()
    return "deleted meanwhile" if model is None else retirement_refusal(model)


def _deactivate_runs(*, model_id: int) -> str:
    """Make the model's active runs inactive, so its partitions may go (searches and
    indexing read active runs only); returns why not, or ""."""
    with transaction.atomic():
        reason = _locked_refusal(model_id)
        if reason is None:
            ClusterRun.objects.filter(model_id=model_id, active=True).update(active=False)
    return reason or ""


def _delete_vectors(*, model_id: int) -> tuple[int, str]:
    """Delete the model's vectors in batches of VECTOR_DELETE_BATCH; returns (deleted, why
    it stopped or ""). In SQL: Django's cascade would load every row first; the rows of the
    search table that named them went with the model's partitions."""
    from retrieval.searchtable import FEATURE_TABLE

    deleted = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            reason = _locked_refusal(model_id)
            # A run fitted since its partitions went (a nightly rebuild that raced the switch)
            # has rows naming these vectors: the next sweep drops it, then deletes them.
            if (
                reason is None
                and ClusterRun.objects.filter(model_id=model_id, active=True).exists()
            ):
                reason = "a K-means run of the model was fitted meanwhile"
            if reason is not None:
                return deleted, reason
            cursor.execute(
                f"DELETE FROM {FEATURE_TABLE} WHERE id IN "
                f"(SELECT id FROM {FEATURE_TABLE} WHERE model_id = %s LIMIT %s)",
                [model_id, VECTOR_DELETE_BATCH],
            )
            batch = cursor.rowcount
        deleted += batch
        if batch < VECTOR_DELETE_BATCH:
            return deleted, ""


def _queue_prune_after_activation() -> None:
    """Queue the retention sweep (after an activation commits); never fails the activation."""
    from retrieval import tasks

    error = _publish(tasks.prune_models, args=[])
    if error is not None:
        log.warning(
            "broker unavailable, the retention sweep was not queued (the next activation "
            "queues it again; or run manage.py prune_models): %s",
            error,
        )


def queue_model_retirement(*, models: Sequence[FeatureModel]) -> dict[str, str]:
    """Queue dropping the search data (partitions and vectors) of these inactive models (the
    admin action). Returns the models refused, with why (the active model, models being
    built); raises QueueUnavailable when the broker is down (nothing changed then)."""
    from retrieval import tasks

    refused = {m.name: reason for m in models if (reason := retirement_refusal(m))}
    chosen = [m.pk for m in models if m.name not in refused]
    if chosen:
        error = _publish(tasks.prune_models, args=[chosen])
        if error is not None:
            raise QueueUnavailable(
                f"Redis (the task queue) is unavailable, so nothing was queued: try again once "
                f"/healthz shows redis up ({error.__class__.__name__})"
            )
    return refused
