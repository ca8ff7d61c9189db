"""Levers 4 and 5 of issue #14: query-time views and re-rank variants, for one head recipe.

Query-time views of the shoppers' photos (cached by ``bench/shopper_extract.py``): mirrored,
centre crops, the product's activation-map crop, 4 corner crops; the query's pooled feature is
the mean of the chosen views' (colour always from the plain photo). Re-rank variants: minimum
confidence for the re-rank, a class-prior correction of the head's probabilities
(``p / prior^tau``: the catalogue's class frequencies are not the shoppers'), and the product's
cluster search (K-means in the fused space, k = #categories, 1-3 probes) instead of exact.

Machine: 2 vCPU AMD EPYC (shared), no GPU, 1 torch thread (SHOPPER_THREADS, at most 2),
nice 15. Command::

    nice -n 15 .venv/bin/python bench/shopper_query.py --parts studio+aug1 \\
        --views plain,flip,cc80,plain+flip,plain+cc80,plain+flip+cc80 \\
        --json var/ml/results/query.json

The head is trained as in ``bench/shopper_heads.py`` (with ``shop`` parts: one per sender fold,
measured on its held-out senders).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shopper_lab as L
from shopper_heads import Data, train
from shopper_lab import F


def cluster_rank(space, qfused, probs, classes, categories, k_clusters, probes, seed=0):
    """p@5 of the product's clustered re-rank (MemoryIndex semantics) with exact fallback."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k_clusters, n_init=1, random_state=seed).fit(space.fused)
    cent, labels = km.cluster_centers_.astype(np.float32), km.labels_
    members = [np.flatnonzero(labels == c) for c in range(k_clusters)]
    pred = np.asarray(classes)[probs.argmax(1)]
    p5 = []
    for qi in range(len(qfused)):
        q = qfused[qi]
        order = np.argsort(((cent - q) ** 2).sum(1), kind="stable")

        def search(allowed, top, q=q, order=order):
            n = probes
            while True:
                cand = np.concatenate([members[c] for c in order[:n]])
                if allowed is not None:
                    cand = cand[allowed[cand]]
                if len(cand) >= top or n >= k_clusters:
                    break
                n = min(k_clusters, max(2 * n, n + 1))
            dist = ((space.fused[cand] - q) ** 2).sum(1)
            return cand[np.argsort(dist, kind="stable")[:top]]

        first = search(space.categories == pred[qi], 5)
        if len(first) < 5:
            others = np.ones(len(space.fused), bool)
            others[first] = False
            first = np.concatenate([first, search(others, 5 - len(first))])
        p5.append(float((space.categories[first] == categories[qi]).mean()))
    return np.asarray(p5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--parts", default="studio+aug1")
    ap.add_argument("--views", default="plain,flip,plain+flip")
    ap.add_argument("--confidence", default="0,0.3,0.5")
    ap.add_argument("--prior-tau", default="0,0.5,1")
    ap.add_argument("--probes", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    parts = args.parts.split("+")
    d = Data(args.backbone, aug_sets=[p for p in parts if p.startswith("aug")])
    views = {"plain": d.shoppers["pooled"]}
    for v in {v for vs in args.views.split(",") for v in vs.split("+")} - {"plain"}:
        if v == "tiles":
            views[v] = np.mean(
                [
                    L.extract(args.backbone, f"shoppers_tile{k}", 0, None)["pooled"]
                    for k in range(4)
                ],
                axis=0,
            )
        else:
            views[v] = L.extract(args.backbone, f"shoppers_{v}", 0, None)["pooled"]
    uses_shop = any(p.startswith("shop") for p in parts)
    folds = [0, 1, 2] if uses_shop else [None]
    heads = {f: train(d, parts, f, args.epochs)[0] for f in folds}
    results = {}

    def run(label, pooled_q, min_conf=0.0, tau=0.0):
        st, sh = [], []
        for f, head in heads.items():
            rows = np.arange(len(d.shop.rows)) if f is None else np.flatnonzero(d.shop.fold == f)
            lib_deep, _ = L.head_views(head, d.studio["pooled"])
            space = L.Space(lib_deep, d.lib_colour, d.cat.categories, d.cat.colours)
            deep, probs = L.head_views(head, pooled_q[rows])
            if tau:
                prior = (
                    np.bincount(d.cat.y[d.cat.split["train"]], minlength=len(d.cat.classes)) + 1.0
                )
                probs = probs / (prior / prior.sum()) ** tau
                probs = probs / probs.sum(1, keepdims=True)
            sh.append(
                L.per_query(
                    space,
                    deep=deep,
                    colour=d.shop_colour[rows],
                    probs=probs,
                    classes=d.cat.classes,
                    categories=d.shop.categories[rows],
                    min_confidence=min_conf,
                )
            )
            test = d.cat.split["test"]
            deep_s, probs_s = L.head_views(head, d.studio["pooled"][test])
            if tau:
                probs_s = probs_s / (prior / prior.sum()) ** tau
            st.append(
                L.per_query(
                    space,
                    deep=deep_s,
                    colour=d.lib_colour[test],
                    probs=probs_s,
                    classes=d.cat.classes,
                    categories=d.cat.categories[test],
                    colours=d.cat.colours[test],
                    exclude=test,
                    min_confidence=min_conf,
                )
            )
        shop, studio = L.summary(L.concat(sh)), L.summary(L.concat(st))
        results[label] = {"shoppers": shop, "studio": studio}
        print(L.table_row(f"{args.parts} | {label}", shop, studio, "rerank"), flush=True)

    print(L.TABLE_HEADER)
    for vs in args.views.split(","):
        pooled_q = np.mean([views[v] for v in vs.split("+")], axis=0)
        run(f"views {vs}", pooled_q)
    for c in [float(x) for x in args.confidence.split(",") if float(x) > 0]:
        run(f"re-rank min confidence {c}", views["plain"], min_conf=c)
    for t in [float(x) for x in args.prior_tau.split(",") if float(x) > 0]:
        run(f"prior correction tau {t}", views["plain"], tau=t)
    # cluster search (the product's), plain views
    for probes in [int(p) for p in args.probes.split(",") if p]:
        sh = []
        for f, head in heads.items():
            rows = np.arange(len(d.shop.rows)) if f is None else np.flatnonzero(d.shop.fold == f)
            lib_deep, _ = L.head_views(head, d.studio["pooled"])
            space = L.Space(lib_deep, d.lib_colour, d.cat.categories, d.cat.colours)
            deep, probs = L.head_views(head, views["plain"][rows])
            qf = F.fuse(deep, d.shop_colour[rows])
            sh.append(
                cluster_rank(
                    space,
                    qf,
                    probs,
                    d.cat.classes,
                    d.shop.categories[rows],
                    len(d.cat.classes),
                    probes,
                )
            )
        p5 = np.concatenate(sh)
        results[f"clustered probes {probes}"] = {"shoppers_rerank_p5": float(p5.mean())}
        print(
            f"| {args.parts} | clustered re-rank, probes {probes} | shoppers p@5 {p5.mean():.3f} |",
            flush=True,
        )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
