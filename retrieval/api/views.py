"""The REST API (/api/v1/) for mobile apps and integrations: thin DRF views.

Reads: search by photo, garments (paginated, filterable), similar garments, categories.
Writes: staff only, with token authentication (``Authorization: Token <key>``; a superuser
issues a key, shown once, with the admin's Users action "Issue a new API token" or
``manage.py create_token USERNAME``; only its SHA-256 digest is stored, retrieval.tokens).

Every error answers ``{"error": {"code", "message", "details"}}`` (:func:`exception_handler`),
anonymous searches are throttled (RETRIEVAL_SEARCH_THROTTLE, counted in Redis so that every web
process shares the count), and the OpenAPI 3 schema is served at /api/v1/schema/ with Swagger UI
at /api/v1/docs/ and Redoc at /api/v1/redoc/ (assets from drf-spectacular-sidecar, no CDN).
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import Count, Q, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
)
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import (
    SAFE_METHODS,
    AllowAny,
    BasePermission,
    DjangoModelPermissions,
    IsAuthenticatedOrReadOnly,
)
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from retrieval import analytics, catalogue, search
from retrieval.api.errors import STORAGE_ERROR, NotIndexed, Protected, StorageUnavailable, errors
from retrieval.api.pagination import ApiPagination
from retrieval.api.parsers import BoundedJSONParser
from retrieval.api.serializers import (
    CategorySerializer,
    FacetsSerializer,
    GarmentFilterSerializer,
    GarmentReadQuerySerializer,
    GarmentSerializer,
    GarmentWriteSerializer,
    KeywordSerializer,
    PhotoSearchResponseSerializer,
    SearchBase64Serializer,
    SearchResponseSerializer,
    SearchStatsSerializer,
    SearchUploadSerializer,
    SimilarQuerySerializer,
    StatsQuerySerializer,
)
from retrieval.http.throttle import SearchRateThrottle
from retrieval.models import Category, Garment, NearDuplicate, SearchLog
from retrieval.selectors import visible_categories, visible_garments

log = logging.getLogger(__name__)


def search_response(request: Request, result: search.SearchResult, *, options: dict) -> Response:
    """The API answer for a search or a more-like-this (``options``: the validated query,
    with its ``top``, ``filters`` and ``facets``). Hidden garments (inactive category, not
    ready) are already excluded in SQL for shoppers (search_vectors(include_hidden=False))."""
    body = SearchResponseSerializer.present(result, result.garments(), top=options["top"])
    if options.get("facets"):
        body["facets"] = facets_body(request, filters=options["filters"])
    return Response(SearchResponseSerializer(body, context={"request": request}).data)


def facets_body(
    request: Request, *, filters: search.SearchFilters, queryset: QuerySet[Garment] | None = None
) -> dict:
    """``facets`` of an answer: over ``queryset`` (default: every garment the caller sees)."""
    if queryset is None:
        queryset = visible_garments(request.user)
    facets = search.facet_counts(queryset=queryset, filters=filters)
    return FacetsSerializer(FacetsSerializer.present(facets)).data


class IsStaffOrReadOnly(BasePermission):
    """Anyone may read; only staff may write (anonymous: 401, other users: 403)."""

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


class ModelPermissionsOrReadOnly(DjangoModelPermissions):
    """Writes need the model's Django permission (add / change / delete), as in the admin: a
    view-only staff member cannot write through the API either. Reads stay open to anyone
    (``authenticated_users_only`` off; GET needs no permission in DRF's map)."""

    authenticated_users_only = False


SEARCH_EXAMPLE = OpenApiExample(
    "This photo, but in red",
    value={
        "results": [
            {
                "id": 41,
                "sku": "15970",
                "title": "Roadster Women Red Dress",
                "category": {"id": 3, "slug": "dresses", "name": "Dresses"},
                "colour": "Red",
                "image_url": "https://shop.example.com/media/garments/2025/11/15970.jpg",
                "score": -0.412,
            }
        ],
        "cluster": [4],
        "model": "efficientnet_lite0-20251127-120000-a1b2c3",
        "mode": "fused",
        "top": 5,
        "took_ms": 48.3,
        "predicted_categories": [
            {"category": {"id": 3, "slug": "dresses", "name": "Dresses"}, "confidence": 0.81},
            {"category": {"id": 9, "slug": "tops", "name": "Tops"}, "confidence": 0.12},
            {"category": {"id": 12, "slug": "skirts", "name": "Skirts"}, "confidence": 0.03},
        ],
        "understood": {
            "q": "in red",
            "colour": "Red",
            "colour_matches": 1,
            "category": None,
            "words": [],
            "title_matches": 0,
            "like": [],
            "dislike": [],
        },
    },
    response_only=True,
)
SEARCH_REQUEST_EXAMPLES = [
    OpenApiExample(
        "Photo and a colour word (JSON)",
        value={"image": "data:image/jpeg;base64,/9j/4AAQSkZJRg...", "q": "in red", "top": 10},
        request_only=True,
        media_type="application/json",
    ),
    OpenApiExample(
        "Refine with feedback (JSON)",
        description="The same photo again, with the garments the shopper marked: more like "
        "41 and 57, not like 12 (12 is left out of the results).",
        value={
            "image": "data:image/jpeg;base64,/9j/4AAQSkZJRg...",
            "like": [41, 57],
            "dislike": [12],
        },
        request_only=True,
        media_type="application/json",
    ),
]


def _parameter(
    name: str, serializer: type[serializers.Serializer], examples: dict[str, object]
) -> OpenApiParameter:
    """A query parameter documented from its serializer field, with examples."""
    field = serializer().fields[name]
    return OpenApiParameter(
        name,
        OpenApiTypes.BOOL if name == "facets" else OpenApiTypes.STR,
        OpenApiParameter.QUERY,
        description=str(field.help_text),
        examples=[OpenApiExample(label, value=value) for label, value in examples.items()],
    )


def filter_parameters(serializer: type[serializers.Serializer]) -> list[OpenApiParameter]:
    """The shopper filters and ``facets`` as documented query parameters, with examples."""
    return [
        _parameter("gender", serializer, {"Women": "Women", "Men": "Men"}),
        _parameter("colour", serializer, {"Red": "Red", "Navy Blue": "Navy Blue"}),
        _parameter("season", serializer, {"Summer": "Summer"}),
        _parameter("usage", serializer, {"Casual": "Casual", "Formal": "Formal"}),
        _parameter("category", serializer, {"By slug": "tshirts", "By id": "12"}),
        _parameter("facets", serializer, {"With facet counts": True}),
    ]


FACETS_EXAMPLE = {
    "gender": [
        {"value": "Women", "label": "Women", "count": 1204, "selected": True},
        {"value": "Men", "label": "Men", "count": 980, "selected": False},
    ],
    "colour": [{"value": "Red", "label": "Red", "count": 312, "selected": False}],
    "season": [{"value": "Summer", "label": "Summer", "count": 640, "selected": False}],
    "usage": [{"value": "Casual", "label": "Casual", "count": 1003, "selected": False}],
    "category": [{"value": "dresses", "label": "Dresses", "count": 211, "selected": False}],
}

SEARCH_FILTERED_EXAMPLE = OpenApiExample(
    "Women's red garments, with facet counts",
    value={
        "image": "(the photo file)",
        "top": 10,
        "gender": "Women",
        "colour": "Red",
        "facets": True,
    },
    request_only=True,
)


SEARCH_FACETS_EXAMPLE = OpenApiExample(
    "With facets=true",
    value={**SEARCH_EXAMPLE.value, "facets": FACETS_EXAMPLE},
    response_only=True,
)


class SearchView(APIView):
    """Search the catalogue by photo."""

    permission_classes = [AllowAny]
    throttle_classes = [SearchRateThrottle]
    parser_classes = [MultiPartParser, BoundedJSONParser]

    @extend_schema(
        operation_id="search_by_photo",
        summary="Search by photo",
        description=(
            "Send a photo (multipart `image` file, or JSON with the image base64-encoded) and "
            "get the `top` most similar garments, most similar first. `mode=fused` matches shape "
            "and colour (the paper's fused feature), `mode=deep` shape only. `gender`, "
            "`colour`, `season`, `usage` and `category` narrow the search inside the catalogue's "
            "clusters (the top N stays complete: clusters are added until N garments pass); a "
            "value no garment has is a 400 listing the known ones. `facets=true` adds each "
            "filter's values with their counts. Anonymous clients are throttled (HTTP 429 with "
            "Retry-After).\n\n"
            'Refining: `q` adds words ("in red": a catalogue colour replaces the photo\'s '
            "colour and keeps its shape; a category name searches that category; other words "
            "lift garments whose title holds them); `like` / `dislike` take the ids of garments "
            'the shopper marked "more like this" / "not like this" (send the same photo '
            "again with them; disliked garments never come back). The answer says what was "
            "understood (`understood`) and which categories the model recognised in the photo "
            "(`predicted_categories`, with confidences)."
        ),
        request={
            "multipart/form-data": SearchUploadSerializer,
            "application/json": SearchBase64Serializer,
        },
        responses={200: PhotoSearchResponseSerializer, **errors(400, 413, 415, 429, 503)},
        examples=[
            SEARCH_EXAMPLE,
            SEARCH_FILTERED_EXAMPLE,
            SEARCH_FACETS_EXAMPLE,
            *SEARCH_REQUEST_EXAMPLES,
        ],
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
        try:
            found = search.search_photo(
                image=options["image"],
                q=options["q"],
                like=options["like"],
                dislike=options["dislike"],
                top=options["top"],
                mode=options["mode"],
                filters=options["filters"],
                include_hidden=request.user.is_staff,
            )
        except search.FeedbackError as exc:
            raise ValidationError({exc.field: [str(exc)]}) from None
        record = None
        if analytics.enabled():  # written once the answer is sent
            record = analytics.SearchRecord.of(
                result=found.result,
                channel="api",
                top=options["top"],
                filters=options["filters"].active(),
                photo=options["image"],
            )
        body = PhotoSearchResponseSerializer.present_photo(
            found, top=options["top"], search_id=record.id if record else None
        )
        if options.get("facets"):
            body["facets"] = facets_body(request, filters=options["filters"])
        response = Response(PhotoSearchResponseSerializer(body, context={"request": request}).data)
        if record is not None:
            analytics.record_search(response, record)
        return response


@extend_schema_view(
    list=extend_schema(
        summary="List garments",
        description="Paginated, newest first. Shoppers see indexed garments of active "
        "categories; staff see every garment. Page numbers (`page`) answer `count`, `next`, "
        "`previous` and `results`; `cursor` (empty for the first page, then the `next` link) "
        "answers `next` and `results` only, at the same cost at any depth.\n\n"
        "Keyword search: `q` lists the garments holding every word, best match first (page "
        "numbers only) and adds `keyword` (`terms` searched, `corrected` words when the typed "
        "ones matched nothing). Filters `gender`, `colour`, `season`, `usage`, `category` "
        "(values matched case-insensitively; a value no garment has is a 400 listing the "
        "known ones). `facets=true` adds `facets`: for each filter, its values with how many "
        "garments choosing each gives, the other chosen filters applied, e.g. "
        '`{"gender": [{"value": "Women", "label": "Women", "count": 1204, '
        '"selected": false}, ...], ...}`.',
        parameters=[
            GarmentFilterSerializer,
            _parameter(
                "q",
                GarmentFilterSerializer,
                {"Words": "red dress", "Prefix": "jack", "Misspelt": "jeens"},
            ),
            *filter_parameters(GarmentFilterSerializer),
        ],
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
    permission_classes = [IsAuthenticatedOrReadOnly, IsStaffOrReadOnly, ModelPermissionsOrReadOnly]
    pagination_class = ApiPagination
    parser_classes = [MultiPartParser, BoundedJSONParser]
    queryset = Garment.objects.none()  # for the schema; requests use get_queryset()

    def get_queryset(self):
        queryset = visible_garments(self.request.user).select_related("category")
        if self.action != "list":
            return self._with_duplicates(queryset)
        query = GarmentFilterSerializer(
            data=self.request.query_params, context={"request": self.request}
        )
        query.is_valid(raise_exception=True)
        options = query.validated_data
        if (wanted := options.get("status")) and self.request.user.is_staff:
            queryset = queryset.filter(status=wanted)
        # What the list is drawn from before the shopper's filters: the facets count over it.
        self.unfiltered, self.keyword, self.list_options = queryset, None, options
        if "q" in options:
            self.keyword = search.keyword.keyword_search(queryset=queryset, q=options["q"])
            self.unfiltered = self.keyword.garments
        return self._with_duplicates(self.unfiltered.filter(options["filters"].q()))

    def _with_duplicates(self, queryset: QuerySet[Garment]) -> QuerySet[Garment]:
        """For staff, each garment's open near-duplicate flags (``possible_duplicate_of``);
        annotated last, so the facet counts (over ``self.unfiltered``) never carry it."""
        if self.request.user.is_staff:
            return queryset.annotate(open_duplicate_ids=open_duplicate_ids())
        return queryset

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        if self.keyword is not None:
            response.data["keyword"] = KeywordSerializer(self.keyword).data
        if self.list_options["facets"]:
            response.data["facets"] = facets_body(
                request, filters=self.list_options["filters"], queryset=self.unfiltered
            )
        return response

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
        parameters=[SimilarQuerySerializer, *filter_parameters(SimilarQuerySerializer)],
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
        options = query.validated_data
        result = search.more_like_this(
            garment=garment,
            top=options["top"],
            mode=options["mode"],
            filters=options["filters"],
            include_hidden=request.user.is_staff,
        )
        return search_response(request, result, options=options)


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
    permission_classes = [IsAuthenticatedOrReadOnly, IsStaffOrReadOnly, ModelPermissionsOrReadOnly]
    serializer_class = CategorySerializer
    pagination_class = None
    parser_classes = [BoundedJSONParser]
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


class CanViewSearchLog(BasePermission):
    """Staff holding the view permission of the search log (anonymous: 401, others: 403)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        opts = SearchLog._meta
        return bool(
            user.is_authenticated
            and user.is_staff
            and user.has_perm(f"{opts.app_label}.view_{opts.model_name}")
        )


class SearchStatsView(APIView):
    """The search analytics of the admin dashboard, for staff tools."""

    permission_classes = [CanViewSearchLog]

    @extend_schema(
        operation_id="search_stats",
        summary="Search analytics (staff)",
        description="The numbers of the admin's search dashboard over the last `days` days "
        "(today included; days and hours in the site's time zone): searches per day and "
        "hour, latency p50/p95, top predicted categories, low-confidence share, click-through "
        "at 1/5/10, searches without any click, the slowest searches. Needs a staff user "
        "with the view permission of the search log.",
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
