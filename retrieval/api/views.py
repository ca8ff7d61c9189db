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

from django.db.models import Count, Q
from drf_spectacular.utils import (
    OpenApiExample,
    extend_schema,
    extend_schema_view,
)
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import (
    SAFE_METHODS,
    AllowAny,
    BasePermission,
    IsAuthenticatedOrReadOnly,
)
from rest_framework.response import Response
from rest_framework.views import APIView

from retrieval import catalogue, search
from retrieval.api.errors import STORAGE_ERROR, NotIndexed, Protected, StorageUnavailable, errors
from retrieval.api.pagination import ApiPagination
from retrieval.api.serializers import (
    CategorySerializer,
    GarmentFilterSerializer,
    GarmentSerializer,
    GarmentWriteSerializer,
    PhotoSearchResponseSerializer,
    SearchBase64Serializer,
    SearchResponseSerializer,
    SearchUploadSerializer,
    SimilarQuerySerializer,
)
from retrieval.http.throttle import SearchRateThrottle
from retrieval.models import Category, Garment
from retrieval.selectors import visible_categories, visible_garments

log = logging.getLogger(__name__)


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
            "are throttled (HTTP 429 with Retry-After).\n\n"
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
        examples=[SEARCH_EXAMPLE, *SEARCH_REQUEST_EXAMPLES],
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
        try:
            found = search.search_photo(
                image=options["image"],
                q=options["q"],
                like=options["like"],
                dislike=options["dislike"],
                top=options["top"],
                mode=options["mode"],
                category_id=category.pk if category is not None else None,
                include_hidden=request.user.is_staff,
            )
        except search.FeedbackError as exc:
            raise ValidationError({exc.field: [str(exc)]}) from None
        body = PhotoSearchResponseSerializer.present_photo(found, top=options["top"])
        return Response(PhotoSearchResponseSerializer(body, context={"request": request}).data)


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
