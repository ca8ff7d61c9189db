"""Retrieval quality and speed on the shop's own catalogue (the paper's Tables 1-2, Figs. 3-4).

Metrics per mode (``fused`` = deep + colour, ``deep`` = the deep-only baseline), each through
the paper's K-means cluster search and through exact search:

- ``p@k``: precision at k with relevant = same category (what the paper calls mAP);
- ``cc@k``: precision at k with relevant = same category AND same colour;
- per-category p@5; mean and p95 search time per query; example rankings.
"""

from __future__ import annotations

import collections
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOPS = (5, 10, 20)


@dataclass(frozen=True)
class Labelled:
    """What relevance is judged on: a garment's category and colour (colour may be unknown)."""

    category: str
    colour: str = ""


def precision_at(ranked: Sequence[Labelled], query: Labelled, k: int, *, colour: bool) -> float:
    """Fraction of the first k results that are relevant (missing results count as misses).

    relevant = same category, and with ``colour`` also the same (non-empty) colour name.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    hits = 0
    for item in ranked[:k]:
        if item.category != query.category:
            continue
        if colour and (not query.colour or item.colour.lower() != query.colour.lower()):
            continue
        hits += 1
    return hits / k


def summarise(
    rows: Sequence[tuple[Labelled, Sequence[Labelled], float]], *, tops: Sequence[int] = TOPS
) -> dict:
    """Aggregate per-query rankings: [(query, ranked results, seconds)] -> metrics dict.

    Colour metrics (cc@k) are averaged over queries whose colour is known; ``None`` when no
    query has one.
    """
    out: dict = {}
    with_colour = [r for r in rows if r[0].colour]
    for k in tops:
        out[f"p@{k}"] = _mean([precision_at(res, q, k, colour=False) for q, res, _ in rows])
        out[f"cc@{k}"] = (
            _mean([precision_at(res, q, k, colour=True) for q, res, _ in with_colour])
            if with_colour
            else None
        )
    ms = np.asarray([s * 1000.0 for _, _, s in rows]) if rows else np.zeros(0)
    out["ms_mean"] = round(float(ms.mean()), 3) if len(ms) else None
    out["ms_p95"] = round(float(np.percentile(ms, 95)), 3) if len(ms) else None
    per_category: dict[str, list[float]] = defaultdict(list)
    for q, res, _ in rows:
        per_category[q.category].append(precision_at(res, q, 5, colour=False))
    out["per_category_p@5"] = {
        name: {"p@5": _mean(values), "queries": len(values)}
        for name, values in sorted(per_category.items())
    }
    return out


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None


def timed(function, *args, **kwargs):
    """(result, seconds) of one call."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


# --------------------------------------------------------------------------- the evaluation run


