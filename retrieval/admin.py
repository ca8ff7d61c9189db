"""Staff curation: categories, garments, feature models, cluster runs and evaluation reports."""

from __future__ import annotations

import uuid
import zipfile

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Count
from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join

from retrieval import catalogue, evaluation, indexing, tokens, training
from retrieval.admin_examples import ExamplePhotoAdmin
from retrieval.jobs import publishing
from retrieval.models import (
    ApiToken,
    BackboneFeature,
    Category,
    ClusterRun,
    EvaluationReport,
    FeatureModel,
    Garment,
    GarmentFeature,
    ImportJob,
)

# Registered in its own module (the example photos' section, issue #14); named here so that
# importing this module registers it.
__all__ = ["ExamplePhotoAdmin"]


class CategoryActionForm(ActionForm):
    category = forms.ModelChoiceField(
        queryset=Category.objects.order_by("name"), required=False, label="category"
    )


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "parent", "active", "garment_count")
    list_filter = ("active",)
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    actions = ("merge_into",)

    action_form = CategoryActionForm

    @admin.action(description="Merge the selected categories into the category chosen above")
    def merge_into(self, request, queryset) -> None:
        category = request.POST.get("category")
        if not category:
            self.message_user(request, "Choose the category to merge into.", messages.ERROR)
            return
        target = Category.objects.get(pk=category)
        moved = catalogue.merge_categories(sources=list(queryset), target=target)
        self.message_user(request, f"Merged into {target}; {moved} garments moved.")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_garments=Count("garments"))

    @admin.display(description="garments", ordering="_garments")
    def garment_count(self, obj: Category) -> int:
        return obj._garments


class UploadAdminMixin:
    """Change forms that take a file upload.

    A form posted with errors is answered 400 (the form with its messages, as the admin
    renders it), not 200: a refused upload is a client error, for browsers and tools alike.

    When the media storage refuses the file at save time (catalogue.MediaStorageError),
    nothing was saved (the view's transaction rolled back, the service left no file) and the
    posted form is shown again, refused with the reason on ``upload_field``. The admin has no
    hook for an error at save time, so that is a second pass through the view, whose form
    then carries the error.
    """

    upload_field = "image"

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        response = super().render_change_form(request, context, add, change, form_url, obj)
        if request.method == "POST" and context.get("errors"):
            response.status_code = 400
        return response

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except catalogue.MediaStorageError as exc:
            request.media_storage_error = str(exc)
            return super().changeform_view(request, object_id, form_url, extra_context)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        error = getattr(request, "media_storage_error", "")
        if not error:
            return form
        field = self.upload_field

        def clean(self_form):
            cleaned = form.clean(self_form)
            self_form.add_error(field, error)
            return cleaned

        return type(form.__name__, (form,), {"clean": clean})


class GarmentForm(forms.ModelForm):
    class Meta:
        model = Garment
        fields = (
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
        )

    def clean_image(self):
        upload = self.cleaned_data.get("image")
        if upload and upload != getattr(self.instance, "image", None):
            catalogue.validate_upload(upload=upload)
        return upload


@admin.register(Garment)
class GarmentAdmin(UploadAdminMixin, admin.ModelAdmin):
    form = GarmentForm
    action_form = CategoryActionForm
    list_display = (
        "thumbnail",
        "sku",
        "title",
        "category",
        "colour",
        "gender",
        "status_badge",
        "updated_at",
    )
    list_display_links = ("thumbnail", "sku")
    list_filter = ("status", "gender", "season", "usage", "category")
    search_fields = ("sku", "title", "colour")
    list_select_related = ("category",)
    readonly_fields = ("status", "error", "created_at", "updated_at", "preview")
    list_per_page = 50
    actions = ("reindex_selected", "move_to_category")

    @admin.display(description="image")
    def thumbnail(self, obj: Garment) -> str:
        if not obj.image:
            return "-"
        return format_html(
            '<img src="{}" alt="" style="height:48px;width:auto" loading="lazy">', obj.image.url
        )

    @admin.display(description="preview")
    def preview(self, obj: Garment) -> str:
        if not obj.image:
            return "-"
        return format_html('<img src="{}" alt="" style="max-height:240px">', obj.image.url)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Garment) -> str:
        if obj.status == Garment.Status.FAILED:
            return format_html('<span title="{}">failed: {}</span>', obj.error, obj.error[:80])
        return obj.status

    def save_model(self, request, obj: Garment, form, change: bool) -> None:
        catalogue.save_garment(garment=obj, image_changed="image" in form.changed_data)

    @admin.action(description="Re-index the selected garments")
    def reindex_selected(self, request, queryset) -> None:
        count = indexing.mark_for_reindex(garment_ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"{count} garments queued for indexing.", messages.SUCCESS)

    @admin.action(description="Move the selected garments to the category chosen above")
    def move_to_category(self, request, queryset) -> None:
        category = request.POST.get("category")
        if not category:
            self.message_user(request, "Choose a category first.", messages.ERROR)
            return
        target = Category.objects.get(pk=category)
        count = catalogue.move_garments(
            garment_ids=list(queryset.values_list("id", flat=True)), category=target
        )
        self.message_user(request, f"{count} garments moved to {target}.", messages.SUCCESS)


