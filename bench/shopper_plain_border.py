"""Is a query photo a studio shot (plain background) or a shopper's photo? (issue #14)

Rule for the query-time centre crop (``RETRIEVAL_QUERY_CROP=centre``): crop (keep the middle
80%) only photos whose border is NOT plain. Plain border = at least ``--min-fraction`` (0.8, the
product's) of the pixels in a 3-pixel frame lie within RGB distance 26 of the frame's median
colour. Prints how the rule sorts the 806 held-out studio
photos and the 989 shoppers' photos. No CNN; seconds.

Machine: 2 vCPU AMD EPYC (shared), no GPU. Command::

    nice -n 15 .venv/bin/python bench/shopper_plain_border.py [--min-fraction 0.8]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shopper_lab as L

from retrieval.features.framing import BORDER_MIN_FRACTION


def plain_border(img) -> float:
    """Fraction of the border frame's pixels close to its median colour (1.0 = uniform): the
    product's rule (``retrieval.features.framing``), read as the product reads it
    (``extractor._rule_view``: at most 256 px on the longer side; these photos are smaller)."""
    from retrieval.features.extractor import _rule_view
    from retrieval.features.framing import border_fraction

    return border_fraction(_rule_view(img.convert("RGB")))


def border_fractions(d=None) -> dict[str, np.ndarray]:
    """Plain-border fraction of the held-out studio test photos and of the shoppers' photos,
    cached in var/ml/border.npz."""
    path = os.path.join(L.CACHE, "border.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    cat, shop = (d.cat, d.shop) if d is not None else (L.Catalogue(), L.Shoppers())
    out = {
        "studio_test": np.asarray([plain_border(cat.image(int(i))) for i in cat.split["test"]]),
        "shoppers": np.asarray([plain_border(shop.image(i)) for i in range(len(shop.rows))]),
    }
    np.savez(path, **out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-fraction", type=float, default=BORDER_MIN_FRACTION)
    args = ap.parse_args()
    fractions = border_fractions()
    studio, shops = fractions["studio_test"], fractions["shoppers"]
    for t in (0.8, 0.9, 0.95, args.min_fraction):
        print(
            f"plain if >= {t}: studio test photos plain {np.mean(studio >= t):.3f} "
            f"({int(np.sum(studio < t))} of {len(studio)} would be cropped); shoppers' photos "
            f"plain {np.mean(shops >= t):.3f} ({int(np.sum(shops >= t))} of {len(shops)} "
            f"would not be cropped)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
