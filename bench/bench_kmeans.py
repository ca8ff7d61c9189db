"""K-means over the fused vectors: KMeans (lloyd/elkan) vs MiniBatchKMeans, time/RSS/inertia.

Every configuration runs in its own subprocess (so peak RSS values don't mix), on the same
synthetic clustered 542-d float32 data as bench_search_db.py, saved once to var/bench/.
Threads are limited to --threads (OpenMP and BLAS).

    .venv/bin/python bench/bench_kmeans.py --sizes 100000,1000000 --ks 50,141

Results are appended to var/bench/results/kmeans.jsonl and printed as a markdown table;
inertia is always recomputed over the full data set and reported relative to
KMeans(lloyd, n_init=1) for the same size and K.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import _pg
import numpy as np

RESULTS = _pg.BENCH_DIR / "results" / "kmeans.jsonl"


def data_path(n: int):
    return _pg.BENCH_DIR / f"kmeans_{n}.npy"


def ensure_data(n: int) -> None:
    path = data_path(n)
    if not path.exists():
        ds = _pg.make_dataset(n, 141, seed=0)
        np.save(path, ds.fused)


def inertia(x: np.ndarray, centres: np.ndarray, chunk: int = 100_000) -> float:
    c2 = (centres.astype(np.float64) ** 2).sum(1)
    total = 0.0
    for s in range(0, len(x), chunk):
        xs = x[s : s + chunk].astype(np.float64)
        d = (xs**2).sum(1)[:, None] + c2[None, :] - 2 * xs @ centres.T.astype(np.float64)
        total += float(np.maximum(d.min(1), 0).sum())
    return total


def vm_hwm() -> int:
    """Peak resident set of this process image, in bytes (VmHWM). Not ru_maxrss: Linux carries
    the forking parent's high-water mark into an exec'd child's ru_maxrss."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(cfg: dict) -> dict:
    """Fit one configuration (runs in a subprocess)."""
    import psutil
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    x = np.load(data_path(cfg["n"]))
    rss_data = psutil.Process().memory_info().rss
    kw = {"n_clusters": cfg["k"], "random_state": 0, "max_iter": cfg["max_iter"]}
    if cfg["algo"] == "minibatch":
        model = MiniBatchKMeans(
            batch_size=cfg["batch_size"], n_init=cfg["n_init"], tol=0.0, **kw
        )  # sklearn's default stopping: max_no_improvement=10 mini-batches without progress
    else:
        model = KMeans(algorithm=cfg["algo"], n_init=cfg["n_init"], tol=cfg["tol"], **kw)
    with threadpool_limits(cfg["threads"]):
        t = time.perf_counter()
        model.fit(x)
        secs = time.perf_counter() - t
    peak = vm_hwm()
    with threadpool_limits(cfg["threads"]):
        inert = inertia(x, model.cluster_centers_)
    sizes = np.bincount(model.predict(x[:200_000]), minlength=cfg["k"])
    return {
        **cfg,
        "seconds": round(secs, 1),
        "n_iter": int(getattr(model, "n_iter_", -1)),
        "n_steps": int(getattr(model, "n_steps_", -1)),
        "inertia": inert,
        "data_mb": round(rss_data / 2**20),
        "peak_rss_mb": round(peak / 2**20),
        "peak_over_data_mb": round((peak - rss_data) / 2**20),
        "empty_clusters_in_200k": int((sizes == 0).sum()),
    }


def configs(args) -> list[dict]:
    out = []
    for n in args.sizes:
        for k in args.ks:
            base = {"n": n, "k": k, "threads": args.threads, "max_iter": args.max_iter}
            out.append({**base, "algo": "lloyd", "n_init": 1, "tol": 1e-4})
            out.append({**base, "algo": "elkan", "n_init": 1, "tol": 1e-4})
            if n <= args.n_init3_max:
                out.append({**base, "algo": "lloyd", "n_init": 3, "tol": 1e-4})
            for bs in args.batch_sizes:
                out.append({**base, "algo": "minibatch", "n_init": 1, "batch_size": bs})
            if n <= args.n_init3_max:
                bs = args.batch_sizes[-1]
                out.append({**base, "algo": "minibatch", "n_init": 3, "batch_size": bs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--ks", default="50,141")
    ap.add_argument("--batch-sizes", default="1024,4096,16384")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--n-init3-max", type=int, default=200_000, help="n_init=3 up to this n")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    ap.add_argument("--only", default="", help="substring filter on algo names")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(child(json.loads(args.one))))
        return
    args.sizes = [int(v) for v in args.sizes.split(",")]
    args.ks = [int(v) for v in args.ks.split(",")]
    args.batch_sizes = [int(v) for v in args.batch_sizes.split(",")]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    rows = []
    for n in args.sizes:
        ensure_data(n)
    for cfg in configs(args):
        if args.only and args.only not in cfg["algo"]:
            continue
        t = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(cfg)],
                capture_output=True,
                text=True,
                env=env,
                timeout=args.timeout,
                check=True,
            )
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            row = {**cfg, "timeout_s": args.timeout}
        except subprocess.CalledProcessError as exc:
            row = {**cfg, "error": exc.stderr[-500:]}
        row["wall_s"] = round(time.perf_counter() - t, 1)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    ref = {
        (r["n"], r["k"]): r["inertia"]
        for r in rows
        if r["algo"] == "lloyd" and r["n_init"] == 1 and "inertia" in r
    }
    lines = [
        "| n | K | algorithm | n_init | batch | seconds | iters/steps | peak RSS MB "
        "(over data) | inertia / KMeans |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "inertia" not in r:
            lines.append(f"| {r['n']} | {r['k']} | {r['algo']} | {r['n_init']} | | {r} |")
            continue
        rel = r["inertia"] / ref[(r["n"], r["k"])] if (r["n"], r["k"]) in ref else float("nan")
        steps = r["n_steps"] if r["algo"] == "minibatch" else r["n_iter"]
        lines.append(
            f"| {r['n']} | {r['k']} | {r['algo']} | {r['n_init']} | {r.get('batch_size', '')} |"
            f" {r['seconds']} | {steps} | {r['peak_rss_mb']} ({r['peak_over_data_mb']}) |"
            f" {rel:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
