"""Search by photo over HTTP: latency percentiles and errors at 1 and 4 concurrent clients.

Posts real catalogue photos, as multipart uploads, to ``POST /api/v1/search/`` of a running
server (``make run``, or gunicorn as in docs/benchmarks_http.md) for a bounded time per
concurrency level, on the loopback interface only. Anonymous searches are throttled
(RETRIEVAL_SEARCH_THROTTLE): start the server with ``RETRIEVAL_SEARCH_THROTTLE=off`` or pass
``--token`` of a staff user (``manage.py drf_create_token admin``); 429 answers are counted
apart from errors.

    .venv/bin/python bench/bench_http_search.py --url http://127.0.0.1:8000 \\
        --photos ../shared/data/fashion-product-images-small.zip --duration 30 --concurrency 1,4

Each client is a thread with its own keep-alive connection (stdlib http.client) sending
requests back to back (closed loop), cycling through ``--count`` photos taken evenly from the
zip (styles.csv + images/) or folder. The first ``--warmup`` seconds of each level are not
measured (CNN load, connection set-up). Reported per level: requests, throughput, client-side
latency p50/p90/p99/max, the server's own ``took_ms`` p50/p99, and errors by kind. Results are
printed as a markdown table and appended, one JSON object per line, to ``--out``.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import platform
import socket
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "fashion-product-images-small.zip"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def load_photos(source: Path, count: int) -> list[tuple[str, bytes]]:
    """``count`` photos taken evenly across a catalogue zip or a folder of images."""
    if source.is_dir():
        names = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        step = max(1, len(names) // count)
        return [(p.name, p.read_bytes()) for p in names[::step][:count]]
    with zipfile.ZipFile(source) as archive:
        names = sorted(n for n in archive.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
        step = max(1, len(names) // count)
        return [(Path(n).name, archive.read(n)) for n in names[::step][:count]]


def require_loopback(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL whose host resolves to loopback addresses only."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"--url must be http://HOST:PORT, got {url!r}")
    port = parts.port or 80
    addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port)}
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise SystemExit(f"refusing {parts.hostname}: this benchmark only targets loopback")
    return parts.hostname, port


def multipart(photo: tuple[str, bytes], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = []
    for name, value in fields.items():
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    name, data = photo
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    body = "".join(chunks).encode() + head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@dataclass
class Level:
    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    throttled: int = 0
    measured_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def client(
    *,
    host: str,
    port: int,
    photos: list,
    offset: int,
    fields: dict,
    headers: dict,
    level: Level,
    measure_from: float,
    stop_at: float,
    max_requests: int,
    timeout: float,
    sent: list[int],
) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    i = offset
    failures = 0  # consecutive connection failures
    while time.monotonic() < stop_at:
        with level.lock:
            if sent[0] >= max_requests:
                break
            sent[0] += 1
        body, content_type = multipart(photos[i % len(photos)], fields)
        i += 1
        started = time.monotonic()
        measured = started >= measure_from
        try:
            connection.request(
                "POST",
                "/api/v1/search/",
                body=body,
                headers={**headers, "Content-Type": content_type},
            )
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
            if measured:
                level.error(type(exc).__name__)
            failures += 1
            time.sleep(min(1.0, 0.05 * failures))  # a server that is down is not hammered
            continue
        failures = 0
        elapsed_ms = (time.monotonic() - started) * 1000.0
        if not measured:
            continue
        if response.status == 200:
            took = json.loads(payload).get("took_ms")
            with level.lock:
                level.latencies_ms.append(elapsed_ms)
                if isinstance(took, int | float):
                    level.server_ms.append(float(took))
        elif response.status == 429:
            with level.lock:
                level.throttled += 1
        else:
            level.error(f"HTTP {response.status}")
        if response.getheader("Connection", "").lower() == "close":
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
    connection.close()


def run_level(args, host: str, port: int, photos: list, clients: int) -> Level:
    level = Level(clients=clients)
    fields = {"top": str(args.top), "mode": args.mode}
    headers = {"Authorization": f"Token {args.token}"} if args.token else {}
    start = time.monotonic()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    sent = [0]
    threads = [
        threading.Thread(
            target=client,
            kwargs={
                "host": host,
                "port": port,
                "photos": photos,
                "offset": n * (len(photos) // clients),
                "fields": fields,
                "headers": headers,
                "level": level,
                "measure_from": measure_from,
                "stop_at": stop_at,
                "max_requests": args.max_requests,
                "timeout": args.timeout,
                "sent": sent,
            },
            daemon=True,
        )
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.warmup + args.duration + args.timeout + 5)
    level.measured_s = max(1e-9, min(time.monotonic(), stop_at) - measure_from)
    return level


def summary(level: Level) -> dict:
    ok = len(level.latencies_ms)
    errors = sum(level.errors.values())
    return {
        "clients": level.clients,
        "ok": ok,
        "errors": errors,
        "error_kinds": level.errors,
        "throttled": level.throttled,
        "seconds": round(level.measured_s, 1),
        "throughput_per_s": round(ok / level.measured_s, 2),
        "p50_ms": percentile(level.latencies_ms, 50),
        "p90_ms": percentile(level.latencies_ms, 90),
        "p99_ms": percentile(level.latencies_ms, 99),
        "max_ms": max(level.latencies_ms) if level.latencies_ms else None,
        "server_p50_ms": percentile(level.server_ms, 50),
        "server_p99_ms": percentile(level.server_ms, 99),
    }


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="zip or folder")
    parser.add_argument("--count", type=int, default=200, help="distinct photos to cycle")
    parser.add_argument("--concurrency", default="1,4", help="comma-separated client counts")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not measured first")
    parser.add_argument(
        "--max-requests", type=int, default=20000, help="hard cap on requests per level"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--top", type=int, default=10, choices=(5, 10, 20))
    parser.add_argument("--mode", default="fused", choices=("fused", "deep"))
    parser.add_argument("--token", default=os.environ.get("BENCH_API_TOKEN", ""))
    parser.add_argument("--tag", default="", help="free text stored with the results")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "var" / "bench" / "results" / "http_search.jsonl"
    )
    args = parser.parse_args()
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60:
        raise SystemExit("--duration must be in (0, 600] and --warmup in [0, 60] seconds")
    host, port = require_loopback(args.url)
    levels = [int(n) for n in args.concurrency.split(",") if n.strip()]
    if not levels or min(levels) < 1 or max(levels) > 64:
        raise SystemExit("--concurrency: client counts between 1 and 64")
    photos = load_photos(args.photos, args.count)
    if not photos:
        raise SystemExit(f"no photos in {args.photos}")
    mean_kb = sum(len(data) for _, data in photos) / len(photos) / 1024
    print(f"{len(photos)} photos (mean {mean_kb:.1f} kB) -> {args.url}/api/v1/search/")
    print(f"machine: {machine()}")
    rows = []
    for clients in levels:
        result = summary(run_level(args, host, port, photos, clients))
        rows.append(result)
        print(
            f"  {clients} client(s): {result['ok']} ok, {result['errors']} errors, "
            f"{result['throttled']} throttled, p50 {result['p50_ms']} ms"
        )

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.0f}" if isinstance(value, float) else str(value)

    print()
    print(
        "| clients | requests | errors | throttled | req/s | p50 ms | p90 ms | p99 ms | max ms "
        "| server p50 ms | server p99 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['ok']} | {r['errors']} | {r['throttled']} "
            f"| {r['throughput_per_s']:.1f} | {fmt(r['p50_ms'])} | {fmt(r['p90_ms'])} "
            f"| {fmt(r['p99_ms'])} | {fmt(r['max_ms'])} | {fmt(r['server_p50_ms'])} "
            f"| {fmt(r['server_p99_ms'])} |"
        )
        if r["error_kinds"]:
            print(f"  errors at {r['clients']} client(s): {r['error_kinds']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "url": args.url,
        "machine": machine(),
        "photos": len(photos),
        "top": args.top,
        "mode": args.mode,
        "duration_s": args.duration,
        "tag": args.tag,
        "levels": rows,
    }
    with args.out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(f"\nappended to {args.out}")


if __name__ == "__main__":
    main()
