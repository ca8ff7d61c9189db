"""The REST API (/api/v1/) for mobile apps and integrations: thin DRF views.

Reads: search by photo, garments (paginated, filterable), similar garments, categories.
Writes: staff only, with token authentication (``Authorization: Token <key>``; staff get a key
in the admin under "Tokens", or with ``manage.py drf_create_token USERNAME``).

Every error answers ``{"error": {"code", "message", "details"}}`` (:func:`exception_handler`),
anonymous searches are throttled (RETRIEVAL_SEARCH_THROTTLE, counted in Redis so that every web
process shares the count), and the OpenAPI 3 schema is served at /api/v1/schema/ with Swagger UI
at /api/v1/docs/ and Redoc at /api/v1/redoc/ (assets from drf-spectacular-sidecar, no CDN).
"""

from __future__ import annotations

import base64
import logging
import threading
from datetime import datetime

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Count, ProtectedError, Q
from django.urls import path
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework import exceptions, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import (
    SAFE_METHODS,
    AllowAny,
    BasePermission,
    IsAuthenticatedOrReadOnly,
)
from rest_framework.response import Response
from rest_framework.routers import DefaultRouter
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from retrieval import search, services
from retrieval.middleware import (
    DATABASE_UNAVAILABLE_ERRORS,
    DATABASE_UNAVAILABLE_MESSAGE,
    RETRY_AFTER_SECONDS,
)
from retrieval.models import Category, Garment
from retrieval.serializers import (
    CategorySerializer,
    ErrorSerializer,
    GarmentFilterSerializer,
    GarmentSerializer,
    GarmentWriteSerializer,
    SearchBase64Serializer,
    SearchResponseSerializer,
    SearchUploadSerializer,
    SimilarQuerySerializer,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- errors


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


def error_body(code: str, message: str, details=None) -> dict:
    return {"error": {"code": code, "message": message, "details": details}}


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
    response.data = error_body(str(code), str(detail), details)
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


# --------------------------------------------------------------------------- throttling

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


# ------------------------------------------------------------------ visibility and permissions


def visible_garments(user):
    """Garments a user may see: shoppers the indexed ones of active categories, staff all."""
    if user.is_staff:
        return Garment.objects.all()
    return Garment.objects.filter(status=Garment.Status.READY, category__active=True)


def visible_categories(user):
    """Categories a user may see: shoppers the active ones, staff all."""
    return Category.objects.all() if user.is_staff else Category.objects.filter(active=True)


def search_response(request, result: search.SearchResult, *, top: int) -> Response:
    """The API answer for a search or a more-like-this. Hidden garments (inactive category,
    not ready) are already excluded in SQL for shoppers (search_vectors(include_hidden=False))."""
    body = SearchResponseSerializer.present(result, result.garments(), top=top)
    return Response(SearchResponseSerializer(body, context={"request": request}).data)


class IsStaffOrReadOnly(BasePermission):
    """Anyone may read; only staff may write (anonymous: 401, other users: 403)."""

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


class ApiPagination(PageNumberPagination):
    """Page numbers (``?page=N``: ``count``, ``next``, ``previous``, ``results``), or, with
    ``?cursor=`` (empty for the first page), keyset pages in the list order (newest first):
    ``next`` and ``results`` only. A cursor page costs the same at any depth and runs no
    ``COUNT(*)``; walking ``next`` returns every garment that existed at the start exactly once,
    even while garments are added (they are newer than the cursor) or deleted.
    """

    page_size_query_param = "page_size"
    max_page_size = 100
    cursor_query_param = "cursor"
    keyset = False

    def paginate_queryset(self, queryset, request, view=None):
        self.keyset = self.cursor_query_param in request.query_params
        if not self.keyset:
            return super().paginate_queryset(queryset, request, view)
        self.request = request
        size = self.get_page_size(request)
        queryset = queryset.order_by("-created_at", "-id")  # Garment.Meta.ordering, indexed
        if token := request.query_params[self.cursor_query_param]:
            created_at, pk = decode_cursor(token)
            # Rows after (created_at, pk) in (-created_at, -id) order; the first condition
            # bounds the index scan, the second drops the cursor's own timestamp's earlier ids.
            queryset = queryset.filter(
                Q(created_at__lte=created_at) & (Q(created_at__lt=created_at) | Q(id__lt=pk))
            )
        rows = list(queryset[: size + 1])
        self.next_token = encode_cursor(rows[size - 1]) if len(rows) > size else None
        return rows[:size]

    def get_paginated_response_schema(self, schema):
        body = super().get_paginated_response_schema(schema)
        body["required"] = ["next", "results"]
        for name in ("count", "previous"):
            body["properties"][name]["description"] = "Page numbers only: absent with `cursor`."
        return body

    def get_paginated_response(self, data):
        if not self.keyset:
            return super().get_paginated_response(data)
        return Response({"next": self.get_next_link(), "results": data})

    def get_next_link(self):
        if not self.keyset:
            return super().get_next_link()
        if self.next_token is None:
            return None
        url = remove_query_param(self.request.build_absolute_uri(), self.page_query_param)
        return replace_query_param(url, self.cursor_query_param, self.next_token)


def encode_cursor(garment: Garment) -> str:
    raw = f"{garment.created_at.isoformat()}|{garment.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        stamp, pk = raw.split("|")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at, int(pk)
    except (ValueError, UnicodeDecodeError):
        raise exceptions.ValidationError(
            {"cursor": ["invalid cursor: use the `next` link of the previous page"]}
        ) from None


# --------------------------------------------------------------------------- search

SEARCH_EXAMPLE = OpenApiExample(
    "One result",
    value={
        "results": [
            {
                "id": 41,
                "sku": "15970",
                "title": "Turtle Check Men Navy Blue Shirt",
                "category": {"id": 3, "slug": "shirts", "name": "Shirts"},
                "colour": "Navy Blue",
                "image_url": "https://shop.example.com/media/garments/2025/11/15970.jpg",
                "score": -0.0,
            }
        ],
        "cluster": [4],
        "model": "efficientnet_lite0-20251127-120000-a1b2c3",
        "mode": "fused",
        "top": 5,
        "took_ms": 48.3,
    },
    response_only=True,
)


class SearchView(APIView):
    """Search the catalogue by photo."""

    permission_classes = [AllowAny]
    throttle_classes = [SearchRateThrottle]
    parser_classes = [MultiPartParser, JSONParser]

    @extend_schema(
        operation_id="search_by_photo",
        summary="Search by photo",
        description=(
            "Send a photo (multipart `image` file, or JSON with the image base64-encoded) and "
            "get the `top` most similar garments, most similar first. `mode=fused` matches shape "
            "and colour (the paper's fused feature), `mode=deep` shape only. Anonymous clients "
            "are throttled (HTTP 429 with Retry-After)."
        ),
        request={
            "multipart/form-data": SearchUploadSerializer,
            "application/json": SearchBase64Serializer,
        },
        responses={200: SearchResponseSerializer, **errors(400, 413, 415, 429, 503)},
        examples=[SEARCH_EXAMPLE],
        tags=["search"],
    )
    def post(self, request):
        data = request.data  # parses, or raises 415 / 400 / 413
        if request.content_type.startswith("multipart/"):
            serializer = SearchUploadSerializer(data=data)
        else:
            serializer = SearchBase64Serializer(data=data)
        serializer.is_valid(raise_exception=True)
        options = serializer.validated_data
        category = options.get("category")
        result = search.search_image(
            image=options["image"],
            top=options["top"],
            mode=options["mode"],
            category_id=category.pk if category is not None else None,
            include_hidden=request.user.is_staff,
        )
        return search_response(request, result, top=options["top"])


# --------------------------------------------------------------------------- catalogue


@extend_schema_view(
    list=extend_schema(
        summary="List garments",
        description="Paginated, newest first. Shoppers see indexed garments of active "
        "categories; staff see every garment. Page numbers (`page`) answer `count`, `next`, "
        "`previous` and `results`; `cursor` (empty for the first page, then the `next` link) "
        "answers `next` and `results` only, at the same cost at any depth.",
        parameters=[GarmentFilterSerializer],
        responses={200: GarmentSerializer(many=True), **errors(400, 404)},
    ),
    retrieve=extend_schema(
        summary="One garment", responses={200: GarmentSerializer, **errors(404)}
    ),
    create=extend_schema(
        summary="Create a garment (staff)",
        description="The image is validated like every upload and queued for indexing: the "
        "answer's status is `pending` until a worker has indexed it.",
        request={"multipart/form-data": GarmentWriteSerializer},
        responses={201: GarmentSerializer, **errors(400, 401, 403, 413, 415), **STORAGE_ERROR},
    ),
    update=extend_schema(
        summary="Replace a garment (staff)",
        request={"multipart/form-data": GarmentWriteSerializer},
        responses={
            200: GarmentSerializer,
            **errors(400, 401, 403, 404, 413, 415),
            **STORAGE_ERROR,
        },
    ),
    partial_update=extend_schema(
        summary="Change some fields of a garment (staff)",
        description="A new image queues re-indexing (status `pending`); other fields do not.",
        request={
            "multipart/form-data": GarmentWriteSerializer,
            "application/json": GarmentWriteSerializer,
        },
        responses={
            200: GarmentSerializer,
            **errors(400, 401, 403, 404, 413, 415),
            **STORAGE_ERROR,
        },
    ),
    destroy=extend_schema(
        summary="Delete a garment (staff)", responses={204: None, **errors(401, 403, 404)}
    ),
)
class GarmentViewSet(viewsets.ModelViewSet):
    # IsAuthenticatedOrReadOnly is implied; named so the schema shows reads as public.
    permission_classes = [IsAuthenticatedOrReadOnly, IsStaffOrReadOnly]
    pagination_class = ApiPagination
    parser_classes = [MultiPartParser, JSONParser]
    queryset = Garment.objects.none()  # for the schema; requests use get_queryset()

    def get_queryset(self):
        queryset = visible_garments(self.request.user).select_related("category")
        if self.action != "list":
            return queryset
        query = GarmentFilterSerializer(
            data=self.request.query_params, context={"request": self.request}
        )
        query.is_valid(raise_exception=True)
        if category := query.validated_data.get("category"):
            queryset = queryset.filter(category=category)
        if (wanted := query.validated_data.get("status")) and self.request.user.is_staff:
            queryset = queryset.filter(status=wanted)
        return queryset

    def get_serializer_class(self):
        if self.action in {"create", "update", "partial_update"}:
            return GarmentWriteSerializer
        return GarmentSerializer

    def perform_create(self, serializer) -> None:
        self._save(serializer)

    def perform_update(self, serializer) -> None:
        self._save(serializer)

    def _save(self, serializer) -> None:
        try:
            serializer.save()
        except services.MediaStorageError as exc:  # nothing was saved (see save_garment)
            raise StorageUnavailable(str(exc)) from None

    @extend_schema(
        summary="Similar garments (more like this)",
        description="The garments most similar to this one, from its stored vectors.",
        parameters=[SimilarQuerySerializer],
        responses={200: SearchResponseSerializer, **errors(400, 404, 409, 503)},
        tags=["search"],
    )
    @action(detail=True, methods=["get"], pagination_class=None)
    def similar(self, request, pk=None):
        garment = self.get_object()
        query = SimilarQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        if garment.status != Garment.Status.READY:
            raise NotIndexed(f"garment {garment.sku} is {garment.status}, not indexed yet")
        top, mode = query.validated_data["top"], query.validated_data["mode"]
        result = search.more_like_this(
            garment=garment, top=top, mode=mode, include_hidden=request.user.is_staff
        )
        return search_response(request, result, top=top)


@extend_schema_view(
    list=extend_schema(
        summary="List categories",
        description="Every category, by name (shoppers see active ones), with its number of "
        "visible garments. Not paginated: a catalogue has at most a few hundred.",
    ),
    retrieve=extend_schema(
        summary="One category", responses={200: CategorySerializer, **errors(404)}
    ),
    create=extend_schema(
        summary="Create a category (staff)",
        responses={201: CategorySerializer, **errors(400, 401, 403, 415)},
    ),
    update=extend_schema(
        summary="Replace a category (staff)",
        responses={200: CategorySerializer, **errors(400, 401, 403, 404, 415)},
    ),
    partial_update=extend_schema(
        summary="Change some fields of a category (staff)",
        responses={200: CategorySerializer, **errors(400, 401, 403, 404, 415)},
    ),
    destroy=extend_schema(
        summary="Delete an empty category (staff)",
        description="A category that still holds garments cannot be deleted (409): move or "
        "merge them first (admin actions).",
        responses={204: None, **errors(401, 403, 404, 409)},
    ),
)
class CategoryViewSet(viewsets.ModelViewSet):
    # IsAuthenticatedOrReadOnly is implied; named so the schema shows reads as public.
    permission_classes = [IsAuthenticatedOrReadOnly, IsStaffOrReadOnly]
    serializer_class = CategorySerializer
    pagination_class = None
    parser_classes = [JSONParser]
    queryset = Category.objects.none()  # for the schema; requests use get_queryset()

    def get_queryset(self):
        return visible_categories(self.request.user).annotate(
            garment_count=Count("garments", filter=Q(garments__status=Garment.Status.READY))
        )

    def perform_destroy(self, instance: Category) -> None:
        count = instance.garments.count()
        if count:
            raise Protected(
                f"category {instance.name!r} still holds {count} garment(s): move or merge "
                "them first"
            )
        instance.delete()


router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("garments", GarmentViewSet, basename="garment")
router.register("categories", CategoryViewSet, basename="category")

# Mounted under /api/v1/ with the namespace "api" (fashionsite/urls.py).
urlpatterns = [
    path("search/", SearchView.as_view(), name="search"),
    *router.urls,
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
]
