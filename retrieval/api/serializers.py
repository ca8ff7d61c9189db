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
from typing import Any

from django.conf import settings
from django.db import models
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework import status as http_status
from rest_framework.exceptions import APIException

from retrieval import catalogue, search
from retrieval.images import ImageError
from retrieval.models import Category, Garment
from retrieval.search.refine import MAX_FEEDBACK_IDS, MAX_QUERY_CHARS
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


def image_problem(error: ImageError, *, message: str | None = None) -> APIException:
    """The API error for an image refusal (:mod:`retrieval.catalogue.uploads`); its message is
    ``message``, else the refusal's reason (without the file name)."""
    error_type = ImageTooLarge if catalogue.is_too_large(error) else InvalidImage
    return error_type(message or error.reason)


def decode_query_image(data: bytes, *, name: str | None = None):
    """Decode a search photo (bytes) into an RGB PIL image, refusing what any upload refuses
    (:func:`retrieval.catalogue.decode_query_upload`: JPEGs are reduced while decoding, so
    48-200 MP camera photos pass the pixel limit). Raises ImageTooLarge or InvalidImage."""
    try:
        return catalogue.decode_query_upload(data, name=name)
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

    def create(self, validated_data: dict) -> Category:
        # The same check as validate_name, again at the insert: a create of the same name
        # that committed meanwhile (a race validate_name cannot see) is answered alike.
        try:
            return catalogue.create_category(**validated_data)
        except catalogue.CategoryNameTaken as taken:
            raise serializers.ValidationError({"name": [str(taken)]}) from None


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


def staff_request(context: dict) -> bool:
    """Whether the serializer's ``context`` holds a staff user's request (no request: not)."""
    request = context.get("request")
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


class StaffOnlyFieldsMixin:
    """Leaves ``staff_only_fields`` out of the output unless the request in the context is a
    staff user's: internal state (indexing errors, image digests, K-means clusters) that
    shoppers and the apps have no use for and should not come to rely on. Dropped at
    output, not from ``fields``, so the OpenAPI schema still documents them (as staff only)
    and a serializer used without a request shows the shopper's view."""

    staff_only_fields: tuple[str, ...] = ()

    def to_representation(self, instance: Any) -> dict:
        data = super().to_representation(instance)  # type: ignore[misc]
        if not staff_request(self.context):  # type: ignore[attr-defined]
            for name in self.staff_only_fields:
                data.pop(name, None)
        return data


# Keys of Garment.attributes the catalogue keeps for itself (not catalogue columns):
# image_sha256 lets a re-import skip unchanged photos (retrieval.catalogue.imports).
INTERNAL_ATTRIBUTES = ("image_sha256",)


class GarmentSerializer(StaffOnlyFieldsMixin, GarmentImageUrlMixin, serializers.ModelSerializer):
    """A garment as shoppers and apps see it; staff also get ``error`` and ``image_sha256``."""

    staff_only_fields = ("error", "image_sha256")

    category = CategoryBriefSerializer(read_only=True)
    attributes = serializers.SerializerMethodField(
        help_text="Extra catalogue fields (gender, season, usage, ...)."
    )
    error = serializers.CharField(
        read_only=True, help_text="Staff only: why indexing failed (empty when it did not)."
    )
    image_sha256 = serializers.SerializerMethodField(
        help_text="Staff only: SHA-256 of the imported photo's bytes (hex), or null."
    )

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_attributes(self, garment: Garment) -> dict:
        attributes = garment.attributes or {}
        return {k: v for k, v in attributes.items() if k not in INTERNAL_ATTRIBUTES}

    @extend_schema_field(OpenApiTypes.STR)
    def get_image_sha256(self, garment: Garment) -> str | None:
        return (garment.attributes or {}).get("image_sha256")

    class Meta:
        model = Garment
        fields = [
            "id",
            "sku",
            "title",
            "description",
            "category",
            "colour",
            "gender",
            "season",
            "usage",
            "year",
            "image_url",
            "attributes",
            "status",
            "error",
            "image_sha256",
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

    class Meta:
        model = Garment
        fields = [
            "sku",
            "title",
            "description",
            "category",
            "colour",
            "gender",
            "season",
            "usage",
            "year",
            "image",
            "attributes",
        ]

    def validate_image(self, upload):
        try:
            catalogue.decode_upload(catalogue.read_upload(upload), name=upload.name)
        except ImageError as exc:
            raise image_problem(exc, message=str(exc)) from None
        finally:
            upload.seek(0)
        return upload

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


class FilterParamsMixin(serializers.Serializer):
    """The shopper filters, the same on every list and search (``gender``, ``colour``,
    ``season``, ``usage``; ``category`` is each serializer's own field), read into
    ``validated_data["filters"]`` (:class:`retrieval.search.SearchFilters`) with the
    catalogue's spelling; a value no garment has is a 400 naming the known values."""

    gender = StrictCharField(
        required=False, help_text="Only this gender (Men, Women, Boys, Girls, Unisex)."
    )
    colour = StrictCharField(
        required=False, help_text="Only this colour (the catalogue's baseColour: Navy Blue...)."
    )
    season = StrictCharField(
        required=False, help_text="Only this season (Spring, Summer, Fall, Winter)."
    )
    usage = StrictCharField(
        required=False, help_text="Only this usage (Casual, Formal, Sports, Ethnic...)."
    )
    facets = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Also answer `facets`: per filter, its values with how many garments "
        "choosing each would give (the other chosen filters applied).",
    )

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        category = attrs.get("category")
        try:
            attrs["filters"] = search.resolve_filters(
                **{name: attrs.pop(name, "") for name in search.FILTER_FIELDS},
                category_id=category.pk if category is not None else None,
            )
        except search.UnknownFilterValue as exc:
            raise serializers.ValidationError({exc.name: [str(exc)]}) from None
        return attrs


