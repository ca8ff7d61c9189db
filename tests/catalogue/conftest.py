"""Each test of this package starts with empty search caches (tests/search_caches.py)."""

from tests.search_caches import fresh_search_caches  # noqa: F401 - autouse