@admin.register(GarmentFeature)
class GarmentFeatureAdmin(admin.ModelAdmin):
    # K-means labels live per run in SearchRow (not on this row) since migration 0003.
    list_display = ("garment", "model", "created_at")
    list_filter = ("model",)
    exclude = ("deep", "fused")
    readonly_fields = ("garment", "model", "created_at")

    def has_add_permission(self, request) -> bool:
        return False  # vectors are written by the feature workers only


@admin.register(BackboneFeature)
class BackboneFeatureAdmin(admin.ModelAdmin):
    list_display = ("garment", "backbone", "version", "created_at")
    list_filter = ("backbone",)
    exclude = ("pooled",)
    readonly_fields = ("garment", "backbone", "version", "image_name", "positions", "rgb")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(FeatureModel)
class FeatureModelAdmin(admin.ModelAdmin):
    list_display = (
        *("name", "backbone", "colour_variant", "colour_weight", "status", "progress_text"),
        *("val_accuracy", "active"),
    )
    list_filter = ("backbone", "status", "active")
    readonly_fields = (
        *("progress_text", "metrics", "progress", "error", "split"),
        *("created_at", "activated_at"),
    )
    actions = ("activate_selected", "delete_search_data")
    change_list_template = "admin/retrieval/featuremodel/change_list.html"
    change_form_template = "admin/retrieval/featuremodel/change_form.html"
    #: While a model trains or re-indexes, its list and page reload themselves this often.
    refresh_seconds = 5

    def _busy(self) -> bool:
        building = (FeatureModel.Status.TRAINING, FeatureModel.Status.INDEXING)
        return FeatureModel.objects.filter(status__in=building).exists()

    def changelist_view(self, request, extra_context=None):
        extra = {"refresh_seconds": self.refresh_seconds if self._busy() else None}
        return super().changelist_view(request, extra_context={**(extra_context or {}), **extra})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        building = (FeatureModel.Status.TRAINING, FeatureModel.Status.INDEXING)
        busy = FeatureModel.objects.filter(pk=object_id, status__in=building).exists()
        extra = {"refresh_seconds": self.refresh_seconds if busy else None}
        return super().change_view(
            request, object_id, form_url, extra_context={**(extra_context or {}), **extra}
        )

    @admin.display(description="validation accuracy")
    def val_accuracy(self, obj: FeatureModel) -> str:
        value = obj.metrics.get("val_accuracy")
        return "-" if value is None else f"{value:.3f}"

    @admin.display(description="progress")
    def progress_text(self, obj: FeatureModel) -> str:
        """Stage, epoch, loss, validation accuracy, elapsed and time left
        (:func:`retrieval.training.progress_text`)."""
        return training.progress_text(obj.progress)

    @admin.action(description="Activate the selected model (re-indexes in the background)")
    def activate_selected(self, request, queryset) -> None:

        if queryset.count() != 1:
            self.message_user(request, "Select exactly one model.", messages.ERROR)
            return
        model = queryset.get()
        if not model.head_file:
            self.message_user(request, f"{model} has no trained head.", messages.ERROR)
            return
        try:
            training.queue_activation(model=model)
        except publishing.QueueUnavailable as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, f"Re-indexing for {model}; it becomes active when done.")

    @admin.action(description="Delete the search data (partitions, vectors) of inactive models")
    def delete_search_data(self, request, queryset) -> None:
        models = list(queryset)
        try:
            refused = training.queue_model_retirement(models=models)
        except publishing.QueueUnavailable as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        for name, reason in refused.items():
            self.message_user(request, f"Left alone: {name}, because {reason}.", messages.ERROR)
        chosen = [m.name for m in models if m.name not in refused]
        if chosen:
            self.message_user(
                request,
                f"Deleting the search data of {', '.join(chosen)} in the background. Their "
                "heads stay: activating one again recomputes its vectors from the cached CNN "
                "features and fits K-means.",
            )

    def get_urls(self):
        extra = [
            path(
                "train/",
                self.admin_site.admin_view(self.train_view),
                name="retrieval_featuremodel_train",
            )
        ]
        return extra + super().get_urls()

    def train_view(self, request):
        if request.method != "POST" or not self.has_add_permission(request):
            return HttpResponseNotAllowed(["POST"])
        model = training.queue_training()
        self.message_user(request, f"Training {model.name}; progress shows in the list.")
        return redirect("admin:retrieval_featuremodel_changelist")


