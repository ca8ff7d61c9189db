"""The read side: one search function behind the web page, the API and evaluation.

image -> fused feature -> nearest K-means centroid(s) -> pgvector ranking restricted to those
clusters -> top N with score = -L2 distance (0 = identical), as in the paper. If the probed
clusters hold fewer than N eligible garments, the next nearest clusters are added until N are
found or the catalogue is exhausted (completeness). All statements of one search run in one
REPEATABLE READ snapshot, so a K-means switch committing mid-search is never half seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from retrieval.models import (
    Category,
    ClusterCentroid,
    ClusterRun,
    FeatureModel,
    Garment,
    GarmentFeature,
)

MODES = ("fused", "deep", "exact")
TOPS = (5, 10, 20)


class SearchUnavailable(RuntimeError):
    """No trained, active feature model yet: nothing can be searched."""


@dataclass(frozen=True)
class Hit:
    garment_id: int
    distance: float

    @property
    def score(self) -> float:
        return -self.distance


@dataclass
class SearchResult:
    hits: list[Hit]
    mode: str
    model: str
    clusters: list[int] = field(default_factory=list)
    took_ms: float = 0.0

    def garments(self) -> list[tuple[Garment, float]]:
        """(garment, score) in rank order, with categories loaded in one query."""
        ids = [h.garment_id for h in self.hits]
        by_id = Garment.objects.select_related("category").in_bulk(ids)
        return [(by_id[h.garment_id], h.score) for h in self.hits if h.garment_id in by_id]


def _vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{float(v):.7g}" for v in vector) + "]"


def active_model() -> FeatureModel:
    model = FeatureModel.objects.filter(active=True).first()
    if model is None:
        raise SearchUnavailable(
            "no trained feature model is active yet: import a catalogue and train one "
            "(manage.py train_model)"
        )
    return model


def search_vectors(
    *,
    fused: np.ndarray,
    model: FeatureModel,
    top: int = 10,
    mode: str = "fused",
    probes: int | None = None,
    category_id: int | None = None,
    exclude_garment_ids: tuple[int, ...] = (),
    clustered: bool = True,
    include_hidden: bool = False,
) -> SearchResult:
    """Rank the catalogue against one query vector.

    fused: (542,) float32, the query's fused vector (its first 512 values are the deep part).
    mode: "fused" (the paper's fused feature), "deep" (the 512-d deep-only baseline), or
    "exact" (= fused with clustered=False). clustered: restrict to the nearest K-means
    cluster(s) as the paper does; False ranks the whole catalogue exactly. include_hidden:
    also rank garments shoppers do not see (inactive category, not ready): for staff.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == "exact":
        mode, clustered = "fused", False
    if top < 1:
        raise ValueError("top must be at least 1")
    probes = probes or settings.RETRIEVAL_PROBES
    started = time.perf_counter()
    deep_dims = len(fused) - 30
    column = "deep" if mode == "deep" else "fused"
    label_column = "deep_cluster" if mode == "deep" else "cluster"
    query = _vector_literal(fused[:deep_dims] if mode == "deep" else fused)
    table = GarmentFeature._meta.db_table
    # Only garments shoppers may see: indexed (ready) and in an active category.
    source = (
        f"{table} AS f JOIN {Garment._meta.db_table} AS g ON g.id = f.garment_id "
        f"JOIN {Category._meta.db_table} AS c ON c.id = g.category_id"
    )
    extra_sql = "" if include_hidden else " AND c.active AND g.status = 'ready'"
    extra_params: list = []
    if category_id is not None:
        extra_sql += " AND g.category_id = %s"
        extra_params.append(category_id)
    if exclude_garment_ids:
        extra_sql += " AND NOT (f.garment_id = ANY(%s))"
        extra_params.append(list(exclude_garment_ids))

    outer_transaction = connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if not outer_transaction:  # one snapshot for all statements of this search
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        labels: list[int] = []
        if clustered:
            labels = _clusters_by_distance(cursor, model=model, query=query, space=mode)
        if not labels:  # exact mode, or no K-means run yet: rank everything
            cursor.execute(
                f"SELECT f.garment_id, f.{column} <-> %s::vector AS d FROM {source} "
                f"WHERE f.model_id = %s{extra_sql} ORDER BY d LIMIT %s",
                [query, model.pk, *extra_params, top],
            )
            hits = [Hit(gid, float(d)) for gid, d in cursor.fetchall()]
            used: list[int] = []
        else:
            hits, used = [], []
            n_probe = min(probes, len(labels))
            while True:
                used = labels[:n_probe]
                cursor.execute(
                    f"SELECT f.garment_id, f.{column} <-> %s::vector AS d FROM {source} "
                    f"WHERE f.model_id = %s AND f.{label_column} = ANY(%s){extra_sql} "
                    "ORDER BY d LIMIT %s",
                    [query, model.pk, used, *extra_params, top],
                )
                hits = [Hit(gid, float(d)) for gid, d in cursor.fetchall()]
                if len(hits) >= top or n_probe >= len(labels):
                    break
                # Completeness: the probed clusters hold too few eligible garments.
                n_probe = min(len(labels), max(n_probe * 2, n_probe + 1))
    return SearchResult(
        hits=hits,
        mode=mode,
        model=model.name,
        clusters=used,
        took_ms=(time.perf_counter() - started) * 1000.0,
    )


def _clusters_by_distance(cursor, *, model: FeatureModel, query: str, space: str) -> list[int]:
    """Labels of the active run's clusters in a space, nearest centroid first (empty without
    a run)."""
    cursor.execute(
        f"SELECT c.label FROM {ClusterCentroid._meta.db_table} AS c "
        f"JOIN {ClusterRun._meta.db_table} AS r ON r.id = c.run_id "
        "WHERE r.model_id = %s AND r.space = %s AND r.active "
        "ORDER BY c.centroid <-> %s::vector",
        [model.pk, space, query],
    )
    return [row[0] for row in cursor.fetchall()]


def extractor_for(*, backbone: str, model: FeatureModel | None = None):
    """The process-wide feature extractor for a backbone and a model's head (loaded once)."""
    from retrieval import features

    kwargs = {}
    if model is not None:
        kwargs = {
            "head_path": str(model.head_path) if model.head_file else None,
            "colour_variant": model.colour_variant,
            "colour_weight": model.colour_weight,
            "normalize_deep": model.normalize_deep,
        }
    return features.get_extractor(
        backbone=backbone,
        weights_path=settings.RETRIEVAL_BACKBONE_WEIGHTS,
        device=None if settings.RETRIEVAL_DEVICE == "auto" else settings.RETRIEVAL_DEVICE,
        precision=settings.RETRIEVAL_PRECISION,
        max_pixels=settings.RETRIEVAL_MAX_PIXELS,
        num_threads=settings.RETRIEVAL_TORCH_THREADS or None,
        **kwargs,
    )


def search_image(
    *,
    image,
    top: int = 10,
    mode: str = "fused",
    category_id: int | None = None,
    probes: int | None = None,
    include_hidden: bool = False,
) -> SearchResult:
    """Search by photo. image: a PIL image (RGB) or bytes.

    Runs the CNN once, as the paper does, unless RETRIEVAL_QUERY_CROP / RETRIEVAL_QUERY_FLIP
    add a pass each (:meth:`retrieval.features.FeatureExtractor.extract_query`). With
    RETRIEVAL_RERANK=category, fused and exact searches list the predicted category's garments
    first (:mod:`retrieval.rerank`; a departure from the paper).
    """
    from retrieval import images

    started = time.perf_counter()
    model = active_model()
    if isinstance(image, bytes | bytearray):
        image = images.open_image(bytes(image), max_pixels=settings.RETRIEVAL_MAX_PIXELS)
    out = extractor_for(backbone=model.backbone, model=model).extract_query(
        [image], flip=settings.RETRIEVAL_QUERY_FLIP, crop=settings.RETRIEVAL_QUERY_CROP
    )
    fused = out["fused"][0]
    if settings.RETRIEVAL_RERANK == "category" and mode != "deep" and category_id is None:
        from retrieval import rerank

        result = rerank.search_reranked(
            fused=fused,
            probs=out["probs"][0],
            model=model,
            top=top,
            probes=probes,
            clustered=mode == "fused",
            min_confidence=settings.RETRIEVAL_RERANK_MIN_CONFIDENCE,
            include_hidden=include_hidden,
        )
    else:
        result = search_vectors(
            fused=fused,
            model=model,
            top=top,
            mode=mode,
            probes=probes,
            category_id=category_id,
            include_hidden=include_hidden,
        )
    result.took_ms = (time.perf_counter() - started) * 1000.0
    return result


def more_like_this(
    *,
    garment: Garment,
    top: int = 10,
    mode: str = "fused",
    probes: int | None = None,
    include_hidden: bool = False,
) -> SearchResult:
    """Garments similar to an indexed one, from its stored vectors (no CNN pass)."""
    model = active_model()
    row = GarmentFeature.objects.filter(garment=garment, model=model).values_list("fused").first()
    if row is None:
        raise SearchUnavailable(f"garment {garment.sku} is not indexed under the active model")
    return search_vectors(
        fused=np.asarray(row[0], dtype=np.float32),
        model=model,
        top=top,
        mode=mode,
        probes=probes,
        exclude_garment_ids=(garment.pk,),
        include_hidden=include_hidden,
    )
