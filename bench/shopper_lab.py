"""Shoppers' photos (issue #14): data, CNN cache and evaluation shared by the bench scripts.

Catalogue = the first 8,000 rows of ``shared/data/fashion-product-images-small.zip`` (the import's
reader, category = articleType), split per category into train / val / test exactly as
``training.split_catalogue`` (seed 0). Shoppers = ``shared/data/shopper-photos.zip`` (989 photos,
``sender`` column), split into 3 folds *by sender* (:func:`sender_folds`).

CNN outputs are cached per (backbone, image set) in ``var/ml/<backbone>/<set>.npz``: pooled
``(N, D)``, channel-mean map ``(N, 7, 7)``, the 7x7 RGB grid ``(N, 7, 7, 3)`` (colour positions
can be re-read for any map), and for lite0 the two cut activations of
``bench/partial_finetune.TapNet`` (fp16). Nothing is computed twice.

Retrieval for research (stated in docs/benchmarks.md): exact nearest neighbours over the 8,000
garments in the deep (L2-normalised FC1) or fused space (normalised deep + 0.6 x lab_mean
colour, the product's defaults), and the category re-rank (the head's predicted category's
garments first, nearest first, then the rest of the fused ranking: ``rerank.search_reranked``
without clusters); optionally the product's cluster search (K-means k = #categories, 1 probe).
p@k = ``evaluation.precision_at`` (same category; cc = same category and baseColour).

Machine: 2 vCPU AMD EPYC, no GPU; every job ``nice -n 15``; 1 torch thread by default
(SHOPPER_THREADS=2 allowed).
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

import django  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

# retrieval.catalogue's package imports the Django models: the app registry must be ready
# (no database is opened: only the zip reader is used).
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
django.setup()

from retrieval import features as F  # noqa: E402
from retrieval import training  # noqa: E402
from retrieval.catalogue.source import CatalogRow, CatalogSource, read_rows  # noqa: E402
from retrieval.images import pooled_grid, resize_rgb  # noqa: E402

# At most 2 (the brief); 1 by default: on 2 cores shared with other jobs, OpenMP's second
# thread spin-waits for a busy core (retrieval/features.py measured lite0 collapsing 2-10x).
torch.set_num_threads(int(os.environ.get("SHOPPER_THREADS", "1")))

DATA = os.path.join(REPO, "..", "shared", "data")
CATALOGUE_ZIP = os.path.join(DATA, "fashion-product-images-small.zip")
SHOPPER_ZIP = os.path.join(DATA, "shopper-photos.zip")
CACHE = os.path.join(REPO, "var", "ml")
LIMIT = 8000
SHOPPER_CATEGORIES = ("Tshirts", "Shirts", "Dresses", "Shorts", "Skirts", "Sweatshirts", "Tops")


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# ----------------------------------------------------------------------------- data


class Catalogue:
    def __init__(self, limit: int = LIMIT, seed: int = 0) -> None:
        limits = {"max_file_bytes": 50 * 1024 * 1024, "max_total_bytes": 8 * 1024**3}
        self.source = CatalogSource(Path(CATALOGUE_ZIP), **limits)
        self.source.__enter__()
        rows = [
            r
            for r in read_rows(self.source, category_field="articleType", limit=limit)
            if isinstance(r, CatalogRow)
        ]
        self.rows = rows
        self.skus = [r.sku for r in rows]
        self.categories = np.asarray([r.category for r in rows])
        self.colours = np.asarray([r.colour for r in rows])
        self.classes = sorted(set(self.categories.tolist()))
        self.y = np.asarray([self.classes.index(c) for c in self.categories], np.int64)
        self.split = split_catalogue(skus=self.skus, labels=self.categories.tolist(), seed=seed)

    def image(self, i: int) -> Image.Image:
        return Image.open(io.BytesIO(self.source.read(self.rows[i].image))).convert("RGB")


def split_catalogue(*, skus, labels, seed=0) -> dict[str, np.ndarray]:
    """The product's split (``retrieval.training.split_catalogue``) as sorted index arrays."""
    split = training.split_catalogue(skus=skus, labels=labels, seed=seed)
    return {k: np.asarray(sorted(v), np.int64) for k, v in split.items()}


class Shoppers:
    def __init__(self) -> None:
        self.zip = zipfile.ZipFile(SHOPPER_ZIP)
        rows = list(csv.DictReader(io.StringIO(self.zip.read("styles.csv").decode())))
        self.rows = rows
        self.categories = np.asarray([r["articleType"] for r in rows])
        self.senders = np.asarray([r["sender"] for r in rows])
        self.fold = sender_folds(self.senders)

    def image(self, i: int) -> Image.Image:
        return Image.open(io.BytesIO(self.zip.read(self.rows[i]["image"]))).convert("RGB")


