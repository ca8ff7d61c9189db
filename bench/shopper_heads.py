"""Lever 1 and 2 of issue #14: the 2-layer head on FROZEN backbone features, trained on
(a) studio photos, (b) + "at home" augmented copies, (c) + real shoppers' photos of the
training senders (3 folds by sender), for a given backbone.

Machine: 2 vCPU AMD EPYC (shared), no GPU, 1 torch thread (SHOPPER_THREADS, at most 2),
nice 15. Needs the CNN cache
(``bench/shopper_extract.py``, same backbone). Command (from the repository root)::

    nice -n 15 .venv/bin/python bench/shopper_heads.py --backbone efficientnet_lite0 \\
        --methods studio,studio+shop,studio+aug1,studio+aug1+shop --epochs 20 \\
        --views plain,flip,lowres,salcrop,plain+flip,lowres+flip \\
        --json var/ml/results/heads_lite0.json

A method is ``+``-joined parts: ``studio`` (the training split of the 8,000), ``augN`` (the
cached augmented copy N of every training garment), ``shop`` / ``shopxR`` (the shoppers' photos
of the two other sender folds, repeated R times). Shoppers' figures are always on photos whose
sender was not trained on: with ``shop``, one head per fold, each measured on its held-out
fold, results pooled over the 989 photos; without it, one head, all 989 photos. Studio figures:
the held-out test split (10% per category) searched against the 8,000 minus itself; with
``shop`` the mean over the 3 fold heads. Head recipe = the product's ``features.train_head``
(AdamW, one-cycle, label smoothing 0.1, dropout 0.5, early stop on the studio val split,
epochs = ``auto_epochs`` unless ``--epochs``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shopper_lab as L
from shopper_lab import F


class Data:
    """Cached features of one backbone + labels."""

    def __init__(self, backbone: str, *, aug_sets=()):
        self.backbone = backbone
        self.cat, self.shop = L.Catalogue(), L.Shoppers()
        self.studio = L.extract(backbone, "studio", 0, None)
        self.shoppers = L.extract(backbone, "shoppers", 0, None)
        self.aug = {n: L.extract(backbone, n, 0, None) for n in aug_sets}
        classes = self.cat.classes
        missing = set(L.SHOPPER_CATEGORIES) - set(classes)
        assert not missing, missing
        self.shop_y = np.asarray([classes.index(c) for c in self.shop.categories], np.int64)
        self.lib_colour = F.colour_feature(L.rgb10_of(self.studio["amap"], self.studio["rgb7"]))
        self.shop_colour = F.colour_feature(
            L.rgb10_of(self.shoppers["amap"], self.shoppers["rgb7"])
        )

    def training_set(self, parts: list[str], fold: int | None):
        cat = self.cat
        train = cat.split["train"]
        xs, ys = [], []
        for p in parts:
            if p == "studio":
                xs.append(self.studio["pooled"][train])
                ys.append(cat.y[train])
            elif p.startswith("aug"):
                xs.append(self.aug[p]["pooled"])
                ys.append(cat.y[train])
            elif p.startswith("shop"):
                repeat = int(p.split("x")[1]) if "x" in p else 1
                rows = np.flatnonzero(self.shop.fold != fold)
                for _ in range(repeat):
                    xs.append(self.shoppers["pooled"][rows])
                    ys.append(self.shop_y[rows])
        return np.concatenate(xs), np.concatenate(ys)


def evaluate_head(
    d: Data,
    head,
    *,
    shop_rows=None,
    shop_pooled=None,
    min_confidence=0.0,
    shop_colour=None,
    studio_pooled=None,
):
    """(studio per-query results, shoppers per-query results) for one head. studio_pooled:
    the test split's query features when they went through a query-time view."""
    cat = d.cat
    lib_deep, _ = L.head_views(head, d.studio["pooled"])
    space = L.Space(lib_deep, d.lib_colour, cat.categories, cat.colours)
    test = cat.split["test"]
    deep, probs = L.head_views(
        head, d.studio["pooled"][test] if studio_pooled is None else studio_pooled
    )
    studio = L.per_query(
        space,
        deep=deep,
        colour=d.lib_colour[test],
        probs=probs,
        classes=cat.classes,
        categories=cat.categories[test],
        colours=cat.colours[test],
        exclude=test,
        min_confidence=min_confidence,
    )
    rows = np.arange(len(d.shop.rows)) if shop_rows is None else shop_rows
    pooled = (d.shoppers["pooled"] if shop_pooled is None else shop_pooled)[rows]
    colour = (d.shop_colour if shop_colour is None else shop_colour)[rows]
    deep, probs = L.head_views(head, pooled)
    shop = L.per_query(
        space,
        deep=deep,
        colour=colour,
        probs=probs,
        classes=cat.classes,
        categories=d.shop.categories[rows],
        min_confidence=min_confidence,
    )
    return studio, shop


