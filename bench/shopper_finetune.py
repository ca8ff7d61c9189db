"""Lever 3 of issue #14: fine-tune the top of efficientnet_lite0 on cached activations.

The CNN ran once per (image, augmentation) and cached, besides the pooled feature, the
activations at two cut points (``bench/partial_finetune.TapNet``): ``a`` = output of block 11
(the first 7x7 block; above it: blocks 12-15 + head conv, 2.4M parameters) and ``b`` = output
of block 14 (above it: block 15 + head conv, 1.0M parameters). Here the layers above the cut +
the 2-layer head are trained on those cached activations (BatchNorm statistics frozen, random
horizontal flip of the 7x7 maps, AdamW, one-cycle; blocks lr 2e-4, head lr 1e-3, FC1/FC2
initialised from a head trained on the frozen pooled features). The library (8,000 garments)
and the queries are then re-embedded from their cached activations: pooled, deep, the
channel-mean map (colour positions) and the category probabilities all come from the
fine-tuned top.

Machine: 2 vCPU AMD EPYC (shared), no GPU, 1 torch thread (SHOPPER_THREADS, at most 2),
nice 15. Command::

    nice -n 15 .venv/bin/python bench/shopper_finetune.py --cut b --parts studio+aug1 \\
        --epochs 4 --json var/ml/results/ft_b_aug1.json

Parts as ``bench/shopper_heads.py`` (``shop`` = shoppers' photos of the other two sender
folds: one model per fold, each measured on its held-out senders).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shopper_lab as L
from partial_finetune import TapNet, build_lite, train_top
from shopper_heads import Data, train
from shopper_lab import F

BACKBONE = "efficientnet_lite0"


def taps_of(d: Data, parts, fold, key):
    train_rows = d.cat.split["train"]
    xs, ys = [], []
    for p in parts:
        if p == "studio":
            xs.append(d.studio[key][train_rows])
            ys.append(d.cat.y[train_rows])
        elif p.startswith("aug"):
            xs.append(d.aug[p][key])
            ys.append(d.cat.y[train_rows])
        elif p.startswith("shop"):
            repeat = int(p.split("x")[1]) if "x" in p else 1
            rows = np.flatnonzero(d.shop.fold != fold)
            for _ in range(repeat):
                xs.append(d.shoppers[key][rows])
                ys.append(d.shop_y[rows])
    return np.concatenate(xs), np.concatenate(ys)


def evaluate_top(d: Data, top, key, shop_rows):
    cat = d.cat
    pooled, amap, deep, probs = top.features(d.studio[key])
    colour = F.colour_feature(L.rgb10_of(amap, d.studio["rgb7"]))
    space = L.Space(deep, colour, cat.categories, cat.colours)
    test = cat.split["test"]
    studio = L.per_query(
        space,
        deep=deep[test],
        colour=colour[test],
        probs=probs[test],
        classes=cat.classes,
        categories=cat.categories[test],
        colours=cat.colours[test],
        exclude=test,
    )
    _, amap_q, deep_q, probs_q = top.features(d.shoppers[key][shop_rows])
    colour_q = F.colour_feature(L.rgb10_of(amap_q, d.shoppers["rgb7"][shop_rows]))
    shop = L.per_query(
        space,
        deep=deep_q,
        colour=colour_q,
        probs=probs_q,
        classes=cat.classes,
        categories=d.shop.categories[shop_rows],
    )
    return studio, shop, {"lib_pooled": pooled, "lib_probs": probs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cut", choices=("a", "b"), default="b")
    ap.add_argument("--parts", default="studio+aug1")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr-blocks", type=float, default=2e-4)
    ap.add_argument("--folds", default="0,1,2", help="with shop: which sender folds to run")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    parts = args.parts.split("+")
    key = f"tap_{args.cut}"
    d = Data(BACKBONE, aug_sets=[p for p in parts if p.startswith("aug")])
    uses_shop = any(p.startswith("shop") for p in parts)
    folds = [int(f) for f in args.folds.split(",")] if uses_shop else [None]
    net = build_lite(BACKBONE)
    start = TapNet(net).first + 1 if args.cut == "a" else TapNet(net).last
    val = d.cat.split["val"]
    studio_r, shop_r, seconds = [], [], []
    for fold in folds:
        head, _ = train(d, parts, fold)  # frozen-feature head: the initial FC1/FC2
        x, y = taps_of(d, parts, fold, key)
        L.log(f"cut {args.cut} (blocks {start}..), fold {fold}: {len(x)} training rows")
        top, info = train_top(
            net,
            start,
            x,
            y,
            num_classes=len(d.cat.classes),
            epochs=args.epochs,
            lr_blocks=args.lr_blocks,
            val=(d.studio[key][val], d.cat.y[val]),
            init_head=head,
            log=L.log,
        )
        seconds.append(info["seconds"])
        rows = np.arange(len(d.shop.rows)) if fold is None else np.flatnonzero(d.shop.fold == fold)
        s, q, _ = evaluate_top(d, top, key, rows)
        studio_r.append(s)
        shop_r.append(q)
        L.log(
            f"  fold {fold}: shoppers rerank p@5 {np.mean(q['rerank_p5']):.3f} "
            f"head {np.mean(q['correct']):.3f}; studio rerank p@5 {np.mean(s['rerank_p5']):.3f}"
        )
        if fold is None or fold == folds[0]:
            path = os.path.join(L.CACHE, "models", f"top_{args.cut}_{args.parts}_f{fold}.pt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.save(top.state_dict(), path)
    studio, shop = L.summary(L.concat(studio_r)), L.summary(L.concat(shop_r))
    name = f"lite0 fine-tune cut {args.cut} ({args.epochs} ep) {args.parts}"
    extra = (
        f"train {np.mean(seconds):.0f} s/model on cached taps; folds {args.folds}"
        if uses_shop
        else f"train {np.mean(seconds):.0f} s on cached taps"
    )
    for mode in ("rerank", "fused", "deep"):
        print(L.table_row(name, shop, studio, mode, extra), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "method": name,
                    "studio": studio,
                    "shoppers": shop,
                    "train_seconds": seconds,
                    "args": vars(args),
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
