"""Search analytics: the recorded searches by photo (read-only) and the search dashboard
(charts as inline SVG, a date range, CSV export), for staff with the search log's view
permission."""

from __future__ import annotations

import datetime as dt

from django import forms
from django.contrib import admin
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from retrieval import analytics
from retrieval.admin.common import require
from retrieval.models import SearchLog

#: The dashboard's default range: the last 30 days.
DEFAULT_DAYS = 30


class DashboardPeriodForm(forms.Form):
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Inclusive.",
    )

    def clean(self):
        cleaned = super().clean() or {}
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and start > end:
            raise forms.ValidationError("The start is after the end.")
        if start and end and (end - start).days > 3660:
            raise forms.ValidationError("Choose at most ten years.")
        return cleaned


def _bars(values: list[int], *, width: int, height: int) -> list[dict]:
    """SVG bars for ``values`` side by side in a ``width`` x ``height`` box (y grows down)."""
    top = max(values, default=0) or 1
    step = width / max(1, len(values))
    bars = []
    for i, value in enumerate(values):
        h = round(height * (value or 0) / top, 1)
        bars.append(
            {"x": round(i * step, 1), "w": max(1.0, round(step * 0.8, 1)), "y": height - h,
             "h": h, "value": value}
        )  # fmt: skip
    return bars


def dashboard_context(stats: analytics.SearchStats) -> dict:
    """Charts (inline SVG, no CDN) and tables of the search dashboard."""
    width, height = 720, 160
    days = stats.per_day
    latency_top = max((d.latency_p95_ms or 0 for d in days), default=0) or 1
    step = width / max(1, len(days))

    def line(values: list[float | None]) -> str:
        """SVG polyline points of a value per day (days without searches left out)."""
        return " ".join(
            f"{round(i * step + step * 0.4, 1)},{round(height - height * v / latency_top, 1)}"
            for i, v in enumerate(values)
            if v is not None
        )

    day_bars = _bars([d.searches for d in days], width=width, height=height)
    for bar, day in zip(day_bars, days, strict=True):
        bar["label"] = day.day.isoformat()
    hour_bars = _bars(stats.per_hour, width=width, height=height)
    for hour, bar in enumerate(hour_bars):
        bar["label"] = f"{hour:02d}:00"
    top_cat = max((c.searches for c in stats.top_categories), default=0) or 1
    categories = [
        {"name": c.category or "(no prediction)", "searches": c.searches, "share": c.share,
         "w": round(400 * c.searches / top_cat, 1)}
        for c in stats.top_categories
    ]  # fmt: skip
    return {
        "stats": stats,
        "chart_w": width,
        "chart_h": height,
        "day_bars": day_bars,
        "day_first": days[0].day if days else None,
        "day_last": days[-1].day if days else None,
        "day_max": max((d.searches for d in days), default=0),
        "hour_bars": hour_bars,
        "hour_max": max(stats.per_hour, default=0),
        "latency_max": round(latency_top, 1),
        "p50_points": line([d.latency_p50_ms for d in days]),
        "p95_points": line([d.latency_p95_ms for d in days]),
        "categories": categories,
        "ctr_rows": list(stats.ctr.items()),
    }


@admin.register(SearchLog)
class SearchLogAdmin(admin.ModelAdmin):
    """Recorded searches by photo (read-only) and the search dashboard."""

    list_display = (
        *("created_at", "channel", "mode", "top", "latency_ms", "predicted_category"),
        *("confidence", "clicks", "first_click_rank"),
    )
    # No date hierarchy and no filter on a free-text column: each costs a scan of the log
    # (1M rows) per page.
    list_filter = ("channel",)
    readonly_fields = (
        *("id", "created_at", "channel", "mode", "top", "filters", "latency_ms"),
        *("garment_ids", "predicted_category", "confidence", "model", "photo", "clicks"),
        "first_click_rank",
    )
    change_list_template = "admin/retrieval/searchlog/change_list.html"
    show_full_result_count = False  # no COUNT(*) of a million rows per page

    def has_add_permission(self, request) -> bool:
        return False  # written by searches

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # a record of what happened

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # retention deletes (RETRIEVAL_SEARCH_LOG_DAYS), with the roll-up

    def get_urls(self):
        extra = [
            path(
                "dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name="retrieval_searchlog_dashboard",
            )
        ]
        return extra + super().get_urls()

    def dashboard_view(self, request):
        """Searches per day and hour, latency, predicted categories, confidence, click-through
        and the slowest searches over a date range (default: the last 30 days); ``?format=csv``
        downloads the same numbers. Needs the search log's view permission."""
        require(request, "retrieval.view_searchlog")
        form = DashboardPeriodForm(request.GET or None)
        start, end = analytics.period(days=DEFAULT_DAYS)
        if form.is_bound and form.is_valid():
            zone = timezone.get_current_timezone()
            if form.cleaned_data.get("start"):
                start = dt.datetime.combine(form.cleaned_data["start"], dt.time(), tzinfo=zone)
            if form.cleaned_data.get("end"):
                end = dt.datetime.combine(
                    form.cleaned_data["end"] + dt.timedelta(days=1), dt.time(), tzinfo=zone
                )
            if start >= end:
                start = end - dt.timedelta(days=1)
        stats = analytics.search_stats(start=start, end=end)
        if request.GET.get("format") == "csv":
            response = HttpResponse(analytics.stats_csv(stats), content_type="text/csv")
            last = timezone.localtime(end - dt.timedelta(microseconds=1))
            name = f"searches-{timezone.localtime(start):%Y%m%d}-{last:%Y%m%d}"
            response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
            return response
        query = request.GET.copy()
        query["format"] = "csv"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Search by photo: dashboard",
            "form": form,
            "csv_query": query.urlencode(),
            "period_start": timezone.localtime(start),
            "period_end": timezone.localtime(end - dt.timedelta(microseconds=1)),
            **dashboard_context(stats),
        }
        return TemplateResponse(request, "admin/retrieval/searchlog/dashboard.html", context)