def run_evaluation(
    *,
    model=None,
    limit: int | None = None,
    tops: Sequence[int] = TOPS,
    queries_path=None,
    category_field: str = "articleType",
    examples: int = 6,
    report=None,
    seed: int = 0,
):
    """Evaluate ``model`` (default: the active one) and store an EvaluationReport.

    Default queries: the model's held-out test split (never trained on), each searched
    against the rest of the catalogue with itself excluded, from its stored vectors. With
    ``queries_path`` (a catalogue zip/folder), those images are run through the CNN and
    searched against the catalogue without being added to it; queries whose category the
    catalogue lacks are skipped and counted.
    """
    from django.utils import timezone

    from retrieval import search
    from retrieval.models import EvaluationReport, Garment

    model = model or search.active_model()
    tops = sorted(set(int(k) for k in tops))
    parameters = {
        "model": model.name,
        "limit": limit,
        "tops": tops,
        "queries": str(queries_path) if queries_path else "held-out test split",
        "category_field": category_field,
        "colour_variant": model.colour_variant,
        "colour_weight": model.colour_weight,
        "probes": search.settings.RETRIEVAL_PROBES,
        "query_crop": search.settings.RETRIEVAL_QUERY_CROP,
        "query_flip": search.settings.RETRIEVAL_QUERY_FLIP,
        "rerank": search.settings.RETRIEVAL_RERANK,
        "rerank_min_confidence": search.settings.RETRIEVAL_RERANK_MIN_CONFIDENCE,
    }
    rerank_on = search.settings.RETRIEVAL_RERANK == "category"
    modes = ("fused", "deep", "rerank") if rerank_on else ("fused", "deep")
    if report is None:
        report = EvaluationReport.objects.create(model=model, parameters=parameters)
    else:
        report.model, report.parameters = model, parameters
        report.status = EvaluationReport.Status.RUNNING
        report.save()
    try:
        if queries_path:
            queries, skipped = _external_queries(
                model=model, path=queries_path, category_field=category_field, limit=limit
            )
        else:
            queries = _held_out_queries(model=model, limit=limit, seed=seed, probs=rerank_on)
            skipped = 0
        if not queries:
            raise ValueError(
                "no queries: the model has no held-out garments with vectors"
                if not queries_path
                else "no query matched a catalogue category"
            )
        top = max(tops)
        result_ids: set[int] = set()
        raw: dict[tuple[str, bool], list] = {}
        for mode in modes:
            for clustered in (True, False):
                rows = []
                for query in queries:
                    if mode == "rerank":
                        from retrieval import rerank

                        result, seconds = timed(
                            rerank.search_reranked,
                            fused=query["fused"],
                            probs=query["probs"],
                            model=model,
                            top=top,
                            clustered=clustered,
                            min_confidence=search.settings.RETRIEVAL_RERANK_MIN_CONFIDENCE,
                            exclude_garment_ids=query["exclude"],
                        )
                    else:
                        result, seconds = timed(
                            search.search_vectors,
                            fused=query["fused"],
                            model=model,
                            top=top,
                            mode=mode,
                            clustered=clustered,
                            exclude_garment_ids=query["exclude"],
                        )
                    ids = [h.garment_id for h in result.hits]
                    result_ids.update(ids)
                    rows.append((query, result, seconds))
                raw[(mode, clustered)] = rows
        labels = {
            gid: Labelled(category=name, colour=colour or "")
            for gid, name, colour in Garment.objects.filter(id__in=result_ids).values_list(
                "id", "category__name", "colour"
            )
        }
        runs = {}
        for key, rows in raw.items():
            runs[key] = [
                (
                    query["label"],
                    [labels[h.garment_id] for h in result.hits if h.garment_id in labels],
                    seconds,
                )
                for query, result, seconds in rows
            ]
        summaries = {key: summarise(rows, tops=tops) for key, rows in runs.items()}
        headline = ("p@", "cc@")
        metrics = {
            "queries": len(queries),
            "skipped": skipped,
            "modes": {
                mode: {
                    **{
                        f"{h}{k}": summaries[(mode, True)][f"{h}{k}"]
                        for h in headline
                        for k in tops
                    },
                    "ms_mean": summaries[(mode, True)]["ms_mean"],
                    "ms_p95": summaries[(mode, True)]["ms_p95"],
                }
                for mode in modes
            },
            "exact": {
                mode: {
                    key: value
                    for key, value in summaries[(mode, False)].items()
                    if key != "per_category_p@5"
                }
                for mode in modes
            },
            "per_category_p@5": {
                mode: summaries[(mode, True)]["per_category_p@5"] for mode in modes
            },
            "examples": _examples(raw, queries, examples=examples),
        }
        report.metrics = metrics
        report.status = EvaluationReport.Status.DONE
    except Exception as exc:
        report.status = EvaluationReport.Status.FAILED
        report.error = f"{exc.__class__.__name__}: {exc}"[:2000]
        report.finished_at = timezone.now()
        report.save()
        raise
    report.finished_at = timezone.now()
    report.save()
    return report


