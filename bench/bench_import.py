"""Catalogue import throughput: from `import_catalog --wait` to every garment ready.

Runs on a throwaway embedded PostgreSQL + Redis (DJANGO_VAR_DIR=var/bench-import, wiped
first), with N real Celery feature workers (or none: the command then indexes in its own
process), and reports wall time, garments/s and the peak RSS of the command and of each
worker (sampled every 0.2 s with psutil, children included).

    .venv/bin/python bench/bench_import.py --limit 2000 --workers 1
    .venv/bin/python bench/bench_import.py --limit 39717 --workers 1   # the whole sample
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"


class PeakRSS(threading.Thread):
    """Samples the resident memory of a process tree until stopped; keeps the peak (bytes)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self._halt = pid, 0, threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> int:
        self._halt.set()
        self.join(timeout=2)
        return self.peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, default=SAMPLE)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="Celery feature workers (0 = none)")
    parser.add_argument("--var", type=Path, default=ROOT / "var" / "bench-import")
    parser.add_argument("--keep", action="store_true", help="Keep the bench databases afterwards.")
    args = parser.parse_args()

    python = sys.executable
    env = {**os.environ, "DJANGO_VAR_DIR": str(args.var), "PYTHONUNBUFFERED": "1"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    subprocess.run([python, "-m", "fashionsite.embedded", "stop", str(args.var)], env=env)
    shutil.rmtree(args.var, ignore_errors=True)
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)

    workers, monitors = [], []
    for i in range(args.workers):
        log = open(args.var / f"worker{i}.log", "w")  # noqa: SIM115 - lives as long as the worker
        worker = subprocess.Popen(
            [python, "-m", "celery", "-A", "fashionsite", "worker", "-Q", "default,features",
             "-c", "1", "-n", f"bench{i}@%h", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        workers.append(worker)
        monitors.append(PeakRSS(worker.pid))
        monitors[-1].start()
    if workers:
        time.sleep(8)  # let workers connect before the first task is queued

    started = time.perf_counter()
    command = subprocess.Popen(
        [python, "manage.py", "import_catalog", str(args.catalog), "--limit", str(args.limit),
         "--wait"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    command_rss = PeakRSS(command.pid)
    command_rss.start()
    output, _ = command.communicate()
    elapsed = time.perf_counter() - started
    command_peak = command_rss.stop()
    worker_peaks = [m.stop() for m in monitors]
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=60)

    counts = subprocess.run(
        [python, "manage.py", "shell", "-c",
         "import json; from django.db.models import Count; from retrieval.models import Garment;"
         "print(json.dumps(dict(Garment.objects.values_list('status').annotate(n=Count('id'))"
         ".values_list('status','n'))))"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    status = json.loads(counts)
    done = status.get("ready", 0) + status.get("failed", 0)
    result = {
        "limit": args.limit,
        "workers": args.workers,
        "seconds": round(elapsed, 1),
        "garments_per_second": round(done / elapsed, 1),
        "status": status,
        "command_peak_rss_mb": round(command_peak / 2**20),
        "worker_peak_rss_mb": [round(p / 2**20) for p in worker_peaks],
        "cpus": os.cpu_count(),
    }
    print(output[-1500:])
    print(json.dumps(result, indent=2))
    if not args.keep:
        subprocess.run([python, "-m", "fashionsite.embedded", "stop", str(args.var)], env=env)
        shutil.rmtree(args.var, ignore_errors=True)
    return 0 if command.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
