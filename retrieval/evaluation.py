"""Retrieval quality and speed on the shop's own catalogue (the paper's Tables 1-2, Figs. 3-4).

Metrics per mode (``fused`` = deep + colour, ``deep`` = the deep-only baseline), each through
the paper's K-means cluster search and through exact search:

- ``p@k``: precision at k with relevant = same category (what the paper calls mAP);
- ``cc@k``: precision at k with relevant = same category AND same colour;
- per-category p@5; mean and p95 search time per query; example rankings.
"""

from __future__ import annotations

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
    }
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
            queries, skipped = _held_out_queries(model=model, limit=limit, seed=seed), 0
        if not queries:
            raise ValueError(
                "no queries: the model has no held-out garments with vectors"
                if not queries_path
                else "no query matched a catalogue category"
            )
        top = max(tops)
        result_ids: set[int] = set()
        raw: dict[tuple[str, bool], list] = {}
        for mode in ("fused", "deep"):
            for clustered in (True, False):
                rows = []
                for query in queries:
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
                for mode in ("fused", "deep")
            },
            "exact": {
                mode: {
                    key: value
                    for key, value in summaries[(mode, False)].items()
                    if key != "per_category_p@5"
                }
                for mode in ("fused", "deep")
            },
            "per_category_p@5": {
                mode: summaries[(mode, True)]["per_category_p@5"] for mode in ("fused", "deep")
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


def _held_out_queries(*, model, limit: int | None, seed: int) -> list[dict]:
    from retrieval.models import GarmentFeature

    test_ids = list(model.split.get("test", []))
    if limit is not None and len(test_ids) > limit:
        rng = np.random.default_rng(seed)
        test_ids = sorted(rng.choice(test_ids, size=limit, replace=False).tolist())
    rows = (
        GarmentFeature.objects.filter(model=model, garment_id__in=test_ids)
        .order_by("garment_id")
        .values_list("garment_id", "fused", "garment__category__name", "garment__colour")
    )
    return [
        {
            "id": gid,
            "fused": np.asarray(fused, dtype=np.float32),
            "label": Labelled(category=category, colour=colour or ""),
            "exclude": (gid,),
        }
        for gid, fused, category, colour in rows
    ]


def _external_queries(*, model, path, category_field: str, limit: int | None):
    """Query images from a labelled catalogue file, run through the CNN, never stored."""
    from pathlib import Path

    from django.conf import settings

    from retrieval import search
    from retrieval.catalog import CatalogRow, CatalogSource, read_rows
    from retrieval.models import Category

    known = {name.lower(): name for name in Category.objects.values_list("name", flat=True)}
    extractor = search.extractor_for(backbone=model.backbone, model=model)
    queries, skipped = [], 0
    with CatalogSource(
        Path(path),
        max_file_bytes=settings.RETRIEVAL_MAX_UPLOAD_BYTES,
        max_total_bytes=settings.RETRIEVAL_MAX_IMPORT_BYTES,
    ) as source:
        items = []
        for item in read_rows(source, category_field=category_field, limit=limit):
            if not isinstance(item, CatalogRow):
                continue
            if item.category.lower() not in known:
                skipped += 1
                continue
            items.append(item)
        sources = [(i, lambda item=item: source.read(item.image)) for i, item in enumerate(items)]
        for batch in extractor.extract_paths(sources, batch_size=32):
            for position, key in enumerate(batch.keys):
                item = items[key]
                queries.append(
                    {
                        "id": item.sku,
                        "fused": batch.features["fused"][position],
                        "label": Labelled(
                            category=known[item.category.lower()], colour=item.colour
                        ),
                        "exclude": (),
                    }
                )
            skipped += len(batch.errors)
    return queries, skipped


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
