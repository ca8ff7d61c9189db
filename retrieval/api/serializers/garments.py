"""Garment reads (shoppers, and staff-only fields), the garment list's filters, keyword
search and facets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from retrieval import catalogue, search
from retrieval.api.serializers.common import (
    CategoryBriefSerializer,
    CategoryRefField,
    StrictCharField,
)
from retrieval.models import Garment

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


def staff_request(context: Mapping[str, Any]) -> bool:
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
    """A garment as shoppers and apps see it; staff also get ``error``, ``image_sha256`` and
    its duplicate flags (``possible_duplicate_of``, ``same_product_as``)."""

    staff_only_fields = ("error", "image_sha256", "possible_duplicate_of", "same_product_as")

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

    possible_duplicate_of = serializers.SerializerMethodField(
        help_text="Staff only: ids of garments whose photo looks like this one's (near-duplicate "
        "flags still to review in the admin)."
    )
    same_product_as = serializers.SerializerMethodField(
        help_text="Staff only: the product group (smallest garment id) staff merged this "
        "garment into as the same product, or null."
    )

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_possible_duplicate_of(self, garment: Garment) -> list[int]:
        if not staff_request(self.context):
            return []  # dropped from the output anyway: no query for shoppers
        ids = getattr(garment, "open_duplicate_ids", None)  # annotated by the staff queryset
        if ids is None:
            ids = [
                f.original_id if f.garment_id == garment.pk else f.garment_id
                for f in catalogue.open_flags(garment=garment)
            ]
        return sorted(set(ids))

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_same_product_as(self, garment: Garment) -> int | None:
        return garment.product_group

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
            *Garment.DESCRIPTION_FIELDS,
            "image_url",
            "attributes",
            "status",
            "error",
            "image_sha256",
            "possible_duplicate_of",
            "same_product_as",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


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
