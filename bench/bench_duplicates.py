"""Near-duplicate photos: which signal flags copies and spares distinct garments (issue #16).

On a private embedded PostgreSQL + Redis (DJANGO_VAR_DIR=var/bench-dups, kept between runs):
import ``--garments`` rows of the shared sample catalogue, index them, train a head (the
product's own code), then

- copies: for ``--originals`` catalogue photos, one copy per change (resized to 70% and to
  200%, re-compressed at JPEG quality 40, resized to 70% and re-compressed at quality 60,
  cropped by 5% on each side, brightened by 15%), run through the same CNN path as an upload;
- distinct garments: every catalogue photo against the rest of the catalogue, most of all
  the garments of its own category (studio shots on white look alike).

The CNN's vectors are cached (``var/bench-dups/vectors-*.npz``): a second run with the same
arguments only recomputes the signals and the table.

Signals compared, each on the stored catalogue photo and on the copy:

- ``phash64``: the classic 64-bit perceptual hash (the first rule's), Hamming bits;
- ``dhash64``: a 64-bit difference hash (grey 9x8, one bit per horizontal step), Hamming bits;
- ``phash256``: the product's pHash (:func:`retrieval.images.perceptual_hash`: a 16x16
  low-frequency block of a 64x64 thumbnail), Hamming bits;
- ``grey16``, ``rgb16``, ``rgb8``: 1 - the correlation of two box-filtered thumbnails (grey
  16x16, colour 16x16, colour 8x8; brightness and contrast cancel out); ``thumb16``,
  ``thumb8``: the product's (:func:`retrieval.images.thumbnail_distance`: the stored 16x16
  colour thumbnail, compared at 16 or 8);
- ``fused``: L2 distance of the fused vectors (the product's trained head).

A flag is a (photo, catalogue garment) pair the rule accepts, among the photo's k nearest
garments by fused distance (what indexing looks at: "top k", each k of ``--candidates``) or,
for a signal alone, among the whole catalogue. Recall: share of copies whose original is
flagged; precision: flags naming the right original / all flags. The sample catalogue holds
the same photo under two ids (re-encoded, so not exact duplicates, which the import skips):
such pairs (same size, full-size pixels within SAME_PHOTO_MAD levels on average) are set
aside in "precision" and counted as false in "precision_raw" (a lower bound). The last row,
"shipped", is the product's rule (``retrieval.search.duplicates.is_near_duplicate`` with the
``RETRIEVAL_NEAR_DUPLICATE_*`` settings).

    nice -n 10 .venv/bin/python bench/bench_duplicates.py --garments 3000 --originals 500
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"
sys.path.insert(0, str(ROOT))

#: The changes the issue names; the first four are "resized/re-compressed" (the target's).
RESIZED_OR_RECOMPRESSED = ("resized 70%", "resized 200%", "recompressed q40", "resized 70% + q60")
#: Two catalogue photos whose full-size pixels differ by at most this on average (0-255, same
#: size) are the same photo: a flag between them is not counted either way.
SAME_PHOTO_MAD = 4.0


def changes() -> dict[str, Callable]:
    from PIL import Image, ImageEnhance

    def jpeg(img, quality):
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
        return Image.open(io.BytesIO(out.getvalue())).convert("RGB")

    def resize(img, f):
        return img.resize((max(8, round(img.width * f)), max(8, round(img.height * f))))

    def crop(img, f=0.05):
        dx, dy = round(img.width * f), round(img.height * f)
        return img.crop((dx, dy, img.width - dx, img.height - dy))

    return {
        "resized 70%": lambda im: jpeg(resize(im, 0.7), 90),
        "resized 200%": lambda im: jpeg(resize(im, 2.0), 90),
        "recompressed q40": lambda im: jpeg(im, 40),
        "resized 70% + q60": lambda im: jpeg(resize(im, 0.7), 60),
        "cropped 5%": lambda im: jpeg(crop(im), 90),
        "brightened 15%": lambda im: jpeg(ImageEnhance.Brightness(im).enhance(1.15), 90),
    }


def setup(garments: int):
    from retrieval import catalogue, indexing, training
    from retrieval.models import FeatureModel, Garment
    from retrieval.selectors import active_model

    # A run stopped while indexing: keep the garments indexed so far, drop the rest (the
    # model trains on what is indexed; nothing else would run the CNN again).
    if Garment.objects.exists() and not FeatureModel.objects.exists():
        Garment.objects.exclude(status=Garment.Status.READY).delete()
    elif Garment.objects.count() < garments:
        started = time.perf_counter()
        job = catalogue.import_catalog(source=SAMPLE, limit=garments)
        print(f"import: {job.rows} rows, {len(job.problems)} problems", file=sys.stderr)
        dups = [p for p in job.problems if p.get("code") == "duplicate_image"]
        print(f"  exact duplicates skipped: {len(dups)}", file=sys.stderr)
        indexing.wait_for_garments(
            garments=Garment.objects.filter(import_job=job), poll_seconds=0.5
        )
        print(f"indexed in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    model = active_model()
    if model is None or not FeatureModel.objects.filter(active=True).exists():
        started = time.perf_counter()
        model = training.train_model(epochs=20)
        print(f"trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return model


# --------------------------------------------------------------------------- signals


def _dct(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def phash256(img) -> np.ndarray:
    """(4,) uint64: the product's 256-bit pHash (:func:`retrieval.images.perceptual_hash`: a
    64x64 grey thumbnail's 16x16 lowest DCT frequencies)."""
    from retrieval import images

    return np.frombuffer(images.perceptual_hash(img), dtype=">u8").astype(np.uint64)


