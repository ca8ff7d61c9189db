"""REST API serializers: validation and presentation only.

Writes go through :mod:`retrieval.catalogue` (``decode_upload``, ``save_garment``), searches
through :mod:`retrieval.search`. The query image of a search is decoded here, once, with the
same limits and messages as every other upload (:func:`decode_query_image`); the web page's
form reads through the same path (:mod:`retrieval.catalogue.uploads`), so a shopper and an
app see the same words for the same file.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid

from django.conf import settings
from django.db import models
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework import status as http_status
from rest_framework.exceptions import APIException

from retrieval import catalogue, images, search
from retrieval.images import ImageError
from retrieval.models import Category, Garment
from retrieval.spec import SHOPPER_MODES, TOPS

# Largest database integer: bigger "ids" can match nothing (and must not reach PostgreSQL).
MAX_ID = 2**63 - 1
_SLUG = re.compile(r"[-a-zA-Z0-9_]+")  # what a SlugField holds


# --------------------------------------------------------------------------- errors


class InvalidImage(APIException):
    """The upload is not a usable photo (not an image, corrupt, truncated, empty)."""

    status_code = http_status.HTTP_400_BAD_REQUEST
    default_code = "invalid_image"
    default_detail = "that file is not an image"


class ImageTooLarge(APIException):
    """The upload is over RETRIEVAL_MAX_UPLOAD_BYTES, or has more than RETRIEVAL_MAX_PIXELS."""

    status_code = http_status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "image_too_large"
    default_detail = "image too large"


class DuplicateImageConflict(APIException):
    """The photo's pixels are another garment's (``duplicate_of``); send
    ``allow_duplicate=true`` to save it anyway."""

    status_code = http_status.HTTP_409_CONFLICT
    default_code = "duplicate_image"
    default_detail = "another garment already has this photo"

    def __init__(self, duplicate: catalogue.ExactDuplicate) -> None:
        self.duplicate_of = duplicate.garment_id
        super().__init__(
            f"{duplicate.message}; send allow_duplicate=true to save it anyway",
        )


def image_problem(error: ImageError, *, message: str | None = None) -> APIException:
    """The API error for an image refusal (:mod:`retrieval.catalogue.uploads`); its message is
    ``message``, else the refusal's reason (without the file name)."""
    error_type = ImageTooLarge if catalogue.is_too_large(error) else InvalidImage
    return error_type(message or error.reason)


def decode_query_image(data: bytes, *, name: str | None = None):
    """Decode a search photo (bytes) into an RGB PIL image, refusing what any upload refuses
    (:func:`retrieval.catalogue.decode_upload`). Raises ImageTooLarge or InvalidImage."""
    try:
        return catalogue.decode_upload(data, name=name)
    except ImageError as exc:
        raise image_problem(exc) from None


def read_upload(upload) -> bytes:
    """The bytes of an uploaded file (:func:`retrieval.catalogue.read_upload`), refusing one
    over the limit before reading it. Raises ImageTooLarge."""
    try:
        return catalogue.read_upload(upload)
    except ImageError as exc:
        raise image_problem(exc) from None


# --------------------------------------------------------------------------- fields


@extend_schema_field(
    {
        "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1}],
        "description": "Category id or slug.",
    }
)
class CategoryRefField(serializers.Field):
    """A category named by id (``12``, ``"12"``) or slug (``"tshirts"``)."""

    default_error_messages = {
        "invalid": "give a category id or slug",
        "does_not_exist": "no category {value!r}",
    }

    def __init__(self, *, active_only: bool = True, staff_sees_all: bool = False, **kwargs):
        """``active_only``: inactive categories name nothing; with ``staff_sees_all``, except
        for a staff user in the serializer's ``request`` context (they see those garments)."""
        self.active_only = active_only
        self.staff_sees_all = staff_sees_all
        super().__init__(**kwargs)

    def _active_only(self) -> bool:
        if not self.active_only or not self.staff_sees_all:
            return self.active_only
        request = self.context.get("request")
        return not (request is not None and request.user.is_staff)

    def to_internal_value(self, data) -> Category:
        if isinstance(data, bool) or not isinstance(data, int | str):
            self.fail("invalid")
        text = str(data).strip()
        if not text or len(text) > 120:
            self.fail("invalid")
        queryset = Category.objects.filter(active=True) if self._active_only() else Category.objects
        category = None
        if text.isdigit():
            if int(text) <= MAX_ID:
                category = queryset.filter(pk=int(text)).first()
        elif _SLUG.fullmatch(text):  # anything else names nothing (and never reaches SQL)
            category = queryset.filter(slug=text).first()
        if category is None:
            self.fail("does_not_exist", value=text)
        return category

    def to_representation(self, value: Category) -> dict:
        return CategoryBriefSerializer(value).data


