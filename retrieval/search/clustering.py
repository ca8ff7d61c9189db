"""K-means over a feature model's vectors (the paper's cluster filter), switched atomically.

Each run has its own partition of the search table (``SearchRow``, LIST-partitioned by run),
written in cluster order so that one cluster's rows sit on adjacent pages: a cluster scan
reads few, contiguous pages without ever running ``CLUSTER`` (which takes an ACCESS
EXCLUSIVE lock). A new run is fitted on the side while searches keep using the active one;
then, in one transaction, its partition is written and attached and the run is made active.
That transaction holds an EXCLUSIVE lock on the vectors table: readers go on (searches see the
old run until commit), writers (indexing) wait, so every vector is in the new partition and
no garment is labelled against a run that is no longer active. The old run's partition is
dropped afterwards (:func:`drop_stale_partitions`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction

from retrieval.models import (
    Category,
    ClusterCentroid,
    ClusterRun,
    FeatureModel,
    GarmentFeature,
)
from retrieval.search import table as searchtable

log = logging.getLogger(__name__)

# Above this many vectors MiniBatchKMeans replaces full K-means (see docs/benchmarks.md).
MINIBATCH_ABOVE = 200_000


def default_k() -> int:
    """K = the number of active categories, as in the paper (or RETRIEVAL_KMEANS_K)."""
    if settings.RETRIEVAL_KMEANS_K:
        return settings.RETRIEVAL_KMEANS_K
    return max(1, Category.objects.filter(active=True).count())


def load_vectors(*, model: FeatureModel, column: str = "fused") -> tuple[np.ndarray, np.ndarray]:
    """All (garment feature id, vector) of a model: ids (N,) int64, vectors (N, D) float32."""
    if column not in {"fused", "deep"}:
        raise ValueError(column)
    rows = GarmentFeature.objects.filter(model=model).order_by("id").values_list("id", column)
    ids, vectors = [], []
    for pk, vector in rows.iterator(chunk_size=5000):
        ids.append(pk)
        vectors.append(vector)
    if not ids:
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
    return np.asarray(ids, dtype=np.int64), np.vstack(vectors).astype(np.float32, copy=False)


def fit_kmeans(vectors: np.ndarray, *, k: int, seed: int = 0):
    """Fit K-means; returns (centroids (k, D) float32, labels (N,) int32, inertia, algorithm)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    k = max(1, min(k, len(vectors)))
    if len(vectors) > MINIBATCH_ABOVE:
        estimator = MiniBatchKMeans(
            n_clusters=k, batch_size=4096, n_init=3, max_iter=100, random_state=seed
        )
        algorithm = "minibatch"
    else:
        estimator = KMeans(n_clusters=k, n_init=3, max_iter=300, random_state=seed)
        algorithm = "lloyd"
    labels = estimator.fit_predict(vectors)
    return (
        estimator.cluster_centers_.astype(np.float32),
        labels.astype(np.int32),
        float(estimator.inertia_),
        algorithm,
    )


# Which vector of GarmentFeature each space clusters and scans.
COLUMNS = {ClusterRun.Space.FUSED: "fused", ClusterRun.Space.DEEP: "deep"}
partition_name = searchtable.partition_name


def build_clusters(*, model: FeatureModel | None = None, k: int | None = None) -> ClusterRun:
    """Fit new K-means runs over ``model``'s vectors (fused and deep spaces) and switch to them.

    Returns the fused-space run (the paper's).
    """
    model = model or FeatureModel.objects.filter(active=True).first()
    if model is None:
        raise ValueError("no active feature model: train one first (manage.py train_model)")
    k = k or default_k()
    runs = [build_run(model=model, k=k, space=space) for space in ClusterRun.Space]
    return runs[0]


def ensure_active_runs(*, model: FeatureModel, k: int | None = None) -> list[ClusterRun]:
    """Fit a run for each space in which ``model`` has no active run; returns the new runs.

    A model retired by ``training.retire_inactive_models`` has no runs left (their search
    partitions were dropped, the runs deactivated): activating it must rebuild them first, or
    its searches would fall back to the exact scan of every vector.
    """
    have = set(ClusterRun.objects.filter(model=model, active=True).values_list("space", flat=True))
    missing = [space for space in ClusterRun.Space if space not in have]
    if not missing:
        return []
    k = k or default_k()
    return [build_run(model=model, k=k, space=space) for space in missing]


def build_run(*, model: FeatureModel, k: int, space: str) -> ClusterRun:
    """Fit one K-means run in one space and switch searches to it."""
    started = time.perf_counter()
    ids, vectors = load_vectors(model=model, column=COLUMNS[space])
    if len(ids) == 0:
        raise ValueError(f"model {model} has no vectors yet: index the catalogue first")
    centroids, labels, inertia, algorithm = fit_kmeans(vectors, k=k)
    del vectors  # the partition is written from the table, not from this copy
    sizes = np.bincount(labels, minlength=len(centroids)).tolist()
    run = ClusterRun.objects.create(
        model=model,
        space=space,
        k=len(centroids),
        n_samples=len(ids),
        sizes=sizes,
        inertia=inertia,
        algorithm=algorithm,
    )
    ClusterCentroid.objects.bulk_create(
        ClusterCentroid(run=run, label=i, centroid=centroids[i], size=sizes[i])
        for i in range(len(centroids))
    )
    switch_run(run=run, feature_ids=ids, labels=labels)
    run.seconds = time.perf_counter() - started
    run.save(update_fields=["seconds"])
    log.info(
        "K-means (%s) k=%d over %d vectors in %.1fs (%s)",
        space, run.k, len(ids), run.seconds, algorithm,
    )  # fmt: skip
    return run


