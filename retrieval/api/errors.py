"""API errors: exception types, their translation and the exception handler (one error body)."""

from __future__ import annotations

import logging
import re

from django.apps import apps
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError
from drf_spectacular.utils import (
    OpenApiResponse,
)
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from retrieval import search
from retrieval.api.serializers import (
    DuplicateImageConflict,
    ErrorSerializer,
)
from retrieval.http.errors import error_body
from retrieval.http.middleware import (
    DATABASE_UNAVAILABLE_ERRORS,
    DATABASE_UNAVAILABLE_MESSAGE,
    RETRY_AFTER_SECONDS,
)

log = logging.getLogger(__name__)


class SearchUnavailableError(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "search_unavailable"
    default_detail = "search by photo is not available yet: no trained model is active"


class NotIndexed(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "not_indexed"
    default_detail = "the garment is not indexed yet"


class Protected(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "protected"
    default_detail = "still in use"


class StorageUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "storage_unavailable"
    default_detail = "the image could not be stored; nothing was saved, try again later"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "the request body is too large"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "the change conflicts with another one made at the same time: try again"


# PostgreSQL's detail of a unique violation: 'Key (sku)=(A-1) already exists.'
UNIQUE_KEY = re.compile(r"Key \((?P<columns>[^)]*)\)=")


def _integrity_error(exc: IntegrityError) -> exceptions.APIException:
    """A write that lost a race: the answer it would have had a moment later.

    Two creates of one SKU (or category name) at once both pass the serializer's uniqueness
    check; the database refuses the second. That one is answered 400 with the same field
    error a later request gets from the check, naming the field; any other integrity error
    (a referenced row deleted meanwhile) 409 "try again".
    """
    cause = exc.__cause__
    diag = getattr(cause, "diag", None)
    if getattr(cause, "sqlstate", None) == "23505" and diag is not None:
        match = UNIQUE_KEY.match(diag.message_detail or "")
        model = next((m for m in apps.get_models() if m._meta.db_table == diag.table_name), None)
        if match and model is not None:
            columns = [c.strip().strip('"') for c in match["columns"].split(",")]
            fields = [f for f in model._meta.concrete_fields if f.column in columns]
            if len(fields) == len(columns):
                error = model().unique_error_message(model, tuple(f.name for f in fields))
                key = fields[0].name if len(fields) == 1 else api_settings.NON_FIELD_ERRORS_KEY
                return exceptions.ValidationError({key: error.messages})
    log.warning("integrity error answered 409: %s", exc)
    return Conflict()


class DatabaseUnavailable(exceptions.APIException):
    """PostgreSQL is down or restarting: retry shortly (Retry-After, as for throttling)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "database_unavailable"
    default_detail = DATABASE_UNAVAILABLE_MESSAGE
    wait = RETRY_AFTER_SECONDS


def _translate(exc: Exception) -> Exception:
    """Exceptions of the layers below, as the API errors they mean."""
    if isinstance(exc, search.SearchUnavailable):
        return SearchUnavailableError(str(exc))
    if isinstance(exc, DATABASE_UNAVAILABLE_ERRORS):
        log.warning("database unavailable, the API answered 503: %s", exc)
        return DatabaseUnavailable()
    if isinstance(exc, IntegrityError):
        return _integrity_error(exc)
    if isinstance(exc, ProtectedError):
        return Protected(str(exc.args[0]) if exc.args else None)
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        return exceptions.ValidationError(detail)
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge(
            f"the request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes"
        )
    if isinstance(exc, SuspiciousOperation):
        return exceptions.ParseError(str(exc) or "malformed request")
    return exc


def _first_message(details) -> str:
    """The first message of a (nested) DRF validation error, after its field's name."""
    if isinstance(details, dict) and details:
        key, value = next(iter(details.items()))
        inner = _first_message(value)
        return inner if key == api_settings.NON_FIELD_ERRORS_KEY else f"{key}: {inner}"
    if isinstance(details, list) and details:
        return _first_message(details[0])
    return str(details)


def exception_handler(exc: Exception, context: dict) -> Response:
    """REST_FRAMEWORK["EXCEPTION_HANDLER"]: one JSON error shape for every API error.

    Unexpected exceptions are logged (with the traceback, on the django.request logger as
    Django would) and answered 500 in the same shape rather than as an HTML page.
    """
    exc = _translate(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        request = context.get("request")
        logging.getLogger("django.request").error(
            "Internal Server Error: %s",
            getattr(request, "path", "?"),
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"status_code": 500, "request": getattr(request, "_request", None)},
        )
        return Response(
            error_body("server_error", "internal server error: the error was logged"),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, exceptions.ValidationError):
        details = response.data
        if not isinstance(details, dict):
            details = {api_settings.NON_FIELD_ERRORS_KEY: details}
        response.data = error_body("invalid", _first_message(details), details)
        return response
    data = response.data
    detail = data.get("detail", data) if isinstance(data, dict) else data
    code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
    details = None
    if isinstance(exc, exceptions.Throttled | DatabaseUnavailable) and exc.wait is not None:
        details = {"retry_after": int(exc.wait + 0.999)}
    extra = {}
    if isinstance(exc, DuplicateImageConflict):
        extra["duplicate_of"] = exc.duplicate_of
    response.data = error_body(str(code), str(detail), details, **extra)
    if isinstance(exc, DatabaseUnavailable):
        # Logged once, as a warning, in _translate: not again by Django as an ERROR.
        response._has_been_logged = True
    return response


ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid input (see error.details)."),
    401: OpenApiResponse(ErrorSerializer, description="No or bad credentials."),
    403: OpenApiResponse(ErrorSerializer, description="Staff only."),
    404: OpenApiResponse(ErrorSerializer, description="No such object or page."),
    409: OpenApiResponse(ErrorSerializer, description="Conflicts with the object's state."),
    413: OpenApiResponse(ErrorSerializer, description="Image or request body too large."),
    415: OpenApiResponse(ErrorSerializer, description="Unsupported request content type."),
    429: OpenApiResponse(ErrorSerializer, description="Too many searches; retry later."),
    503: OpenApiResponse(
        ErrorSerializer,
        description="No trained model is active yet (search_unavailable), or the database is "
        "down (database_unavailable; retry after Retry-After seconds).",
    ),
}


def errors(*codes: int) -> dict:
    return {code: ERRORS[code] for code in codes}


STORAGE_ERROR = {
    503: OpenApiResponse(
        ErrorSerializer,
        description="The image could not be stored (code storage_unavailable); nothing was "
        "saved, retry later.",
    )
}
