"""Indexing throughput: stored JPEG -> decode -> CNN -> colour -> vectors in PostgreSQL.

The feature stage alone, measured with the real code path: N garments of an existing
catalogue (default ``var/bench-full``, made by ``bench/full_catalogue.sh``) are set back to
pending and queued (``indexing.mark_for_reindex``, the admin's "re-index"); real Celery
feature workers, already connected, read each stored image, decode it, run the CNN, compute
the colour feature and upsert the CNN cache row and (with an active model) the fused vector
in the search table. The clock runs from the queueing to the last garment ready.

Configurations are given as environment overrides for the workers and run round-robin in the
same process, so that every one sees the same machine (the baseline in the same minute)::

    .venv/bin/python bench/bench_index.py --garments 3000 --rounds 2 \\
        --config eager:RETRIEVAL_FREEZE_GRAPH=0 --config frozen:RETRIEVAL_FREEZE_GRAPH=1

Workers: ``--workers`` processes of one Celery slot each, ``RETRIEVAL_TORCH_THREADS``
(default 1: one thread per core beats two threads per process on 2 cores, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    """``name:VAR=value,VAR=value`` -> (name, overrides)."""
    name, _, rest = text.partition(":")
    overrides = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--config {text!r}: expected NAME:VAR=value[,VAR=value]")
        overrides[key] = value
    return name, overrides


def start_workers(n: int, env: dict[str, str], log_dir: Path, tag: str) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        log = open(log_dir / f"index-{tag}-{i}.log", "w")  # noqa: SIM115 - lives with the worker
        command = [sys.executable, "-m", "celery", "-A", "fashionsite", "worker", "-Q",
                   "default,features", "-c", "1", "-n", f"index-{tag}-{i}@%h",
                   "--without-gossip", "--without-mingle"]  # fmt: skip
        procs.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
    return procs


def wait_connected(n: int, deadline: float) -> None:
    from fashionsite.celery import app

    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0) or []
        if len(replies) >= n:
            return
        time.sleep(0.5)
    raise SystemExit("workers did not connect in time (see the index-*.log files)")


def tree_cpu_seconds(procs: list[subprocess.Popen]) -> float:
    total = 0.0
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            for q in [root, *root.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--var", type=Path, default=ROOT / "var" / "bench-full")
    ap.add_argument("--garments", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", default="1", help="RETRIEVAL_TORCH_THREADS of each worker")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--config", action="append", default=[],
        help="NAME:VAR=value[,VAR=value] worker environment overrides (repeatable)",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    configs = [parse_config(c) for c in args.config] or [("default", {})]

    os.environ["DJANGO_VAR_DIR"] = str(args.var)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
    sys.path.insert(0, str(ROOT))
    import django

    from fashionsite.embedded import ensure_services

    ensure_services()  # an entry point: the embedded servers, as manage.py
    django.setup()
    from django.db.models import Count

    from retrieval import indexing, selectors
    from retrieval.models import Garment

    model = selectors.active_model()
    ready = list(
        Garment.objects.filter(status=Garment.Status.READY)
        .order_by("id")
        .values_list("id", flat=True)
    )
    if len(ready) < args.garments:
        raise SystemExit(f"{args.var}: only {len(ready)} ready garments, {args.garments} wanted")
    step = len(ready) / args.garments
    ids = [ready[int(i * step)] for i in range(args.garments)]  # spread over the catalogue
    log_dir = args.var / "index-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    base_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "RETRIEVAL_TORCH_THREADS": args.threads,
    }
    info = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "var": str(args.var),
        "catalogue_ready": len(ready),
        "garments": len(ids),
        "workers": args.workers,
        "torch_threads_per_worker": args.threads,
        "active_model": None if model is None else f"{model.pk} {model.backbone}",
        "loadavg_start": os.getloadavg(),
    }
    print(json.dumps(info), flush=True)
    runs: dict[str, list[dict]] = {name: [] for name, _ in configs}
    for rnd in range(args.rounds):
        for name, overrides in configs:
            procs = start_workers(args.workers, {**base_env, **overrides}, log_dir, name)
            try:
                wait_connected(args.workers, time.monotonic() + 120)
                cpu0 = tree_cpu_seconds(procs)
                started = time.perf_counter()
                indexing.mark_for_reindex(garment_ids=ids)
                todo = Garment.objects.filter(
                    id__in=ids, status__in=[Garment.Status.PENDING, Garment.Status.PROCESSING]
                )
                while todo.exists():
                    time.sleep(0.25)
                elapsed = time.perf_counter() - started
                cpu = tree_cpu_seconds(procs) - cpu0
            finally:
                stop_workers(procs)
            status = dict(
                Garment.objects.filter(id__in=ids)
                .values_list("status")
                .annotate(n=Count("id"))
                .values_list("status", "n")
            )
            run = {
                "seconds": round(elapsed, 1),
                "images_per_second": round(len(ids) / elapsed, 1),
                "worker_cpu_seconds": round(cpu, 1),
                "images_per_worker_cpu_second": round(len(ids) / max(cpu, 1e-9), 1),
                "status": status,
            }
            runs[name].append(run)
            print(f"round {rnd + 1}: {name:10s} {json.dumps(run)}", flush=True)
    results = {"info": info, "loadavg_end": os.getloadavg(), "runs": runs}
    for name, rs in runs.items():
        rates = [r["images_per_second"] for r in rs]
        results[name] = {"images_per_second": rates, "median": statistics.median(rates)}
        print(f"{name:10s} images/s {rates} median {statistics.median(rates)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
