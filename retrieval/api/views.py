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

import logging
from typing import Any

from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import Count, Q
from drf_spectacular.utils import (
    OpenApiExample,
    extend_schema,
    extend_schema_view,
)
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import (
    SAFE_METHODS,
    AllowAny,
    BasePermission,
    IsAuthenticatedOrReadOnly,
)
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from retrieval import analytics, catalogue, search
from retrieval.api.errors import STORAGE_ERROR, NotIndexed, Protected, StorageUnavailable, errors
from retrieval.api.pagination import ApiPagination
from retrieval.api.serializers import (
    CategorySerializer,
    GarmentFilterSerializer,
    GarmentReadQuerySerializer,
    GarmentSerializer,
    GarmentWriteSerializer,
    SearchBase64Serializer,
    SearchResponseSerializer,
    SearchStatsSerializer,
    SearchUploadSerializer,
    SimilarQuerySerializer,
    StatsQuerySerializer,
)
from retrieval.http.throttle import SearchRateThrottle
from retrieval.models import Category, Garment, NearDuplicate
from retrieval.selectors import visible_categories, visible_garments

log = logging.getLogger(__name__)


def search_response(
    request: Request,
    result: search.SearchResult,
    *,
    top: int,
    record: analytics.SearchRecord | None = None,
) -> Response:
    """The API answer for a search or a more-like-this. Hidden garments (inactive category,
    not ready) are already excluded in SQL for shoppers (search_vectors(include_hidden=False)).
    ``record``: the search's analytics record, written once the answer is sent."""
    body = SearchResponseSerializer.present(
        result, result.garments(), top=top, search_id=record.id if record else None
    )
    response = Response(SearchResponseSerializer(body, context={"request": request}).data)
    if record is not None:
        analytics.record_search(response, record)
    return response


class IsStaffOrReadOnly(BasePermission):
    """Anyone may read; only staff may write (anonymous: 401, other users: 403)."""

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


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
        record = None
        if analytics.enabled():
            record = analytics.SearchRecord.of(
                result=result,
                channel="api",
                top=options["top"],
                filters={"category": category.slug} if category is not None else {},
                photo=options["image"],
            )
        return search_response(request, result, top=options["top"], record=record)


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
        summary="One garment",
        description="With `search_id` (from a search's answer), the read counts as a click on "
        "that search's result, for the search analytics.",
        parameters=[GarmentReadQuerySerializer],
        responses={200: GarmentSerializer, **errors(400, 404)},
    ),
    create=extend_schema(
        summary="Create a garment (staff)",
        description="The image is validated like every upload and queued for indexing: the "
        "answer's status is `pending` until a worker has indexed it.",
        request={"multipart/form-data": GarmentWriteSerializer},
        responses={
            201: GarmentSerializer,
            **errors(400, 401, 403, 409, 413, 415),
            **STORAGE_ERROR,
        },
    ),
    update=extend_schema(
        summary="Replace a garment (staff)",
        request={"multipart/form-data": GarmentWriteSerializer},
        responses={
            200: GarmentSerializer,
            **errors(400, 401, 403, 404, 409, 413, 415),
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
            **errors(400, 401, 403, 404, 409, 413, 415),
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
        if self.request.user.is_staff:
            queryset = queryset.annotate(open_duplicate_ids=open_duplicate_ids())
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

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        query = GarmentReadQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        response = super().retrieve(request, *args, **kwargs)
        if search_id := query.validated_data.get("search_id"):
            analytics.record_click(response, search_id=search_id, garment_id=int(kwargs["pk"]))
        return response

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
        except catalogue.MediaStorageError as exc:  # nothing was saved (see save_garment)
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


def open_duplicate_ids() -> ArraySubquery:
    """Per garment row: the ids of the garments of its open near-duplicate flags (staff)."""
    from django.db.models import Case, F, OuterRef, When

    flags = NearDuplicate.objects.filter(
        Q(garment_id=OuterRef("pk")) | Q(original_id=OuterRef("pk")),
        status=NearDuplicate.Status.OPEN,
    ).values(
        other=Case(When(garment_id=OuterRef("pk"), then=F("original_id")), default=F("garment_id"))
    )
    return ArraySubquery(flags)


class IsStaff(BasePermission):
    """Staff only (anonymous: 401, other users: 403)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user.is_authenticated and request.user.is_staff)


class SearchStatsView(APIView):
    """The search analytics of the admin dashboard, for staff tools."""

    permission_classes = [IsStaff]

    @extend_schema(
        operation_id="search_stats",
        summary="Search analytics (staff)",
        description="The numbers of the admin's search dashboard over the last `days` days "
        "(today included; days and hours in the site's time zone): searches per day and "
        "hour, latency p50/p95, top predicted categories, low-confidence share, click-through "
        "at 1/5/10 and per rank, searches without any click, the slowest searches.",
        parameters=[StatsQuerySerializer],
        responses={200: SearchStatsSerializer, **errors(400, 401, 403)},
        tags=["statistics"],
    )
    def get(self, request: Request) -> Response:
        query = StatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        start, end = analytics.period(days=query.validated_data["days"])
        stats = analytics.search_stats(start=start, end=end)
        return Response(SearchStatsSerializer(stats.as_dict()).data)
