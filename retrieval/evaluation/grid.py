"""The parameter grid: colour variants and weights, probes and modes, searched in memory over one
model's cached features.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

import numpy as np

from retrieval.evaluation.metrics import Labelled, summarise
from retrieval.evaluation.queries import extract_queries, read_query_set

#: Query-time pipelines the parameter grid can compare: (flip, crop mode) for
#: ``extract_query`` ("crop" is the activation-map crop, "centre" the plain-border rule's).
PIPELINES: dict[str, tuple[bool, str]] = {
    "plain": (False, "off"),
    "flip": (True, "off"),
    "crop": (False, "map"),
    "crop+flip": (True, "map"),
    "centre": (False, "centre"),
    "centre+flip": (True, "centre"),
}


GRID_WEIGHTS = (0.0, 0.3, 0.6, 1.0)


GRID_PROBES = (1, 2, 3)


#: Ranking modes of the grid: the paper's fused and deep-only, and the category re-rank
#: (:mod:`retrieval.search.rerank`) at two confidence thresholds.
GRID_MODES = ("fused", "deep", "rerank", "rerank>=0.5")


@dataclass(frozen=True)
class ColourSetting:
    """How the fused vector is built from the deep feature and the 10 colour positions."""

    variant: str
    weight: float
    normalize_deep: bool

    @property
    def label(self) -> str:
        return f"{self.variant} w={self.weight:g}" + ("" if self.normalize_deep else " raw-deep")


def grid_colour_settings(*, model, weights) -> list[ColourSetting]:
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
        from retrieval.search import clustering

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


def _grid_library(*, model) -> dict:
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


def _grid_queries(
    *, model, library: dict, pipelines, queries_path, category_field, limit, seed
) -> tuple[dict, int]:
    """Per pipeline: the queries' pooled ``(Q, D)`` and rgb10 ``(Q, 10, 3)`` float32, labels,
    and the library row each must not return (-1 = none). Held-out queries use their cached
    features for "plain" and their stored images otherwise; an external set runs the CNN."""
    from retrieval import features
    from retrieval.models import Garment

    extractor = None
    if queries_path is not None or any(p != "plain" for p in pipelines):
        extractor = features.extractor_for(backbone=model.backbone, model=model)
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


def run_grid(
    *,
    model=None,
    weights=GRID_WEIGHTS,
    probes=GRID_PROBES,
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
    from retrieval import features, search
    from retrieval.models import ClusterRun
    from retrieval.search import clustering

    model = model or search.require_active_model()
    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown:
        raise ValueError(f"unknown pipeline(s) {unknown}: choose from {list(PIPELINES)}")
    say = progress or (lambda message: None)
    head = head if head is not None else features.load_head(model.head_path)
    library = _grid_library(model=model)
    query_sets, skipped = _grid_queries(
        model=model,
        library=library,
        pipelines=pipelines,
        queries_path=queries_path,
        category_field=category_field,
        limit=limit,
        seed=seed,
    )
    if not any(len(q["labels"]) for q in query_sets.values()):
        raise ValueError("no queries for the parameter grid")
    run = ClusterRun.objects.filter(model=model, space=ClusterRun.Space.FUSED, active=True).first()
    k = run.k if run is not None else clustering.default_k()
    deep_lib = features.deep_from_pooled(head, library["pooled"])
    settings_list = grid_colour_settings(model=model, weights=weights)
    probe_list: list[int | None] = [*sorted(set(int(p) for p in probes)), None]

    say(f"K-means (k={k}) over {len(library['ids'])} garments, {len(settings_list) + 1} spaces")
    deep_setting = ColourSetting("deep", 0.0, model.normalize_deep)
    indexes = {deep_setting: MemoryIndex(_deep_of(deep_lib, model=model), k=k, seed=seed)}
    for setting in settings_list:
        indexes[setting] = MemoryIndex(
            _fused_of(deep_lib, library["rgb10"], setting), k=k, seed=seed
        )
    plans = [("deep", deep_setting)]
    plans += [(mode, s) for s in settings_list for mode in GRID_MODES if mode != "deep"]
    rows, accuracy, ceiling = [], {}, {}
    for pipeline, qs in query_sets.items():
        if not len(qs["labels"]):
            continue
        probs = features.classify(head, qs["pooled"])
        predicted = np.asarray([model.classes[i] for i in probs.argmax(1)], dtype=object)
        accuracy[pipeline] = round(
            float(np.mean([p == q.category for p, q in zip(predicted, qs["labels"], strict=True)])),
            4,
        )
        ceiling[pipeline] = _p5_ceiling(library=library, queries=qs)
        deep_q = features.deep_from_pooled(head, qs["pooled"])
        for mode, setting in plans:
            deep_mode = mode == "deep"
            vectors = (
                _deep_of(deep_q, model=model)
                if deep_mode
                else _fused_of(deep_q, qs["rgb10"], setting)
            )
            for n_probes in probe_list:
                ranked = _rank_queries(
                    index=indexes[setting],
                    vectors=vectors,
                    queries=qs,
                    library=library,
                    mode=mode,
                    probes=n_probes,
                    predicted=predicted,
                    confidence=probs.max(1),
                )
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


def _fused_of(deep: np.ndarray, rgb10: np.ndarray, setting: ColourSetting) -> np.ndarray:
    """Fused vectors ``(N, 542)`` float32 of deep ``(N, 512)`` and raw colours ``(N, 10, 3)``
    under one colour setting."""
    from retrieval import features

    colour = features.colour_feature(rgb10, variant=setting.variant)
    return features.fuse(deep, colour, weight=setting.weight, normalize_deep=setting.normalize_deep)


def _deep_of(deep: np.ndarray, *, model) -> np.ndarray:
    """The deep-only baseline as stored: the deep part of the model's fused vector,
    ``(N, 512)`` float32."""
    if not model.normalize_deep:
        return np.asarray(deep, np.float32)
    return (deep / np.maximum(np.linalg.norm(deep, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )


def _p5_ceiling(*, library: dict, queries: dict) -> float:
    """The best p@5 any ranking could reach: a category with fewer than 5 other garments in
    the catalogue caps its queries."""
    counts = collections.Counter(library["categories"].tolist())
    return round(
        float(
            np.mean(
                [
                    min(5, counts[q.category] - (1 if e >= 0 else 0)) / 5
                    for q, e in zip(queries["labels"], queries["exclude"], strict=True)
                ]
            )
        ),
        4,
    )


def _rank_queries(
    *,
    index: MemoryIndex,
    vectors: np.ndarray,
    queries: dict,
    library: dict,
    mode: str,
    probes: int | None,
    predicted: np.ndarray,
    confidence: np.ndarray,
) -> list:
    """Each query's top 10 in ``index``: ``[(label, [Labelled], seconds)]`` for summarise.

    vectors: ``(Q, D)`` float32 query vectors in the index's space; predicted / confidence:
    ``(Q,)`` the head's category and its probability (used by the re-rank modes)."""
    ranked = []
    for i, label in enumerate(queries["labels"]):
        same = None
        if mode.startswith("rerank"):
            threshold = 0.5 if mode == "rerank>=0.5" else 0.0
            if confidence[i] >= threshold:
                same = library["categories"] == predicted[i]
        started = time.perf_counter()
        hits = index.reranked(
            vectors[i],
            top=10,
            probes=probes,
            exclude=int(queries["exclude"][i]),
            same_category=same,
        )
        seconds = time.perf_counter() - started
        ranked.append((label, [library["labels"][h] for h in hits], seconds))
    return ranked
