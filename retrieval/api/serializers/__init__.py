"""REST API serializers: validation and presentation only.

Writes go through :mod:`retrieval.catalogue` (``decode_upload``, ``save_garment``), searches
through :mod:`retrieval.search`. The query image of a search is decoded here, once, with the
same limits and messages as every other upload (:func:`decode_query_image`); the web page's
form reads through the same path (:mod:`retrieval.catalogue.uploads`), so a shopper and an
app see the same words for the same file.

One module per endpoint family (common, garments, catalogue writes, search); every public
name is re-exported here, so ``from retrieval.api.serializers import X`` keeps working.
"""

from __future__ import annotations

from retrieval.api.serializers.catalogue import (
    CategorySerializer,
    ChangesSomethingMixin,
    DuplicateImageConflict,
    GarmentWriteSerializer,
)
from retrieval.api.serializers.common import (
    MAX_ID,
    CategoryBriefSerializer,
    CategoryRefField,
    ErrorBodySerializer,
    ErrorSerializer,
    ImageTooLarge,
    InvalidImage,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerChoiceField,
    StrictModelSerializer,
    StrictPrimaryKeyRelatedField,
    StrictSlugField,
    StrictTypeMixin,
    decode_query_image,
    image_problem,
    read_upload,
)
from retrieval.api.serializers.garments import (
    INTERNAL_ATTRIBUTES,
    FacetsSerializer,
    FacetValueSerializer,
    FilterParamsMixin,
    GarmentFilterSerializer,
    GarmentImageUrlMixin,
    GarmentSerializer,
    KeywordSerializer,
    NoBlankValuesMixin,
    StaffOnlyFieldsMixin,
    staff_request,
)
from retrieval.api.serializers.search import (
    GarmentIdsField,
    PhotoSearchResponseSerializer,
    PredictedCategorySerializer,
    SearchBase64Serializer,
    SearchHitSerializer,
    SearchOptionsSerializer,
    SearchRequestSerializer,
    SearchResponseSerializer,
    SearchUploadSerializer,
    SimilarQuerySerializer,
    UnderstoodSerializer,
)
from retrieval.api.serializers.stats import (
    GarmentReadQuerySerializer,
    SearchStatsSerializer,
    StatsQuerySerializer,
)

__all__ = [
    "INTERNAL_ATTRIBUTES",
    "MAX_ID",
    "CategoryBriefSerializer",
    "CategoryRefField",
    "CategorySerializer",
    "ChangesSomethingMixin",
    "DuplicateImageConflict",
    "ErrorBodySerializer",
    "ErrorSerializer",
    "FacetValueSerializer",
    "FacetsSerializer",
    "FilterParamsMixin",
    "GarmentFilterSerializer",
    "GarmentIdsField",
    "GarmentImageUrlMixin",
    "GarmentReadQuerySerializer",
    "GarmentSerializer",
    "GarmentWriteSerializer",
    "ImageTooLarge",
    "InvalidImage",
    "KeywordSerializer",
    "NoBlankValuesMixin",
    "PhotoSearchResponseSerializer",
    "PredictedCategorySerializer",
    "SearchBase64Serializer",
    "SearchHitSerializer",
    "SearchOptionsSerializer",
    "SearchRequestSerializer",
    "SearchResponseSerializer",
    "SearchStatsSerializer",
    "SearchUploadSerializer",
    "SimilarQuerySerializer",
    "StaffOnlyFieldsMixin",
    "StatsQuerySerializer",
    "StrictBooleanField",
    "StrictCharField",
    "StrictIntegerChoiceField",
    "StrictModelSerializer",
    "StrictPrimaryKeyRelatedField",
    "StrictSlugField",
    "StrictTypeMixin",
    "UnderstoodSerializer",
    "decode_query_image",
    "image_problem",
    "read_upload",
    "staff_request",
]
