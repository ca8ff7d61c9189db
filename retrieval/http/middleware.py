"""A database outage answers 503 with Retry-After, never a 500 or a hang.

While PostgreSQL is down or restarting, every query fails at once (libpq's connect_timeout
bounds a server that does not answer; see DATABASES in settings). Those failures are not
bugs to log with a traceback and page someone about: the request is answered 503 "try again
shortly", as JSON in the API's error shape under /api/ and as a page elsewhere. Django closes
the broken connection at the end of the request (CONN_HEALTH_CHECKS checks a kept one before
reuse), so the same web process serves again as soon as the database is back.
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader

from retrieval.http.errors import error_body

log = logging.getLogger(__name__)

# OperationalError: the server cannot be reached, or went away mid-query (also transient
# server-side failures such as a cancelled statement, for which "try again" is right too).
# InterfaceError: a connection closed under us.
DATABASE_UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)
RETRY_AFTER_SECONDS = 10
DATABASE_UNAVAILABLE_MESSAGE = (
    "the database is unavailable at the moment: please try again in a few seconds"
)


def database_unavailable_response(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: the API's JSON error shape under /api/, the 503 page elsewhere.

    The page renders without a request context: context processors may query the database.
    """
    if request.path.startswith("/api/"):
        body = error_body(
            "database_unavailable",
            DATABASE_UNAVAILABLE_MESSAGE,
            {"retry_after": RETRY_AFTER_SECONDS},
        )
        response: HttpResponse = JsonResponse(body, status=503)
    else:
        response = HttpResponse(loader.get_template("503.html").render(), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    # Logged once, as a warning, by the caller: not again by Django as an ERROR per request.
    response._has_been_logged = True
    return response


class DatabaseUnavailableMiddleware:
    """Turns a database outage raised by a view (or its template) into a 503."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DATABASE_UNAVAILABLE_ERRORS):
            return None
        log.warning("database unavailable, %s answered 503: %s", request.path, exception)
        return database_unavailable_response(request)