def _held_out_queries(*, model, limit: int | None, seed: int, probs: bool = False) -> list[dict]:
    """The model's held-out test garments as queries, from their stored vectors.

    Each query: ``fused`` (542,) float32, ``label``, ``exclude`` (its own id), and with
    ``probs`` the head's category probabilities ``(C,)`` float32 from its cached pooled feature.
    """
    from retrieval.models import BackboneFeature, GarmentFeature

    test_ids = list(model.split.get("test", []))
    if limit is not None and len(test_ids) > limit:
        rng = np.random.default_rng(seed)
        test_ids = sorted(rng.choice(test_ids, size=limit, replace=False).tolist())
    rows = (
        GarmentFeature.objects.filter(model=model, garment_id__in=test_ids)
        .order_by("garment_id")
        .values_list("garment_id", "fused", "garment__category__name", "garment__colour")
    )
    queries = [
        {
            "id": gid,
            "fused": np.asarray(fused, dtype=np.float32),
            "label": Labelled(category=category, colour=colour or ""),
            "exclude": (gid,),
        }
        for gid, fused, category, colour in rows
    ]
    if probs and queries:
        from retrieval import features, search

        pooled = dict(
            BackboneFeature.objects.filter(
                backbone=model.backbone, garment_id__in=[q["id"] for q in queries]
            ).values_list("garment_id", "pooled")
        )
        queries = [q for q in queries if q["id"] in pooled]
        head = search.extractor_for(backbone=model.backbone, model=model).head
        if queries and head is not None:
            stacked = np.vstack([pooled[q["id"]] for q in queries]).astype(np.float32)
            for query, row in zip(queries, features.classify(head, stacked), strict=True):
                query["probs"] = row
    return queries


def read_query_set(*, path, category_field: str, limit: int | None):
    """Labelled query photos from a catalogue file (the import format), matched to the
    catalogue's categories by name (case-insensitive).

    Returns ``(items, skipped)``: items are ``(sku, image bytes, Labelled)`` for rows whose
    category the catalogue has; ``skipped`` counts the rows whose category it lacks.
    """
    from pathlib import Path

    from django.conf import settings

    from retrieval.catalog import CatalogRow, CatalogSource, read_rows
    from retrieval.models import Category

    known = {name.lower(): name for name in Category.objects.values_list("name", flat=True)}
    items, skipped = [], 0
    with CatalogSource(
        Path(path),
        max_file_bytes=settings.RETRIEVAL_MAX_UPLOAD_BYTES,
        max_total_bytes=settings.RETRIEVAL_MAX_IMPORT_BYTES,
    ) as source:
        for item in read_rows(source, category_field=category_field, limit=limit):
            if not isinstance(item, CatalogRow):
                continue
            if item.category.lower() not in known:
                skipped += 1
                continue
            label = Labelled(category=known[item.category.lower()], colour=item.colour)
            items.append((item.sku, source.read(item.image), label))
    return items, skipped


def extract_queries(*, extractor, sources, flip: bool, crop: bool, batch: int = 32):
    """Run query photos through :meth:`FeatureExtractor.extract_query`, a batch at a time.

    sources: ``[(key, image source)]``. Returns ``(keys, features, errors)``: the keys that
    decoded, the features dict with one row per key (``pooled`` (N, D), ``rgb10`` (N, 10, 3),
    ``fused`` (N, 542), ``probs`` (N, C) float32 ...), and ``[(key, reason)]`` for the rest.
    """
    from retrieval.images import INPUT_SIZE, ImageError, open_image

    keys, parts, errors = [], [], []
    for start in range(0, len(sources), batch):
        photos = []
        for key, src in sources[start : start + batch]:
            try:
                # Decoded here so one bad photo fails alone; large photos at >= 2x the input.
                photo = open_image(
                    src,
                    max_pixels=extractor.max_pixels,
                    draft_size=(2 * INPUT_SIZE, 2 * INPUT_SIZE),
                )
            except ImageError as exc:
                errors.append((key, str(exc)))
                continue
            keys.append(key)
            photos.append(photo)
        if photos:
            parts.append(extractor.extract_query(photos, flip=flip, crop=crop))
    if not parts:
        return [], {}, errors
    return keys, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, errors