def dhash64(img) -> np.ndarray:
    """(1,) uint64: difference hash, grey 9x8, a bit per pixel brighter than its right one."""
    from PIL import Image

    grey = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BOX), np.int16)
    bits = (grey[:, :-1] > grey[:, 1:]).ravel()
    return np.packbits(bits).view(">u8").astype(np.uint64)


_DCT32 = _dct(32)


def phash64(img) -> np.ndarray:
    """(1,) uint64: the classic 64-bit pHash (a 32x32 grey thumbnail's 8x8 lowest DCT
    frequencies): the first rule's signal."""
    from PIL import Image

    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BOX), np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return np.packbits(bits).view(">u8").astype(np.uint64)


def _signature(pixels: np.ndarray) -> np.ndarray:
    """Zero mean per channel, unit norm: a dot product of two is their correlation
    (brightness and contrast changes cancel out)."""
    a = pixels.astype(np.float64)
    a = a - a.reshape(-1, a.shape[-1]).mean(0) if a.ndim == 3 else a - a.mean()
    a = a.ravel()
    norm = np.linalg.norm(a)
    return (a / norm if norm > 0 else a).astype(np.float32)


def thumb(side: int, mode: str) -> Callable:
    """(side*side*channels,) float32: a box-filtered ``side`` x ``side`` thumbnail, grey ("L")
    or colour ("RGB"), as :func:`_signature`."""
    from PIL import Image

    def signature(img) -> np.ndarray:
        small = img.convert(mode).resize((side, side), Image.Resampling.BOX)
        return _signature(np.asarray(small))

    return signature


