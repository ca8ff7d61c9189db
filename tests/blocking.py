"""Deterministic races: a second PostgreSQL connection holds an uncommitted row, so that the
code under test passes its own checks (it cannot see the row), then waits on the row's unique
index; committing the row then makes that insert fail exactly as under a real race."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection, connections

from tests.conftest import database_url_for


@contextmanager
def uncommitted(sql: str, params: list[Any]) -> Iterator[psycopg.Connection]:
    """A connection whose open transaction has run ``sql``; rolled back unless committed."""
    holder = psycopg.connect(database_url_for(connection.settings_dict))
    try:
        holder.execute(sql, params)
        yield holder
    finally:
        holder.close()


def waiting_on_a_lock(holder: psycopg.Connection, *, timeout: float = 20.0) -> bool:
    """True once another backend waits on a lock held by ``holder``'s transaction."""
    with psycopg.connect(database_url_for(connection.settings_dict), autocommit=True) as probe:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                [holder.info.backend_pid],
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(0.05)
    return False


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``work`` in a thread (its own database connection); its result or error lands in
    the dict once the thread ends."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except Exception as exc:  # reported to the test, which asserts on it
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def race(holder_sql: str, holder_params: list[Any], work: Callable[[], Any]) -> dict[str, Any]:
    """Run ``work`` while an uncommitted row blocks it; commit the row once ``work`` waits on
    it; return ``work``'s outcome (``result`` or ``error``)."""
    with uncommitted(holder_sql, holder_params) as holder:
        thread, outcome = in_thread(work)
        assert waiting_on_a_lock(holder), "the work never waited on the uncommitted row"
        holder.commit()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the work did not finish within 60 s"
    return outcome
