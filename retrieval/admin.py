"""Staff curation: categories, garments, feature models, cluster runs and evaluation reports."""

from __future__ import annotations

import uuid
import zipfile

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db.models import Count, Q
from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from retrieval import catalogue, evaluation, indexing, training
from retrieval.catalogue import duplicates
from retrieval.jobs import publishing
from retrieval.models import (
    BackboneFeature,
    Category,
    ClusterRun,
    EvaluationReport,
    FeatureModel,
    Garment,
    GarmentFeature,
    ImportJob,
    NearDuplicate,
    SearchLog,
)


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
    allow_duplicate = forms.BooleanField(
        required=False,
        label="Save even if another garment has this photo",
        help_text="A photo with the same pixels as another garment's is refused otherwise.",
    )

    class Meta:
        model = Garment
        fields = ("sku", "title", "description", "category", "colour", "image", "attributes")

    def clean_image(self):
        upload = self.cleaned_data.get("image")
        if upload and upload != getattr(self.instance, "image", None):
            catalogue.validate_upload(upload=upload)
        return upload

    def clean(self):
        cleaned = super().clean() or {}
        upload = cleaned.get("image")
        if (
            upload
            and "image" in self.changed_data
            and "image" not in self.errors
            and not cleaned.get("allow_duplicate")
        ):
            try:
                duplicates.read_and_check_upload(
                    upload=upload,
                    garment=self.instance if self.instance.pk else None,
                    allow_duplicate=False,
                )
            except catalogue.DuplicateImage as exc:
                found = exc.duplicate
                url = reverse("admin:retrieval_garment_change", args=[found.garment_id])
                self.add_error(
                    "image",
                    forms.ValidationError(
                        format_html(
                            "Another garment already has this photo (the same pixels): "
                            '<a href="{}">{} {}</a>. Tick "{}" to save it anyway.',
                            url,
                            found.sku,
                            found.title,
                            self.fields["allow_duplicate"].label,
                        ),
                        code="duplicate_image",
                    ),
                )
        return cleaned


class PossibleDuplicateFilter(admin.SimpleListFilter):
    """Garments with a near-duplicate flag to review, or merged into a product group."""

    title = "duplicates"
    parameter_name = "duplicate"

    def lookups(self, request, model_admin):
        return (("open", "possible duplicate (to review)"), ("merged", "merged with another"))

    def queryset(self, request, queryset):
        if self.value() == "open":
            flagged = NearDuplicate.objects.filter(status=NearDuplicate.Status.OPEN)
            return queryset.filter(
                Q(pk__in=flagged.values("garment_id")) | Q(pk__in=flagged.values("original_id"))
            )
        if self.value() == "merged":
            return queryset.filter(product_group__isnull=False)
        return queryset


class GarmentDuplicatesMixin:
    """The garment's change page names its possible duplicates, with a link to review each."""

    @admin.display(description="possible duplicate of")
    def possible_duplicates(self, obj: Garment) -> str:
        if obj.pk is None:
            return "-"
        flags = catalogue.open_flags(garment=obj)
        lines = []
        for flag in flags:
            other = flag.original if flag.garment_id == obj.pk else flag.garment
            lines.append(
                (
                    reverse("admin:retrieval_garment_change", args=[other.pk]),
                    f"{other.sku} {other.title}",
                    reverse("admin:retrieval_nearduplicate_review", args=[flag.pk]),
                )
            )
        merged = ""
        if obj.product_group is not None:
            count = Garment.objects.filter(product_group=obj.product_group).count()
            merged = format_html(
                '<div>Same product as {} other garment(s): <a href="{}?duplicate=merged">'
                "see them</a></div>",
                count - 1,
                reverse("admin:retrieval_garment_changelist"),
            )
        if not lines:
            return merged or "none"
        return format_html(
            "{}{}",
            format_html_join(
                "",
                '<div><a href="{}">{}</a> (<a href="{}">review side by side</a>)</div>',
                lines,
            ),
            merged,
        )


@admin.register(Garment)
class GarmentAdmin(GarmentDuplicatesMixin, UploadAdminMixin, admin.ModelAdmin):
    form = GarmentForm
    action_form = CategoryActionForm
    list_display = ("thumbnail", "sku", "title", "category", "colour", "status_badge", "updated_at")
    list_display_links = ("thumbnail", "sku")
    list_filter = ("status", "category", PossibleDuplicateFilter)
    search_fields = ("sku", "title", "colour")
    list_select_related = ("category",)
    readonly_fields = (
        *("status", "error", "created_at", "updated_at", "preview"),
        "possible_duplicates",
    )
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
    readonly_fields = ("metrics", "progress", "error", "split", "created_at", "activated_at")
    actions = ("activate_selected", "delete_search_data")
    change_list_template = "admin/retrieval/featuremodel/change_list.html"

    @admin.display(description="validation accuracy")
    def val_accuracy(self, obj: FeatureModel) -> str:
        value = obj.metrics.get("val_accuracy")
        return "-" if value is None else f"{value:.3f}"

    @admin.display(description="progress")
    def progress_text(self, obj: FeatureModel) -> str:
        p = obj.progress or {}
        if "epoch" in p:
            return f"{p.get('stage')} {p['epoch']}/{p['epochs']}"
        if "done" in p:
            return f"{p.get('stage')} {p['done']}/{p['total']}"
        return p.get("stage", "-")

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

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("upload", "category_field", "limit")
        return self.readonly_fields

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


