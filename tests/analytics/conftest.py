"""Fresh search caches for each analytics test (searches run through the site and the API)."""

from tests.search_caches import fresh_search_caches  # noqa: F401 - autouse
