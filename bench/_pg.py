"""Shared helpers for the search benchmarks: a private embedded PostgreSQL, synthetic data.

Nothing here imports Django. The benchmark server lives in ``var/bench/postgres`` (never the
project's ``var/postgres``), so it can be tuned, loaded with millions of rows and deleted
without touching development data.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
PGDATA = BENCH_DIR / "postgres"

sys.path.insert(0, str(ROOT))

DEEP_DIM = 512
COLOUR_DIM = 30
FUSED_DIM = DEEP_DIM + COLOUR_DIM
POOLED_DIM = 1280

# Server settings used for every benchmark run (see docs/benchmarks_search.md). The ones marked
# "bench only" trade durability for load speed and must not be copied to production.
BENCH_SETTINGS: dict[str, str] = {
    "shared_buffers": "4GB",  # restart
    "effective_cache_size": "16GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "4GB",  # HNSW builds fast only while the graph fits in it
    "max_parallel_maintenance_workers": "1",  # leader + 1 worker = the 2 cores
    "max_parallel_workers_per_gather": "2",
    "max_worker_processes": "8",  # restart
    "random_page_cost": "1.1",
    "jit": "off",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "wal_level": "minimal",  # bench only (restart)
    "max_wal_senders": "0",  # bench only (restart), required by wal_level=minimal
    "synchronous_commit": "off",  # bench only
}


# --------------------------------------------------------------------------- server


def start_server(settings: dict[str, str] | None = None) -> str:
    """Start (or attach to) the bench server, apply ``settings``, restart if one needs it."""
    import psycopg

    from fashionsite.embedded import ensure_postgres, stop_postgres

    settings = BENCH_SETTINGS if settings is None else settings
    url = ensure_postgres(PGDATA)
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in settings.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        pending = conn.execute("SELECT name FROM pg_settings WHERE pending_restart").fetchall()
    if pending:
        print(f"restarting the bench server for {[p[0] for p in pending]}", flush=True)
        stop_postgres(PGDATA)
        url = ensure_postgres(PGDATA)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return url


def stop_server() -> bool:
    from fashionsite.embedded import stop_postgres

    return stop_postgres(PGDATA)


def connect(url: str, autocommit: bool = True):
    import psycopg
    from pgvector.psycopg import register_vector

    conn = psycopg.connect(url, autocommit=autocommit)
    # No server-side prepared statements (Django's default): every search is planned with its
    # own values. psycopg would otherwise prepare a statement after 5 runs, PostgreSQL would
    # then switch to a cached generic plan, and SET enable_* would no longer change the plan.
    conn.prepare_threshold = None
    register_vector(conn)
    return conn


def server_info(conn) -> dict[str, str]:
    names = [
        "server_version",
        "shared_buffers",
        "effective_cache_size",
        "work_mem",
        "maintenance_work_mem",
        "max_parallel_workers_per_gather",
        "max_parallel_maintenance_workers",
        "random_page_cost",
        "jit",
        "wal_level",
        "synchronous_commit",
        "io_method",
    ]
    info = {n: conn.execute(f"SHOW {n}").fetchone()[0] for n in names}
    info["pgvector"] = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
    ).fetchone()[0]
    return info


def machine_info() -> dict[str, str]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"nproc": str(os.cpu_count()), "ram_gib": f"{mem_kb / 2**20:.1f}", "cpu": model}


# --------------------------------------------------------------------------- binary COPY

_PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 in Unix microseconds


def _field_dtype(kind: str, dim: int = 0) -> list[tuple]:
    """numpy big-endian layout of one field *value* in PostgreSQL's binary COPY format."""
    if kind == "int8":
        return [("v", ">i8")]
    if kind == "int4":
        return [("v", ">i4")]
    if kind == "int2":
        return [("v", ">i2")]
    if kind == "timestamptz":
        return [("v", ">i8")]
    if kind == "vector":
        return [("dim", ">i2"), ("unused", ">i2"), ("v", ">f4", (dim,))]
    if kind == "halfvec":
        return [("dim", ">i2"), ("unused", ">i2"), ("v", ">f2", (dim,))]
    if kind in ("int2[]", "float8[]"):
        elem = ">i2" if kind == "int2[]" else ">f8"
        size = 2 if kind == "int2[]" else 8
        return [
            ("ndim", ">i4"),
            ("hasnull", ">i4"),
            ("oid", ">i4"),
            ("n", ">i4"),
            ("lbound", ">i4"),
            ("elems", [("len", ">i4"), ("v", elem)], (dim,)),
        ], size
    raise ValueError(kind)


