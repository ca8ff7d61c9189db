"""What every endpoint family's serializers share: the API's errors for images, decoding a
search's query image (the one upload path), strict fields, and the error body's schema."""

from __future__ import annotations

import re

from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework import status as http_status
from rest_framework.exceptions import APIException

from retrieval import catalogue
from retrieval.images import ImageError
from retrieval.models import Category

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


class CategoryBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Category
        fields = ["id", "slug", "name"]


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


# --------------------------------------------------------------------------- errors (schema)


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. invalid_image.")
    message = serializers.CharField(help_text="What went wrong, in words fit for a person.")
    details = serializers.JSONField(
        allow_null=True, help_text="Per-field messages for invalid input, else extra facts."
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()
