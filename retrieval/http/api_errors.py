"""Every error under /api/ answers JSON in the API's error shape, debug mode included.

DRF's views already answer their errors that way (retrieval.api.errors). What is left is what
Django answers itself: an unknown URL (with DEBUG on, a technical page listing every URL
pattern), a method refused by a plain Django view, an exception raised in a middleware (with
DEBUG on, a traceback), a CSRF refusal. This middleware, high in MIDDLEWARE, replaces any error
response under /api/ that is not JSON by the same status in the error shape.
"""

from __future__ import annotations

import http
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from retrieval.http.errors import error_body

# Headers of the original response that still hold for the JSON one.
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Connection")


def is_json(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").split(";")[0].strip().endswith("json")


def json_error(request: HttpRequest, response: HttpResponse) -> JsonResponse:
    """``response``'s status in the API's error shape; never its body (a page, a traceback)."""
    status = response.status_code
    if status == 404:
        code, message = "not_found", f"no API endpoint at {request.path}"
    elif status == 405:
        code = "method_not_allowed"
        message = f"method {request.method} is not allowed at {request.path}"
    elif status >= 500:
        code, message = "server_error", "internal server error: the error was logged"
    else:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        code, message = phrase.lower().replace(" ", "_").replace("-", "_"), phrase.lower()
    replacement = JsonResponse(error_body(code, message), status=status)
    for header in KEPT_HEADERS:
        if header in response:
            replacement[header] = response[header]
    # Django logged the original (a 500 with its traceback) already: not twice.
    logged = getattr(response, "_has_been_logged", False)
    replacement._has_been_logged = logged  # type: ignore[attr-defined]
    return replacement


class ApiJsonErrorsMiddleware:
    """Non-JSON error responses under /api/ become JSON error bodies (same status)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            request.path.startswith("/api/")
            and response.status_code >= 400
            and not getattr(response, "streaming", False)
            and not is_json(response)
        ):
            return json_error(request, response)
        return response