def sender_folds(senders: np.ndarray, k: int = 3) -> np.ndarray:
    """Fold id per photo: senders (largest first) to the fold with the fewest photos so far;
    ties by a hash of the sender. Every sender's photos share one fold."""
    counts = collections.Counter(senders.tolist())
    order = sorted(counts, key=lambda s: (-counts[s], hashlib.sha1(s.encode()).hexdigest()))
    load, assign = [0] * k, {}
    for s in order:
        f = int(np.argmin(load))
        assign[s] = f
        load[f] += counts[s]
    return np.asarray([assign[s] for s in senders.tolist()], np.int64)


# ----------------------------------------------------------------------------- CNN cache

_NETS: dict = {}


def tapnet(backbone: str, taps: bool):
    from partial_finetune import TapNet, build_lite

    key = (backbone, taps)
    if key not in _NETS:
        import warnings

        F.keep_freed_memory_for_reuse()
        net = TapNet(build_lite(backbone), taps=taps).eval()
        example = torch.zeros((4, 3, 224, 224), dtype=torch.uint8)
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # TorchScript: as retrieval.features.freeze_backbone
            net = torch.jit.freeze(torch.jit.trace(net, example, check_trace=False))
        _NETS[key] = net
    return _NETS[key]


def cache_path(backbone: str, name: str) -> str:
    return os.path.join(CACHE, backbone, f"{name}.npz")


def extract(
    backbone: str,
    name: str,
    n: int,
    make_image,
    *,
    taps: bool | None = None,
    micro_batch: int = 4,
    workers: int = 0,
) -> dict[str, np.ndarray]:
    """Run (or load from cache) the CNN over ``make_image(i)`` for i in range(n)."""
    path = cache_path(backbone, name)
    if os.path.exists(path):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if taps is None:
        taps = backbone == "efficientnet_lite0"
    net = tapnet(backbone, taps)
    started = time.perf_counter()
    out = collections.defaultdict(list)
    loader = torch.utils.data.DataLoader(
        _ImageSet(n, make_image),
        batch_size=micro_batch,
        num_workers=workers,
        collate_fn=lambda rows: np.stack(rows),
    )
    with torch.inference_mode():
        for b, arrays in enumerate(loader):
            x = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
            res = net(x)
            out["pooled"].append(res[0].numpy())
            out["amap"].append(res[1].numpy())
            out["rgb7"].append(pooled_grid(arrays))
            if taps:
                out["tap_a"].append(res[2].numpy().astype(np.float16))
                out["tap_b"].append(res[3].numpy().astype(np.float16))
            if b % 250 == 0:
                log(
                    f"  {backbone}/{name}: {b * micro_batch}/{n} "
                    f"({b * micro_batch / max(1e-9, time.perf_counter() - started):.1f} img/s)"
                )
    result = {k: np.concatenate(v) for k, v in out.items()}
    result["seconds"] = np.float64(time.perf_counter() - started)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **result)
    log(
        f"  {backbone}/{name}: {n} images in {result['seconds']:.0f} s "
        f"({n / result['seconds']:.1f} img/s)"
    )
    return result


class _ImageSet(torch.utils.data.Dataset):
    def __init__(self, n, make_image):
        self.n, self.make_image = n, make_image

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return resize_rgb(self.make_image(i))


def rgb10_of(amap: np.ndarray, rgb7: np.ndarray) -> np.ndarray:
    return F.pooled_rgb_at(rgb7, F.colour_positions(amap))


# ----------------------------------------------------------------------------- views


def centre_crop(img: Image.Image, frac: float) -> Image.Image:
    w, h = img.size
    dw, dh = w * (1 - frac) / 2, h * (1 - frac) / 2
    return img.crop((round(dw), round(dh), round(w - dw), round(h - dh)))


def flip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


# ----------------------------------------------------------------------------- evaluation


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Space:
    """Library vectors (deep normalised, fused) + labels for exact search."""

    def __init__(self, deep, colour, categories, colours, weight=F.DEFAULT_COLOUR_WEIGHT):
        self.deep = l2n(deep).astype(np.float32)
        self.fused = F.fuse(deep, colour, weight=weight)
        self.categories = np.asarray(categories)
        self.colours = np.asarray(colours)
        self.weight = weight