def switch_run(*, run: ClusterRun, feature_ids: np.ndarray, labels: np.ndarray) -> None:
    """Write the run's search partition (``labels[i]`` for vector ``feature_ids[i]``; vectors
    not in ``feature_ids``, indexed since the fit read them, get their nearest centroid) and
    make the run the active one of its model and space, in one transaction; then drop the
    partitions of runs that are no longer active.
    """
    # A partition left by an earlier switch to this same run (tests switch back and forth).
    drop_partitions(run_ids=[run.pk])
    with transaction.atomic(), connection.cursor() as cursor:
        # EXCLUSIVE blocks writers (indexing, deletes) but not readers (searches) until commit.
        cursor.execute(f"LOCK TABLE {GarmentFeature._meta.db_table} IN EXCLUSIVE MODE")
        searchtable.write_partition(
            cursor,
            run_id=run.pk,
            model_id=run.model_id,
            column=COLUMNS[run.space],
            feature_ids=feature_ids,
            labels=labels,
        )
        searchtable.attach_partition(cursor, run_id=run.pk)
        # Two statements: the partial unique index (one active run) is checked per row.
        ClusterRun.objects.filter(model_id=run.model_id, space=run.space, active=True).update(
            active=False
        )
        ClusterRun.objects.filter(pk=run.pk).update(active=True)
    if not connection.in_atomic_block:
        with connection.cursor() as cursor:
            # Sets hint bits and the visibility map once, instead of the first searches
            # dirtying every page they read. Not in a transaction block (tests): skipped.
            cursor.execute(f"VACUUM {partition_name(run.pk)}")
    drop_stale_partitions()


def drop_partitions(*, run_ids: Iterable[int], attempts: int = 5) -> list[int]:
    """Drop the search partitions of these runs; returns the run ids that could not be dropped
    (those stay, unused: searches read the active run's partition only, until the next switch
    tries again).

    Outside a transaction block (workers, manage.py): ``DETACH PARTITION ... CONCURRENTLY``,
    which waits for the searches that may still read the partition without blocking new
    ones, then a DROP of the detached table, which locks that table only. Searches never wait.
    Inside a transaction block (tests, a caller's atomic block), where CONCURRENTLY is not
    allowed: the drop takes an ACCESS EXCLUSIVE lock on the parent (it waits for the searches
    in flight and new searches queue behind it until commit), with a short lock timeout so a
    long reader delays the drop, never the shoppers, retried a few times.
    """
    failed = []
    for run_id in run_ids:
        part = partition_name(run_id)
        if not connection.in_atomic_block:
            try:
                with connection.cursor() as cursor:
                    searchtable.detach_and_drop(cursor, run_id=run_id)
            except DatabaseError as exc:
                failed.append(run_id)
                log.warning("search partition %s not dropped yet: %s", part, exc)
            continue
        for attempt in range(attempts):
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute("SELECT to_regclass(%s) IS NULL", [part])
                    if cursor.fetchone()[0]:
                        break  # nothing to drop: do not lock the table for nothing
                    cursor.execute("SET LOCAL lock_timeout = '200ms'")
                    cursor.execute(searchtable.LOCK_FOR_DROP_SQL)
                    cursor.execute(f"DROP TABLE IF EXISTS {part}")
                break
            except OperationalError as exc:  # lock_timeout: readers hold the parent
                log.info("drop of %s deferred (%s), attempt %d", part, exc, attempt + 1)
                time.sleep(0.2 * (attempt + 1))
        else:
            failed.append(run_id)
            log.warning("search partition %s of an inactive run not dropped yet", part)
    return failed


def partition_run_ids() -> list[int]:
    """Run ids of the search table's partitions."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [searchtable.SEARCH_TABLE],
        )
        prefix = f"{searchtable.SEARCH_TABLE}_r"
        return sorted(
            int(name[len(prefix) :]) for (name,) in cursor.fetchall() if name.startswith(prefix)
        )


def drop_stale_partitions() -> list[int]:
    """Drop the partitions of runs that are not active (replaced, or deleted); returns the run
    ids whose partitions remain for now (see :func:`drop_partitions`)."""
    active = set(ClusterRun.objects.filter(active=True).values_list("id", flat=True))
    stale = [run_id for run_id in partition_run_ids() if run_id not in active]
    return drop_partitions(run_ids=stale)


def ensure_partition(*, run: ClusterRun) -> None:
    """Create and attach an empty partition for ``run`` if it has none (rows restored from a
    dump, e.g. the test suite's catalogue snapshot, need one to land in)."""
    part = partition_name(run.pk)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [part])
        if cursor.fetchone()[0]:
            return
        cursor.execute(
            f"CREATE TABLE {part} PARTITION OF {searchtable.SEARCH_TABLE} "
            f"FOR VALUES IN ({int(run.pk)})"
        )


def add_to_active_runs(*, model: FeatureModel, garment_ids) -> None:
    """Put these garments' vectors into the partitions of the model's active runs (both
    spaces), each labelled by its nearest centroid of that run; replaces their earlier rows.

    Runs inside the caller's transaction, in SQL, so it reads the runs that are active when
    the statement runs (see the module docstring for why that cannot be a stale run). New
    garments are thus searchable at once, between two K-means runs; they are appended to the
    partition (not in cluster order), which the next run's rewrite puts right.
    """
    with connection.cursor() as cursor:
        cursor.execute(searchtable.ADD_TO_ACTIVE_RUNS_SQL, [model.pk, list(garment_ids)])