def _external_queries(*, model, path, category_field: str, limit: int | None):
    """Query images from a labelled catalogue file, run through the CNN as a shopper's photo
    would be (RETRIEVAL_QUERY_CROP / _FLIP), never stored."""
    from retrieval import search

    items, skipped = read_query_set(path=path, category_field=category_field, limit=limit)
    extractor = search.extractor_for(backbone=model.backbone, model=model)
    keys, out, errors = extract_queries(
        extractor=extractor,
        sources=[(i, data) for i, (_, data, _) in enumerate(items)],
        flip=search.settings.RETRIEVAL_QUERY_FLIP,
        crop=search.settings.RETRIEVAL_QUERY_CROP,
    )
    queries = [
        {
            "id": items[key][0],
            "fused": out["fused"][row],
            "probs": out["probs"][row],
            "label": items[key][2],
            "exclude": (),
        }
        for row, key in enumerate(keys)
    ]
    return queries, skipped + len(errors)


def _examples(raw, queries, *, examples: int) -> list[dict]:
    """The top 5 of each mode for a few queries, side by side (the paper's Figure 4)."""
    from retrieval.models import Garment

    picks = list(range(0, len(queries), max(1, len(queries) // max(1, examples))))[:examples]
    ids = set()
    for index in picks:
        for mode in ("fused", "deep"):
            ids.update(h.garment_id for h in raw[(mode, True)][index][1].hits[:5])
        if isinstance(queries[index]["id"], int):
            ids.add(queries[index]["id"])
    garments = Garment.objects.select_related("category").in_bulk(ids)

    def describe(garment_id, score=None):
        g = garments.get(garment_id)
        if g is None:
            return None
        item = {
            "id": g.pk,
            "sku": g.sku,
            "title": g.title,
            "category": g.category.name,
            "colour": g.colour,
            "image": g.image.url if g.image else "",
        }
        if score is not None:
            item["score"] = round(score, 4)
        return item

    out = []
    for index in picks:
        query = queries[index]
        entry = {
            "query": describe(query["id"])
            if isinstance(query["id"], int)
            else {"sku": query["id"], "category": query["label"].category},
        }
        for mode in ("fused", "deep"):
            hits = raw[(mode, True)][index][1].hits[:5]
            entry[mode] = [describe(h.garment_id, h.score) for h in hits]
        out.append(entry)
    return out


# --------------------------------------------------------------------------- the sweep

#: Query-time pipelines the sweep can compare: (flip, crop) for ``extract_query``.
PIPELINES: dict[str, tuple[bool, bool]] = {
    "plain": (False, False),
    "flip": (True, False),
    "crop": (False, True),
    "crop+flip": (True, True),
}
SWEEP_WEIGHTS = (0.0, 0.3, 0.6, 1.0)
SWEEP_PROBES = (1, 2, 3)
#: Ranking modes of the sweep: the paper's fused and deep-only, and the category re-rank
#: (:mod:`retrieval.rerank`) at two confidence thresholds.
SWEEP_MODES = ("fused", "deep", "rerank", "rerank>=0.5")


@dataclass(frozen=True)
class ColourSetting:
    """How the fused vector is built from the deep feature and the 10 colour positions."""

    variant: str
    weight: float
    normalize_deep: bool

    @property
    def label(self) -> str:
        return f"{self.variant} w={self.weight:g}" + ("" if self.normalize_deep else " raw-deep")


def sweep_colour_settings(*, model, weights) -> list[ColourSetting]:
    """The model's colour variant at each weight, plus the paper as published (z-scored RGB at
    weight 1 on the raw deep feature)."""
    variant = model.colour_variant if model.colour_variant != "paper" else "lab_mean"
    out = [ColourSetting(variant, float(w), model.normalize_deep) for w in weights]
    paper = ColourSetting("paper", 1.0, False)
    if paper not in out:
        out.append(paper)
    return out


class MemoryIndex:
    """The product's cluster search, in memory: K-means over the library, the nearest
    ``probes`` clusters ranked exactly, widened until ``top`` candidates (as search.py does).

    vectors: ``(N, D)`` float32 library vectors.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        *,
        k: int,
        seed: int = 0,
        centroids: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        """K-means (clustering.fit_kmeans) with ``k`` clusters, unless ``centroids`` ``(k, D)``
        and ``labels`` ``(N,)`` int are given."""
        from retrieval import clustering

        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if centroids is None or labels is None:
            centroids, labels, _, _ = clustering.fit_kmeans(self.vectors, k=k, seed=seed)
        self.centroids = np.asarray(centroids, dtype=np.float32)
        self.members = [np.flatnonzero(labels == c) for c in range(len(self.centroids))]

    def search(
        self,
        query: np.ndarray,
        *,
        top: int,
        probes: int | None,
        exclude: int = -1,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        """Library row indices ``(<= top,)`` int64, nearest first. probes None = exact search;
        exclude: a row never returned; allowed: ``(N,)`` bool mask of eligible rows."""
        k = len(self.centroids)
        if probes is None:
            n, order = k, np.arange(k)
        else:
            n = min(probes, k)
            order = np.argsort(((self.centroids - query) ** 2).sum(1), kind="stable")
        while True:
            candidates = np.concatenate([self.members[c] for c in order[:n]])
            candidates = candidates[candidates != exclude]
            if allowed is not None:
                candidates = candidates[allowed[candidates]]
            if len(candidates) >= top or n >= k:
                break
            n = min(k, max(2 * n, n + 1))  # completeness, as search.search_vectors
        distances = ((self.vectors[candidates] - query) ** 2).sum(1)
        best = np.argsort(distances, kind="stable")[:top]
        return candidates[best]

    def reranked(
        self,
        query: np.ndarray,
        *,
        top: int,
        probes: int | None,
        exclude: int,
        same_category: np.ndarray | None,
    ) -> np.ndarray:
        """The predicted category's rows first, then the rest (as rerank.search_reranked).
        same_category: ``(N,)`` bool, or None for the plain ranking."""
        if same_category is None:
            return self.search(query, top=top, probes=probes, exclude=exclude)
        first = self.search(query, top=top, probes=probes, exclude=exclude, allowed=same_category)
        if len(first) >= top:
            return first
        others = np.ones(len(self.vectors), dtype=bool)
        others[first] = False
        rest = self.search(
            query, top=top - len(first), probes=probes, exclude=exclude, allowed=others
        )
        return np.concatenate([first, rest])


def _sweep_library(*, model) -> dict:
    """Cached CNN features of the searchable catalogue (no CNN pass).

    Returns ids ``(N,)`` int64, pooled ``(N, D)`` and rgb10 ``(N, 10, 3)`` float32, labels
    (N Labelled), categories ``(N,)`` object.
    """
    from retrieval.models import BackboneFeature, Garment

    rows = (
        BackboneFeature.objects.filter(
            backbone=model.backbone,
            garment__features__model=model,
            garment__category__active=True,
            garment__status=Garment.Status.READY,
        )
        .order_by("garment_id")
        .values_list("garment_id", "pooled", "rgb", "garment__category__name", "garment__colour")
    )
    ids, pooled, rgb, labels = [], [], [], []
    for gid, vector, colours, category, colour in rows.iterator(chunk_size=2000):
        ids.append(gid)
        pooled.append(vector)
        rgb.append(colours)
        labels.append(Labelled(category=category, colour=colour or ""))
    if not ids:
        raise ValueError("the model has no indexed garments with cached CNN features")
    return {
        "ids": np.asarray(ids, np.int64),
        "pooled": np.vstack(pooled).astype(np.float32),
        "rgb10": np.asarray(rgb, np.float32).reshape(len(ids), -1, 3),
        "labels": labels,
        "categories": np.asarray([label.category for label in labels], dtype=object),
    }


def _sweep_queries(
    *, model, library: dict, pipelines, queries_path, category_field, limit, seed
) -> tuple[dict, int]:
    """Per pipeline: the queries' pooled ``(Q, D)`` and rgb10 ``(Q, 10, 3)`` float32, labels,
    and the library row each must not return (-1 = none). Held-out queries use their cached
    features for "plain" and their stored images otherwise; an external set runs the CNN."""
    from retrieval import search
    from retrieval.models import Garment

    extractor = None
    if queries_path is not None or any(p != "plain" for p in pipelines):
        extractor = search.extractor_for(backbone=model.backbone, model=model)
    out: dict[str, dict] = {}
    if queries_path is not None:
        items, skipped = read_query_set(
            path=queries_path, category_field=category_field, limit=limit
        )
        for name in pipelines:
            flip, crop = PIPELINES[name]
            keys, feats, errors = extract_queries(
                extractor=extractor,
                sources=[(i, data) for i, (_, data, _) in enumerate(items)],
                flip=flip,
                crop=crop,
            )
            out[name] = {
                "pooled": feats.get("pooled"),
                "rgb10": feats.get("rgb10"),
                "labels": [items[k][2] for k in keys],
                "exclude": np.full(len(keys), -1, np.int64),
            }
        return out, skipped + len(errors)
    row_of = {int(gid): i for i, gid in enumerate(library["ids"])}
    test_ids = sorted(int(g) for g in model.split.get("test", []) if int(g) in row_of)
    if limit is not None and len(test_ids) > limit:
        rng = np.random.default_rng(seed)
        test_ids = sorted(rng.choice(test_ids, size=limit, replace=False).tolist())
    rows = np.asarray([row_of[g] for g in test_ids], np.int64)
    for name in pipelines:
        if name == "plain":
            out[name] = {
                "pooled": library["pooled"][rows],
                "rgb10": library["rgb10"][rows],
                "labels": [library["labels"][r] for r in rows],
                "exclude": rows,
            }
            continue
        flip, crop = PIPELINES[name]
        images = Garment.objects.in_bulk(test_ids)
        keys, feats, _ = extract_queries(
            extractor=extractor,
            sources=[(r, images[g].image.path) for g, r in zip(test_ids, rows, strict=True)],
            flip=flip,
            crop=crop,
        )
        keys = np.asarray(keys, np.int64)
        out[name] = {
            "pooled": feats.get("pooled"),
            "rgb10": feats.get("rgb10"),
            "labels": [library["labels"][r] for r in keys],
            "exclude": keys,
        }
    return out, 0


def run_sweep(
    *,
    model=None,
    weights=SWEEP_WEIGHTS,
    probes=SWEEP_PROBES,
    pipelines=("plain",),
    queries_path=None,
    category_field: str = "articleType",
    limit: int | None = None,
    seed: int = 0,
    progress=None,
    head=None,
) -> dict:
    """Precision over colour setting x probed clusters x ranking mode (x query pipeline).

    Everything is computed in memory from the cached CNN features of the catalogue (no CNN
    pass over it; the active model, its vectors and its clusters are not touched): deep
    features from the model's head, fused vectors per colour setting, one K-means per setting
    (K = the active run's, or the number of active categories), then the same cluster search
    as the product. Held-out queries ("plain") need no CNN at all; other pipelines and an
    external query set run the CNN over the queries only, once per pipeline.

    Returns a dict: ``model``, ``k``, ``queries``, ``skipped``, ``rows`` (one dict per
    pipeline, colour setting, probes (``None`` = exact), mode: ``p@5``, ``p@10``, ``cc@10``,
    ``ms`` = mean in-memory search time per query, numpy, not the database's). ``head``: a
    :class:`~retrieval.features.ClothingHead` over the model's classes to try instead of the
    model's own (e.g. one trained differently), in memory.
    """
    from retrieval import clustering, features, search
    from retrieval.models import ClusterRun

    model = model or search.active_model()
    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown:
        raise ValueError(f"unknown pipeline(s) {unknown}: choose from {list(PIPELINES)}")
    say = progress or (lambda message: None)
    head = head if head is not None else features.load_head(model.head_path)
    library = _sweep_library(model=model)
    query_sets, skipped = _sweep_queries(
        model=model,
        library=library,
        pipelines=pipelines,
        queries_path=queries_path,
        category_field=category_field,
        limit=limit,
        seed=seed,
    )
    if not any(len(q["labels"]) for q in query_sets.values()):
        raise ValueError("no queries to sweep over")
    run = ClusterRun.objects.filter(model=model, space=ClusterRun.Space.FUSED, active=True).first()
    k = run.k if run is not None else clustering.default_k()
    deep_lib = features.deep_from_pooled(head, library["pooled"])
    classes = list(model.classes)
    settings_list = sweep_colour_settings(model=model, weights=weights)
    probe_list: list[int | None] = [*sorted(set(int(p) for p in probes)), None]

    def fused_of(deep, rgb10, setting: ColourSetting) -> np.ndarray:
        colour = features.colour_feature(rgb10, variant=setting.variant)
        return features.fuse(
            deep, colour, weight=setting.weight, normalize_deep=setting.normalize_deep
        )

    def deep_of(deep) -> np.ndarray:
        # The deep-only baseline as stored: the deep part of the model's fused vector.
        if not model.normalize_deep:
            return np.asarray(deep, np.float32)
        return (deep / np.maximum(np.linalg.norm(deep, axis=1, keepdims=True), 1e-12)).astype(
            np.float32
        )

    indexes: dict = {}
    say(f"K-means (k={k}) over {len(library['ids'])} garments, {len(settings_list) + 1} spaces")
    deep_setting = ColourSetting("deep", 0.0, model.normalize_deep)
    indexes[deep_setting] = MemoryIndex(deep_of(deep_lib), k=k, seed=seed)
    for setting in settings_list:
        indexes[setting] = MemoryIndex(
            fused_of(deep_lib, library["rgb10"], setting), k=k, seed=seed
        )
    rows, accuracy, ceiling = [], {}, {}
    for pipeline, qs in query_sets.items():
        if not len(qs["labels"]):
            continue
        deep_q = features.deep_from_pooled(head, qs["pooled"])
        probs = features.classify(head, qs["pooled"])
        predicted = np.asarray([classes[i] for i in probs.argmax(1)], dtype=object)
        confidence = probs.max(1)
        accuracy[pipeline] = round(
            float(np.mean([p == q.category for p, q in zip(predicted, qs["labels"], strict=True)])),
            4,
        )
        # The best p@5 any ranking could reach: a category with fewer than 5 other garments
        # in the catalogue caps its queries.
        counts = collections.Counter(library["categories"].tolist())
        ceiling[pipeline] = round(
            float(
                np.mean(
                    [
                        min(5, counts[q.category] - (1 if e >= 0 else 0)) / 5
                        for q, e in zip(qs["labels"], qs["exclude"], strict=True)
                    ]
                )
            ),
            4,
        )
        plans = [("deep", deep_setting)]
        plans += [(mode, s) for s in settings_list for mode in SWEEP_MODES if mode != "deep"]
        for mode, setting in plans:
            index = indexes[setting]
            deep_mode = mode == "deep"
            vectors = deep_of(deep_q) if deep_mode else fused_of(deep_q, qs["rgb10"], setting)
            for n_probes in probe_list:
                ranked = []
                for i, label in enumerate(qs["labels"]):
                    same = None
                    if mode.startswith("rerank"):
                        threshold = 0.5 if mode == "rerank>=0.5" else 0.0
                        if confidence[i] >= threshold:
                            same = library["categories"] == predicted[i]
                    started = time.perf_counter()
                    hits = index.reranked(
                        vectors[i],
                        top=10,
                        probes=n_probes,
                        exclude=int(qs["exclude"][i]),
                        same_category=same,
                    )
                    seconds = time.perf_counter() - started
                    ranked.append((label, [library["labels"][h] for h in hits], seconds))
                summary = summarise(ranked, tops=(5, 10))
                rows.append(
                    {
                        "pipeline": pipeline,
                        "colour": "-" if deep_mode else setting.label,
                        "variant": setting.variant,
                        "weight": setting.weight,
                        "normalize_deep": setting.normalize_deep,
                        "probes": n_probes,
                        "mode": mode,
                        "queries": len(ranked),
                        "p@5": summary["p@5"],
                        "p@10": summary["p@10"],
                        "cc@10": summary["cc@10"],
                        "ms": summary["ms_mean"],
                    }
                )
        say(f"pipeline {pipeline}: {len(qs['labels'])} queries done")
    return {
        "model": model.name,
        "k": k,
        "garments": len(library["ids"]),
        "queries": {name: len(qs["labels"]) for name, qs in query_sets.items()},
        "skipped": skipped,
        "head_accuracy": accuracy,
        "p@5_ceiling": ceiling,
        "rows": rows,
    }