def _topk(lib: np.ndarray, q: np.ndarray, k: int, exclude=None, allowed=None) -> np.ndarray:
    d = (q * q).sum(1)[:, None] - 2 * q @ lib.T + (lib * lib).sum(1)[None, :]
    if exclude is not None:
        ok = exclude >= 0
        d[np.flatnonzero(ok), exclude[ok]] = np.inf
    if allowed is not None:
        d = np.where(allowed, d, np.inf)
    part = np.argpartition(d, k, axis=1)[:, :k]
    order = np.take_along_axis(d, part, 1).argsort(1, kind="stable")
    return np.take_along_axis(part, order, 1), np.take_along_axis(
        np.take_along_axis(d, part, 1), order, 1
    )


def per_query(
    space: Space,
    *,
    deep,
    colour,
    probs,
    classes,
    categories,
    colours=None,
    exclude=None,
    k=10,
    min_confidence: float = 0.0,
) -> dict[str, np.ndarray]:
    """Per-query results (exact search) for modes deep / fused / rerank: ``<mode>_p5``,
    ``<mode>_p10``, ``<mode>_cc10`` (NaN where the query's colour is unknown), ``correct``
    (head's top-1), ``category``. probs ``(Q, C)`` over ``classes``. Re-rank: the predicted
    category's garments first (nearest in the fused space), then the plain fused ranking;
    the plain ranking where the top probability is below ``min_confidence``."""
    qdeep = l2n(deep).astype(np.float32)
    qfused = F.fuse(deep, colour, weight=space.weight)
    categories = np.asarray(categories)
    pred = np.asarray(classes)[probs.argmax(1)]
    confident = probs.max(1) >= min_confidence
    ranked = {
        "deep": _topk(space.deep, qdeep, k, exclude)[0],
        "fused": _topk(space.fused, qfused, k, exclude)[0],
    }
    rerank = ranked["fused"].copy()
    for c in np.unique(pred[confident]):
        rows = np.flatnonzero((pred == c) & confident)
        allowed = (space.categories == c)[None, :]
        first, dist = _topk(
            space.fused, qfused[rows], k, None if exclude is None else exclude[rows], allowed
        )
        for j, r in enumerate(rows):
            got = [int(g) for g, dd in zip(first[j], dist[j], strict=True) if np.isfinite(dd)]
            rest = [int(g) for g in ranked["fused"][r] if int(g) not in got]
            rerank[r] = (got + rest)[:k]
    ranked["rerank"] = rerank
    out = {"correct": (pred == categories).astype(np.float64), "category": categories}
    for mode, idx in ranked.items():
        hit = space.categories[idx] == categories[:, None]
        out[f"{mode}_p5"] = hit[:, :5].mean(1)
        out[f"{mode}_p10"] = hit[:, :10].mean(1)
        if colours is not None:
            cq = np.char.lower(np.asarray(colours).astype(str))
            cc = hit & (np.char.lower(space.colours[idx].astype(str)) == cq[:, None])
            out[f"{mode}_cc10"] = np.where(cq != "", cc[:, :10].mean(1), np.nan)
    return out


def concat(results: list[dict]) -> dict:
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]}


def summary(r: dict) -> dict:
    """Means of per-query results, and per-category p@5 of each mode."""
    out = {"n": len(r["category"]), "head_acc": round(float(r["correct"].mean()), 4)}
    for key, v in r.items():
        if key not in ("category", "correct"):
            out[key] = round(float(np.nanmean(v)), 4)
    for mode in ("deep", "fused", "rerank"):
        out[f"{mode}_per_cat"] = {
            c: round(float(r[f"{mode}_p5"][r["category"] == c].mean()), 4)
            for c in np.unique(r["category"])
        }
    return out


def head_views(head: F.ClothingHead, pooled: np.ndarray):
    return F.deep_from_pooled(head, pooled), F.classify(head, pooled)


def table_row(name: str, shop: dict, studio: dict, mode: str = "rerank", extra: str = "") -> str:
    cats = [c for c in SHOPPER_CATEGORIES]
    per = shop[f"{mode}_per_cat"]
    return (
        f"| {name} | {mode} | {shop[f'{mode}_p5']:.3f} | {shop[f'{mode}_p10']:.3f} | "
        + " | ".join(f"{per.get(c, float('nan')):.2f}" for c in cats)
        + f" | {shop['head_acc']:.3f} | {studio[f'{mode}_p5']:.3f} | "
        f"{studio['fused_cc10'] - studio['deep_cc10']:+.3f} | {extra} |"
    )


TABLE_HEADER = (
    "| method | ranking | shoppers p@5 | shoppers p@10 | "
    + " | ".join(SHOPPER_CATEGORIES)
    + " | shoppers head acc | studio p@5 | studio cc@10 fused-deep | notes |\n|"
    + "---|" * (len(SHOPPER_CATEGORIES) + 8)
)
