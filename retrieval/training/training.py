"""Training a feature model: split the catalogue, train the head on cached CNN features, queue
trainings.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from retrieval.indexing import ensure_backbone_features, ensure_example_features
from retrieval.jobs.publishing import NOT_QUEUED, publish, take_unqueued
from retrieval.models import (
    BackboneFeature,
    ExampleFeature,
    ExamplePhoto,
    FeatureModel,
    Garment,
    GarmentFeature,
    ImportJob,
)
from retrieval.selectors import active_model
from retrieval.spec import FINE_TUNABLE, base_backbone, pooled_dim
from retrieval.training.activation import activate_model, recompute_vectors
from retrieval.training.finetune import HeadFit, fine_tune_top
from retrieval.training.progress import StageClock

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


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


def load_example_features(
    *, backbone: str, classes: Sequence[str], category_field: str
) -> tuple[np.ndarray | None, np.ndarray, int]:
    """The training example photos' cached pooled features, labelled with their index in
    ``classes`` (issue #14: shoppers' photos beside the studio photos).

    Only role ``train`` photos: held-out ones are evaluation queries and never reach a head.
    Returns (pooled (M, D) float32 or None, labels (M,) int64, skipped): ``skipped`` counts
    the training photos left out, because their category is not among ``classes`` (or the
    head trains on another field than the category), or their photo could not be read.
    """
    import numpy as np

    train = ExamplePhoto.objects.filter(role=ExamplePhoto.Role.TRAIN)
    total = train.count()
    index = {name: i for i, name in enumerate(classes)} if category_field == "category" else {}
    rows = (
        ExampleFeature.objects.filter(
            backbone=backbone,
            photo__role=ExamplePhoto.Role.TRAIN,
            photo__category__name__in=list(index),
        )
        .order_by("photo_id")
        .values_list("photo__category__name", "pooled")
    )
    labels, pooled = [], []
    for category, vector in rows.iterator(chunk_size=2000):
        labels.append(index[category])
        pooled.append(vector)
    if not pooled:
        return None, np.empty(0, np.int64), total
    return (
        np.vstack(pooled).astype(np.float32),
        np.asarray(labels, np.int64),
        total - len(labels),
    )


def new_feature_model(*, backbone: str, progress: dict | None = None) -> FeatureModel:
    """A model row (status training) with the configured colour knobs, named for its backbone
    and creation time; training fills in the head, classes and metrics."""

    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return FeatureModel.objects.create(
        name=f"{backbone}-{stamp}-{uuid.uuid4().hex[:6]}",
        backbone=backbone,
        backbone_dim=pooled_dim(backbone),
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
    progress: Callable[[dict], None] | None = None,
    fine_tune: str | None = None,
    fine_tune_epochs: int | None = None,
) -> FeatureModel:
    """Train the head on the catalogue's categories and register (and activate) a new model.

    Split per category into train / validation / held-out test (fixed seed; evaluation queries
    with the test part); train FC1+FC2 on cached pooled backbone features (running the CNN
    first for garments that have none); save the head atomically; recompute every garment's
    vectors from the cache (no second CNN pass); fit K-means; switch the active model only
    when all of that is done. Progress is saved on the model row (the admin shows it) and
    passed to ``progress``: dicts of :mod:`retrieval.training.progress`, with elapsed time and
    time left per stage.
    ``model``: a row created beforehand (status training) by whoever queued the training.
    ``fine_tune`` (default ``RETRIEVAL_FINE_TUNE``): ``"top"`` then fine-tunes block 15 + head
    conv + FC1/FC2 for ``fine_tune_epochs`` (default ``RETRIEVAL_FINE_TUNE_EPOCHS``) from that
    head, on block-14 activations of one CNN pass (:mod:`retrieval.training.finetune`): the
    model gets a backbone version of its own (``efficientnet_lite0+ft<id>``) whose cache rows
    are computed from those activations.
    """
    from retrieval import features
    from retrieval.search import clustering

    fine_tune = settings.RETRIEVAL_FINE_TUNE if fine_tune is None else fine_tune
    if fine_tune not in ("off", "top"):
        raise ValueError(f"fine_tune must be off or top, not {fine_tune!r}")

    backbone = features.resolve_backbone(
        backbone or (model.backbone if model else settings.RETRIEVAL_BACKBONE),
        weights_path=settings.RETRIEVAL_BACKBONE_WEIGHTS,
    )
    if model is None:
        model = new_feature_model(backbone=backbone)
    clock = StageClock()

    def report(state: dict) -> None:
        state = clock.stamp(state)  # + elapsed and time left (training.progress)
        FeatureModel.objects.filter(pk=model.pk).update(progress=state)
        if progress is not None:
            progress(state)

    try:
        if fine_tune == "top":
            # A tuned model starts from its base's ImageNet weights and frozen cache rows.
            backbone = base_backbone(backbone)
            if backbone not in FINE_TUNABLE:
                raise ValueError(
                    f"RETRIEVAL_FINE_TUNE=top cannot fine-tune {backbone} (only "
                    f"{', '.join(FINE_TUNABLE)}): set RETRIEVAL_FINE_TUNE=off"
                )
        ensure_backbone_features(backbone=backbone, progress=report)
        ensure_example_features(backbone=backbone, progress=report)
        fit = _fit_head(
            model=model,
            backbone=backbone,
            category_field=category_field,
            epochs=epochs,
            seed=seed,
            report=report,
            # Still training while the top is fine-tuned: a redelivered task (its worker
            # killed) trains again rather than skipping a model that has no tuned top.
            status=FeatureModel.Status.TRAINING if fine_tune == "top" else None,
        )
        if fine_tune == "top":
            fine_tune_top(
                model=model,
                fit=fit,
                epochs=fine_tune_epochs or settings.RETRIEVAL_FINE_TUNE_EPOCHS,
                seed=seed,
                report=report,
            )
            # Garments the activations did not cover (no label for the trained field, or
            # imported meanwhile): through the full tuned network.
            ensure_backbone_features(backbone=model.backbone, progress=report)
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


def _fit_head(
    *,
    model: FeatureModel,
    backbone: str,
    category_field: str,
    epochs: int | None,
    seed: int,
    report: Callable[[dict], None],
    status: str | None = None,
) -> HeadFit:
    """Train the model's head on the cached pooled features of the catalogue's train split
    and save it atomically; the model row gets its head file, classes, metrics and split and
    goes to status indexing (its vectors are computed next), or ``status``."""
    import numpy as np

    from retrieval import features

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
    # Departure from the paper (docs/method.md, "Example photos"): the head also learns from
    # labelled shoppers' photos (role train; held-out senders never), each once beside the
    # studio train split. Validation stays on studio photos only.
    example_pooled, example_y, examples_skipped = load_example_features(
        backbone=backbone, classes=classes, category_field=category_field
    )
    train_x, train_y = pooled[train], y[train]
    if example_pooled is not None and example_pooled.shape[1] == pooled.shape[1]:
        train_x = np.concatenate([train_x, example_pooled])
        train_y = np.concatenate([train_y, example_y])
        examples_used = len(example_y)
    else:
        examples_skipped += len(example_y)
        examples_used = 0

    def on_epoch(epoch: int, total: int, metrics: dict) -> None:
        report({"stage": "training", "epoch": epoch, "epochs": total, **metrics})

    started = time.perf_counter()
    head, metrics = features.train_head(
        train_x,
        train_y,
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
        examples_used=examples_used,
        examples_skipped=examples_skipped,
    )
    model.head_file = f"heads/{model.name}.pt"
    features.save_head(settings.RETRIEVAL_MODELS_DIR / model.head_file, head)
    model.backbone_dim = pooled.shape[1]
    model.classes = classes
    model.metrics = metrics
    model.split = {"seed": seed, "test": ids[split["test"]].tolist(), "val": ids[val].tolist()}
    model.status = status or FeatureModel.Status.INDEXING
    model.save()
    return HeadFit(
        backbone=backbone,
        ids=ids,
        y=y,
        classes=classes,
        train=train.astype(np.int64),
        val=val.astype(np.int64),
        test=np.asarray(split["test"], np.int64),
        category_field=category_field,
        head=head,
    )


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

        error = publish("retrieval.tasks.train_model", args=[model_id, epochs])
        if error is not None:
            log.warning(
                "broker unavailable, training %s waits until it is back: %s", model_id, error
            )
            FeatureModel.objects.filter(pk=model_id, status=FeatureModel.Status.TRAINING).update(
                error=NOT_QUEUED
            )

    transaction.on_commit(send)


def requeue_unqueued_trainings() -> int:
    """Queue the trainings whose task never reached the broker (see :func:`queue_training`),
    with the default number of epochs (what the admin's button asks for)."""
    with transaction.atomic():
        ids = take_unqueued(FeatureModel.objects.filter(status=FeatureModel.Status.TRAINING))
        for model_id in ids:
            _send_training(model_id=model_id, epochs=None)
    if ids:
        log.info("re-queued %d trainings", len(ids))
    return len(ids)


def after_import(*, job: ImportJob) -> str:
    """Make an imported catalogue searchable: train the first model, or re-cluster after a
    large import (at least 10% new garments). Returns what was done, for the log."""
    from retrieval.search import clustering

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