class FacetValueSerializer(serializers.Serializer):
    value = serializers.CharField(help_text="What the filter parameter takes (a category's slug).")
    # A field named like Field.label: the serializer's metaclass moves it into _declared_fields.
    label = serializers.CharField(help_text="What to show.")  # type: ignore[assignment]
    count = serializers.IntegerField(help_text="Garments that choosing this value gives.")
    selected = serializers.BooleanField(help_text="The value chosen now.")


class FacetsSerializer(serializers.Serializer):
    """``facets=true``: each filter's values, most garments first."""

    gender = FacetValueSerializer(many=True)
    colour = FacetValueSerializer(many=True)
    season = FacetValueSerializer(many=True)
    usage = FacetValueSerializer(many=True)
    category = FacetValueSerializer(many=True)

    @staticmethod
    def present(facets: list) -> dict:
        return {facet.name: list(facet.values) for facet in facets}


class KeywordSerializer(serializers.Serializer):
    terms = serializers.ListField(
        child=serializers.CharField(), help_text="The words of `q` that were searched."
    )
    corrected = serializers.ListField(
        child=serializers.CharField(),
        help_text="When the words matched nothing: the corrected words searched instead "
        "(empty otherwise).",
    )


class GarmentFilterSerializer(NoBlankValuesMixin, FilterParamsMixin, serializers.Serializer):
    """Query parameters of the garment list."""

    blank_allowed = ("cursor",)  # ?cursor= asks for the first keyset page
    q = serializers.CharField(
        required=False,
        trim_whitespace=True,
        help_text="Keyword search: garments whose title, category, colour or attributes hold "
        "every word (as a prefix: `jack` finds Jackets), best match first; misspelt words "
        "are corrected when the typed ones match nothing. At most 200 characters.",
    )
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

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        if "q" in attrs and "cursor" in attrs:
            raise serializers.ValidationError(
                {"cursor": ["keyset pages list newest first; with q, use page numbers"]}
            )
        if "q" in attrs:
            try:
                search.keyword.query_terms(attrs["q"])
            except search.keyword.KeywordQueryError as exc:
                raise serializers.ValidationError({"q": [str(exc)]}) from None
        return attrs


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


@extend_schema_field(
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 1},
        "maxItems": MAX_FEEDBACK_IDS,
    }
)
class GarmentIdsField(serializers.ListField):
    """Garment ids: a JSON array of integers, or in a form the field repeated
    (``like=12&like=40``) or comma-separated (``like=12,40``)."""

    default_error_messages = {
        "not_a_list": "give a list of garment ids",
        "invalid_id": "garment ids are positive integers, not {value!r}",
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", MAX_FEEDBACK_IDS)
        kwargs.setdefault("required", False)
        kwargs.setdefault("default", list)
        super().__init__(child=serializers.IntegerField(), **kwargs)
        self.error_messages["max_length"] = f"at most {MAX_FEEDBACK_IDS} garment ids per request"

    def to_internal_value(self, data: Any) -> list[int]:
        from_form = hasattr(getattr(self.parent, "initial_data", None), "getlist")
        limit = self.max_length or MAX_FEEDBACK_IDS
        if isinstance(data, str) or not isinstance(data, list | tuple):
            if not (from_form and isinstance(data, str)):
                self.fail("not_a_list")
            data = [data]
        if from_form:
            data = [part for item in data for part in str(item).split(",")]
        if len(data) > limit:
            self.fail("max_length", max_length=limit, length=len(data))
        ids = []
        for item in data:
            text = item.strip() if from_form and isinstance(item, str) else item
            if from_form and isinstance(text, str) and text.isascii() and text.isdigit():
                text = int(text)
            if isinstance(text, bool) or not isinstance(text, int) or not 0 < text <= MAX_ID:
                self.fail("invalid_id", value=item)
            ids.append(text)
        return ids


class SearchRequestSerializer(FilterParamsMixin, SearchOptionsSerializer):
    category = CategoryRefField(required=False, help_text="Only this category (id or slug).")
    q = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=MAX_QUERY_CHARS,
        help_text="Words about what you want, beside the photo: a colour of the catalogue "
        '("in red", "navy blue") keeps the photo\'s shape and asks for that colour; a '
        'category ("dress") searches that category; other words lift the garments whose '
        "title holds them. What was understood comes back in `understood`.",
    )
    like = GarmentIdsField(
        help_text="More like this: ids of result garments the shopper liked. The search moves "
        "towards them (Rocchio, in the fused space). Unknown or hidden ids are a 400."
    )
    dislike = GarmentIdsField(
        help_text="Not like this: ids of garments the shopper disliked. The search moves away "
        "from them and they never come back in this search. Unknown or hidden ids are a 400."
    )


