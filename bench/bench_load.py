"""Sustained mixed load: searches by photo, browsing, garment pages and staff uploads.

Starts the production stack on loopback against an existing catalogue (``--var``: the var dir
of an imported, trained catalogue, e.g. the one ``bench/bench_import.py --keep`` leaves):
gunicorn as ``make run`` starts it (2 processes x 4 threads, one torch thread each),
``DJANGO_DEBUG=false``, the anonymous search throttle off, and one Celery feature worker that
indexes the uploads. Then ``--clients`` closed-loop clients (threads, keep-alive connections)
send a weighted mix of requests back to back for ``--duration`` seconds, which measures the
highest rate the machine sustains with that many clients in flight:

    search_api   POST /api/v1/search/ (multipart photo, anonymous)
    search_site  POST /  (the home page's search form, CSRF cookie + token, results fragment)
    browse_site  GET  /categories/<slug>/?page=N
    browse_api   GET  /api/v1/garments/?page=N
    garment      GET  /garments/<id>/  (details + "similar items", a vector search)
    similar_api  GET  /api/v1/garments/<id>/similar/
    upload       POST /api/v1/garments/ (staff token, a new sku, a real photo)

Nothing is lost: the garments are counted (staff API) before and after, every upload answered
201 must exist afterwards, and the bench waits (``--settle`` seconds at most) for the worker
to index them, reporting how many ended ready. Reported: requests/s, p50/p99 per kind and in
all, errors by kind (the target is 0 5xx), the counts. Results are printed as markdown and
appended as one JSON line to ``--out``.

    .venv/bin/python bench/bench_load.py --var var/bench-full --duration 600 --clients 4
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench_http_search import load_photos, machine, multipart, percentile

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"
MIX = {
    "search_api": 30,
    "search_site": 10,
    "browse_site": 15,
    "browse_api": 10,
    "garment": 20,
    "similar_api": 10,
    "upload": 5,
}


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    created: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, kind: str, ms: float) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(ms)

    def error(self, kind: str, what: str) -> None:
        with self.lock:
            key = f"{kind}: {what}"
            self.errors[key] = self.errors.get(key, 0) + 1


class Client:
    """One keep-alive connection with its own cookies (CSRF for the site's search form)."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.connection = http.client.HTTPConnection(host, port, timeout=timeout)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body=None, headers=None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                payload = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed an idle keep-alive connection before reading this request
                # (gunicorn's keepalive is 2 s): reconnect and send it once more, as browsers do.
                self._reconnect()
                if attempt == 2:
                    raise
            except (OSError, http.client.HTTPException):
                self._reconnect()
                raise
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
        if (response.getheader("Connection") or "").lower() == "close":
            self._reconnect()
        return response.status, payload

    def _reconnect(self) -> None:
        self.connection.close()
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)


def api_json(client: Client, path: str, token: str) -> dict:
    status, payload = client.request("GET", path, headers={"Authorization": f"Token {token}"})
    if status != 200:
        raise SystemExit(f"GET {path}: HTTP {status}: {payload[:300]!r}")
    return json.loads(payload)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(env: dict, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True,
        capture_output=True, text=True,
    ).stdout  # fmt: skip


def staff_token(env: dict) -> str:
    code = (
        "from django.contrib.auth import get_user_model\n"
        "from retrieval.tokens import issue_token\n"
        "u, _ = get_user_model().objects.get_or_create(username='bench-staff', "
        "defaults={'is_staff': True})\n"
        "print(issue_token(user=u, replace=True).key)\n"
    )
    return manage(env, "shell", "-c", code).strip().splitlines()[-1]


def start_stack(args, env: dict, port: int) -> list[subprocess.Popen]:
    log_dir = args.var / "load-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    web_env = {**env, "RETRIEVAL_TORCH_THREADS": "1"}
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "fashionsite.wsgi:application",
         "--bind", f"127.0.0.1:{port}", "--workers", str(args.web_workers), "--threads", "4",
         "--timeout", "120"],
        cwd=ROOT, env=web_env, stdout=open(log_dir / "web.log", "w"),  # noqa: SIM115 - lives with the server
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "fashionsite", "worker", "-Q", "default,features",
         "-c", "1", "-n", f"load{port}@%h", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=open(log_dir / "worker.log", "w"),  # noqa: SIM115 - lives with the worker
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    return [web, worker]


