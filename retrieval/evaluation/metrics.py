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

from retrieval.spec import TOPS


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
    # Per category: p@k for every k asked (the key keeps its historical name; "p@5" is in it
    # whenever 5 is among ``tops``), and the number of queries.
    per_category: dict[str, list[Labelled]] = defaultdict(list)
    ranked_by: dict[str, list[Sequence[Labelled]]] = defaultdict(list)
    for q, res, _ in rows:
        per_category[q.category].append(q)
        ranked_by[q.category].append(res)
    out["per_category_p@5"] = {
        name: {
            **{
                f"p@{k}": _mean(
                    [
                        precision_at(res, q, k, colour=False)
                        for q, res in zip(queries, ranked_by[name], strict=True)
                    ]
                )
                for k in tops
            },
            "queries": len(queries),
        }
        for name, queries in sorted(per_category.items())
    }
    return out


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None


def timed(function, *args, **kwargs):
    """(result, seconds) of one call."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started