class StrictTypeMixin:
    """Refuse a JSON value of another type than documented (DRF would turn 12 into "12",
    1 into True): a client sending the wrong type has a bug it should hear about. Multipart
    form values are strings, so only string fields use this on multipart endpoints."""

    strict_types: tuple[type, ...] = ()

    def to_internal_value(self, data):
        if isinstance(data, bool) != (bool in self.strict_types) or not isinstance(
            data, self.strict_types
        ):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(StrictTypeMixin, serializers.CharField):
    strict_types = (str,)
    default_error_messages = {"invalid": "give a string."}


class StrictSlugField(StrictTypeMixin, serializers.SlugField):
    strict_types = (str,)


class StrictBooleanField(StrictTypeMixin, serializers.BooleanField):
    strict_types = (bool,)
    default_error_messages = {"invalid": "give true or false."}


class StrictIntegerChoiceField(serializers.ChoiceField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid_choice", input=data)
        return super().to_internal_value(data)


class StrictPrimaryKeyRelatedField(serializers.PrimaryKeyRelatedField):
    def run_validation(self, data=serializers.empty):
        if data == "":  # DRF reads "" as null for relations; JSON clients mean something else
            self.fail("incorrect_type", data_type="str")
        return super().run_validation(data)

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("incorrect_type", data_type=type(data).__name__)
        if not 0 < data <= MAX_ID:
            self.fail("does_not_exist", pk_value=data)
        return super().to_internal_value(data)


class StrictModelSerializer(serializers.ModelSerializer):
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
        models.SlugField: StrictSlugField,
        models.BooleanField: StrictBooleanField,
    }


# --------------------------------------------------------------------------- categories


class ChangesSomethingMixin:
    """A PATCH that names no known field is a client mistake (a misspelt name, a body the server
    could not read), not a successful no-op: say so."""

    def validate(self, attrs: dict) -> dict:
        if self.partial and not attrs:
            names = ", ".join(name for name, field in self.fields.items() if not field.read_only)
            raise serializers.ValidationError(f"give at least one field to change ({names})")
        return super().validate(attrs)


class CategoryBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Category
        fields = ["id", "slug", "name"]


