"""Does training the head on shoppers'-style photos help? (issue #7, robustness; a measurement).

The head normally trains on the cached features of studio shots. Augmentation cannot be
applied to cached features, so this runs the CNN over one shoppers'-style version of each
training garment (the compositing of ``bench/make_shopper_queries.py``, other seeds, with
background props taken from the catalogue's own non-garment photos, so none is shared with the
query set), trains a head on studio + augmented features (same recipe, same split), and sweeps
both heads in memory (``evaluation.run_grid(head=...)``) on the held-out studio queries and on
a shoppers' query set. Nothing in the database changes.

    DJANGO_VAR_DIR=var/eval3000 .venv/bin/python bench/augmented_head.py \\
        --queries var/eval3000/shopper-queries.zip --json var/bench/augmented_head.json
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")


def _shopper_module():
    path = os.path.join(REPO, "bench", "make_shopper_queries.py")
    spec = importlib.util.spec_from_file_location("make_shopper_queries", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", required=True, help="Shoppers' query set (import format).")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    import django

    from fashionsite.embedded import ensure_services

    ensure_services()  # an entry point: the embedded servers, as manage.py
    django.setup()
    from PIL import Image

    from retrieval import evaluation, features, search
    from retrieval.evaluation import grid
    from retrieval.models import Garment

    shop = _shopper_module()
    model = search.require_active_model()
    library = grid._grid_library(model=model)
    held = {int(g) for g in model.split.get("test", [])} | {
        int(g) for g in model.split.get("val", [])
    }
    classes = list(model.classes)
    label = np.asarray([classes.index(c) for c in library["categories"]], np.int64)
    train_rows = np.asarray([i for i, g in enumerate(library["ids"]) if int(g) not in held])
    val_ids = {int(g) for g in model.split.get("val", [])}
    val_rows = np.asarray([i for i, g in enumerate(library["ids"]) if int(g) in val_ids])
    garments = Garment.objects.in_bulk([int(g) for g in library["ids"]])
    props = [
        Image.open(g.image.path).convert("RGB")
        for g in garments.values()
        if (g.attributes or {}).get("masterCategory") in shop.SCENE_SOURCES
    ][:200]
    print(f"{len(train_rows)} training garments, {len(props)} background props", flush=True)

    started = time.perf_counter()
    photos = []
    for row in train_rows:
        g = garments[int(library["ids"][row])]
        rng = np.random.default_rng([args.seed, int(g.pk)])
        data, _ = shop.shopper_photo(Image.open(g.image.path).convert("RGB"), rng, props)
        photos.append((int(row), io.BytesIO(data).getvalue()))
    extractor = features.extractor_for(backbone=model.backbone, model=model)
    keys, out, errors = evaluation.extract_queries(
        extractor=extractor, sources=photos, flip=False, crop="off"
    )
    augmented = out["pooled"]
    print(
        f"augmented features: {len(keys)} photos ({len(errors)} failed) in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )

    heads = {"studio only (the model's)": features.load_head(model.head_path)}
    recipe = dict(num_classes=len(classes), seed=0, class_names=classes, backbone=model.backbone)
    x = np.concatenate([library["pooled"][train_rows], augmented])
    y = np.concatenate([label[train_rows], label[np.asarray(keys)]])
    heads["studio + augmented"], metrics = features.train_head(
        x,
        y,
        epochs=features.auto_epochs(len(train_rows)),
        val_pooled=library["pooled"][val_rows],
        val_labels=label[val_rows],
        **recipe,
    )
    print(f"augmented head: {metrics}", flush=True)

    report = {}
    for name, head in heads.items():
        for queries in (None, args.queries):
            result = evaluation.run_grid(
                model=model, weights=(0.6,), probes=(1,), queries_path=queries, head=head
            )
            where = "shoppers" if queries else "studio"
            for r in result["rows"]:
                if (
                    r["probes"] == 1
                    and r["mode"] in ("deep", "fused", "rerank")
                    and (r["mode"] == "deep" or r["variant"] == model.colour_variant)
                ):
                    print(
                        f"{name:<28} {where:<9} {r['mode']:<7} p@5 {r['p@5']:.3f} "
                        f"p@10 {r['p@10']:.3f} cc@10 {r['cc@10']:.3f}",
                        flush=True,
                    )
            report[f"{name} / {where}"] = {
                "head_accuracy": result["head_accuracy"],
                "rows": [r for r in result["rows"] if r["probes"] == 1],
            }
            print(f"{name:<28} {where:<9} head accuracy {result['head_accuracy']}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
