"""Retirement of inactive feature models: drop their search partitions, then (beyond the kept ones)
their vectors.


Per feature model the database holds (docs/benchmarks_search.md, 1M garments):
- its vectors, GarmentFeature (2.6 GB heap + 2.6 GB TOAST): what re-ranking, exact mode and
  a K-means fit read;
- while it is active, one search-table partition per active K-means run, fused and deep
  (1.1 GB + 37 MB of indexes each): what clustered searches scan.
RETRIEVAL_MODELS_DIR holds its head (a few MB) and the CNN cache (BackboneFeature) is per
backbone, shared by the models of that backbone; neither is touched here: with both, any
model can be activated again.

A model that is not active never reads its partitions again: every activation fits new
K-means runs (reindex_and_activate, train_model; activate_model for runs that are missing),
whose partitions are written from the vectors. So an inactive model's partitions are always
dropped. Its vectors are what a switch back reuses (recompute_vectors(reuse=True): only the
missing and outdated ones are computed again), so the RETRIEVAL_KEEP_MODELS most recently
active previous models keep them; older ones lose them too (a switch back to one of those
recomputes them from the CNN cache, as every activation did before vectors were reused).

Models being built: their vectors and runs are being written, so they are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction

from retrieval.jobs.publishing import QueueUnavailable, publish
from retrieval.models import (
    ClusterRun,
    FeatureModel,
    GarmentFeature,
)

log = logging.getLogger(__name__)


# Models being built: their vectors and runs are being written, so they are left alone.
BUSY_STATUSES = (FeatureModel.Status.TRAINING, FeatureModel.Status.INDEXING)


# Vectors deleted per transaction: short transactions, nothing waits long on them.
VECTOR_DELETE_BATCH = 5000


@dataclass
class ModelRetirement:
    """What model retirement did (a dry run: would do) to one inactive model."""

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
class RetirementReport:
    dry_run: bool
    keep: int
    models: list[ModelRetirement] = field(default_factory=list)
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


def retire_inactive_models(
    *, keep: int | None = None, model_ids: Sequence[int] | None = None, dry_run: bool = False
) -> RetirementReport:
    """Drop the search data of feature models that are not active; model retirement.

    Every inactive model (not being trained or indexed) loses its search-table partitions:
    its active runs are deactivated, then their partitions are detached CONCURRENTLY and
    dropped (:func:`retrieval.search.clustering.drop_partitions`; searches never wait; inside a
    transaction block a short locked drop, retried). The ``keep`` (RETRIEVAL_KEEP_MODELS)
    most recently active of them keep their vectors; the others' vectors are deleted in short
    batches. ``model_ids``: only these models, which lose their vectors too whatever ``keep``
    (the admin's "delete search data" action); the active model and models being built are
    refused (listed in ``skipped``). Never touches the active model, heads or the CNN cache.

    Idempotent: a second sweep finds nothing left. Partitions still read by a long
    transaction stay (``failed_runs``) until the next sweep. Every step re-reads the model
    under its row lock, so a switch back started meanwhile (which sets the model indexing, or
    active) stops the retirement of that model rather than racing it.
    """
    from retrieval.search import clustering

    keep = settings.RETRIEVAL_KEEP_MODELS if keep is None else keep
    if keep < 0:
        raise ValueError("keep must be 0 or more")
    report = RetirementReport(dry_run=dry_run, keep=keep)
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
        item = ModelRetirement(
            model_id=model.pk, name=model.name, keeps_vectors=model.pk in keepers
        )
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
    from retrieval.search.table import FEATURE_TABLE

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


def _queue_retirement_after_activation() -> None:
    """Queue model retirement (after an activation commits); never fails the activation."""

    error = publish("retrieval.tasks.prune_models", args=[])
    if error is not None:
        log.warning(
            "broker unavailable, model retirement was not queued (the next activation "
            "queues it again; or run manage.py prune_models): %s",
            error,
        )


def queue_model_retirement(*, models: Sequence[FeatureModel]) -> dict[str, str]:
    """Queue dropping the search data (partitions and vectors) of these inactive models (the
    admin action). Returns the models refused, with why (the active model, models being
    built); raises QueueUnavailable when the broker is down (nothing changed then)."""

    refused = {m.name: reason for m in models if (reason := retirement_refusal(m))}
    chosen = [m.pk for m in models if m.name not in refused]
    if chosen:
        error = publish("retrieval.tasks.prune_models", args=[chosen])
        if error is not None:
            raise QueueUnavailable(
                f"Redis (the task queue) is unavailable, so nothing was queued: try again once "
                f"/healthz shows redis up ({error.__class__.__name__})"
            )
    return refused
