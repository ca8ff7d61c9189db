"""Search requests (photo upload, base64, more-like-this) and their answers."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from retrieval import search
from retrieval.api.serializers.common import (
    MAX_ID,
    CategoryRefField,
    ImageTooLarge,
    InvalidImage,
    StrictBooleanField,
    StrictIntegerChoiceField,
    decode_query_image,
    read_upload,
)
from retrieval.api.serializers.garments import (
    CategoryBriefSerializer,
    FacetsSerializer,
    FilterParamsMixin,
    GarmentImageUrlMixin,
    NoBlankValuesMixin,
    StaffOnlyFieldsMixin,
)
from retrieval.models import Garment
from retrieval.search.refine import MAX_FEEDBACK_IDS, MAX_QUERY_CHARS
from retrieval.spec import SHOPPER_MODES, TOPS

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
    search_id = serializers.UUIDField(
        allow_null=True,
        help_text="This search, for the search analytics: send it back as `search_id` when "
        "reading a result (GET /api/v1/garments/{id}/?search_id=...) so the read counts as a "
        "click on that result. Null when searches are not recorded (RETRIEVAL_SEARCH_LOG).",
    )

    @staticmethod
    def present_photo(
        found: search.PhotoSearch, *, top: int, search_id: uuid.UUID | None = None
    ) -> dict:
        """The response body of a photo search (with what it understood); ``search_id``: the
        search's analytics record id (a UUID), or None."""
        body = SearchResponseSerializer.present(found.result, found.result.garments(), top=top)
        body["search_id"] = search_id
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
