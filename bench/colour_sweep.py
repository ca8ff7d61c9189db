"""Colour-feature sweep on the shared catalogue: which colour variant/weight to fuse by default.

Protocol (fixed seeds, reproducible):

1. Garments: masterCategory in {Apparel, Footwear, Accessories}, articleTypes with >= 50 photos
   in the whole catalogue; a random sample of ``--n`` of them (seed 0).
2. Split per articleType: 80% train, 10% val, 10% test.
3. efficientnet_lite0 features extracted once (cached as .npz under var/bench/, never in git).
4. Head (FC1 512 + FC2) trained on train (category = articleType); validation accuracy.
5. Retrieval: exact brute-force L2 in numpy. Settings are *chosen* on val queries against the
   train library, then *reported* on ``--queries`` test queries against the train+val
   library. p@k: relevant = same articleType; cc@k: same articleType AND same baseColour.

Usage::

    .venv/bin/python bench/colour_sweep.py                 # ~10k garments (first run: 3-13 min)
    .venv/bin/python bench/colour_sweep.py --n 2000        # quicker, noisier
    .venv/bin/python bench/colour_sweep.py --bf16-check 200  # + bf16-vs-fp32 drift
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import io
import json
import os
import random
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from retrieval import features as feat  # noqa: E402
from retrieval.images import ZipMember  # noqa: E402

DEFAULT_ZIP = os.path.join(REPO, "..", "shared", "data", "fashion-product-images-small.zip")
CACHE_DIR = os.path.join(REPO, "var", "bench")
GARMENT_CATEGORIES = ("Apparel", "Footwear", "Accessories")


@dataclass(frozen=True)
class Row:
    id: str
    image: str
    master: str
    article: str
    colour: str


def read_styles(zip_path: str) -> list[Row]:
    """styles.csv rows whose image exists in the zip."""
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        with zf.open("styles.csv") as fh:
            reader = csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8"))
            rows = [
                Row(r["id"], r["image"], r["masterCategory"], r["articleType"], r["baseColour"])
                for r in reader
            ]
    return [r for r in rows if r.image in names]


def select_garments(rows: Sequence[Row], n: int, seed: int = 0) -> list[Row]:
    counts = collections.Counter(r.article for r in rows if r.master in GARMENT_CATEGORIES)
    eligible = [r for r in rows if r.master in GARMENT_CATEGORIES and counts[r.article] >= 50]
    eligible.sort(key=lambda r: int(r.id))
    picked = random.Random(seed).sample(eligible, min(n, len(eligible)))
    return sorted(picked, key=lambda r: int(r.id))


def split(rows: Sequence[Row], seed: int = 0) -> np.ndarray:
    """0 = train, 1 = val, 2 = test; 80/10/10 within each articleType."""
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(rows):
        by_class[r.article].append(i)
    out = np.zeros(len(rows), dtype=np.int8)
    for idx in by_class.values():
        rng.shuffle(idx)
        n_test = max(1, round(0.1 * len(idx))) if len(idx) >= 3 else 0
        n_val = max(1, round(0.1 * len(idx))) if len(idx) >= 3 else 0
        out[idx[:n_test]] = 2
        out[idx[n_test : n_test + n_val]] = 1
    return out


def extract_cached(
    zip_path: str, rows: Sequence[Row], *, precision: str = "fp32", tag: str = ""
) -> dict[str, np.ndarray]:
    """pooled (N,1280), rgb10 (N,10,3), positions (N,10) for rows, cached in var/bench/."""
    digest = hashlib.sha1(("|".join(r.id for r in rows) + precision).encode()).hexdigest()[:12]
    path = os.path.join(CACHE_DIR, f"lite0_{tag}{len(rows)}_{digest}.npz")
    if os.path.exists(path):
        with np.load(path) as data:
            print(f"features: cached {path}", flush=True)
            return {k: data[k] for k in data.files}
    ex = feat.FeatureExtractor(backbone="efficientnet_lite0", precision=precision)
    items = [(i, ZipMember(zip_path, r.image)) for i, r in enumerate(rows)]
    pooled = np.zeros((len(rows), ex.pooled_dim), np.float32)
    rgb10 = np.zeros((len(rows), feat.NUM_POSITIONS, 3), np.float32)
    positions = np.zeros((len(rows), feat.NUM_POSITIONS), np.int64)
    ok = np.zeros(len(rows), bool)
    start = time.perf_counter()
    done = 0
    for batch in ex.extract_paths(items, batch_size=64):
        idx = np.asarray(batch.keys, dtype=np.int64)
        pooled[idx] = batch.features["pooled"]
        rgb10[idx] = batch.features["rgb10"]
        positions[idx] = batch.features["positions"]
        ok[idx] = True
        for key, reason in batch.errors:
            print(f"  skipped {rows[key].image}: {reason}", flush=True)
        done += len(batch.keys) + len(batch.errors)
        if done % 1024 < 64 or done == len(rows):
            rate = done / (time.perf_counter() - start)
            print(f"  {precision} extracted {done}/{len(rows)} ({rate:.1f} img/s)", flush=True)
    os.makedirs(CACHE_DIR, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, pooled=pooled, rgb10=rgb10, positions=positions, ok=ok)
    os.replace(tmp, path)
    return {"pooled": pooled, "rgb10": rgb10, "positions": positions, "ok": ok}


def topk_l2(queries: np.ndarray, library: np.ndarray, k: int) -> np.ndarray:
    """Exact brute-force L2 nearest neighbours: (Q, k) library indices, nearest first."""
    q = queries.astype(np.float64)
    lib = library.astype(np.float64)
    d = (q * q).sum(1)[:, None] - 2.0 * q @ lib.T + (lib * lib).sum(1)[None, :]
    part = np.argpartition(d, k, axis=1)[:, :k]
    order = np.take_along_axis(d, part, 1).argsort(axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def precision_at(
    nn_idx: np.ndarray,
    q_article: np.ndarray,
    q_colour: np.ndarray,
    lib_article: np.ndarray,
    lib_colour: np.ndarray,
    ks: Sequence[int] = (5, 10, 20),
) -> dict[str, float]:
    same_a = lib_article[nn_idx] == q_article[:, None]
    same_c = same_a & (lib_colour[nn_idx] == q_colour[:, None])
    out = {}
    for k in ks:
        out[f"p@{k}"] = 100.0 * float(same_a[:, :k].mean())
        out[f"cc@{k}"] = 100.0 * float(same_c[:, :k].mean())
    return out


def configs(args: argparse.Namespace) -> list[tuple[str, str | None, float, bool]]:
    """(label, variant, weight, normalize_deep); variant None = deep only."""
    out: list[tuple[str, str | None, float, bool]] = [
        ("deep raw", None, 0.0, False),
        ("deep L2", None, 0.0, True),
    ]
    for norm in (False, True):
        tag = "L2" if norm else "raw"
        for w in args.paper_weights_l2 if norm else args.paper_weights:
            out.append((f"paper w={w:g} deep {tag}", "paper", w, norm))
        for variant in ("lab", "lab_mean", "rgb"):
            grid = args.lab_weights if norm else args.lab_weights_raw
            for w in grid:
                out.append((f"{variant} w={w:g} deep {tag}", variant, w, norm))
    return out


def vectors(
    deep: np.ndarray, rgb10: np.ndarray, variant: str | None, weight: float, norm: bool
) -> np.ndarray:
    if variant is None:
        if norm:
            return deep / np.maximum(np.linalg.norm(deep, axis=1, keepdims=True), 1e-12)
        return deep
    return feat.fuse(
        deep, feat.colour_feature(rgb10, variant=variant), weight=weight, normalize_deep=norm
    )


def evaluate(
    cfgs: list[tuple[str, str | None, float, bool]],
    deep: np.ndarray,
    rgb10: np.ndarray,
    q_idx: np.ndarray,
    lib_idx: np.ndarray,
    article: np.ndarray,
    colour: np.ndarray,
) -> list[tuple[str, str | None, float, bool, dict[str, float]]]:
    results = []
    for label, variant, weight, norm in cfgs:
        vec = vectors(deep, rgb10, variant, weight, norm)
        nn_idx = topk_l2(vec[q_idx], vec[lib_idx], 20)
        m = precision_at(nn_idx, article[q_idx], colour[q_idx], article[lib_idx], colour[lib_idx])
        results.append((label, variant, weight, norm, m))
    return results


def print_table(title: str, results: list[tuple[str, str | None, float, bool, dict]]) -> None:
    print(f"\n{title}")
    cols = ["p@5", "p@10", "p@20", "cc@5", "cc@10", "cc@20"]
    print(f"| {'setting':28s} | " + " | ".join(f"{c:>6s}" for c in cols) + " |")
    print("|" + "-" * 30 + "|" + "|".join("-" * 8 for _ in cols) + "|")
    for label, _, _, _, m in results:
        print(f"| {label:28s} | " + " | ".join(f"{m[c]:6.1f}" for c in cols) + " |")


def choose(results: list[tuple[str, str | None, float, bool, dict]], max_p_loss: float) -> tuple:
    """Best cc@10 among fused settings losing at most ``max_p_loss`` p@10 vs deep L2/raw."""
    base = {norm: m for _, v, _, norm, m in results if v is None}
    ok = [
        r for r in results if r[1] is not None and r[4]["p@10"] >= base[r[3]]["p@10"] - max_p_loss
    ]
    return max(ok, key=lambda r: r[4]["cc@10"]) if ok else None


def bf16_check(zip_path: str, rows: Sequence[Row], fp32: dict, head, lib_vec, n: int) -> dict:
    """Drift of bf16 autocast vs fp32 on the first n rows: positions and top-20 results."""
    sub = list(rows[:n])
    t = time.perf_counter()
    bf = extract_cached(zip_path, sub, precision="bf16", tag="bf16_")
    secs = time.perf_counter() - t
    pos32, pos16 = fp32["positions"][:n], bf["positions"]
    same_set = np.array([len(set(a) & set(b)) for a, b in zip(pos32, pos16, strict=True)])
    v32 = feat.fuse(
        feat.deep_from_pooled(head, fp32["pooled"][:n]),
        feat.colour_feature(fp32["rgb10"][:n], variant=feat.DEFAULT_COLOUR_VARIANT),
        weight=feat.DEFAULT_COLOUR_WEIGHT,
    )
    v16 = feat.fuse(
        feat.deep_from_pooled(head, bf["pooled"]),
        feat.colour_feature(bf["rgb10"], variant=feat.DEFAULT_COLOUR_VARIANT),
        weight=feat.DEFAULT_COLOUR_WEIGHT,
    )
    t32 = topk_l2(v32, lib_vec, 20)
    t16 = topk_l2(v16, lib_vec, 20)
    overlap = np.array([len(set(a) & set(b)) for a, b in zip(t32, t16, strict=True)])
    return {
        "images": n,
        "bf16_seconds_incl_model_load": round(secs, 1),
        "positions_identical_order_frac": float((pos32 == pos16).all(1).mean()),
        "positions_same_set_frac": float((same_set == feat.NUM_POSITIONS).mean()),
        "positions_mean_changed_of_10": float((feat.NUM_POSITIONS - same_set).mean()),
        "top20_mean_overlap_of_20": float(overlap.mean()),
        "top20_min_overlap": int(overlap.min()),
        "top1_same_frac": float((t32[:, 0] == t16[:, 0]).mean()),
        "pooled_max_rel_err": float(
            np.abs(bf["pooled"] - fp32["pooled"][:n]).max() / np.abs(fp32["pooled"][:n]).max()
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zip", default=DEFAULT_ZIP)
    ap.add_argument("--n", type=int, default=10_000, help="garments sampled (default 10000)")
    ap.add_argument("--queries", type=int, default=800, help="test queries (default 800)")
    ap.add_argument("--epochs", type=int, default=None, help="default: train_head's budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paper-weights", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument(
        "--paper-weights-l2",
        type=float,
        nargs="+",
        default=[0.025, 0.05, 0.1],
        help="the z-scored vector has norm sqrt(30) ~ 5.5 vs 1 for the L2-normalised deep part",
    )
    ap.add_argument(
        "--lab-weights", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0]
    )
    ap.add_argument("--lab-weights-raw", type=float, nargs="+", default=[2.0, 4.0, 6.0, 8.0])
    ap.add_argument("--max-p-loss", type=float, default=1.0, help="allowed p@10 loss (points)")
    ap.add_argument("--bf16-check", type=int, default=0, help="images for the bf16 drift check")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (0 = torch default = all cores)"
    )
    args = ap.parse_args(argv)
    if args.threads:
        # 1 thread when other processes share the 2 cores: OpenMP spin-waits collapse
        # throughput (measured 2-13 img/s with 2 threads vs ~30 with 1 under contention).
        torch.set_num_threads(args.threads)
    if not os.path.exists(args.zip):
        print(f"catalogue not found: {args.zip}", file=sys.stderr)
        return 2

    rows = select_garments(read_styles(args.zip), args.n, seed=args.seed)
    part = split(rows, seed=args.seed)
    print(
        f"garments {len(rows)} ({len({r.article for r in rows})} articleTypes): "
        f"train {int((part == 0).sum())}, val {int((part == 1).sum())}, "
        f"test {int((part == 2).sum())}",
        flush=True,
    )
    t0 = time.perf_counter()
    data = extract_cached(args.zip, rows)
    print(f"extraction/cache load {time.perf_counter() - t0:.1f} s", flush=True)
    ok = data["ok"].astype(bool)

    classes = sorted({r.article for r in rows})
    label = np.array([classes.index(r.article) for r in rows], np.int64)
    article = np.array([r.article for r in rows])
    colour = np.array([r.colour for r in rows])
    train = np.flatnonzero((part == 0) & ok)
    val = np.flatnonzero((part == 1) & ok)
    test = np.flatnonzero((part == 2) & ok & (colour != ""))

    head, metrics = feat.train_head(
        data["pooled"][train],
        label[train],
        num_classes=len(classes),
        epochs=args.epochs,
        seed=args.seed,
        val_pooled=data["pooled"][val],
        val_labels=label[val],
        class_names=classes,
        backbone="efficientnet_lite0",
    )
    print(
        f"head: {len(classes)} classes, train acc {metrics['train_accuracy']:.3f}, "
        f"val acc {metrics['val_accuracy']:.3f} (best epoch {metrics['best_epoch']}/"
        f"{metrics['epochs']}), {metrics['seconds']:.1f} s",
        flush=True,
    )
    deep = feat.deep_from_pooled(head, data["pooled"])
    cfgs = configs(args)

    # Selection on validation queries (val vs train library), report on test.
    val_q = val[colour[val] != ""]
    sel = evaluate(cfgs, deep, data["rgb10"], val_q, train, article, colour)
    print_table(f"VALIDATION (selection): {len(val_q)} val queries vs {len(train)} train", sel)
    choice = choose(sel, args.max_p_loss)

    rng = np.random.default_rng(args.seed)
    queries = np.sort(rng.choice(test, size=min(args.queries, len(test)), replace=False))
    library = np.concatenate([train, val])
    res = evaluate(cfgs, deep, data["rgb10"], queries, library, article, colour)
    print_table(f"TEST: {len(queries)} test queries vs {len(library)} train+val library", res)
    if choice is not None:
        chosen = next(r for r in res if r[0] == choice[0])
        base = next(r for r in res if r[1] is None and r[3] == choice[3])
        print(
            f"\nchosen on validation: {choice[0]} -> test cc@10 {chosen[4]['cc@10']:.1f} vs "
            f"{base[0]} {base[4]['cc@10']:.1f} ({chosen[4]['cc@10'] - base[4]['cc@10']:+.1f}), "
            f"p@10 {chosen[4]['p@10']:.1f} vs {base[4]['p@10']:.1f} "
            f"({chosen[4]['p@10'] - base[4]['p@10']:+.1f})"
        )
    out: dict = {
        "n": len(rows),
        "head": metrics,
        "val": [(r[0], r[4]) for r in sel],
        "test": [(r[0], r[4]) for r in res],
        "choice": choice[0] if choice else None,
    }
    if args.bf16_check:
        lib_vec = feat.fuse(
            deep[library],
            feat.colour_feature(data["rgb10"][library], variant=feat.DEFAULT_COLOUR_VARIANT),
            weight=feat.DEFAULT_COLOUR_WEIGHT,
        )
        drift = bf16_check(args.zip, rows, data, head, lib_vec, args.bf16_check)
        print("\nbf16 vs fp32:", json.dumps(drift, indent=1))
        out["bf16"] = drift
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
