"""Search throttling shared by the shop and the API: counters in Redis, failing open."""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any

from django.conf import settings
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

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


def client_address(request: Any) -> str | None:
    """The client's address as the throttles see it: the connection's, or with
    DJANGO_NUM_PROXIES = N trusted proxies in front, the N-th from the right of
    X-Forwarded-For (DRF's rule). The login lockout (django-axes) counts by the same.

    Always an IP address or None (axes stores it in an address column): a forwarded value that
    is not one (a client that reached gunicorn without the proxy, sending its own header) falls
    back to the connection's address; a request with neither (Django's test client login) has
    None."""
    for candidate in (BaseThrottle().get_ident(request), request.META.get("REMOTE_ADDR")):
        try:
            return str(ipaddress.ip_address(str(candidate).strip()))
        except ValueError:
            continue
    return None


class SearchRateThrottle(SimpleRateThrottle):
    """Searches by photo (each a CNN pass), counted in Redis so every web process shares the
    count: anonymous clients per address at RETRIEVAL_SEARCH_THROTTLE, signed-in non-staff
    users and shopper tokens per account at RETRIEVAL_SEARCH_USER_THROTTLE; staff are not
    throttled. Fails open: with Redis down, searches still work."""

    scope = "search"
    user_scope = "search_user"

    @property
    def cache(self):
        return throttle_cache()

    def get_rate(self) -> str | None:
        # Read per request (allow_request), so a settings change (tests) takes effect.
        return None

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return self.cache_format % {"scope": self.user_scope, "ident": user.pk}
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def allow_request(self, request: Any, view: Any) -> bool:
        from redis.exceptions import RedisError

        user = getattr(request, "user", None)
        if user is not None and user.is_staff:
            return True
        signed_in = user is not None and user.is_authenticated
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.user_scope if signed_in else self.scope)
        if not isinstance(rate, str):  # None: off
            return True
        self.rate = rate
        self.num_requests, self.duration = self.parse_rate(rate)
        try:
            return super().allow_request(request, view)
        except RedisError as exc:
            log.warning("search throttle skipped, Redis unavailable: %s", exc)
            return True
