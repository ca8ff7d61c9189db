"""Near-duplicate photos: which signal flags copies and spares distinct garments (issue #16).

On a private embedded PostgreSQL + Redis (DJANGO_VAR_DIR=var/bench-dups, kept between runs):
import ``--garments`` rows of the shared sample catalogue, index them, train a head (the
product's own code), then

- copies: for ``--originals`` catalogue photos, one copy per change (resized to 70% and to
  200%, re-compressed at JPEG quality 40, cropped by 5% on each side, brightened by 15%,
  resized to 70% and re-compressed together), run through the same CNN path as an upload;
- distinct garments: every catalogue photo against the rest of the catalogue, most of all
  the garments of its own category (studio shots on white look alike).

A flag is a (photo, catalogue garment) pair the rule accepts among the photo's
``--candidates`` nearest garments by fused distance (what indexing looks at) or, for the
phash-only rule, among the whole catalogue. Recall: share of copies whose original is
flagged; precision: flags naming the right original / all flags (the catalogue's own pairs
count as false flags, except exact same pixels, which the upload check refuses earlier).

    nice -n 10 .venv/bin/python bench/bench_duplicates.py --garments 2000 --originals 400
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"
sys.path.insert(0, str(ROOT))


def changes():
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
        model = training.train_model(epochs=20)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--garments", type=int, default=2000)
    parser.add_argument("--originals", type=int, default=400)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
    os.environ.setdefault("DJANGO_VAR_DIR", str(ROOT / "var" / "bench-dups"))
    from fashionsite.embedded import ensure_services

    ensure_services()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from retrieval import images
    from retrieval.features import extractor_for
    from retrieval.models import Garment, GarmentFeature

    model = setup(args.garments)
    rows = list(
        GarmentFeature.objects.filter(model=model, garment__phash__isnull=False)
        .order_by("garment_id")
        .values_list("garment_id", "fused", "garment__phash", "garment__category_id")
    )
    ids = np.array([r[0] for r in rows])
    fused = np.stack([np.asarray(r[1], dtype=np.float32) for r in rows])
    phash = np.array([r[2] for r in rows], dtype=np.int64).view(np.uint64)
    category = np.array([r[3] for r in rows])
    print(f"catalogue: {len(ids)} indexed garments", file=sys.stderr)

    def popcount(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.uint64)
        return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)

    extractor = extractor_for(backbone=model.backbone, model=model)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(ids), size=min(args.originals, len(ids)), replace=False)
    by_id = Garment.objects.in_bulk(ids[picks].tolist())
    queries = []  # (change, source index, fused (542,), phash uint64)
    for name, change in changes().items():
        imgs, sources = [], []
        for i in picks:
            garment = by_id[int(ids[i])]
            with garment.image.open("rb") as fh:
                img = images.open_image(fh.read())
            imgs.append(change(img))
            sources.append(i)
        started = time.perf_counter()
        vecs: list[np.ndarray] = []
        for k in range(0, len(imgs), 64):
            # As an upload is indexed: decode, 224x224, the CNN (extract_paths' path).
            items = []
            for j, im in enumerate(imgs[k : k + 64]):
                out = io.BytesIO()
                im.save(out, "JPEG", quality=90)
                items.append((j, out.getvalue()))
            for batch in extractor.extract_paths(items, batch_size=64):
                vecs.extend(batch.features["fused"])
        print(
            f"{name}: {len(imgs)} copies in {time.perf_counter() - started:.0f} s", file=sys.stderr
        )
        for src, vec, im in zip(sources, vecs, imgs, strict=True):
            h = np.array([images.perceptual_hash(im)], dtype=np.int64).view(np.uint64)[0]
            queries.append((name, src, vec, h))
    # Distinct garments: each catalogue photo as the query, itself left out.
    distinct = [("distinct", -1 - i, fused[i], phash[i]) for i in range(len(ids))]

    # Distances of every query to every catalogue garment, once (queries x catalogue).
    everything = queries + distinct
    all_d = np.stack([np.linalg.norm(fused - vec, axis=1) for _, _, vec, _ in everything])
    all_bits = np.stack([popcount(phash ^ h) for _, _, _, h in everything])
    for row, (_, src, _, _) in enumerate(everything):
        if src < 0:
            all_d[row, -1 - src] = np.inf
            all_bits[row, -1 - src] = 99

    def evaluate(rule) -> dict:
        per_change: dict[str, list[int]] = {}
        true_flags = false_flags = 0
        same_cat_false = 0
        for row, (name, src, _, _) in enumerate(everything):
            own = -1 - src if src < 0 else None
            flagged = rule(all_d[row], all_bits[row])
            if src >= 0:
                hit = src in flagged
                per_change.setdefault(name, [0, 0])
                per_change[name][0] += hit
                per_change[name][1] += 1
                true_flags += hit
                false_flags += len(flagged) - hit
            else:
                false_flags += len(flagged)
                same_cat_false += int(sum(category[j] == category[own] for j in flagged))
        flags = true_flags + false_flags
        return {
            "precision": round(true_flags / flags, 4) if flags else 1.0,
            "false_flags": false_flags,
            "false_flags_same_category": same_cat_false,
            "recall": {k: round(v[0] / v[1], 4) for k, v in per_change.items()},
        }

    k = args.candidates

    def nearest(d):
        return np.argpartition(d, k)[:k]

    results = {}
    for bits_max in (4, 6, 8, 10, 12, 14):
        results[f"phash <= {bits_max} (whole catalogue)"] = evaluate(
            lambda d, b, t=bits_max: set(np.flatnonzero(b <= t).tolist())
        )
    for dist in (0.05, 0.1, 0.15, 0.2, 0.3):
        results[f"fused <= {dist} (top {k})"] = evaluate(
            lambda d, b, t=dist: {int(j) for j in nearest(d) if d[j] <= t}
        )
    for dist in (0.2, 0.3, 0.5):
        for bits_max in (8, 10, 12, 14, 16):
            results[f"fused <= {dist} and phash <= {bits_max} (top {k})"] = evaluate(
                lambda d, b, t=dist, u=bits_max: {
                    int(j) for j in nearest(d) if d[j] <= t and b[j] <= u
                }
            )
    print(json.dumps({"garments": len(ids), "originals": len(picks), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
