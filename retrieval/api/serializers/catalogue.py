"""Catalogue writes (staff): categories, and garments created or changed through
:mod:`retrieval.catalogue`."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework import status as http_status
from rest_framework.exceptions import APIException

from retrieval import catalogue, images
from retrieval.api.serializers.common import (
    CategoryRefField,
    StrictModelSerializer,
    StrictPrimaryKeyRelatedField,
    image_problem,
)
from retrieval.api.serializers.garments import (
    GarmentSerializer,
)
from retrieval.images import ImageError
from retrieval.models import Category, Garment


class ChangesSomethingMixin:
    """A PATCH that names no known field is a client mistake (a misspelt name, a body the server
    could not read), not a successful no-op: say so."""

    def validate(self, attrs: dict) -> dict:
        if self.partial and not attrs:
            names = ", ".join(name for name, field in self.fields.items() if not field.read_only)
            raise serializers.ValidationError(f"give at least one field to change ({names})")
        return super().validate(attrs)


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


class DuplicateImageConflict(APIException):
    """The photo's pixels are another garment's (``duplicate_of``); send
    ``allow_duplicate=true`` to save it anyway."""

    status_code = http_status.HTTP_409_CONFLICT
    default_code = "duplicate_image"
    default_detail = "another garment already has this photo"

    def __init__(self, duplicate: catalogue.ExactDuplicate) -> None:
        self.duplicate_of = duplicate.garment_id
        super().__init__(f"{duplicate.message}; send allow_duplicate=true to save it anyway")


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
            *Garment.DESCRIPTION_FIELDS,
            "image",
            "attributes",
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