class CategorySerializer(ChangesSomethingMixin, StrictModelSerializer):
    garment_count = serializers.SerializerMethodField(
        help_text="Garments of the category that shoppers can see (indexed)."
    )
    parent = StrictPrimaryKeyRelatedField(
        queryset=Category.objects.all(), allow_null=True, required=False
    )

    class Meta:
        model = Category
        fields = ["id", "name", "slug", "parent", "active", "garment_count"]
        extra_kwargs = {
            "slug": {"required": False, "help_text": "Made from the name when left out."},
        }

    def get_garment_count(self, category: Category) -> int:
        count = getattr(category, "garment_count", None)  # annotated by the list query
        if count is None:
            count = category.garments.filter(status=Garment.Status.READY).count()
        return count

    def validate_name(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("the name cannot be blank")
        taken = Category.objects.filter(name__iexact=value)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise serializers.ValidationError(f"a category named {value!r} already exists")
        return value

    def validate_parent(self, value: Category | None) -> Category | None:
        if value is not None and self.instance is not None and value.pk == self.instance.pk:
            raise serializers.ValidationError("a category cannot be its own parent")
        return value


# --------------------------------------------------------------------------- garments


class GarmentImageUrlMixin(serializers.Serializer):
    image_url = serializers.SerializerMethodField(help_text="Absolute URL of the garment's photo.")

    @extend_schema_field(OpenApiTypes.URI)
    def get_image_url(self, garment: Garment) -> str | None:
        if not garment.image:
            return None
        url = garment.image.url
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url


class GarmentSerializer(GarmentImageUrlMixin, serializers.ModelSerializer):
    """A garment as shoppers and apps see it (staff also see its duplicate flags)."""

    category = CategoryBriefSerializer(read_only=True)
    attributes = serializers.DictField(
        read_only=True, help_text="Extra catalogue fields (gender, season, usage, ...)."
    )
    possible_duplicate_of = serializers.SerializerMethodField(
        help_text="Staff only: ids of garments whose photo looks like this one's (near-duplicate "
        "flags still to review in the admin)."
    )
    same_product_as = serializers.SerializerMethodField(
        help_text="Staff only: the product group (smallest garment id) staff merged this "
        "garment into as the same product, or null."
    )

    STAFF_ONLY = ("possible_duplicate_of", "same_product_as")

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_possible_duplicate_of(self, garment: Garment) -> list[int]:
        ids = getattr(garment, "open_duplicate_ids", None)  # annotated by the staff queryset
        if ids is None:
            ids = [f.original_id if f.garment_id == garment.pk else f.garment_id
                   for f in catalogue.open_flags(garment=garment)]  # fmt: skip
        return sorted(set(ids))

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_same_product_as(self, garment: Garment) -> int | None:
        return garment.product_group

    def to_representation(self, instance: Garment) -> dict:
        data = super().to_representation(instance)
        request = self.context.get("request")
        if request is None or not request.user.is_staff:
            for name in self.STAFF_ONLY:
                data.pop(name, None)
        return data

    class Meta:
        model = Garment
        fields = [
            "id",
            "sku",
            "title",
            "description",
            "category",
            "colour",
            "image_url",
            "attributes",
            "status",
            "error",
            "possible_duplicate_of",
            "same_product_as",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class GarmentWriteSerializer(ChangesSomethingMixin, StrictModelSerializer):
    """Staff create/update. A new image is validated like every upload and queues indexing."""

    category = CategoryRefField(active_only=False)
    image = serializers.FileField(
        write_only=True,
        help_text="The garment's photo (JPEG, PNG, WebP, GIF, BMP, TIFF). A new image sets "
        "the status to pending until a worker has indexed it.",
    )
    attributes = serializers.DictField(
        required=False, help_text="Extra catalogue fields (a JSON object)."
    )
    allow_duplicate = serializers.BooleanField(
        write_only=True,
        required=False,
        default=False,
        help_text="Save the image even if another garment has the same pixels (otherwise "
        "409 duplicate_image, naming that garment in duplicate_of).",
    )

    class Meta:
        model = Garment
        fields = [
            *("sku", "title", "description", "category", "colour", "image", "attributes"),
            "allow_duplicate",
        ]

    def validate_image(self, upload):
        try:
            image = catalogue.decode_upload(catalogue.read_upload(upload), name=upload.name)
        except ImageError as exc:
            raise image_problem(exc, message=str(exc)) from None
        finally:
            upload.seek(0)
        self._pixel_digest = images.pixel_digest(image)
        return upload

    def validate(self, attrs: dict) -> dict:
        allow = attrs.pop("allow_duplicate", False)
        if "image" in attrs and not allow:
            found = catalogue.exact_duplicate(
                digest=self._pixel_digest,
                exclude_pk=self.instance.pk if self.instance is not None else None,
            )
            if found is not None:
                raise DuplicateImageConflict(found)
        return super().validate(attrs)

    def create(self, validated_data: dict) -> Garment:
        garment = Garment(**validated_data)
        return catalogue.save_garment(garment=garment, image_changed=True)

    def update(self, instance: Garment, validated_data: dict) -> Garment:
        for name, value in validated_data.items():
            setattr(instance, name, value)
        return catalogue.save_garment(garment=instance, image_changed="image" in validated_data)

    def to_representation(self, instance: Garment) -> dict:
        return GarmentSerializer(instance, context=self.context).data


class NoBlankValuesMixin:
    """Query strings and forms: an empty value (``?status=``) is refused, not read as "not
    given" (DRF's rule for HTML forms), so every documented parameter is checked, except those
    named in ``blank_allowed``."""

    blank_allowed: tuple[str, ...] = ()

    def to_internal_value(self, data):
        if hasattr(data, "getlist"):
            blank = {
                name: ["this field may not be blank."]
                for name in self.fields
                if name in data and data.get(name) == "" and name not in self.blank_allowed
            }
            if blank:
                raise serializers.ValidationError(blank)
        return super().to_internal_value(data)


class GarmentFilterSerializer(NoBlankValuesMixin, serializers.Serializer):
    """Query parameters of the garment list."""

    blank_allowed = ("cursor",)  # ?cursor= asks for the first keyset page
    # Staff list the garments of inactive categories too, so they can filter by one.
    category = CategoryRefField(
        required=False, staff_sees_all=True, help_text="Only this category (id or slug)."
    )
    status = serializers.ChoiceField(
        choices=Garment.Status.choices,
        required=False,
        help_text="Staff only: garments in this indexing state (shoppers see ready ones).",
    )
    page = serializers.IntegerField(min_value=1, required=False, help_text="Page number.")
    cursor = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="Keyset pages instead of page numbers: empty for the first page, then "
        "follow `next` (no `count`; every garment exactly once).",
    )
    page_size = serializers.IntegerField(
        min_value=1, max_value=100, required=False, help_text="Garments per page (default 24)."
    )


# --------------------------------------------------------------------------- search


class SearchOptionsSerializer(serializers.Serializer):
    top = serializers.ChoiceField(
        choices=TOPS, default=10, help_text="How many garments to return."
    )
    mode = serializers.ChoiceField(
        choices=SHOPPER_MODES,
        default="fused",
        help_text="fused: shape and colour (the paper's fused feature); deep: shape only.",
    )


class SearchRequestSerializer(SearchOptionsSerializer):
    category = CategoryRefField(required=False, help_text="Only this category (id or slug).")


class SearchUploadSerializer(NoBlankValuesMixin, SearchRequestSerializer):
    """multipart/form-data: the photo as a file."""

    image = serializers.FileField(
        help_text="The photo (JPEG, PNG, WebP, GIF, BMP, TIFF), cropped to the garment "
        "for best results."
    )

    def validate_image(self, upload):
        return decode_query_image(read_upload(upload), name=upload.name)


_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=-]+)*;base64,", re.IGNORECASE)


