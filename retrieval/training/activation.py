"""Activating a feature model: vectors for every garment, K-means runs, then the switch."""

from __future__ import annotations

import hashlib
import json
import logging

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from retrieval.indexing import ensure_backbone_features, store_garment_features
from retrieval.jobs.publishing import QueueUnavailable, publish
from retrieval.models import (
    FEATURE_VERSION,
    BackboneFeature,
    FeatureModel,
    Garment,
    GarmentFeature,
)
from retrieval.spec import is_tuned
from retrieval.training.progress import StageClock
from retrieval.training.retirement import _queue_retirement_after_activation

log = logging.getLogger(__name__)


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

    from retrieval import features  # torch: loaded by the processes that run the CNN only

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
    extractor = features.extractor_for(backbone=model.backbone, model=model) if ids else None
    written = 0
    if progress is not None and ids:  # the stage's start, for its elapsed time and pace
        progress({"stage": "vectors", "done": 0, "total": len(ids)})
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
    the switch commits, model retirement (:func:`retire_inactive_models`) is queued: the
    model that was active until now loses its search partitions.
    """
    from retrieval.search import clustering

    if not GarmentFeature.objects.filter(model=model).exists():
        raise ValueError(
            f"model {model} has no vectors (never indexed, or deleted when it was retired): "
            "activate it with the admin's 'Activate the selected model', which recomputes "
            "them from the cached CNN features (training.reindex_and_activate)"
        )
    clustering.ensure_active_runs(model=model)
    with transaction.atomic():
        FeatureModel.objects.filter(active=True).exclude(pk=model.pk).update(active=False)
        FeatureModel.objects.filter(pk=model.pk).update(
            active=True, status=FeatureModel.Status.READY, activated_at=timezone.now()
        )
        transaction.on_commit(_queue_retirement_after_activation)
    # Garments indexed by workers while the model was being built (under the previous model)
    # have cached CNN features but no vectors for this model yet; under a fine-tuned backbone
    # of its own (RETRIEVAL_FINE_TUNE=top) not even its cache rows: the tuned CNN runs first.
    if is_tuned(model.backbone):
        ensure_backbone_features(backbone=model.backbone)
    recompute_vectors(model=model, only_missing=True)


def reindex_and_activate(*, model: FeatureModel) -> None:
    """Re-index the catalogue for ``model`` in chunks with visible progress, then switch.

    Searches keep serving the previous model's vectors until this model's are complete. A
    previous model whose vectors were kept (RETRIEVAL_KEEP_MODELS) has only its missing and
    outdated vectors computed again; its K-means runs are fitted anew (its partitions were
    dropped when it was retired).
    """
    from retrieval.search import clustering

    clock = StageClock()

    def report(state: dict) -> None:
        FeatureModel.objects.filter(pk=model.pk).update(progress=clock.stamp(state))

    # Status indexing from here on: model retirement leaves the model alone meanwhile.
    FeatureModel.objects.filter(pk=model.pk).update(status=FeatureModel.Status.INDEXING, error="")
    try:
        if is_tuned(model.backbone):
            # Missing or corrupt tuned weights fail the model here, not its first searches
            # (its vectors may all be reused without loading the network).
            from retrieval import features

            features.load_tuned_state(
                key=model.backbone, path=features.tuned_path(backbone=model.backbone) or ""
            )
        ensure_backbone_features(backbone=model.backbone, progress=report)
        # A previous model whose vectors were kept (RETRIEVAL_KEEP_MODELS): only the missing
        # and outdated ones are computed again (all of them if a knob or the head changed).
        recompute_vectors(model=model, progress=report, reuse=True)
        report({"stage": "clustering"})
        clustering.build_clusters(model=model)
        activate_model(model=model)
    except Exception as exc:
        # Not left "indexing" for ever (model retirement skips models being indexed);
        # searches still use the previous model.
        FeatureModel.objects.filter(pk=model.pk, active=False).update(
            status=FeatureModel.Status.FAILED, error=f"{exc.__class__.__name__}: {exc}"[:2000]
        )
        raise
    report({"stage": "done"})


def queue_activation(*, model: FeatureModel) -> None:
    """Queue re-indexing the catalogue for ``model`` and activating it (an admin action).

    Published at once (no row to wait for); with the broker down the staff member is told to
    retry (QueueUnavailable) rather than shown an error page: nothing changed yet.
    """

    error = publish("retrieval.tasks.reindex_model", args=[model.pk])
    if error is not None:
        raise QueueUnavailable(
            f"Redis (the task queue) is unavailable, so {model} was not queued: try again "
            f"once /healthz shows redis up ({error.__class__.__name__})"
        )
