"""Keyword vocabulary and filter values are cached per process (retrieval.search.keyword,
.filters): with this fixture imported into a package's conftest, each of its tests starts
without another test's catalogue in that cache."""

from __future__ import annotations

import pytest

from retrieval import search


@pytest.fixture(autouse=True)
def fresh_search_caches():
    search.forget_cached_values()
    yield
