"""Issue #17 figures, before and after, in one run: two trees, alternating.

1. Web worker memory for a 46 MB photo: a fresh child process (cwd = one tree) sets Django
   up, sends one small search first (imports, first connections), resets the process's peak
   RSS (Linux ``/proc/self/clear_refs``), then passes a multipart POST of the photo to
   ``/api/v1/search/`` through Django's WSGI handler (every middleware, the upload handler,
   the serializer's decode). Reported: the peak RSS over the request minus the RSS before it.
   No model is active, so the request ends 503 right after the decode: the figure is the
   upload and decode, not the CNN.
2. ``/healthz`` under 12 looping clients: gunicorn from one tree (2 workers x 4 threads, as
   ``make run``), 12 threads looping ``GET /healthz`` for ``--seconds``, and one more looping
   ``GET /api/v1/categories/`` (how much the probes delay other requests). p50/p90 of each.

Both trees share the embedded PostgreSQL/Redis of ``--var`` (migrated by the new tree). No
worker runs, so the probe's verdict is "down" in both: the cost is the same either way.
Usage::

    git archive <commit before> | (mkdir -p /tmp/old && tar -x -C /tmp/old)
    .venv/bin/python bench/bench_hardening.py --old /tmp/old --rounds 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEMORY_CHILD = r"""
import json, os, sys
sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
from fashionsite.embedded import ensure_services
ensure_services()
import django
django.setup()
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.handlers.wsgi import WSGIHandler
from django.test import RequestFactory

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

factory, handler, statuses = RequestFactory(), WSGIHandler(), []
def post(path):
    data = open(path, "rb").read()
    upload = SimpleUploadedFile("photo.jpg", data, content_type="image/jpeg")
    return factory.post("/api/v1/search/", {"image": upload}, HTTP_HOST="127.0.0.1")
def send(request):
    body = handler(request.environ, lambda status, headers: statuses.append(status))
    b"".join(body)
send(post(sys.argv[2]))  # warm-up: a small photo
request = post(sys.argv[1])
import gc; gc.collect()
before = kb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM (peak RSS) := current RSS
send(request)
peak = kb("VmHWM")
print(json.dumps({"status": statuses[-1], "before_mb": before / 1024,
                  "added_mb": (peak - before) / 1024}))
"""


def make_photo(path: Path, *, target_mb: float) -> int:
    """A noise JPEG (noise barely compresses) of about ``target_mb`` MB, under 40 MP."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(17)
    pixels = rng.integers(0, 255, (4800, 6400, 3), dtype=np.uint8)  # 30.7 MP
    out = io.BytesIO()
    for quality in range(80, 101):  # the first quality that reaches the size
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=quality, subsampling=2)
        if out.tell() >= target_mb * 1e6:
            break
    if out.tell() > 50 * 1024 * 1024:
        raise SystemExit(f"the photo is {out.tell()} bytes: over the 50 MiB upload limit")
    path.write_bytes(out.getvalue())
    return out.tell()


def child_env(var: Path) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        DJANGO_VAR_DIR=str(var),
        RETRIEVAL_SEARCH_THROTTLE="off",
        RETRIEVAL_SEARCH_USER_THROTTLE="off",
        PYTHONUNBUFFERED="1",
    )
    return env


def memory(tree: Path, photo: Path, small: Path, var: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(photo), str(small)],
        cwd=tree,
        env=child_env(var),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loop(url: str, stop: threading.Event, times: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                response.read()
        except urllib.error.HTTPError as exc:  # 503: down (no worker runs), still an answer
            exc.read()
        times.append((time.perf_counter() - start) * 1000)


def healthz(tree: Path, var: Path, seconds: float) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "fashionsite.wsgi:application"),
            *("-b", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4"),
        ],
        cwd=tree,
        env=child_env(var),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/v1/categories/", timeout=5).read()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        stop = threading.Event()
        health: list[float] = []
        other: list[float] = []
        threads = [
            threading.Thread(target=loop, args=(f"{base}/healthz", stop, health)) for _ in range(12)
        ]
        threads.append(
            threading.Thread(target=loop, args=(f"{base}/api/v1/categories/", stop, other))
        )
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
    finally:
        server.terminate()
        server.wait(timeout=30)

    def q(values: list[float], p: float) -> float:
        return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) > 1 else values[0]

    return {
        "healthz_n": len(health),
        "healthz_p50_ms": statistics.median(health),
        "healthz_p90_ms": q(health, 90),
        "other_n": len(other),
        "other_p50_ms": statistics.median(other),
        "other_p90_ms": q(other, 90),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the tree before the change")
    parser.add_argument("--var", type=Path, default=ROOT / "var")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--photo-mb", type=float, default=46.0)
    args = parser.parse_args()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"],
        cwd=ROOT,
        env=child_env(args.var),
        check=True,
    )
    work = args.var / "bench-hardening"
    work.mkdir(parents=True, exist_ok=True)
    photo, small = work / "photo.jpg", work / "small.jpg"
    size = make_photo(photo, target_mb=args.photo_mb)
    from PIL import Image

    Image.new("RGB", (300, 400), (200, 30, 30)).save(small, "JPEG")
    print(f"photo: {size / 1e6:.1f} MB, 6400x4800")
    trees = {"old": args.old.resolve(), "new": ROOT}
    results: dict[str, dict[str, list]] = {name: {"memory": [], "healthz": []} for name in trees}
    for round_ in range(args.rounds):
        for name, tree in trees.items():
            m = memory(tree, photo, small, args.var)
            h = healthz(tree, args.var, args.seconds)
            results[name]["memory"].append(m)
            results[name]["healthz"].append(h)
            print(f"round {round_ + 1} {name}: {json.dumps(m)} {json.dumps(h)}", flush=True)
    for name in trees:
        mem = [m["added_mb"] for m in results[name]["memory"]]
        hp50 = [h["healthz_p50_ms"] for h in results[name]["healthz"]]
        op50 = [h["other_p50_ms"] for h in results[name]["healthz"]]
        print(
            f"{name}: peak added by the request {statistics.median(mem):.0f} MB "
            f"(runs {', '.join(f'{v:.0f}' for v in mem)}); /healthz p50 "
            f"{statistics.median(hp50):.1f} ms; categories p50 beside it "
            f"{statistics.median(op50):.1f} ms"
        )


if __name__ == "__main__":
    main()
