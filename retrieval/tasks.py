"""Celery tasks. Thin: they take primary keys, call services, and retry explicitly."""

from __future__ import annotations

import os
import socket

from celery import shared_task
from django.db import connection


@shared_task(name="retrieval.tasks.probe")
def probe() -> dict:
    """Round trip through the broker and the database: which worker answered, and the DB it sees."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        (database,) = cursor.fetchone()
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "database": database}
