"""Request bodies over the limit are refused before they are read.

Django reads a multipart body whole, streaming its files to temporary files with no limit of
their own, whenever anything touches ``request.POST`` (the CSRF check does, for every form
POST, before any view or throttle runs). So the limits are enforced at the edge of the
middleware stack, for every path:

- :class:`BodyLimitMiddleware` (second in MIDDLEWARE, after CORS only) answers 413 from the
  ``Content-Length`` header alone, before anything reads the body, and closes the connection
  (so the server does not read the unread body either to keep the connection alive);
- :class:`LimitedUploadHandler` (first in FILE_UPLOAD_HANDLERS) stops an uploaded file while it
  streams, once it passes its limit, so no temporary file grows past it.

The limit of a body is ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (one image of RETRIEVAL_MAX_UPLOAD_BYTES
plus the form's fields), and for the admin's catalogue imports RETRIEVAL_MAX_IMPORT_BYTES plus
the same margin (an import archive may be far larger than a photo).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.urls import NoReverseMatch, reverse

from retrieval.http.errors import error_body

# Set on the request by LimitedUploadHandler when it stopped a file (its limit, in bytes).
EXCEEDED_ATTRIBUTE = "_retrieval_upload_limit_exceeded"
# Form fields, multipart boundaries and headers around the file(s) of one request.
FORM_MARGIN_BYTES = 1024 * 1024


def import_path_prefix() -> str | None:
    """The URL prefix of the admin's catalogue import pages (None if the admin is not routed)."""
    try:
        return reverse("admin:retrieval_importjob_changelist")
    except NoReverseMatch:
        return None


def is_import_path(path: str) -> bool:
    prefix = import_path_prefix()
    return prefix is not None and path.startswith(prefix)


def body_limit(path: str) -> int:
    """The largest request body accepted at ``path``, in bytes."""
    if is_import_path(path):
        return settings.RETRIEVAL_MAX_IMPORT_BYTES + FORM_MARGIN_BYTES
    return max(
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0,
        settings.RETRIEVAL_MAX_UPLOAD_BYTES + FORM_MARGIN_BYTES,
    )


def file_limit(path: str) -> int:
    """The largest single uploaded file accepted at ``path``, in bytes."""
    if is_import_path(path):
        return settings.RETRIEVAL_MAX_IMPORT_BYTES
    return settings.RETRIEVAL_MAX_UPLOAD_BYTES


def too_large_response(request: HttpRequest, *, limit: int) -> HttpResponse:
    """413, in the API's JSON error shape under /api/ and as a short page elsewhere.

    ``Connection: close``: the unread body is never read, not even to reuse the connection.
    """
    message = f"the request body is over the limit of {limit} bytes"
    if request.path.startswith("/api/"):
        body = error_body("payload_too_large", message, {"limit": limit})
        response: HttpResponse = JsonResponse(body, status=413)
    else:
        page = loader.get_template("413.html").render({"limit_mb": limit // (1024 * 1024)})
        response = HttpResponse(page, status=413)
    response["Connection"] = "close"
    return response


def declared_length(request: HttpRequest) -> int | None:
    """The body's length from Content-Length; None when absent or not a number."""
    raw = request.META.get("CONTENT_LENGTH") or ""
    try:
        return int(raw)
    except ValueError:
        return None


class BodyLimitMiddleware:
    """413 for a declared body over the path's limit, before anything reads a byte of it.

    A body without Content-Length (chunked) is read by Django as empty (the WSGI input is
    limited to the declared length), so the declared length is the whole story here; the
    upload handler still bounds each file while it streams.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        length = declared_length(request)
        if length is not None and length > (limit := body_limit(request.path)):
            return too_large_response(request, limit=limit)
        response = self.get_response(request)
        # A file stopped while streaming (LimitedUploadHandler): Django answers that 400.
        if (file_limit := getattr(request, EXCEEDED_ATTRIBUTE, None)) is not None:
            return too_large_response(request, limit=file_limit)
        return response


class LimitedUploadHandler(FileUploadHandler):
    """First of FILE_UPLOAD_HANDLERS: no uploaded file is stored past its limit.

    Counts each file's bytes before the next handler (memory or temporary file) stores them.
    A photo over RETRIEVAL_MAX_UPLOAD_BYTES is cut at the limit + 1 byte: the handlers after
    this one never see more, and the usual checks (catalogue.read_upload) refuse it with their
    usual answer (a form error, ``image_too_large``); the rest of the body, at most
    BodyLimitMiddleware's limit, is read and dropped. An import archive over
    RETRIEVAL_MAX_IMPORT_BYTES (the admin's import pages) stops the upload at once with
    RequestDataTooBig, answered 413 (a cut archive would only be reported as corrupt).
    """

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        path = request.path if request is not None else ""
        self.limit = file_limit(path)
        self.cut = not is_import_path(path)
        self.received = 0

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        kept = max(0, self.limit + 1 - self.received)
        self.received += len(raw_data)
        if self.received <= self.limit:
            return raw_data
        if self.cut:
            # None stops the chain: the next handlers store nothing more of this file.
            return raw_data[:kept] or None
        if self.request is not None:
            setattr(self.request, EXCEEDED_ATTRIBUTE, self.limit)
        raise RequestDataTooBig(f"an uploaded file is over the limit of {self.limit} bytes")

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler builds the file
