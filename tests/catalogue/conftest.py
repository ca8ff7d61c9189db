"""Keyword vocabulary and filter values are cached per process (retrieval.search.keyword,
.filters): each test starts without another test's catalogue in that cache."""

from __future__ import annotations

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _fresh_search_caches():
    cache.delete_many(["retrieval:keyword-vocabulary"])
    cache.delete_many(
        [f"retrieval:filter-values:{n}" for n in ("gender", "colour", "season", "usage")]
    )
    yield
