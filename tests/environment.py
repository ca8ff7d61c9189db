"""Loaded with ``-p`` before Django settings: the test session gets its own embedded servers.

Tests never touch the development database or queues in var/: unless DATABASE_URL or REDIS_URL
point elsewhere, they start (or reuse) a PostgreSQL and a Redis under var/test/, and
pytest-django creates its throwaway ``test_*`` database there.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DJANGO_VAR_DIR", str(ROOT / "var" / "test"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