# --------------------------------------------------------------------------- duplicates


@admin.register(NearDuplicate)
class NearDuplicateAdmin(admin.ModelAdmin):
    """Possible duplicate photos (flagged by indexing), each reviewed side by side."""

    list_display = (
        *("review_link", "garment", "original", "status", "phash_distance"),
        *("fused_distance", "created_at"),
    )
    list_filter = ("status",)
    list_select_related = ("garment", "original")
    search_fields = ("garment__sku", "original__sku", "garment__title", "original__title")
    readonly_fields = (
        *("garment", "original", "phash_distance", "fused_distance", "status"),
        *("created_at", "reviewed_at", "reviewed_by"),
    )

    def has_add_permission(self, request) -> bool:
        return False  # flags come from indexing

    @admin.display(description="review")
    def review_link(self, obj: NearDuplicate) -> str:
        url = reverse("admin:retrieval_nearduplicate_review", args=[obj.pk])
        return format_html('<a href="{}">review side by side</a>', url)

    def get_urls(self):
        extra = [
            path(
                "<int:flag_id>/review/",
                self.admin_site.admin_view(self.review_view),
                name="retrieval_nearduplicate_review",
            )
        ]
        return extra + super().get_urls()

    def review_view(self, request, flag_id: int):
        """The two photos and their facts side by side; POST ``decision`` = same | different
        (needs the change permission on possible duplicates)."""
        from django.core.exceptions import PermissionDenied
        from django.shortcuts import get_object_or_404
        from django.template.response import TemplateResponse

        flag = get_object_or_404(
            NearDuplicate.objects.select_related(
                "garment__category", "original__category", "reviewed_by"
            ),
            pk=flag_id,
        )
        if not self.has_view_or_change_permission(request, flag):
            raise PermissionDenied
        if request.method == "POST":
            if not self.has_change_permission(request, flag):
                raise PermissionDenied
            decision = request.POST.get("decision")
            if decision == "same":
                catalogue.merge_same_product(flag=flag, user=request.user)
                self.message_user(
                    request,
                    f"Merged: {flag.garment.sku} and {flag.original.sku} are one product; "
                    "search shows only the better match of the two.",
                    messages.SUCCESS,
                )
            elif decision == "different":
                catalogue.mark_different_products(flag=flag, user=request.user)
                self.message_user(
                    request,
                    f"Kept apart: {flag.garment.sku} and {flag.original.sku} are different "
                    "products; they will not be flagged again.",
                    messages.SUCCESS,
                )
            else:
                self.message_user(request, "Choose same product or different.", messages.ERROR)
                return redirect("admin:retrieval_nearduplicate_review", flag_id)
            following = (
                NearDuplicate.objects.filter(status=NearDuplicate.Status.OPEN)
                .order_by("-created_at", "-id")
                .values_list("pk", flat=True)
                .first()
            )
            if following is not None:
                return redirect("admin:retrieval_nearduplicate_review", following)
            return redirect("admin:retrieval_nearduplicate_changelist")
        facts = []
        for label, attr in (
            ("SKU", "sku"),
            ("Title", "title"),
            ("Category", "category"),
            ("Colour", "colour"),
            ("Status", "status"),
            ("Added", "created_at"),
        ):
            facts.append((label, getattr(flag.garment, attr), getattr(flag.original, attr)))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Possible duplicate: {flag.garment.sku} and {flag.original.sku}",
            "flag": flag,
            "pair": (flag.original, flag.garment),
            "facts": facts,
            "can_decide": self.has_change_permission(request, flag),
        }
        return TemplateResponse(request, "admin/retrieval/nearduplicate/review.html", context)


# --------------------------------------------------------------------------- search analytics


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


def _bars(values: list[float], *, width: int, height: int) -> list[dict]:
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


def dashboard_context(stats) -> dict:
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

    p50_points = line([d.latency_p50_ms for d in days])
    p95_points = line([d.latency_p95_ms for d in days])
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
        "p50_points": p50_points,
        "p95_points": p95_points,
        "categories": categories,
        "ctr_rows": [(k, v) for k, v in stats.ctr.items()],
    }


@admin.register(SearchLog)
class SearchLogAdmin(admin.ModelAdmin):
    """Recorded searches by photo (read-only) and the search dashboard."""

    list_display = (
        *("created_at", "channel", "mode", "top", "latency_ms", "predicted_category"),
        *("confidence", "clicks", "first_click_rank"),
    )
    list_filter = ("channel", "mode")
    date_hierarchy = "created_at"
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
        downloads the same numbers."""
        import datetime as dt

        from django.core.exceptions import PermissionDenied
        from django.template.response import TemplateResponse
        from django.utils import timezone

        from retrieval import analytics

        if not self.has_view_permission(request):
            raise PermissionDenied
        form = DashboardPeriodForm(request.GET or None)
        start, end = analytics.period(days=30)
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
            name = f"searches-{timezone.localtime(start):%Y%m%d}-{timezone.localtime(end):%Y%m%d}"
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
