"""Evaluation reports: run the metrics over the query sets for a model and store the report."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from retrieval.evaluation.metrics import Labelled, summarise, timed
from retrieval.evaluation.queries import example_queries, external_queries, held_out_queries
from retrieval.jobs.publishing import publish
from retrieval.models import EvaluationReport, FeatureModel, Garment
from retrieval.spec import TOPS


def run_evaluation(
    *,
    model: FeatureModel | None = None,
    limit: int | None = None,
    tops: Sequence[int] = TOPS,
    queries_path: Any = None,
    category_field: str = "articleType",
    examples: int = 6,
    report: EvaluationReport | None = None,
    seed: int = 0,
) -> EvaluationReport:
    """Evaluate ``model`` (default: the active one) and store an EvaluationReport.

    Default queries: the model's held-out test split (never trained on), each searched
    against the rest of the catalogue with itself excluded, from its stored vectors. With
    ``queries_path`` (a catalogue zip/folder), those images are run through the CNN and
    searched against the catalogue without being added to it; queries whose category the
    catalogue lacks are skipped and counted.
    """
    from retrieval import search

    model = model or search.require_active_model()
    tops = sorted(set(int(k) for k in tops))
    parameters = _parameters(
        model=model,
        limit=limit,
        tops=tops,
        queries_path=queries_path,
        category_field=category_field,
    )
    rerank_on = settings.RETRIEVAL_RERANK == "category"
    modes = ("fused", "deep", "rerank") if rerank_on else ("fused", "deep")
    if report is None:
        report = EvaluationReport.objects.create(model=model, parameters=parameters)
    else:
        report.model, report.parameters = model, parameters
        report.status = EvaluationReport.Status.RUNNING
        report.save()
    try:
        if queries_path:
            queries, skipped = external_queries(
                model=model, path=queries_path, category_field=category_field, limit=limit
            )
        else:
            queries = held_out_queries(model=model, limit=limit, seed=seed, probs=rerank_on)
            skipped = 0
        if not queries:
            raise ValueError(
                "no queries: the model has no held-out garments with vectors"
                if not queries_path
                else "no query matched a catalogue category"
            )
        raw = _search_all(model=model, queries=queries, modes=modes, top=max(tops))
        summaries = {key: summarise(rows, tops=tops) for key, rows in _labelled_runs(raw).items()}
        metrics = _metrics(summaries, modes=modes, tops=tops)
        report.metrics = {
            "queries": len(queries),
            "skipped": skipped,
            **metrics,
            "examples": _examples(raw, queries, examples=examples),
            "query_sets": _query_sets(model=model, modes=modes, tops=tops, limit=limit),
        }
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


def _parameters(
    *,
    model: FeatureModel,
    limit: int | None,
    tops: list[int],
    queries_path: object,
    category_field: str,
) -> dict:
    """What a report was run with (stored with it, shown in the admin)."""
    return {
        "model": model.name,
        "limit": limit,
        "tops": tops,
        "queries": str(queries_path) if queries_path else "held-out test split",
        "category_field": category_field,
        "colour_variant": model.colour_variant,
        "colour_weight": model.colour_weight,
        "probes": settings.RETRIEVAL_PROBES,
        "query_crop": settings.RETRIEVAL_QUERY_CROP,
        "query_flip": settings.RETRIEVAL_QUERY_FLIP,
        "rerank": settings.RETRIEVAL_RERANK,
        "rerank_min_confidence": settings.RETRIEVAL_RERANK_MIN_CONFIDENCE,
    }


#: The query set every evaluation builds from the held-out example photos (issue #14).
HELD_OUT_EXAMPLES = "shoppers' photos (held-out senders)"


def _query_sets(
    *, model: FeatureModel, modes: Sequence[str], tops: Sequence[int], limit: int | None
) -> list[dict]:
    """The labelled photo sets every evaluation reports besides its main queries: the held-out
    example photos, then each file of RETRIEVAL_EVALUATION_QUERY_SETS. Each is searched as
    the shop searches (the photo through the CNN, the cluster search, every mode) and
    reported overall and per category; a set that cannot be read is reported with its
    error, never failing the evaluation.

    Each entry: ``name``, ``source``, ``queries``, ``skipped``, ``error`` (or ""),
    ``modes`` {mode: {"p@k": ...}} and ``per_category`` {mode: {category: {"p@k", "queries"}}}.
    """
    from pathlib import Path

    from retrieval.catalogue.source import CatalogError

    loaders: list[tuple[str, str, object]] = [
        (
            HELD_OUT_EXAMPLES,
            "example photos, role holdout",
            lambda: example_queries(model=model, limit=limit),
        )
    ]
    for path in settings.RETRIEVAL_EVALUATION_QUERY_SETS:
        loaders.append(
            (
                Path(path).stem,
                str(path),
                lambda path=path: external_queries(
                    model=model, path=path, category_field="articleType", limit=limit
                ),
            )
        )
    out = []
    for name, source, load in loaders:
        entry: dict = {
            "name": name,
            "source": source,
            "queries": 0,
            "skipped": 0,
            "error": "",
            "modes": {},
            "per_category": {},
        }
        out.append(entry)
        try:
            queries, skipped = load()  # type: ignore[operator]
        except (CatalogError, OSError) as exc:
            entry["error"] = str(exc)[:500]
            continue
        entry["queries"], entry["skipped"] = len(queries), skipped
        if not queries:
            continue
        raw = _search_all(model=model, queries=queries, modes=modes, top=max(tops), exact=False)
        summaries = {
            mode: summarise(rows, tops=tops) for (mode, _), rows in _labelled_runs(raw).items()
        }
        entry["modes"] = {
            mode: {f"p@{k}": summaries[mode][f"p@{k}"] for k in tops} for mode in modes
        }
        entry["per_category"] = {mode: summaries[mode]["per_category_p@5"] for mode in modes}
    return out


def _search_all(
    *,
    model: FeatureModel,
    queries: list[dict],
    modes: Sequence[str],
    top: int,
    exact: bool = True,
) -> dict:
    """Every query searched in every mode, clustered (the paper's search) and, with ``exact``,
    exact: ``{(mode, clustered): [(query, SearchResult, seconds)]}``."""
    from retrieval import search
    from retrieval.search import rerank

    raw: dict[tuple[str, bool], list] = {}
    for mode in modes:
        for clustered in (True, False) if exact else (True,):
            rows = []
            for query in queries:
                if mode == "rerank":
                    result, seconds = timed(
                        rerank.search_reranked,
                        fused=query["fused"],
                        probs=query["probs"],
                        model=model,
                        top=top,
                        clustered=clustered,
                        min_confidence=settings.RETRIEVAL_RERANK_MIN_CONFIDENCE,
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
                rows.append((query, result, seconds))
            raw[(mode, clustered)] = rows
    return raw


def _labelled_runs(raw: dict) -> dict:
    """The raw runs with each result garment replaced by its category and colour (what
    relevance is judged on): ``{key: [(query label, [Labelled], seconds)]}``."""
    result_ids = {h.garment_id for rows in raw.values() for _, r, _ in rows for h in r.hits}
    labels = {
        gid: Labelled(category=name, colour=colour or "")
        for gid, name, colour in Garment.objects.filter(id__in=result_ids).values_list(
            "id", "category__name", "colour"
        )
    }
    return {
        key: [
            (
                query["label"],
                [labels[h.garment_id] for h in result.hits if h.garment_id in labels],
                seconds,
            )
            for query, result, seconds in rows
        ]
        for key, rows in raw.items()
    }


def _metrics(summaries: dict, *, modes: Sequence[str], tops: Sequence[int]) -> dict:
    """The report's metrics: headline precision per mode through the cluster search, the
    same through exact search, and per-category p@5."""
    headline = ("p@", "cc@")
    return {
        "modes": {
            mode: {
                **{f"{h}{k}": summaries[(mode, True)][f"{h}{k}"] for h in headline for k in tops},
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
        "per_category_p@5": {mode: summaries[(mode, True)]["per_category_p@5"] for mode in modes},
    }


def _examples(raw: dict, queries: list[dict], *, examples: int) -> list[dict]:
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


log = logging.getLogger(__name__)


def queue_evaluation(*, model: FeatureModel) -> EvaluationReport:
    """Create a running EvaluationReport for ``model`` and queue its evaluation after commit;
    with the broker down the report is marked failed with the reason (start it again later)."""

    report = EvaluationReport.objects.create(model=model, parameters={"model": model.name})

    def send() -> None:
        error = publish("retrieval.tasks.evaluate", args=[report.pk])
        if error is not None:
            log.warning("broker unavailable, evaluation %s not started: %s", report.pk, error)
            EvaluationReport.objects.filter(pk=report.pk).update(
                status=EvaluationReport.Status.FAILED,
                error="not started: Redis (the task queue) was unavailable; start it again",
                finished_at=timezone.now(),
            )

    transaction.on_commit(send)
    return report


# --------------------------------------------------------------------------- readable reports
# What a merchandiser reads on a report's admin page (issue #16): plain column names, each with
# a one-line explanation, a chart with its axis and values, each example's query photo beside
# its results. The stored metrics keep their technical keys (p@5...), shown in small print.

MODE_NAMES = {
    "fused": ("colour + shape", "the shop's search: the garment's colour and shape together"),
    "deep": ("shape only", "the deep feature alone, without colour (the paper's baseline)"),
    "rerank": ("colour + shape, category first", "fused, results of the predicted category first"),
}
SEARCH_NAMES = {
    "cluster": "as the shop searches (nearest clusters only)",
    "exact": "checking every garment (slower, the best the vectors allow)",
}


@dataclass(frozen=True)
class Column:
    """One metric column: the stored key (``p@5``), its plain name and a one-line explanation."""

    key: str
    label: str
    explanation: str


@dataclass(frozen=True)
class Row:
    """One way of searching (mode and search kind) and its value per column (None: not known)."""

    label: str
    explanation: str
    values: list[float | None]


@dataclass(frozen=True)
class Bar:
    """One bar of the per-category chart, in SVG user units (x from the chart's left edge)."""

    category: str
    mode: str
    value: float
    y: float
    width: float


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    """Per-category share of the top 5 in the photo's category, fused beside deep only: the
    value axis runs from 0 to 100 % over ``width`` units; each bar also carries its value."""

    bars: list[Bar]
    ticks: list[Tick]
    categories: list[str]
    width: float
    height: float
    label_width: float
    axis_title: str


@dataclass(frozen=True)
class Example:
    """One query photo beside its top 5 per mode (``results``: [(mode label, items)]; an item is
    the stored dict: sku, title, category, colour, image URL, score)."""

    query: dict
    results: list[tuple[str, list[dict]]]


@dataclass(frozen=True)
class ReadableReport:
    queries: int | None
    skipped: int | None
    columns: list[Column]
    rows: list[Row]
    chart: Chart
    examples: list[Example]


def describe_metric(key: str) -> Column:
    """The plain name and one-line explanation of a stored metric key (``p@5``, ``cc@10``,
    ``ms_mean``, ``ms_p95``); an unknown key is shown as it is."""
    top = re.fullmatch(r"(p|cc)@(\d+)", key)
    if top and top.group(1) == "p":
        k = top.group(2)
        return Column(
            key,
            f"right category in the top {k}",
            f"Of the first {k} results, the share in the photo's own category (1 = all).",
        )
    if top:
        k = top.group(2)
        return Column(
            key,
            f"right category and colour in the top {k}",
            f"Of the first {k} results, the share with the photo's category and its colour.",
        )
    if key == "ms_mean":
        return Column(key, "average search time (ms)", "Milliseconds to search one photo.")
    if key == "ms_p95":
        return Column(key, "slow search time (ms)", "95 searches in 100 took at most this long.")
    return Column(key, key, "")


def readable_report(*, metrics: dict) -> ReadableReport:
    """A stored report's metrics (EvaluationReport.metrics) laid out for the admin page."""
    modes = metrics.get("modes", {})
    keys = list(modes.get("fused", {}))
    rows = []
    for kind, block in (("cluster", modes), ("exact", metrics.get("exact", {}))):
        for mode, values in block.items():
            name, explanation = MODE_NAMES.get(mode, (mode, ""))
            rows.append(
                Row(
                    label=f"{name}: {mode} ({kind})",
                    explanation=f"{explanation}; {SEARCH_NAMES[kind]}",
                    values=[values.get(k) for k in keys],
                )
            )
    return ReadableReport(
        queries=metrics.get("queries"),
        skipped=metrics.get("skipped"),
        columns=[describe_metric(k) for k in keys],
        rows=rows,
        chart=_chart(metrics.get("per_category_p@5", {})),
        examples=[
            Example(
                query=ex.get("query") or {},
                results=[
                    (MODE_NAMES.get(mode, (mode, ""))[0], [i for i in ex.get(mode, []) if i])
                    for mode in ("fused", "deep")
                ],
            )
            for ex in metrics.get("examples", [])
        ],
    )


def _chart(per_category: dict, *, width: float = 320.0, bar_height: float = 12.0) -> Chart:
    """Two bars per category (fused, deep); bar width = value x ``width`` (the axis is 0..1)."""
    gap, label_width = 6.0, 170.0
    names = sorted(per_category.get("fused", {}))
    bars = []
    for i, name in enumerate(names):
        top = i * (2 * bar_height + gap)
        for j, mode in enumerate(("fused", "deep")):
            value = per_category.get(mode, {}).get(name, {}).get("p@5") or 0.0
            bars.append(
                Bar(
                    category=name,
                    mode=mode,
                    value=value,
                    y=top + j * bar_height,
                    width=round(value * width, 1),
                )
            )
    return Chart(
        bars=bars,
        ticks=[Tick(x=round(f * width, 1), label=f"{f:.0%}") for f in (0, 0.25, 0.5, 0.75, 1)],
        categories=names,
        width=width,
        height=max(1, len(names)) * (2 * bar_height + gap),
        label_width=label_width,
        axis_title="share of the top 5 results in the photo's own category",
    )
