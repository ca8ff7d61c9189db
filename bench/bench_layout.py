"""Speed before and after a code move: one search and one extraction benchmark, two trees.

Issue #13 moved code without changing behaviour; this checks that speed did not change
either. Each measurement runs in a fresh child process whose working directory is one of two
checkouts (``--old``: e.g. a ``git worktree`` of the commit before the move; ``--new``: this
one), alternating old, new, old, new, ... so that both see the same machine load. Both trees
share one embedded PostgreSQL/Redis (``--var``) and so the same catalogue and model:

- extraction: ``extract_paths`` of efficientnet_lite0 (the default backbone, its ImageNet
  weights) over ``--images`` catalogue photos, through the extractor the product configures
  (``extractor_for``), images/s after a warm-up batch;
- search: ``search_image`` (the shop's and the API's entry point: CNN pass + clustered,
  re-ranked search in PostgreSQL) over ``--queries`` catalogue photos, p50/p90 ms after a
  warm-up query.

Setup (first run only): ``manage.py migrate``, ``import_catalog --limit N --wait --train`` in
the new tree. Usage::

    git worktree add --detach ../wt-old <commit before the move>
    .venv/bin/python bench/bench_layout.py --old ../wt-old --garments 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZIP = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"

# Runs inside a child whose cwd is one tree. The two layouts name the entry points
# differently; everything else is the same code path.
CHILD = r"""
import io, json, os, statistics, sys, time, zipfile
sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
try:
    from fashionsite.embedded import ensure_services  # new layout: settings start nothing
except ImportError:
    ensure_services = None
if ensure_services is not None:
    ensure_services()
import django
django.setup()
kind, count, zpath = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    from retrieval.search import query as search_query
    from retrieval.features import extractor_for
    from retrieval.selectors import active_model
    search_image = search_query.search_image
except ImportError:
    from retrieval import search as search_query
    from retrieval.search import extractor_for, search_image
    from retrieval.services import active_model
with zipfile.ZipFile(zpath) as z:
    names = sorted(n for n in z.namelist() if n.endswith(".jpg"))[-count - 1:]
    photos = [z.read(n) for n in names]
model = active_model()
if kind == "extract":
    ex = extractor_for(backbone=model.backbone, model=model)
    list(ex.extract_paths([(0, photos[0])], batch_size=32, num_workers=0))
    items = list(enumerate(photos[1:]))
    started = time.perf_counter()
    n = sum(len(b.keys) for b in ex.extract_paths(items, batch_size=32, num_workers=0))
    print(json.dumps({"images_per_s": n / (time.perf_counter() - started)}))
else:
    search_image(image=photos[0], top=10)
    times = []
    for data in photos[1:]:
        started = time.perf_counter()
        search_image(image=data, top=10)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    print(json.dumps({"p50_ms": statistics.median(times), "p90_ms": times[int(len(times) * 0.9)]}))
"""


def run(tree: Path, kind: str, count: int, env: dict) -> dict:
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", CHILD, kind, str(count), str(ZIP)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="checkout of the code before")
    ap.add_argument("--new", type=Path, default=ROOT, help="checkout of the code after")
    ap.add_argument("--var", type=Path, default=ROOT / "var" / "bench-layout")
    ap.add_argument("--garments", type=int, default=1000)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    env = {
        **os.environ,
        "DJANGO_VAR_DIR": str(args.var.resolve()),
        "RETRIEVAL_SEARCH_THROTTLE": "off",
        "RETRIEVAL_TORCH_THREADS": "2",
    }
    python = str(ROOT / ".venv" / "bin" / "python")
    manage = [python, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=args.new, env=env, check=True)
    subprocess.run(
        [*manage, "import_catalog", str(ZIP), "--limit", str(args.garments), "--wait", "--train"],
        cwd=args.new,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    results: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for _ in range(args.rounds):
        for label, tree in (("old", args.old), ("new", args.new)):
            ex = run(tree, "extract", args.images, env)
            se = run(tree, "search", args.queries, env)
            for key, value in {**ex, **se}.items():
                results[label].setdefault(key, []).append(value)
            print(label, ex, se, flush=True)
    print("\n| tree | extraction images/s (median) | search p50 ms | search p90 ms |")
    print("|---|---|---|---|")
    for label, values in results.items():
        print(
            f"| {label} | {statistics.median(values['images_per_s']):.1f} "
            f"| {statistics.median(values['p50_ms']):.1f} "
            f"| {statistics.median(values['p90_ms']):.1f} |"
        )
    subprocess.run(
        [python, "-m", "fashionsite.embedded", "stop", str(args.var)], cwd=args.new, env=env
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