def binary_copy_payload(columns: list[tuple[str, str, np.ndarray]]) -> bytes:
    """Build the rows of a binary COPY (no header/trailer) with numpy, fast.

    ``columns`` = [(name, kind, values)], ``values`` shaped (n,) or (n, dim). A NULL int4 is
    written for int4 values < -2**31 + 1 (sentinel ``NULL_INT``).
    """
    n = len(columns[0][2])
    fields: list[tuple] = [("nfields", ">i2")]
    fill = []
    for name, kind, values in columns:
        dim = values.shape[1] if values.ndim == 2 else 0
        layout = _field_dtype(kind, dim)
        if isinstance(layout, tuple):
            layout, elem_size = layout
        else:
            elem_size = 0
        fields.append((f"{name}_len", ">i4"))
        fields.append((name, layout))
        fill.append((name, kind, values, dim, elem_size))
    rec = np.zeros(n, dtype=np.dtype(fields))
    rec["nfields"] = len(columns)
    for name, kind, values, dim, elem_size in fill:
        sub = rec[name]
        if kind in ("vector", "halfvec"):
            rec[f"{name}_len"] = 4 + dim * (4 if kind == "vector" else 2)
            sub["dim"] = dim
            sub["v"] = values
        elif kind in ("int2[]", "float8[]"):
            rec[f"{name}_len"] = 20 + dim * (4 + elem_size)
            sub["ndim"] = 1
            sub["oid"] = 21 if kind == "int2[]" else 701
            sub["n"] = dim
            sub["lbound"] = 1
            sub["elems"]["len"] = elem_size
            sub["elems"]["v"] = values
        else:
            size = {"int8": 8, "int4": 4, "int2": 2, "timestamptz": 8}[kind]
            rec[f"{name}_len"] = size
            sub["v"] = values
            if kind == "int4":
                null = values == NULL_INT
                if null.any():
                    raise ValueError("NULL int4 is not supported by the fixed-width writer")
    return rec.tobytes()


NULL_INT = -(2**31)

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"


def copy_binary(conn, table: str, columns: list[tuple[str, str, np.ndarray]]) -> None:
    names = ", ".join(c[0] for c in columns)
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(COPY_HEADER)
        cp.write(binary_copy_payload(columns))
        cp.write(COPY_TRAILER)


def now_pg_us() -> int:
    return int(time.time() * 1_000_000) - _PG_EPOCH_US


# --------------------------------------------------------------------------- synthetic data


@dataclass
class Dataset:
    fused: np.ndarray  # (n, 542) float32, rows in "arrival" (shuffled) order
    gen_cluster: np.ndarray  # (n,) generating category, for information
    centroids: np.ndarray  # (k, 542) float32: mean of each generating category
    labels: np.ndarray  # (n,) int32: nearest centroid (what a converged K-means writes)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def zipf_sizes(n: int, k: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Cluster sizes summing to n whose largest/smallest ratio is about ``ratio``."""
    s = np.log(ratio) / np.log(k)
    w = 1.0 / np.arange(1, k + 1) ** s
    sizes = np.floor(n * w / w.sum()).astype(np.int64)
    sizes[: n - sizes.sum()] += 1
    return rng.permutation(sizes)