@admin.register(ClusterRun)
class ClusterRunAdmin(admin.ModelAdmin):
    list_display = ("id", "model", "k", "n_samples", "inertia", "seconds", "active", "created_at")
    list_filter = ("active", "model")
    readonly_fields = ("sizes",)


@admin.register(EvaluationReport)
class EvaluationReportAdmin(admin.ModelAdmin):
    list_display = ("id", "model", "status", "queries", "fused_p5", "deep_p5", "created_at")
    list_filter = ("status",)
    readonly_fields = ("model", "status", "parameters", "error", "created_at", "finished_at")
    exclude = ("metrics",)
    change_form_template = "admin/retrieval/evaluationreport/change_form.html"
    change_list_template = "admin/retrieval/evaluationreport/change_list.html"

    def has_add_permission(self, request) -> bool:
        return False  # reports come from evaluation runs ("Run an evaluation" button)

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
        try:
            model = search.require_active_model()
        except search.SearchUnavailable as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return redirect("admin:retrieval_evaluationreport_changelist")
        report = evaluation.queue_evaluation(model=model)
        self.message_user(request, f"Evaluation {report.pk} started; refresh to see it finish.")
        return redirect("admin:retrieval_evaluationreport_changelist")

    def download_view(self, request, report_id: int, fmt: str):
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
    """Tables and a per-category bar chart (inline SVG, no CDN) for a report page."""
    if report is None or not report.metrics:
        return {}
    m = report.metrics
    keys = list(m["modes"]["fused"])
    rows = [(f"{mode} (cluster)", [m["modes"][mode][k] for k in keys]) for mode in m["modes"]]
    rows += [
        (f"{mode} (exact)", [m.get("exact", {}).get(mode, {}).get(k) for k in keys])
        for mode in m.get("exact", {})
    ]
    per_category = m.get("per_category_p@5", {})
    names = sorted(per_category.get("fused", {}))
    bar_h, gap, label_w, chart_w = 12, 6, 170, 320
    bars = []
    for i, name in enumerate(names):
        y = i * (2 * bar_h + gap)
        for j, mode in enumerate(("fused", "deep")):
            value = per_category.get(mode, {}).get(name, {}).get("p@5") or 0.0
            bars.append(
                {
                    "y": y + j * bar_h,
                    "width": round(value * chart_w, 1),
                    "value": value,
                    "mode": mode,
                    "name": name,
                    "label_y": y + bar_h,
                }
            )
    return {
        "metric_keys": keys,
        "metric_rows": rows,
        "chart_bars": bars,
        "chart_names": names,
        "chart_height": max(1, len(names)) * (2 * bar_h + gap),
        "chart_label_w": label_w,
        "chart_w": chart_w,
        "examples": m.get("examples", []),
        "queries": m.get("queries"),
        "skipped": m.get("skipped"),
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


class ImportJobForm(forms.ModelForm):
    class Meta:
        model = ImportJob
        fields = ("upload", "category_field", "limit")
        help_texts = {
            "upload": "A zip holding styles.csv and images/ (the sample catalogue's format).",
        }

    def clean_upload(self):
        upload = self.cleaned_data.get("upload")
        if not upload:
            raise forms.ValidationError("Choose a catalogue zip to import.")
        if upload.size > settings.RETRIEVAL_MAX_IMPORT_BYTES:
            raise forms.ValidationError(
                f"the file is over the import limit ({settings.RETRIEVAL_MAX_IMPORT_BYTES} bytes)"
            )
        if not zipfile.is_zipfile(upload):
            raise forms.ValidationError("that file is not a zip archive")
        upload.seek(0)
        # The upload lands in media storage: under a name of ours, never the client's (an
        # "import.html" must not become a page). The client's name is kept as the source.
        self.client_name = upload.name
        upload.name = f"{uuid.uuid4().hex}.zip"
        return upload


@admin.register(ImportJob)
class ImportJobAdmin(UploadAdminMixin, admin.ModelAdmin):
    form = ImportJobForm
    upload_field = "upload"
    list_display = ("id", "source", "status", "rows", "created", "updated", "problem_count")
    list_filter = ("status",)
    readonly_fields = (
        *("source", "status", "rows", "created", "updated", "unchanged", "problem_table"),
        *("error", "created_by", "created_at", "finished_at"),
    )
    change_form_template = "admin/retrieval/importjob/change_form.html"
    actions = ("resume_imports",)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("upload", "category_field", "limit")
        return self.readonly_fields

    @admin.action(
        description="Resume the selected imports (the rows not imported yet)",
        permissions=["add"],
    )
    def resume_imports(self, request, queryset) -> None:
        resumed = [job.pk for job in queryset if catalogue.resume_import(job=job)]
        if resumed:
            self.message_user(request, f"Resumed imports {', '.join(map(str, resumed))}.")
        left = queryset.count() - len(resumed)
        if left:
            self.message_user(
                request,
                f"{left} import(s) left alone: done already, or started by manage.py "
                "(resume those with manage.py import_catalog --resume ID)",
                level=messages.WARNING,
            )

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    @admin.display(description="problems")
    def problem_count(self, obj: ImportJob) -> int:
        return len(obj.problems)

    @admin.display(description="problems (row, sku, file: reason)")
    def problem_table(self, obj: ImportJob) -> str:
        if not obj.problems:
            return "none"
        return format_html_join(
            "",
            "<div>{}</div>",
            (
                (", ".join(f"{k} {p[k]}" for k in ("row", "sku", "file") if p.get(k))
                 + f": {p['reason']}",)
                for p in obj.problems[:500]
            ),
        )  # fmt: skip

    def save_model(self, request, obj: ImportJob, form, change: bool) -> None:
        obj.source = getattr(form, "client_name", "") or (obj.upload.name if obj.upload else "")
        obj.created_by = request.user
        catalogue.save_import_job(job=obj)

    def get_urls(self):
        urls = super().get_urls()
        extra = [
            path(
                "<int:job_id>/progress/",
                self.admin_site.admin_view(self.progress_view),
                name="retrieval_importjob_progress",
            )
        ]
        return extra + urls

    def progress_view(self, request, job_id: int) -> JsonResponse:
        job = ImportJob.objects.filter(pk=job_id).first()
        if job is None:
            return JsonResponse({"error": "no such import"}, status=404)
        return JsonResponse(catalogue.import_progress(job=job))


def _superuser(request) -> bool:
    return bool(request.user.is_active and request.user.is_superuser)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """API tokens, for superusers only: who holds one, since when, last used; delete revokes.

    The secret is not stored (only its SHA-256 digest, which is not shown either): a token is
    issued, and shown once, by the Users list's action or ``manage.py create_token``.
    """

    list_display = ("prefix", "user", "created_at", "last_used_at")
    list_select_related = ("user",)
    search_fields = ("prefix", "user__username")
    fields = readonly_fields = ("prefix", "user", "created_at", "last_used_at")

    def has_module_permission(self, request) -> bool:
        return _superuser(request)

    def has_view_permission(self, request, obj=None) -> bool:
        return _superuser(request)

    def has_add_permission(self, request) -> bool:
        return False  # issued by the Users action or create_token: the key is shown once there

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return _superuser(request)


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class TokenUserAdmin(UserAdmin):
    """Django's user admin, plus an action (superusers only) issuing API tokens."""

    actions = ("issue_api_token",)

    def has_issue_token_permission(self, request) -> bool:
        return _superuser(request)

    @admin.action(
        description="Issue a new API token to the selected users", permissions=["issue_token"]
    )
    def issue_api_token(self, request, queryset) -> TemplateResponse:
        """Shows the new keys once, on a page the browser must not keep (no-store)."""
        issued = [tokens.issue_token(user=user) for user in queryset.order_by("pk")]
        response = TemplateResponse(
            request,
            "admin/retrieval/apitoken/issued.html",
            {
                **self.admin_site.each_context(request),
                "title": "New API tokens",
                "issued": issued,
                "opts": ApiToken._meta,
            },
        )
        add_never_cache_headers(response)
        return response