class SearchUploadSerializer(NoBlankValuesMixin, SearchRequestSerializer):
    """multipart/form-data: the photo as a file."""

    blank_allowed = ("q",)  # a form's empty text box

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
    facets = StrictBooleanField(
        required=False,
        default=False,
        help_text="Also answer `facets`: per filter, its values with how many garments "
        "choosing each would give (the other chosen filters applied).",
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
        fields = [
            "id",
            "sku",
            "title",
            "category",
            "colour",
            "gender",
            "season",
            "usage",
            "image_url",
            "score",
        ]
        read_only_fields = fields


class SearchResponseSerializer(StaffOnlyFieldsMixin, serializers.Serializer):
    staff_only_fields = ("cluster",)

    results = SearchHitSerializer(many=True, help_text="Most similar first.")
    cluster = serializers.ListField(
        child=serializers.IntegerField(),
        required=False,
        help_text="Staff only: K-means cluster(s) probed, nearest first (empty when the "
        "catalogue has no clustering yet).",
    )
    model = serializers.CharField(help_text="The feature model that answered.")
    mode = serializers.ChoiceField(choices=SHOPPER_MODES)
    top = serializers.IntegerField()
    took_ms = serializers.FloatField(help_text="Server time for the search, in milliseconds.")
    facets = FacetsSerializer(
        required=False,
        help_text="With `facets=true`: per filter, its values over the catalogue searched "
        "and how many garments choosing each would give.",
    )

    @staticmethod
    def present(result: search.SearchResult, hits: list, *, top: int) -> dict:
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
        }


class PredictedCategorySerializer(serializers.Serializer):
    category = CategoryBriefSerializer()
    confidence = serializers.FloatField(
        help_text="The model's probability that the photo shows this category (0..1)."
    )


class UnderstoodSerializer(serializers.Serializer):
    q = serializers.CharField(help_text="The words as read (spaces collapsed).")
    colour = serializers.CharField(
        allow_null=True,
        help_text="The catalogue colour asked for (its colour part replaced the photo's), or null.",
    )
    category = CategoryBriefSerializer(
        allow_null=True, help_text="The category the words named (searched in), or null."
    )
    colour_matches = serializers.IntegerField(
        help_text="Results whose catalogue colour is the asked one (they come first)."
    )
    words = serializers.ListField(
        child=serializers.CharField(),
        help_text="Other words; garments whose title holds them all come first.",
    )
    title_matches = serializers.IntegerField(help_text="Results whose title holds the words.")
    like = serializers.ListField(child=serializers.IntegerField())
    dislike = serializers.ListField(child=serializers.IntegerField())


class PhotoSearchResponseSerializer(SearchResponseSerializer):
    predicted_categories = PredictedCategorySerializer(
        many=True,
        help_text="The categories the model recognised in the photo, most likely first (at "
        'most 3): offer the next ones as "not right?" choices (search again with '
        "`category`).",
    )
    understood = UnderstoodSerializer(help_text="What the search made of `q`, `like`, `dislike`.")

    @staticmethod
    def present_photo(found: search.PhotoSearch, *, top: int) -> dict:
        """The response body of a photo search (with what it understood)."""
        body = SearchResponseSerializer.present(found.result, found.result.garments(), top=top)
        words = found.understood
        body["predicted_categories"] = [
            {"category": p.category, "confidence": round(p.confidence, 4)} for p in found.predicted
        ]
        body["understood"] = {
            "q": words.text,
            "colour": words.colour if found.colour_applied else None,
            "colour_matches": found.colour_matches,
            "category": words.category,
            "words": list(words.words),
            "title_matches": found.boosted,
            "like": list(found.feedback.like_ids),
            "dislike": list(found.feedback.dislike_ids),
        }
        return body


class SimilarQuerySerializer(NoBlankValuesMixin, FilterParamsMixin, SearchOptionsSerializer):
    """Query parameters of "more like this"."""

    category = CategoryRefField(required=False, help_text="Only this category (id or slug).")


# --------------------------------------------------------------------------- errors (schema)


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. invalid_image.")
    message = serializers.CharField(help_text="What went wrong, in words fit for a person.")
    details = serializers.JSONField(
        allow_null=True, help_text="Per-field messages for invalid input, else extra facts."
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()