def make_dataset(
    n: int,
    k: int,
    seed: int = 0,
    ratio: float = 20.0,
    spread: float = 0.7,
    intrinsic: int = 12,
    colour_scale: float = 0.3,
    separation: float = 0.25,
    shared: float = 0.8,
) -> Dataset:
    """Clustered 542-d vectors shaped like the fused garment features.

    Categories sit in super-groups (tops / bottoms / dresses ...) so neighbouring categories
    overlap; inside a category points vary along ``intrinsic`` random directions (embeddings
    have a low intrinsic dimension) plus a little isotropic noise. The 512-d deep part is
    L2-normalised, the 30-d colour part has norm about ``colour_scale``.
    """
    rng = np.random.default_rng(seed)
    sizes = zipf_sizes(n, k, ratio, rng)
    groups = max(2, k // 6)
    super_centres = _normalise(rng.standard_normal((groups, DEEP_DIM)))
    group_of = rng.integers(0, groups, k)
    centres = _normalise(
        super_centres[group_of] + separation * _normalise(rng.standard_normal((k, DEEP_DIM)))
    ).astype(np.float32)
    # Categories of one super-group vary along mostly the same directions (pose, cut, light).
    group_basis = rng.standard_normal((groups, intrinsic, DEEP_DIM)).astype(np.float32)
    # Colours are not tied to categories (a red shirt, a red dress): a shared palette.
    palette = rng.uniform(0, 1, (24, COLOUR_DIM)).astype(np.float32)

    fused = np.empty((n, FUSED_DIM), dtype=np.float32)
    gen = np.repeat(np.arange(k, dtype=np.int32), sizes)
    start = 0
    for c in range(k):
        m = int(sizes[c])
        own = rng.standard_normal((intrinsic, DEEP_DIM)).astype(np.float32)
        basis = np.sqrt(shared) * group_basis[group_of[c]] + np.sqrt(1 - shared) * own
        basis /= np.sqrt(DEEP_DIM * intrinsic) / spread
        z = rng.standard_normal((m, intrinsic)).astype(np.float32)
        deep = centres[c] + z @ basis
        deep += rng.standard_normal((m, DEEP_DIM), dtype=np.float32) * (0.12 / np.sqrt(DEEP_DIM))
        fused[start : start + m, :DEEP_DIM] = _normalise(deep)
        col = palette[rng.integers(0, len(palette), m)]
        col = col + 0.15 * rng.standard_normal((m, COLOUR_DIM), dtype=np.float32)
        col = np.clip(col, 0, 1)
        fused[start : start + m, DEEP_DIM:] = colour_scale * col / np.sqrt(COLOUR_DIM / 3)
        start += m
    perm = rng.permutation(n)
    fused = fused[perm]
    gen = gen[perm]
    centroids = np.zeros((k, FUSED_DIM), dtype=np.float64)
    np.add.at(centroids, gen, fused)
    centroids = (centroids / np.bincount(gen, minlength=k)[:, None]).astype(np.float32)
    labels = assign(fused, centroids)
    return Dataset(fused=fused, gen_cluster=gen, centroids=centroids, labels=labels)


def assign(x: np.ndarray, centroids: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """Nearest centroid of every row (squared L2), chunked to bound memory."""
    c2 = (centroids.astype(np.float32) ** 2).sum(1)
    out = np.empty(len(x), dtype=np.int32)
    for s in range(0, len(x), chunk):
        d = c2[None, :] - 2 * (x[s : s + chunk] @ centroids.T)
        out[s : s + chunk] = d.argmin(1)
    return out


def make_queries(ds: Dataset, q: int, seed: int = 1, noise: float = 0.08) -> tuple:
    """Perturbed catalogue points: (queries float32 (q, 542), source row ids)."""
    rng = np.random.default_rng(seed)
    src = rng.choice(len(ds.fused), q, replace=False)
    x = ds.fused[src].copy()
    deep = x[:, :DEEP_DIM] + rng.standard_normal((q, DEEP_DIM), dtype=np.float32) * (
        noise / np.sqrt(DEEP_DIM)
    )
    x[:, :DEEP_DIM] = _normalise(deep)
    x[:, DEEP_DIM:] += rng.standard_normal((q, COLOUR_DIM), dtype=np.float32) * (
        0.02 / np.sqrt(COLOUR_DIM)
    )
    return x.astype(np.float32), src


def cluster_order(queries: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(q, k): cluster ids of each query, nearest centroid first."""
    d = ((queries[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1).astype(np.int32)


def probe_sets(order: np.ndarray, sizes: np.ndarray, probes: int, top: int) -> list[list[int]]:
    """The clusters a search reads: the ``probes`` nearest, then more until >= top rows."""
    sets = []
    for row in order:
        chosen = list(row[:probes])
        total = int(sizes[chosen].sum())
        i = probes
        while total < top and i < len(row):
            chosen.append(int(row[i]))
            total += int(sizes[row[i]])
            i += 1
        sets.append([int(c) for c in chosen])
    return sets


def exact_topk(
    x: np.ndarray,
    queries: np.ndarray,
    top: int,
    allowed: list[np.ndarray] | None = None,
    labels: np.ndarray | None = None,
    chunk: int = 100_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``top`` ids and distances per query, optionally restricted per query to rows
    whose label is in ``allowed[i]``. float32 screening, float64 re-rank of 4x candidates."""
    nq = len(queries)
    cand = top * 4
    best_d = np.full((nq, cand), np.inf, dtype=np.float32)
    best_i = np.full((nq, cand), -1, dtype=np.int64)
    mask_lut = None
    if allowed is not None:
        k = int(labels.max()) + 1
        mask_lut = np.zeros((nq, k), dtype=bool)
        for i, a in enumerate(allowed):
            mask_lut[i, a] = True
    q2 = (queries**2).sum(1)
    for s in range(0, len(x), chunk):
        xs = x[s : s + chunk]
        d = (xs**2).sum(1)[None, :] - 2 * (queries @ xs.T) + q2[:, None]
        if mask_lut is not None:
            d[~mask_lut[:, labels[s : s + chunk]]] = np.inf
        d = np.concatenate([best_d, d], axis=1)
        ids = np.concatenate([best_i, np.arange(s, s + len(xs))[None, :].repeat(nq, 0)], axis=1)
        part = np.argpartition(d, cand - 1, axis=1)[:, :cand]
        best_d = np.take_along_axis(d, part, 1)
        best_i = np.take_along_axis(ids, part, 1)
    out_i = np.empty((nq, top), dtype=np.int64)
    out_d = np.empty((nq, top), dtype=np.float64)
    for i in range(nq):
        ok = best_i[i] >= 0
        ids = best_i[i][ok]
        dd = np.sqrt(((x[ids].astype(np.float64) - queries[i].astype(np.float64)) ** 2).sum(1))
        o = np.argsort(dd)[:top]
        out_i[i, : len(o)] = ids[o]
        out_d[i, : len(o)] = dd[o]
        out_i[i, len(o) :] = -1
        out_d[i, len(o) :] = np.inf
    return out_i, out_d


def recall(
    found: list[list[int]],
    truth_ids: np.ndarray,
    truth_d: np.ndarray,
    top: int,
    x: np.ndarray,
    queries: np.ndarray,
) -> float:
    """Mean recall@top. A found id counts if it is in the true set, or ties the true top-th
    distance (within 1e-6 relative, recomputed in float64), so float rounding at rank ``top``
    is not counted as a miss."""
    scores = []
    for i, f in enumerate(found):
        truth = {int(t) for t in truth_ids[i, :top] if t >= 0}
        want = max(1, min(top, len(truth)))
        hit = 0
        for gid in f[:top]:
            if gid in truth:
                hit += 1
            elif 0 <= gid < len(x):
                d = np.sqrt(((x[gid].astype(np.float64) - queries[i]) ** 2).sum())
                if d <= truth_d[i, top - 1] * (1 + 1e-6):
                    hit += 1
        scores.append(min(hit, want) / want)
    return float(np.mean(scores))


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p)) if values else float("nan")
