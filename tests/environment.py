"""Loaded with ``-p`` before Django settings: the test session gets its own embedded servers.

Tests never touch the development database or queues in var/: unless DATABASE_URL or REDIS_URL
point elsewhere, they start (or reuse) a PostgreSQL and a Redis under var/test/, and
pytest-django creates its throwaway ``test_*`` database there. The test session is an entry
point like manage.py: it calls ``ensure_services`` before pytest-django sets Django up.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DJANGO_VAR_DIR", str(ROOT / "var" / "test"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # A wrapper runs before every implementation, pytest-django's (which sets Django up) too.
    from fashionsite.embedded import ensure_services

    ensure_services()
    return (yield)
