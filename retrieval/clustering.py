"""K-means over a feature model's fused vectors (the paper's cluster filter), switched atomically.

A new run is fitted on the side while searches keep using the active one; labels and the
active flag then change in one transaction that holds an EXCLUSIVE lock on the vectors table:
readers go on (they see the old run until commit), writers wait, so no search sees
half-labelled data and no garment is labelled against a run that is no longer active.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from retrieval.models import Category, ClusterCentroid, ClusterRun, FeatureModel, GarmentFeature

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


COLUMNS = {
    ClusterRun.Space.FUSED: ("fused", "cluster"),
    ClusterRun.Space.DEEP: ("deep", "deep_cluster"),
}


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


def build_run(*, model: FeatureModel, k: int, space: str) -> ClusterRun:
    """Fit one K-means run in one space and switch searches to it."""
    started = time.perf_counter()
    vector_column, _ = COLUMNS[space]
    ids, vectors = load_vectors(model=model, column=vector_column)
    if len(ids) == 0:
        raise ValueError(f"model {model} has no vectors yet: index the catalogue first")
    centroids, labels, inertia, algorithm = fit_kmeans(vectors, k=k)
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
    """Write the run's labels and make it the active run of its space, in one transaction."""
    table = GarmentFeature._meta.db_table
    centroid_table = ClusterCentroid._meta.db_table
    vector_column, label_column = COLUMNS[run.space]
    with transaction.atomic(), connection.cursor() as cursor:
        # EXCLUSIVE blocks writers (indexing) but not readers (searches) until commit.
        cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        # Inside a caller's transaction (a savepoint) ON COMMIT has not dropped the previous
        # space's table yet: both spaces are switched in one outer transaction then.
        cursor.execute("DROP TABLE IF EXISTS pg_temp.new_labels")
        cursor.execute(
            "CREATE TEMP TABLE new_labels (id bigint PRIMARY KEY, label int) ON COMMIT DROP"
        )
        with cursor.copy("COPY new_labels (id, label) FROM STDIN") as copy:
            for pk, label in zip(feature_ids.tolist(), labels.tolist(), strict=True):
                copy.write_row((pk, label))
        cursor.execute(
            f"UPDATE {table} AS f SET {label_column} = n.label "
            "FROM new_labels AS n WHERE f.id = n.id"
        )
        # Rows indexed after the fit started: nearest centroid of the new run.
        cursor.execute(
            f"""
            UPDATE {table} AS f SET {label_column} = (
                SELECT c.label FROM {centroid_table} AS c
                WHERE c.run_id = %s ORDER BY c.centroid <-> f.{vector_column} LIMIT 1)
            WHERE f.model_id = %s AND NOT EXISTS (SELECT 1 FROM new_labels n WHERE n.id = f.id)
            """,
            [run.pk, run.model_id],
        )
        ClusterRun.objects.filter(model_id=run.model_id, space=run.space, active=True).update(
            active=False
        )
        ClusterRun.objects.filter(pk=run.pk).update(active=True)


def label_with_active_run(*, model: FeatureModel, garment_ids) -> None:
    """Give these garments' vectors the label of their nearest centroid in the active runs.

    Runs inside the caller's transaction, in SQL, so it reads the runs that are active when
    the statement runs (see the module docstring for why that cannot be a stale run).
    """
    table = GarmentFeature._meta.db_table
    with connection.cursor() as cursor:
        for space, (vector_column, label_column) in COLUMNS.items():
            cursor.execute(
                f"""
                UPDATE {table} AS f SET {label_column} = (
                    SELECT c.label FROM {ClusterCentroid._meta.db_table} AS c
                    JOIN {ClusterRun._meta.db_table} AS r ON r.id = c.run_id
                    WHERE r.model_id = f.model_id AND r.space = %s AND r.active
                    ORDER BY c.centroid <-> f.{vector_column} LIMIT 1)
                WHERE f.model_id = %s AND f.garment_id = ANY(%s)
                """,
                [str(space), model.pk, list(garment_ids)],
            )
