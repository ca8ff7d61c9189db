"""The search analytics in the API: a garment read naming the search it was opened from (a
click), and the staff statistics (``GET /api/v1/stats/searches/``)."""

from __future__ import annotations

from rest_framework import serializers

from retrieval.api.serializers.garments import NoBlankValuesMixin


class GarmentReadQuerySerializer(NoBlankValuesMixin, serializers.Serializer):
    """Query parameters of one garment's read."""

    search_id = serializers.UUIDField(
        required=False,
        help_text="The search whose result list the client opened this garment from (its "
        "`search_id`): recorded as a click for the search analytics.",
    )


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
    latency_p50_ms = serializers.FloatField(
        allow_null=True, help_text="From fixed 10%-wide latency buckets, interpolated."
    )
    latency_p95_ms = serializers.FloatField(allow_null=True)
    low_confidence_threshold = serializers.FloatField()
    low_confidence = serializers.IntegerField()
    low_confidence_share = serializers.FloatField()
    ctr = CtrSerializer(help_text="Share of searches with a click on one of the first k results.")
    without_click = serializers.IntegerField()
    without_click_share = serializers.FloatField()
    per_day = DayCountSerializer(many=True)
    per_hour = serializers.ListField(
        child=serializers.IntegerField(), help_text="24 counts, hour 0 first (site time)."
    )
    top_categories = CategoryCountSerializer(many=True)
    slowest = SlowSearchSerializer(many=True)
    rolled_up_through = serializers.DateTimeField(
        allow_null=True,
        help_text="Hours before this were read from the hourly roll-up, the rest from the raw log.",
    )
