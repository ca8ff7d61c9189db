"""Search throttling shared by the shop and the API: counters in Redis, failing open."""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle

log = logging.getLogger(__name__)


_throttle_cache = None


_throttle_cache_lock = threading.Lock()


def throttle_cache():
    """A Redis cache for throttle counters, shared by every web process (built once)."""
    global _throttle_cache
    if _throttle_cache is None:
        from django.core.cache.backends.redis import RedisCache

        with _throttle_cache_lock:
            if _throttle_cache is None:
                _throttle_cache = RedisCache(
                    settings.REDIS_URL,
                    {
                        "KEY_PREFIX": "fashionsite",
                        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
                    },
                )
    return _throttle_cache


class SearchRateThrottle(AnonRateThrottle):
    """Anonymous searches per client address (RETRIEVAL_SEARCH_THROTTLE); signed-in users and
    token holders are not throttled. Fails open: with Redis down, searches still work."""

    scope = "search"

    @property
    def cache(self):
        return throttle_cache()

    def get_rate(self) -> str | None:
        # Read per request, so a settings change (tests, override_settings) takes effect.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view) -> bool:
        from redis.exceptions import RedisError

        try:
            return super().allow_request(request, view)
        except RedisError as exc:
            log.warning("search throttle skipped, Redis unavailable: %s", exc)
            return True
