"""Evaluation reports: the readable report page, its query sets, JSON/CSV downloads."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.urls import path

from retrieval import evaluation
from retrieval.admin.common import badge
from retrieval.models import (
    EvaluationReport,
)


@admin.register(EvaluationReport)
class EvaluationReportAdmin(admin.ModelAdmin):
    list_display = ("id", "model", "status_badge", "queries", "fused_p5", "deep_p5", "created_at")
    list_filter = ("status",)
    readonly_fields = ("model", "status", "parameters", "error", "created_at", "finished_at")
    exclude = ("metrics",)
    change_form_template = "admin/retrieval/evaluationreport/change_form.html"
    change_list_template = "admin/retrieval/evaluationreport/change_list.html"

    def has_add_permission(self, request) -> bool:
        return False  # reports come from evaluation runs ("Run an evaluation" button)

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # a report is read, never edited: no Save button

    def has_run_permission(self, request) -> bool:
        return request.user.has_perm("retrieval.add_evaluationreport")

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: EvaluationReport) -> str:
        return badge(obj.status, title=obj.error[:500])

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_run": self.has_run_permission(request)}
        return super().changelist_view(request, extra_context)

    @admin.display(description="queries")
    def queries(self, obj: EvaluationReport):
        return obj.metrics.get("queries", "-")

    @admin.display(description="fused p@5")
    def fused_p5(self, obj: EvaluationReport):
        return obj.metrics.get("modes", {}).get("fused", {}).get("p@5", "-")

    @admin.display(description="deep p@5")
    def deep_p5(self, obj: EvaluationReport):
        return obj.metrics.get("modes", {}).get("deep", {}).get("p@5", "-")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        report = self.get_object(request, object_id)
        extra_context = {**(extra_context or {}), **evaluation_context(report)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        extra = [
            path(
                "run/",
                self.admin_site.admin_view(self.run_view),
                name="retrieval_evaluationreport_run",
            ),
            path(
                "<int:report_id>/download.<str:fmt>",
                self.admin_site.admin_view(self.download_view),
                name="retrieval_evaluationreport_download",
            ),
        ]
        return extra + super().get_urls()

    def run_view(self, request):
        from retrieval import search

        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_run_permission(request):
            raise PermissionDenied("you need the retrieval.add_evaluationreport permission")
        try:
            model = search.require_active_model()
        except search.SearchUnavailable as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return redirect("admin:retrieval_evaluationreport_changelist")
        report = evaluation.queue_evaluation(model=model)
        self.message_user(request, f"Evaluation {report.pk} started; refresh to see it finish.")
        return redirect("admin:retrieval_evaluationreport_changelist")

    def download_view(self, request, report_id: int, fmt: str):
        if not self.has_view_permission(request):
            raise PermissionDenied("you need the retrieval.view_evaluationreport permission")
        report = EvaluationReport.objects.filter(pk=report_id).first()
        if report is None or fmt not in {"json", "csv"}:
            return HttpResponse(status=404)
        if fmt == "json":
            response = JsonResponse(report.metrics, json_dumps_params={"indent": 2})
        else:
            response = HttpResponse(evaluation_csv(report), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="evaluation-{report.pk}.{fmt}"'
        return response


def evaluation_context(report: EvaluationReport | None) -> dict:
    """The report laid out for a merchandiser (evaluation.readable_report): plain column
    names, a chart with its axis and values (inline SVG, no CDN), query photos beside results."""
    if report is None or not report.metrics:
        return {}
    m = report.metrics
    return {
        "readable": evaluation.readable_report(metrics=m),
        "query_sets": [_query_set_table(entry) for entry in m.get("query_sets", [])],
    }


def _query_set_table(entry: dict) -> dict:
    """One labelled query set of a report as tables: overall p@k per mode, and per category
    (rows) the p@k of each mode (columns), with the number of queries."""
    modes = list(entry.get("modes", {}))
    keys = list(next(iter(entry["modes"].values()), {})) if modes else []
    per_category = entry.get("per_category", {})
    names = sorted({name for mode in modes for name in per_category.get(mode, {})})
    rows = []
    for name in names:
        cells = []
        queries = 0
        for mode in modes:
            row = per_category.get(mode, {}).get(name, {})
            queries = row.get("queries", queries)
            cells += [row.get(k) for k in keys]
        rows.append((name, queries, cells))
    return {
        "name": entry.get("name", ""),
        "source": entry.get("source", ""),
        "queries": entry.get("queries", 0),
        "skipped": entry.get("skipped", 0),
        "error": entry.get("error", ""),
        "keys": keys,
        "overall": [(mode, [entry["modes"][mode].get(k) for k in keys]) for mode in modes],
        "columns": [f"{mode} {k}" for mode in modes for k in keys],
        "categories": rows,
    }


def evaluation_csv(report: EvaluationReport) -> str:
    import csv
    import io

    m = report.metrics
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["search", "mode", "metric", "value"])
    for search_kind, block in (("cluster", m.get("modes", {})), ("exact", m.get("exact", {}))):
        for mode, values in block.items():
            for key, value in values.items():
                writer.writerow([search_kind, mode, key, value])
    for mode, categories in m.get("per_category_p@5", {}).items():
        for name, values in categories.items():
            writer.writerow(["cluster", mode, f"p@5 {name}", values["p@5"]])
    for entry in m.get("query_sets", []):
        for mode, values in entry.get("modes", {}).items():
            for key, value in values.items():
                writer.writerow([entry["name"], mode, key, value])
        for mode, categories in entry.get("per_category", {}).items():
            for name, values in categories.items():
                for key, value in values.items():
                    writer.writerow([entry["name"], mode, f"{key} {name}", value])
    return out.getvalue()