def hamming(queries: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """(Q, N) bits that differ: ``queries`` (Q, W) and ``catalogue`` (N, W) uint64 words."""
    out = np.zeros((len(queries), len(catalogue)), dtype=np.int16)
    for w in range(queries.shape[1]):
        out += np.bitwise_count(queries[:, w, None] ^ catalogue[None, :, w]).astype(np.int16)
    return out


def l2(queries: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """(Q, N) float32 L2 distances (float64 sums: the small distances of copies matter)."""
    q = queries.astype(np.float64)
    c = catalogue.astype(np.float64)
    d2 = (q * q).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2 * q @ c.T
    return np.sqrt(np.maximum(d2, 0)).astype(np.float32)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--garments", type=int, default=3000)
    parser.add_argument("--originals", type=int, default=500)
    parser.add_argument(
        "--candidates", default="5,20", help="nearest garments looked at, comma-separated k's"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every rule's figures here too")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
    os.environ.setdefault("DJANGO_VAR_DIR", str(ROOT / "var" / "bench-dups"))
    from fashionsite.embedded import ensure_services

    ensure_services()
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from retrieval import images
    from retrieval.features import extractor_for
    from retrieval.models import Garment, GarmentFeature

    model = setup(args.garments)
    rows = list(
        GarmentFeature.objects.filter(model=model)
        .order_by("garment_id")
        .values_list("garment_id", "fused", "garment__category_id")
    )
    ids = np.array([r[0] for r in rows])
    category = np.array([r[2] for r in rows])
    print(f"catalogue: {len(ids)} indexed garments", file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(ids), size=min(args.originals, len(ids)), replace=False)
    by_id = Garment.objects.in_bulk(ids.tolist())

    def stored(i: int):
        with by_id[int(ids[i])].image.open("rb") as fh:
            return images.open_image(fh.read())

    cache = Path(settings.VAR_DIR) / (
        f"vectors-m{model.pk}-g{len(ids)}-o{len(picks)}-s{args.seed}.npz"
    )
    names = list(changes())
    if cache.exists():
        saved = np.load(cache)
        copy_fused = {name: saved[f"copy {name}"] for name in names}
    else:
        extractor = extractor_for(backbone=model.backbone, model=model)
        copy_fused = {}
        for name, change in changes().items():
            started = time.perf_counter()
            items = []
            for j, i in enumerate(picks):
                # As an upload: the copy's JPEG bytes, decoded and resized by the CNN path.
                out = io.BytesIO()
                change(stored(i)).save(out, "JPEG", quality=95)
                items.append((j, out.getvalue()))
            vecs = [
                v
                for b in extractor.extract_paths(items, batch_size=64)
                for v in b.features["fused"]
            ]
            copy_fused[name] = np.stack(vecs).astype(np.float32)
            took = time.perf_counter() - started
            print(f"{name}: {len(items)} copies in {took:.0f} s", file=sys.stderr)
        np.savez(cache, **{f"copy {n}": v for n, v in copy_fused.items()})
    fused = np.stack([np.asarray(r[1], dtype=np.float32) for r in rows])

    # Every signal of every catalogue photo and of every copy (the copies made again: the
    # changes are deterministic, the CNN's vectors come from the cache).
    started = time.perf_counter()
    signals: dict[str, Callable] = {
        "phash64": phash64,
        "dhash64": dhash64,
        "phash256": phash256,
        "grey16": thumb(16, "L"),
        "rgb16": thumb(16, "RGB"),
        "rgb8": thumb(8, "RGB"),
        # The product's own: the stored 16x16 signature, compared at 16 or 8.
        "thumb16": lambda im: images.thumbnail_vector(images.thumbnail_signature(im), 16),
        "thumb8": lambda im: images.thumbnail_vector(images.thumbnail_signature(im), 8),
    }
    originals = [stored(i) for i in range(len(ids))]
    cat_sig = {s: np.stack([f(im) for im in originals]) for s, f in signals.items()}
    q_sig: dict[str, list] = {s: [] for s in signals}
    q_fused, q_change, q_source = [], [], []
    for name, change in changes().items():
        for j, i in enumerate(picks):
            im = change(originals[i])
            for s, f in signals.items():
                q_sig[s].append(f(im))
            q_fused.append(copy_fused[name][j])
            q_change.append(name)
            q_source.append(int(i))
    print(f"signals in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    # Queries: the copies (their source is the right answer), then every catalogue photo
    # (its own row left out: the flags it gets are all false).
    n_copies = len(q_change)
    q_change += ["distinct"] * len(ids)
    q_source += [-1] * len(ids)
    own = np.concatenate([np.full(n_copies, -1), np.arange(len(ids))])
    dist: dict[str, np.ndarray] = {}
    dist["fused"] = l2(np.concatenate([np.stack(q_fused), fused]), fused)
    for s in ("phash64", "dhash64", "phash256"):
        dist[s] = hamming(np.concatenate([np.stack(q_sig[s]), cat_sig[s]]), cat_sig[s])
    for s in ("grey16", "rgb16", "rgb8", "thumb16", "thumb8"):
        t = np.concatenate([np.stack(q_sig[s]), cat_sig[s]])
        dist[s] = (1.0 - t @ cat_sig[s].T).astype(np.float32)
    rows_q = np.arange(len(own))
    for d in dist.values():
        d[rows_q[own >= 0], own[own >= 0]] = np.iinfo(np.int16).max if d.dtype == np.int16 else 9
    ks = [int(k) for k in args.candidates.split(",")]
    top: dict[int, np.ndarray] = {}
    for k in ks:
        nearest = np.argpartition(dist["fused"], k, axis=1)[:, :k]
        top[k] = np.zeros_like(dist["fused"], dtype=bool)
        np.put_along_axis(top[k], nearest, True, axis=1)
    in_topk = top[max(ks)]
    q_source_a = np.array(q_source)
    q_change_a = np.array(q_change)
    right = np.zeros_like(in_topk)
    right[np.arange(n_copies), q_source_a[:n_copies]] = True
    same_cat = (
        category[None, :] == np.concatenate([category[q_source_a[:n_copies]], category])[:, None]
    )

    # The sample catalogue holds the same photo under two ids (re-encoded, so not skipped as
    # exact duplicates): such a pair is no distinct garments. Found by a test that is none of
    # the signals compared: the same size and a mean absolute difference of the full-size
    # pixels of at most SAME_PHOTO_MAD levels; only pairs some rule could flag are compared.
    candidates = np.zeros_like(in_topk)
    candidates[n_copies:] = in_topk[n_copies:] | (dist["grey16"][n_copies:] <= 0.1)
    pixels = [np.asarray(im, dtype=np.int16) for im in originals]
    sample_same = np.zeros_like(in_topk)
    for row, j in zip(*np.nonzero(candidates), strict=True):
        a, b = pixels[own[row]], pixels[j]
        if a.shape == b.shape and np.abs(a - b).mean() <= SAME_PHOTO_MAD:
            sample_same[row, j] = True
    twins = [(int(own[r]), int(j)) for r, j in zip(*np.nonzero(sample_same), strict=True)]
    # A copy flagged with its source's twin is no false flag either.
    twin_of: dict[int, list[int]] = {}
    for i, j in twins:
        twin_of.setdefault(i, []).append(j)
    for row in range(n_copies):
        for j in twin_of.get(q_source[row], []):
            sample_same[row, j] = True
    same_pairs = sorted({tuple(sorted((int(ids[i]), int(ids[j])))) for i, j in twins})
    print(f"the same photo under two ids in the sample: {len(same_pairs)} pairs", file=sys.stderr)

    def evaluate(flagged: np.ndarray) -> dict:
        raw_flags = int(flagged.sum())
        flagged = flagged & ~sample_same
        true_flags = int((flagged & right).sum())
        false = flagged & ~right
        flags = int(flagged.sum())
        recall = {
            name: round(float((flagged & right)[q_change_a == name].any(1).mean()), 4)
            for name in names
        }
        return {
            "precision": round(true_flags / flags, 4) if flags else 1.0,
            # Counting the sample's own same-photo pairs as false flags too.
            "precision_raw": round(true_flags / raw_flags, 4) if raw_flags else 1.0,
            "false_flags": int(false.sum()),
            "false_flags_same_category": int((false & same_cat).sum()),
            "recall": recall,
            # A few of the false flags, as (the query's garment, the flagged garment): a copy's
            # query is its source's garment.
            "false_examples": [
                (int(ids[q_source_a[r]] if r < n_copies else ids[own[r]]), int(ids[j]))
                for r, j in list(zip(*np.nonzero(false), strict=True))[:12]
            ],
            "recall_resized_recompressed": round(
                float(np.mean([recall[n] for n in RESIZED_OR_RECOMPRESSED])), 4
            ),
        }

    grids = {
        "phash64": (2, 4, 6, 8, 10, 12),
        "dhash64": (2, 4, 6, 8, 10, 12),
        "phash256": (16, 20, 24, 28, 32, 36),
        "grey16": (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05),
        "rgb16": (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05),
        "rgb8": (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05),
        "thumb16": (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05),
        "thumb8": (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05),
        "fused": (0.05, 0.1, 0.15, 0.2, 0.3),
    }
    results: dict[str, dict] = {}
    for s, grid in grids.items():
        for thr in grid:
            results[f"{s} <= {thr} (whole catalogue)"] = evaluate(dist[s] <= thr)
    for k in ks:
        for s, grid in grids.items():
            if s == "fused":
                continue
            for thr in grid:
                results[f"{s} <= {thr} (top {k} by fused)"] = evaluate(top[k] & (dist[s] <= thr))
                for fd in (0.2, 0.3, 0.5):
                    results[f"fused <= {fd} and {s} <= {thr} (top {k})"] = evaluate(
                        top[k] & (dist["fused"] <= fd) & (dist[s] <= thr)
                    )
        for fd in grids["fused"]:
            results[f"fused <= {fd} (top {k})"] = evaluate(top[k] & (dist["fused"] <= fd))
    # Two photo signals together: the hash of the shapes and the colour thumbnail.
    for k in ks:
        for bits in (24, 28, 32, 36):
            for thr in (0.01, 0.02, 0.03, 0.05):
                results[f"phash256 <= {bits} and thumb8 <= {thr} (top {k})"] = evaluate(
                    top[k] & (dist["phash256"] <= bits) & (dist["thumb8"] <= thr)
                )
    # The rule as shipped (settings.RETRIEVAL_NEAR_DUPLICATE_*, the product's thumbnails at
    # the side retrieval.images.thumbnail_distance compares).
    from retrieval.search import duplicates as shipped

    k_shipped = settings.RETRIEVAL_NEAR_DUPLICATE_CANDIDATES
    if k_shipped in top:
        flagged = np.zeros_like(in_topk)
        for row, j in zip(*np.nonzero(top[k_shipped]), strict=True):
            flagged[row, j] = shipped.is_near_duplicate(
                phash_bits=int(dist["phash256"][row, j]),
                photo_distance=float(dist["thumb8"][row, j]),
            )
        name = (
            f"shipped: phash256 <= {settings.RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS} and thumb8 <= "
            f"{settings.RETRIEVAL_NEAR_DUPLICATE_PHOTO} (top {k_shipped})"
        )
        results[name] = evaluate(flagged)
    # Where the originals rank: a copy the top-k search never reaches cannot be flagged.
    reach = {
        k: {
            name: round(float((top[k] & right)[q_change_a == name].any(1).mean()), 4)
            for name in names
        }
        for k in ks
    }
    summary = {
        "garments": len(ids),
        "categories": len(set(category.tolist())),
        "originals": len(picks),
        "candidates": ks,
        "original_in_top_k": reach,
        "sample_same_photo_pairs": same_pairs,
        "results": results,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    cols = names
    print(f"garments {len(ids)}, originals {len(picks)}, original in the top k: {reach}")
    print("| rule | precision | (raw) | false flags (same category) | " + " | ".join(cols) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(cols))
    for rule, r in results.items():
        cells = " | ".join(f"{r['recall'][c]:.3f}" for c in cols)
        print(
            f"| {rule} | {r['precision']:.3f} | {r['precision_raw']:.3f} | {r['false_flags']} "
            f"({r['false_flags_same_category']}) | {cells} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