def train(d: Data, parts, fold, epochs=None, seed=0):
    x, y = d.training_set(parts, fold)
    val = d.cat.split["val"]
    head, metrics = F.train_head(
        x,
        y,
        num_classes=len(d.cat.classes),
        epochs=epochs,
        seed=seed,
        val_pooled=d.studio["pooled"][val],
        val_labels=d.cat.y[val],
        class_names=d.cat.classes,
        backbone=d.backbone,
    )
    return head, metrics


def shopper_views(d: Data, views: list[str]) -> dict[str, np.ndarray]:
    """Query pooled features per view set (``plain``, ``flip``, ``lowres+flip``, ...): the
    mean of the views' cached pooled features; colour always from the plain photo."""
    cache = {"plain": d.shoppers["pooled"]}
    out = {}
    if "rule" in views:  # centre crop 80% only where the border is not plain
        from shopper_plain_border import border_fractions

        crop = border_fractions(d)["shoppers"] < 0.8
        cc = L.extract(d.backbone, "shoppers_cc80", 0, None)["pooled"]
        cache["rule"] = np.where(crop[:, None], cc, d.shoppers["pooled"])
    for vs in views:
        parts = vs.split("+")
        for v in parts:
            if v not in cache:
                cache[v] = L.extract(d.backbone, f"shoppers_{v}", 0, None)["pooled"]
        out[vs] = np.mean([cache[v] for v in parts], axis=0)
    return out


def run_method(d: Data, method: str, epochs=None, views=("plain",), studio_view=""):
    """One head (or one per sender fold with ``shop``), evaluated with each query view set."""
    parts = method.split("+")
    uses_shop = any(p.startswith("shop") for p in parts)
    pooled_views = shopper_views(d, list(views))
    studio_r, shop_r, studio_v = [], {v: [] for v in views}, []
    seconds, n_train = [], 0
    for fold in range(3) if uses_shop else [None]:
        head, metrics = train(d, parts, fold, epochs)
        seconds.append(metrics["seconds"])
        n_train = metrics["n_train"]
        rows = None if fold is None else np.flatnonzero(d.shop.fold == fold)
        for v in views:
            s, q = evaluate_head(d, head, shop_rows=rows, shop_pooled=pooled_views[v])
            shop_r[v].append(q)
        studio_r.append(s)
        if studio_view == "rule":
            from shopper_plain_border import border_fractions

            crop = border_fractions(d)["studio_test"] < 0.8
            cc = L.extract(d.backbone, "studiotest_cc80", 0, None)["pooled"]
            sv = np.where(crop[:, None], cc, d.studio["pooled"][d.cat.split["test"]])
            studio_v.append(evaluate_head(d, head, shop_rows=rows, studio_pooled=sv)[0])
        elif studio_view:
            sv = L.extract(d.backbone, f"studiotest_{studio_view}", 0, None)["pooled"]
            studio_v.append(evaluate_head(d, head, shop_rows=rows, studio_pooled=sv)[0])
        L.log(f"  {method} fold {fold}: {metrics}")
    cnn = float(d.studio["seconds"]) + sum(
        float(d.aug[p]["seconds"]) for p in parts if p.startswith("aug")
    )
    return [
        {
            "method": method,
            "views": v,
            "studio": L.summary(L.concat(studio_r)),
            "shoppers": L.summary(L.concat(shop_r[v])),
            "head_seconds": round(float(np.mean(seconds)), 1),
            "cnn_seconds_measured": round(cnn),
            "n_train": n_train,
            **({f"studio_{studio_view}": L.summary(L.concat(studio_v))} if studio_v else {}),
        }
        for v in views
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--methods", default="studio,studio+aug1,studio+aug1+shop")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--views", default="plain", help="query view sets, e.g. plain,flip+plain")
    ap.add_argument(
        "--studio-view",
        default="",
        help="also the studio test queries through "
        "this view (e.g. cc80; needs the studiotest_<view> cache)",
    )
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    augs = sorted({p for m in methods for p in m.split("+") if p.startswith("aug")})
    d = Data(args.backbone, aug_sets=augs)
    results = []
    print(L.TABLE_HEADER)
    for m in methods:
        started = time.perf_counter()
        for r in run_method(d, m, args.epochs, args.views.split(","), args.studio_view):
            r["backbone"] = args.backbone
            r["epochs"] = args.epochs
            r["wall_seconds"] = round(time.perf_counter() - started)
            results.append(r)
            if args.studio_view:
                sv = r[f"studio_{args.studio_view}"]
                print(
                    f"  studio queries through {args.studio_view}: rerank p@5 "
                    f"{sv['rerank_p5']:.3f}, cc@10 fused-deep "
                    f"{sv['fused_cc10'] - sv['deep_cc10']:+.3f}",
                    flush=True,
                )
            for mode in ("rerank", "fused", "deep"):
                print(
                    L.table_row(
                        f"{args.backbone} {m} [{r['views']}]",
                        r["shoppers"],
                        r["studio"],
                        mode,
                        f"head {r['head_seconds']} s, CNN {r['cnn_seconds_measured']} s",
                    ),
                    flush=True,
                )
            if args.json:  # after every method: interim figures survive an interruption
                os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
                with open(args.json, "w") as fh:
                    json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
