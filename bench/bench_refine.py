"""Refining a photo search (issue #15): "this, but in <colour>" and one round of feedback.

Runs against a trained catalogue (the active model) through the real search code
(:func:`retrieval.search.search_refined`, PostgreSQL/pgvector, the K-means cluster search,
the shipped re-rank), with the held-out test garments of the model's split as query photos
(their stored vectors and the head's probabilities from their cached CNN features: exactly
what a search with that photo computes, without running the CNN again).

1. Colour words. For each held-out query of colour C and category K, and each of ``--colours``
   target colours T != C that the catalogue has in K (at least 10 garments, so a perfect top
   10 is possible): the share of the top 10 that are of category K AND colour T, for
   - the plain photo search (what the shopper got before, without words),
   - the photo + the word T (the colour part of the fused vector replaced by T's).
   Also the share of colour T alone and of category K alone.
2. Feedback. For each held-out query: the plain top 10 (self excluded); like the first
   relevant result, dislike the first wrong one; search again with them. p@10 before and
   after, over all queries and over those whose first page held a wrong result (where there
   is room to gain), for relevance = same category and = same category and colour, with the
   shipped category re-rank and without it (the paper's ranking). The liked garment counts
   when it comes back (it is relevant; also reported left out); disliked ones cannot.

Usage (a trained catalogue in its own var dir; see docs/benchmarks.md)::

    DJANGO_VAR_DIR=$PWD/var/eval3000 .venv/bin/python bench/bench_refine.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--colours", type=int, default=3, help="target colours per query")
    parser.add_argument("--limit", type=int, default=None, help="held-out queries (all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
    import django

    django.setup()
    import numpy as np
    from django.db import connection

    from retrieval import search
    from retrieval.evaluation.queries import held_out_queries
    from retrieval.models import Garment
    from retrieval.search import refine

    model = search.require_active_model()
    queries = held_out_queries(model=model, limit=args.limit, seed=args.seed, probs=True)
    labels = {
        pk: (category, colour)
        for pk, category, colour in Garment.objects.filter(status="ready").values_list(
            "pk", "category__name", "colour"
        )
    }
    counts = Counter(labels.values())
    catalogue_colours = refine.catalogue_colours()
    rng = random.Random(args.seed)
    top = args.top
    print(
        f"model {model.name}: {len(labels)} garments, {len(queries)} held-out queries, "
        f"{len(catalogue_colours)} colours; {connection.vendor}",
        flush=True,
    )

    def share(ids, *, category=None, colour=None) -> float:
        ok = sum(
            1
            for gid in ids[:top]
            if (category is None or labels[gid][0] == category)
            and (colour is None or labels[gid][1] == colour)
        )
        return ok / top

    def run(query, **kwargs):
        return search.search_refined(
            fused=query["fused"],
            probs=query["probs"],
            model=model,
            top=top,
            exclude_garment_ids=query["exclude"],
            **kwargs,
        )

    # ------------------------------------------------------------------ 1. colour words
    colour_rows = []
    started = time.perf_counter()
    timings = defaultdict(list)
    for query in queries:
        category, own = query["label"].category, query["label"].colour
        targets = [
            c
            for c in catalogue_colours
            if c != own and counts[(category, c)] - (1 if own == c else 0) >= top
        ]
        for colour in rng.sample(targets, min(args.colours, len(targets))):
            t0 = time.perf_counter()
            plain = run(query).result
            t1 = time.perf_counter()
            words = refine.QueryWords(text=colour, colour=colour)
            worded = run(query, understood=words)
            t2 = time.perf_counter()
            vector_only = run(query, understood=words, colour_labels=False)
            timings["plain"].append(t1 - t0)
            timings["colour word"].append(t2 - t1)
            ids = {
                "plain": [h.garment_id for h in plain.hits],
                "vector": [h.garment_id for h in vector_only.result.hits],
                "word": [h.garment_id for h in worded.result.hits],
            }
            colour_rows.append(
                {
                    "query": query["id"],
                    "category": category,
                    "own": own,
                    "target": colour,
                    "applied": worded.colour_applied,
                    **{
                        f"{name}_both": share(found, category=category, colour=colour)
                        for name, found in ids.items()
                    },
                    **{
                        f"{name}_colour": share(found, colour=colour) for name, found in ids.items()
                    },
                    **{
                        f"{name}_category": share(found, category=category)
                        for name, found in ids.items()
                    },
                }
            )
    colour_seconds = time.perf_counter() - started

    def mean(rows, key) -> float:
        return round(100.0 * float(np.mean([r[key] for r in rows])), 1) if rows else float("nan")

    colour_summary = {
        "pairs": len(colour_rows),
        "queries": len({r["query"] for r in colour_rows}),
        "applied": sum(r["applied"] for r in colour_rows),
        **{
            f"{name}_{part}": mean(colour_rows, f"{name}_{part}")
            for name in ("plain", "vector", "word")
            for part in ("both", "colour", "category")
        },
        "ms_plain_p50": round(1000 * float(np.median(timings["plain"])), 1),
        "ms_word_p50": round(1000 * float(np.median(timings["colour word"])), 1),
        "seconds": round(colour_seconds, 1),
    }
    by_target = defaultdict(list)
    for row in colour_rows:
        by_target[row["target"]].append(row)
    colour_summary["by_target"] = {
        name: {
            "pairs": len(rows),
            "plain_both": mean(rows, "plain_both"),
            "vector_both": mean(rows, "vector_both"),
            "word_both": mean(rows, "word_both"),
        }
        for name, rows in sorted(by_target.items(), key=lambda kv: -len(kv[1]))
    }
    print("colour words:", json.dumps(colour_summary, indent=1), flush=True)

    # ------------------------------------------------------------------ 2. feedback
    from django.conf import settings

    variants = {
        "rocchio 0.5/0.15": (0.5, 0.15),
        "rocchio 0.75/0.25 (SMART)": (0.75, 0.25),
        "rocchio 1.0/0.5 (shipped)": (1.0, 0.5),
        "rocchio 1.5/0.75": (1.5, 0.75),
    }
    feedback_summary: dict = {}
    shipped_rerank = settings.RETRIEVAL_RERANK
    for rerank in (shipped_rerank, "none" if shipped_rerank != "none" else "category"):
        settings.RETRIEVAL_RERANK = rerank
        for relevance in ("category", "category+colour"):

            def relevant(gid, query, relevance=relevance) -> bool:
                category, colour = query["label"].category, query["label"].colour
                return labels[gid][0] == category and (
                    relevance == "category" or labels[gid][1] == colour
                )

            rows = []
            started = time.perf_counter()
            for query in queries:
                if relevance != "category" and not query["label"].colour:
                    continue
                before = [h.garment_id for h in run(query).result.hits]
                liked = next((g for g in before if relevant(g, query)), None)
                disliked = next((g for g in before if not relevant(g, query)), None)
                if liked is None and disliked is None:
                    continue
                row = {
                    "p_before": sum(relevant(g, query) for g in before) / top,
                    "new_before": sum(relevant(g, query) for g in before if g != liked) / top,
                    "wrong": disliked is not None,
                }
                feedback = refine.load_feedback(
                    model=model,
                    like=[liked] if liked else [],
                    dislike=[disliked] if disliked else [],
                )
                for name, (b, c) in variants.items():
                    after = run(query, feedback=feedback, like_weight=b, dislike_weight=c)
                    found = [h.garment_id for h in after.result.hits]
                    assert disliked is None or disliked not in found, "a disliked came back"
                    row[f"p_after:{name}"] = sum(relevant(g, query) for g in found) / top
                    # The judged garments left out: what the shopper sees that is new.
                    fresh = [g for g in found if g != liked]
                    row[f"new_after:{name}"] = sum(relevant(g, query) for g in fresh) / top
                rows.append(row)
            room = [r for r in rows if r["wrong"]]
            key = f"rerank={rerank}, relevant={relevance}"
            feedback_summary[key] = {
                "queries": len(rows),
                "with_a_wrong_result": len(room),
                "p@10_before": mean(rows, "p_before"),
                "p@10_before_with_wrong": mean(room, "p_before"),
                "p@10_before_liked_left_out": mean(rows, "new_before"),
                "seconds": round(time.perf_counter() - started, 1),
                **{
                    name: {
                        "p@10_after": mean(rows, f"p_after:{name}"),
                        "p@10_after_with_wrong": mean(room, f"p_after:{name}"),
                        "p@10_after_liked_left_out": mean(rows, f"new_after:{name}"),
                    }
                    for name in variants
                },
            }
            print(key, json.dumps(feedback_summary[key], indent=1), flush=True)
    settings.RETRIEVAL_RERANK = shipped_rerank
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "model": model.name,
                    "garments": len(labels),
                    "colour_words": colour_summary,
                    "feedback": feedback_summary,
                },
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
