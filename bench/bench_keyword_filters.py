"""Keyword search, filtered and unfiltered search by photo, over HTTP at one client.

Against a running server (``make run``; start it with ``RETRIEVAL_SEARCH_THROTTLE=off`` or
pass ``--token`` of a staff user), on loopback only. One client, one keep-alive connection,
requests back to back; the scenarios are interleaved round by round (one request of each per
round), so a busy neighbour on the machine slows them alike and the unfiltered search by photo
is the baseline of the same run:

- ``photo``: POST /api/v1/search/ (multipart photo, top 10), no filter;
- ``photo+gender``: the same with ``gender`` (the photo's own gender);
- ``photo+gender+colour``: with ``gender`` and ``colour`` (a colour other than the photo's, so
  the filter is selective and clusters are added until 10 garments pass);
- ``keyword``: GET /api/v1/garments/?q=WORDS (one or two words from catalogue titles);
- ``keyword+facets``: the same with ``facets=true`` and a ``gender`` filter.

    .venv/bin/python bench/bench_keyword_filters.py --url http://127.0.0.1:8000 \\
        --photos demo/catalogue.zip --rounds 200

Prints a markdown table (p50/p90/p99 client-side ms per scenario, errors) and appends one JSON
line to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import random
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http_search import machine, multipart, percentile, require_loopback

ROOT = Path(__file__).resolve().parent.parent
COLOURS = ("Black", "White", "Blue", "Red", "Grey", "Green", "Brown", "Pink", "Navy Blue")


def load_queries(source: Path, count: int, seed: int) -> list[dict]:
    """``count`` catalogue rows with their photo, gender, colour and 1-2 title words."""
    rng = random.Random(seed)
    with zipfile.ZipFile(source) as archive:
        csv_name = min((n for n in archive.namelist() if n.endswith("styles.csv")), key=len)
        base = csv_name.rsplit("/", 1)[0] + "/" if "/" in csv_name else ""
        rows = list(csv.DictReader(io.StringIO(archive.read(csv_name).decode("utf-8-sig"))))
        rows = [r for r in rows if r.get("gender") and r.get("productDisplayName")]
        chosen = rng.sample(rows, min(count, len(rows)))
        queries = []
        for row in chosen:
            words = [w for w in row["productDisplayName"].split() if w.isalpha() and len(w) > 2]
            queries.append(
                {
                    "photo": (f"{row['id']}.jpg", archive.read(f"{base}images/{row['id']}.jpg")),
                    "gender": row["gender"],
                    "colour": rng.choice([c for c in COLOURS if c != row.get("baseColour")]),
                    "words": " ".join(rng.sample(words, min(len(words), rng.choice((1, 2))))),
                }
            )
    return queries


def request(conn, method: str, path: str, headers: dict, body: bytes | None = None) -> float:
    started = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    elapsed = (time.perf_counter() - started) * 1000.0
    if response.status != 200:
        raise RuntimeError(f"{method} {path[:80]}: HTTP {response.status} {data[:200]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--photos", type=Path, default=ROOT / "demo" / "catalogue.zip")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10, help="rounds not measured first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--token", default="")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench_keyword_filters.jsonl")
    args = parser.parse_args()
    host, port = require_loopback(args.url)
    queries = load_queries(args.photos, args.rounds + args.warmup, args.seed)
    auth = {"Authorization": f"Token {args.token}"} if args.token else {}
    conn = http.client.HTTPConnection(host, port, timeout=120)
    times: dict[str, list[float]] = {}
    errors: dict[str, int] = {}

    def photo(q: dict, **filters: str) -> float:
        body, kind = multipart(q["photo"], {"top": "10", **filters})
        return request(conn, "POST", "/api/v1/search/", {**auth, "Content-Type": kind}, body)

    scenarios = {
        "photo": lambda q: photo(q),
        "photo+gender": lambda q: photo(q, gender=q["gender"]),
        "photo+gender+colour": lambda q: photo(q, gender=q["gender"], colour=q["colour"]),
        "keyword": lambda q: request(
            conn, "GET", "/api/v1/garments/?" + urlencode({"q": q["words"]}), auth
        ),
        "keyword+facets": lambda q: request(
            conn,
            "GET",
            "/api/v1/garments/?"
            + urlencode({"q": q["words"], "gender": q["gender"], "facets": "true"}),
            auth,
        ),
    }
    for i, query in enumerate(queries):
        for name, run in scenarios.items():
            try:
                elapsed = run(query)
            except (RuntimeError, OSError, http.client.HTTPException) as exc:
                errors[name] = errors.get(name, 0) + 1
                print(f"{name}: {exc}", file=sys.stderr)
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=120)
                continue
            if i >= args.warmup:
                times.setdefault(name, []).append(elapsed)
    rows = []
    print(f"\n{machine()}; {args.rounds} rounds, one client\n")
    print("| scenario | n | p50 ms | p90 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for name in scenarios:
        values = times.get(name, [])
        p50, p90, p99 = (percentile(values, q) for q in (50, 90, 99))
        row = {"scenario": name, "n": len(values), "p50": p50, "p90": p90, "p99": p99,
               "errors": errors.get(name, 0)}  # fmt: skip
        rows.append(row)
        cells = " | ".join(f"{v:.1f}" if v is not None else "-" for v in (p50, p90, p99))
        print(f"| {name} | {len(values)} | {cells} | {row['errors']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        record = {"tag": args.tag, "machine": machine(), "photos": str(args.photos), "rows": rows}
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