class SearchBase64Serializer(SearchRequestSerializer):
    """application/json: the photo base64-encoded."""

    top = StrictIntegerChoiceField(
        choices=TOPS, default=10, help_text="How many garments to return."
    )
    image = serializers.CharField(
        trim_whitespace=True,
        help_text="The photo, base64-encoded (standard alphabet), optionally as a "
        "data: URL (data:image/jpeg;base64,...).",
    )

    def validate_image(self, value: str):
        value = _DATA_URL.sub("", value, count=1)
        limit = settings.RETRIEVAL_MAX_UPLOAD_BYTES
        if len(value) * 3 // 4 > limit + 3:
            raise ImageTooLarge(f"image too large: over {limit} bytes, the limit is {limit}")
        try:
            data = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImage("the image is not valid base64") from None
        return decode_query_image(data)


class SearchHitSerializer(GarmentImageUrlMixin, serializers.ModelSerializer):
    category = CategoryBriefSerializer(read_only=True)
    score = serializers.FloatField(
        read_only=True,
        help_text="Minus the L2 distance to the query: 0 is identical, higher is more similar.",
    )

    class Meta:
        model = Garment
        fields = ["id", "sku", "title", "category", "colour", "image_url", "score"]
        read_only_fields = fields


class SearchResponseSerializer(serializers.Serializer):
    results = SearchHitSerializer(many=True, help_text="Most similar first.")
    cluster = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="K-means cluster(s) probed, nearest first (empty when the catalogue has no "
        "clustering yet).",
    )
    model = serializers.CharField(help_text="The feature model that answered.")
    mode = serializers.ChoiceField(choices=SHOPPER_MODES)
    top = serializers.IntegerField()
    took_ms = serializers.FloatField(help_text="Server time for the search, in milliseconds.")
    search_id = serializers.UUIDField(
        allow_null=True,
        help_text="This search's id in the search analytics (null when not recorded): send it "
        "as `search_id` when reading a result (GET /api/v1/garments/{id}/?search_id=...) so the "
        "click counts towards click-through.",
    )

    @staticmethod
    def present(
        result: search.SearchResult, hits: list, *, top: int, search_id: uuid.UUID | None = None
    ) -> dict:
        """The response body of a search: ``hits`` are its (garment, score) pairs to show."""
        garments = []
        for garment, score in hits:
            garment.score = score
            garments.append(garment)
        return {
            "results": garments,
            "cluster": result.clusters,
            "model": result.model,
            "mode": result.mode,
            "top": top,
            "took_ms": round(result.took_ms, 2),
            "search_id": search_id,
        }