def wait_ready(client: Client, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            status, _ = client.request("GET", "/healthz")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become healthy (see <var>/load-logs/)")


def one_request(kind, client, rng, ctx, args, stats, sku_counter) -> tuple[int, bytes] | None:
    photo = ctx["photos"][rng.randrange(len(ctx["photos"]))]
    token = {"Authorization": f"Token {ctx['token']}"}
    if kind == "search_api":
        body, ctype = multipart(photo, {"top": rng.choice(["5", "10", "20"]), "mode": "fused"})
        return client.request("POST", "/api/v1/search/", body, {"Content-Type": ctype})
    if kind == "search_site":
        if "csrftoken" not in client.cookies:
            client.request("GET", "/")
        fields = {"csrfmiddlewaretoken": client.cookies.get("csrftoken", ""), "top": "10"}
        body, ctype = multipart(photo, fields)
        headers = {"Content-Type": ctype, "X-Requested-With": "fetch"}
        return client.request("POST", "/", body, headers)
    if kind == "browse_site":
        slug = rng.choice(ctx["slugs"])
        return client.request("GET", f"/categories/{slug}/?page={rng.randint(1, 3)}")
    if kind == "browse_api":
        return client.request("GET", f"/api/v1/garments/?page={rng.randint(1, ctx['pages'])}")
    if kind == "garment":
        return client.request("GET", f"/garments/{rng.choice(ctx['ids'])}/")
    if kind == "similar_api":
        return client.request("GET", f"/api/v1/garments/{rng.choice(ctx['ids'])}/similar/")
    if kind == "upload":
        with stats.lock:
            sku_counter[0] += 1
            n = sku_counter[0]
        fields = {
            "sku": f"load-{ctx['run']}-{n}",
            "title": f"Load test garment {n}",
            "category": str(rng.choice(ctx["category_ids"])),
            "colour": "Black",
        }
        body, ctype = multipart(photo, fields)
        status, payload = client.request(
            "POST", "/api/v1/garments/", body, {"Content-Type": ctype, **token}
        )
        if status == 201:
            with stats.lock:
                stats.created.append(json.loads(payload)["id"])
        return status, payload
    raise ValueError(kind)


def run_clients(args, ctx, stats: Stats, host: str, port: int) -> float:
    kinds, weights = zip(*MIX.items(), strict=True)
    stop_at = time.monotonic() + args.duration
    sku_counter = [0]

    def loop(seed: int) -> None:
        rng = random.Random(seed)
        client = Client(host, port, args.timeout)
        while time.monotonic() < stop_at:
            kind = rng.choices(kinds, weights)[0]
            started = time.monotonic()
            try:
                status, payload = one_request(kind, client, rng, ctx, args, stats, sku_counter)
            except (OSError, http.client.HTTPException) as exc:
                stats.error(kind, type(exc).__name__)
                time.sleep(0.05)
                continue
            elapsed = (time.monotonic() - started) * 1000.0
            expected = 201 if kind == "upload" else 200
            if status == expected:
                stats.ok(kind, elapsed)
            else:
                stats.error(kind, f"HTTP {status} {payload[:120]!r}")

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.duration + args.timeout + 10)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--var", type=Path, required=True, help="var dir of a trained catalogue")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--settle", type=float, default=300.0, help="max wait for indexing")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--count", type=int, default=300, help="distinct photos to cycle")
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "var" / "bench" / "results" / "load.jsonl"
    )
    args = parser.parse_args()
    if not 0 < args.duration <= 1800 or not 1 <= args.clients <= 64:
        raise SystemExit("--duration in (0, 1800] s, --clients in [1, 64]")
    args.var = args.var.resolve()
    env = {
        **os.environ,
        "DJANGO_VAR_DIR": str(args.var),
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "RETRIEVAL_SEARCH_THROTTLE": "off",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    manage(env, "migrate", "-v0")  # also starts the embedded PostgreSQL and Redis
    token = staff_token(env)
    port = free_port()
    photos = load_photos(args.photos, args.count)
    processes = start_stack(args, env, port)
    host = "127.0.0.1"
    try:
        probe = Client(host, port, args.timeout)
        wait_ready(probe, time.monotonic() + 120)
        categories = api_json(probe, "/api/v1/categories/", token)
        listing = api_json(probe, "/api/v1/garments/?status=ready", token)
        before = api_json(probe, "/api/v1/garments/", token)["count"]
        ids = [g["id"] for g in listing["results"]]
        for page in range(2, 6):
            more = api_json(probe, f"/api/v1/garments/?status=ready&page={page}", token)
            ids += [g["id"] for g in more["results"]]
        ctx = {
            "photos": photos,
            "token": token,
            "run": uuid.uuid4().hex[:8],
            "slugs": [c["slug"] for c in categories if c.get("garment_count", 1)],
            "category_ids": [c["id"] for c in categories],
            "ids": ids,
            "pages": max(1, min(50, listing["count"] // max(1, len(listing["results"])))),
        }
        # Warm-up (not measured): each web process loads the CNN once on its first search.
        for _ in range(args.web_workers * 4):
            one_request("search_api", probe, random.Random(0), ctx, args, Stats(), [0])
        stats = Stats()
        print(f"{args.clients} clients x {args.duration:.0f} s against {before} garments ...")
        elapsed = run_clients(args, ctx, stats, host, port)

        # Nothing lost: every 201 exists, and the worker indexes them all.
        deadline = time.monotonic() + args.settle
        statuses: dict[int, str] = {}
        while time.monotonic() < deadline:
            for gid in stats.created:
                if statuses.get(gid) in {"ready", "failed"}:
                    continue
                code, payload = probe.request(
                    "GET", f"/api/v1/garments/{gid}/", headers={"Authorization": f"Token {token}"}
                )
                statuses[gid] = json.loads(payload)["status"] if code == 200 else f"HTTP {code}"
            if all(s in {"ready", "failed"} or s.startswith("HTTP") for s in statuses.values()):
                break
            time.sleep(2)
        after = api_json(probe, "/api/v1/garments/", token)["count"]
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    everything = [ms for values in stats.latencies.values() for ms in values]
    errors = sum(stats.errors.values())
    server_errors = sum(n for k, n in stats.errors.items() if re.search(r"HTTP 5\d\d", k))
    ready = sum(1 for s in statuses.values() if s == "ready")
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "tag": args.tag,
        "clients": args.clients,
        "web_workers": args.web_workers,
        "seconds": round(elapsed, 1),
        "requests": len(everything),
        "requests_per_s": round(len(everything) / elapsed, 2),
        "p50_ms": percentile(everything, 50),
        "p99_ms": percentile(everything, 99),
        "errors": errors,
        "server_errors_5xx": server_errors,
        "error_kinds": stats.errors,
        "per_kind": {
            kind: {
                "n": len(values),
                "p50_ms": percentile(values, 50),
                "p99_ms": percentile(values, 99),
            }
            for kind, values in sorted(stats.latencies.items())
        },
        "garments_before": before,
        "uploads_created": len(stats.created),
        "garments_after": after,
        "lost": before + len(stats.created) - after,
        "uploads_ready": ready,
        "uploads_not_ready": {str(g): s for g, s in statuses.items() if s != "ready"},
    }

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.0f}"

    print(f"\nmachine: {result['machine']}")
    print(
        f"{result['requests']} requests in {result['seconds']} s = "
        f"{result['requests_per_s']} req/s, p50 {fmt(result['p50_ms'])} ms, "
        f"p99 {fmt(result['p99_ms'])} ms, errors {errors} (5xx: {server_errors})"
    )
    print("\n| kind | requests | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for kind, row in result["per_kind"].items():
        print(f"| {kind} | {row['n']} | {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} |")
    if stats.errors:
        print(f"\nerrors: {json.dumps(stats.errors, indent=1)}")
    print(
        f"\ngarments before {before}, uploads answered 201: {len(stats.created)}, after {after}, "
        f"lost {result['lost']}; uploads indexed ready {ready}/{len(stats.created)}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as handle:
        handle.write(json.dumps(result) + "\n")
    print(f"appended to {args.out}")
    return 0 if server_errors == 0 and result["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
