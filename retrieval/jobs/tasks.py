"""Celery tasks. Thin: they take primary keys, call services, and retry explicitly."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, connection

from retrieval import analytics, catalogue, indexing, training

log = logging.getLogger(__name__)


@shared_task(name="retrieval.tasks.probe")
def probe() -> dict:
    """Round trip through the broker and the database: which worker answered, and the DB it sees."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        (database,) = cursor.fetchone()
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "database": database}


@shared_task(
    bind=True,
    name="retrieval.tasks.index_garments",
    autoretry_for=(DatabaseError, OSError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=8,
)
def index_garments(self, garment_ids: list[int]) -> dict:
    """Extract and store the vectors of a chunk of garments (routed to the features queue).

    The task id is the lease token: a redelivery of this same task after its worker died
    takes its garments straight back; any other worker leaves them alone.
    """
    result = indexing.index_garments(garment_ids=garment_ids, claim=self.request.id)
    return {
        "ready": len(result.ready),
        "failed": len(result.failed),
        "skipped": len(result.skipped),
    }


@shared_task(name="retrieval.tasks.requeue_stuck")
def requeue_stuck() -> dict:
    """The sweep: work whose task never reached the broker (Redis was down) or was lost.

    Run by beat periodically, and sent by every worker as it (re)connects to the broker
    (fashionsite.celery.SweepOnConnect), so recovery from a Redis outage does not wait for
    the next beat tick. Idempotent: a second sweep finds nothing left to queue.
    """
    return {
        "garments": indexing.requeue_stuck_garments(),
        "imports": catalogue.requeue_unqueued_imports(),
        "stalled_imports": catalogue.rescue_stalled_imports(),
        "trainings": training.requeue_unqueued_trainings(),
    }


@shared_task(name="retrieval.tasks.rebuild_clusters", autoretry_for=(DatabaseError,), max_retries=3)
def rebuild_clusters() -> dict:
    """Periodic (nightly) and after large imports: a new K-means run for the active model."""
    from retrieval.models import FeatureModel
    from retrieval.search import clustering

    model = FeatureModel.objects.filter(active=True).first()
    if model is None or not model.features.exists():
        return {"skipped": "no active model with vectors"}
    run = clustering.build_clusters(model=model)
    return {"run": run.pk, "k": run.k, "n": run.n_samples, "seconds": run.seconds}


@shared_task(
    bind=True,
    name="retrieval.tasks.prune_models",
    autoretry_for=(DatabaseError,),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=5,
)
def prune_models(self, model_ids: list[int] | None = None, keep: int | None = None) -> dict:
    """Model retirement (queued after every activation): inactive models lose their search
    partitions, older ones their vectors (training.retire_inactive_models). ``model_ids``: the
    admin's "delete search data" of those models. Idempotent; a partition still in use by a
    long transaction is retried a minute later."""
    report = training.retire_inactive_models(keep=keep, model_ids=model_ids)
    if report.failed_runs and self.request.retries < self.max_retries:
        raise self.retry(countdown=60)
    return report.as_dict()


@shared_task(name="retrieval.tasks.prune_media", autoretry_for=(DatabaseError,), max_retries=3)
def prune_media(older_than_minutes: int | None = None) -> dict:
    """Periodic (daily, beat): delete the image files under MEDIA_ROOT/garments that no garment
    names and that are older than ``older_than_minutes`` (default
    RETRIEVAL_PRUNE_MEDIA_MINUTES), as ``manage.py prune_media`` does. Idempotent: a second run
    finds nothing left; a file that cannot be deleted is logged and tried again next time."""
    minutes = older_than_minutes or settings.RETRIEVAL_PRUNE_MEDIA_MINUTES
    result = catalogue.prune_media(older_than=timedelta(minutes=minutes))
    return {
        "deleted": len(result.deleted),
        "failed": len(result.failed),
        "bytes": result.orphan_bytes,
        "recent": result.recent,
        "referenced": result.referenced,
    }


@shared_task(name="retrieval.tasks.prune_search_log", autoretry_for=(DatabaseError,), max_retries=3)
def prune_search_log(days: int | None = None) -> dict:
    """Beat, daily: delete the searches (and their roll-up hours) older than
    RETRIEVAL_SEARCH_LOG_DAYS. Idempotent: a second run finds nothing left."""
    return {"deleted": analytics.prune_search_log(days=days)}


@shared_task(name="retrieval.tasks.rollup_searches", autoretry_for=(DatabaseError,), max_retries=3)
def rollup_searches() -> dict:
    """Beat, every 5 minutes: roll up the closed hours of the search log (and recompute the
    hours whose searches got clicks since the last run). Idempotent: an hour is recomputed
    whole from its raw rows."""
    done = analytics.rollup_searches()
    return {"hours": done.hours, "through": done.through.isoformat() if done.through else None}


@shared_task(name="retrieval.tasks.import_catalog", bind=True)
def import_catalog(self, job_id: int) -> dict:
    """An import uploaded in the admin: read the zip, create garments, queue their indexing.

    The task id is the job's lease token: a redelivery of this task after its worker died
    takes the job straight back and resumes it, counting each row once.
    """
    from retrieval.models import ImportJob

    job = ImportJob.objects.get(pk=job_id)
    if job.status in {ImportJob.Status.DONE, ImportJob.Status.FAILED}:
        return catalogue.import_progress(job=job)  # redelivered after it finished: nothing to do
    job = catalogue.import_catalog(
        source=job.upload.path,
        category_field=job.category_field,
        limit=job.limit,
        job=job,
        claim=self.request.id,
    )
    return catalogue.import_progress(job=job)


@shared_task(name="retrieval.tasks.train_model", bind=True, acks_late=True)
def train_model(
    self, model_id: int, epochs: int | None = None, category_field: str = "category"
) -> dict:
    """Train a model queued from the admin (its row exists, status training), evaluate it
    against the live model and activate it only when it is not worse (the decision and its
    reason are stored on the model; staff may still activate it by hand)."""
    from retrieval import evaluation
    from retrieval.models import FeatureModel

    model = FeatureModel.objects.get(pk=model_id)
    if model.status != FeatureModel.Status.TRAINING:
        return {"skipped": f"model {model.name} is {model.status}"}  # redelivered after the end
    decision = evaluation.train_and_promote(
        model=model, epochs=epochs, category_field=category_field
    )
    return {"model": model.name, "activated": decision.activate, "reason": decision.reason}


@shared_task(name="retrieval.tasks.reindex_model", bind=True, acks_late=True)
def reindex_model(self, model_id: int) -> dict:
    """Activate a model: CNN pass for garments missing its backbone's features, then its
    vectors and clusters, then the switch. Searches use the previous model until then."""
    from retrieval.models import FeatureModel

    model = FeatureModel.objects.get(pk=model_id)
    training.reindex_and_activate(model=model)
    return {"model": model.name}


@shared_task(name="retrieval.tasks.evaluate", bind=True, acks_late=True)
def evaluate(self, report_id: int, limit: int | None = None) -> dict:
    """An evaluation started from the admin (its report row exists, status running)."""
    from retrieval import evaluation
    from retrieval.models import EvaluationReport

    report = EvaluationReport.objects.get(pk=report_id)
    if report.status != EvaluationReport.Status.RUNNING:
        return {"skipped": f"report {report_id} is {report.status}"}
    report = evaluation.run_evaluation(report=report, limit=limit)
    return {"report": report.pk, "queries": report.metrics.get("queries")}