class SimilarQuerySerializer(NoBlankValuesMixin, SearchOptionsSerializer):
    """Query parameters of "more like this"."""


class GarmentReadQuerySerializer(NoBlankValuesMixin, serializers.Serializer):
    """Query parameters of one garment's read."""

    search_id = serializers.UUIDField(
        required=False,
        help_text="The search whose result list the client opened this garment from (its "
        "`search_id`): recorded as a click for the search analytics.",
    )


# --------------------------------------------------------------------------- statistics


class StatsQuerySerializer(NoBlankValuesMixin, serializers.Serializer):
    days = serializers.IntegerField(
        min_value=1, max_value=366, default=30, help_text="The last N days, today included."
    )


class DayCountSerializer(serializers.Serializer):
    day = serializers.DateField()
    searches = serializers.IntegerField()
    latency_p50_ms = serializers.FloatField(allow_null=True)
    latency_p95_ms = serializers.FloatField(allow_null=True)


class CategoryCountSerializer(serializers.Serializer):
    category = serializers.CharField(help_text="The predicted category (empty: no prediction).")
    searches = serializers.IntegerField()
    share = serializers.FloatField()


class RankClicksSerializer(serializers.Serializer):
    rank = serializers.IntegerField()
    clicks = serializers.IntegerField()
    ctr = serializers.FloatField(help_text="Clicks at this rank / searches.")


class SlowSearchSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    channel = serializers.CharField()
    mode = serializers.CharField()
    latency_ms = serializers.FloatField()
    predicted_category = serializers.CharField()


class CtrSerializer(serializers.Serializer):
    at_1 = serializers.FloatField()
    at_5 = serializers.FloatField()
    at_10 = serializers.FloatField()


class SearchStatsSerializer(serializers.Serializer):
    """The admin dashboard's numbers (retrieval.analytics.search_stats)."""

    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    searches = serializers.IntegerField()
    latency_p50_ms = serializers.FloatField(allow_null=True)
    latency_p95_ms = serializers.FloatField(allow_null=True)
    low_confidence_threshold = serializers.FloatField()
    low_confidence = serializers.IntegerField()
    low_confidence_share = serializers.FloatField()
    ctr = CtrSerializer(help_text="Share of searches with a click on one of the first k results.")
    without_click = serializers.IntegerField()
    without_click_share = serializers.FloatField()
    per_day = DayCountSerializer(many=True)
    per_hour = serializers.ListField(
        child=serializers.IntegerField(), help_text="24 counts, hour 0 first (local time)."
    )
    top_categories = CategoryCountSerializer(many=True)
    clicks_per_rank = RankClicksSerializer(many=True)
    slowest = SlowSearchSerializer(many=True)


# --------------------------------------------------------------------------- errors (schema)


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. invalid_image.")
    message = serializers.CharField(help_text="What went wrong, in words fit for a person.")
    details = serializers.JSONField(
        allow_null=True, help_text="Per-field messages for invalid input, else extra facts."
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()
