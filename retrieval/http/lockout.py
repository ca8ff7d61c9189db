"""The login lockout's settings and answer (django-axes reads them through AXES_* settings).

Every password login goes through axes' backend; after DJANGO_LOGIN_FAILURE_LIMIT failures for
an account or from a client address within DJANGO_LOGIN_COOLOFF_MINUTES, it refuses further
logins until that many minutes have passed since the last failure. Axes' middleware then
answers with :func:`lockout_response`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

from retrieval.http.errors import error_body

LOCKED_OUT_MESSAGE = (
    "too many failed sign-ins for this account or from this address: sign-in is locked, "
    "try again later"
)


def failure_limit(request: HttpRequest | None, credentials: dict | None) -> int:
    """AXES_FAILURE_LIMIT: failed logins (per account, per address) that lock sign-in."""
    return int(settings.DJANGO_LOGIN_FAILURE_LIMIT)


def cool_off(request: HttpRequest | None = None) -> timedelta:
    """AXES_COOLOFF_TIME: how long after the last failure sign-in stays locked (failures
    older than that are forgotten)."""
    return timedelta(minutes=settings.DJANGO_LOGIN_COOLOFF_MINUTES)


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict | None
) -> HttpResponse:
    """429 with Retry-After (the cool-off): the API's JSON error body under /api/, else a page
    in the admin's style saying what happened and when to try again."""
    seconds = int(cool_off(request).total_seconds())
    if request.path.startswith("/api/"):
        body = error_body("locked_out", LOCKED_OUT_MESSAGE, {"retry_after": seconds})
        response: HttpResponse = JsonResponse(body, status=429)
    else:
        context: dict[str, Any] = {
            **admin.site.each_context(request),
            "cool_off_minutes": settings.DJANGO_LOGIN_COOLOFF_MINUTES,
        }
        response = TemplateResponse(request, "admin/locked_out.html", context, status=429)
        response.render()
    response["Retry-After"] = str(seconds)
    return response
