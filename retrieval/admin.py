"""Staff curation: categories, garments, feature models, cluster runs and evaluation reports."""

from __future__ import annotations

import uuid
import zipfile

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html

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

# Status -> badge colour (CSS classes in templates/admin/base_site.html).
TONES = {
    "ready": "ok", "done": "ok", "active": "ok",
    "failed": "bad",
    "pending": "wait", "processing": "wait", "running": "wait", "training": "wait",
    "indexing": "wait", "queued": "wait",
    "not activated": "warn", "inactive": "idle",
}  # fmt: skip


def badge(text: str, *, tone: str | None = None, title: str = "") -> str:
    return format_html(
        '<span class="fs-badge fs-badge-{}" title="{}">{}</span>',
        tone or TONES.get(text, "idle"),
        title,
        text,
    )


def require(request, permission: str) -> None:
    """A custom admin view's permission check (admin_view only checks is_staff)."""
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"you need the {permission} permission")


# Registered in its own module (the example photos' section, issue #14); named here so that
# importing this module registers it.
__all__ = ["ExamplePhotoAdmin"]


class CategoryActionForm(ActionForm):
    category = forms.ModelChoiceField(
        queryset=Category.objects.order_by("name"), required=False, label="category"
    )


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "parent", "active", "garment_count", "known_to_model")
    list_filter = ("active",)
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    actions = ("merge_into",)

    action_form = CategoryActionForm

    def has_merge_permission(self, request) -> bool:
        """Merging moves garments and deletes the merged categories."""
        return (
            self.has_change_permission(request)
            and self.has_delete_permission(request)
            and request.user.has_perm("retrieval.change_garment")
        )

    @admin.display(description="known to the search model")
    def known_to_model(self, obj: Category) -> str:
        from retrieval.selectors import active_model

        model = active_model()
        if model is None or obj.name in model.classes:
            return badge("yes", tone="ok")
        return badge(
            "not yet", tone="warn", title="Retrain the model so search can predict this category"
        )

    @admin.action(
        description="Merge the selected categories into the category chosen above",
        permissions=("merge",),
    )
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


ATTRIBUTE_PREFIX = "attribute__"


class GarmentForm(forms.ModelForm):
    """The garment's attributes (gender, season, usage... from imports) as one text field each,
    plus a blank pair to add one, instead of raw JSON."""

    new_attribute_name = forms.CharField(required=False, max_length=40, label="new attribute")
    new_attribute_value = forms.CharField(required=False, max_length=200, label="its value")

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
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in sorted((self.instance.attributes or {}).items()):
            self.fields[f"{ATTRIBUTE_PREFIX}{key}"] = forms.CharField(
                required=False,
                label=key,
                initial="" if value is None else str(value),
                help_text="Empty removes it.",
            )

    def clean(self):
        cleaned = super().clean() or {}
        old = self.instance.attributes or {}
        attributes = {}
        for key, value in old.items():
            text = (cleaned.get(f"{ATTRIBUTE_PREFIX}{key}") or "").strip()
            if text:  # unchanged values keep their type (a year stays a number)
                attributes[key] = value if text == str(value) else text
        name = (cleaned.get("new_attribute_name") or "").strip()
        if name:
            if name in attributes:
                self.add_error("new_attribute_name", f"{name!r} exists already: edit it above")
            attributes[name] = (cleaned.get("new_attribute_value") or "").strip()
        self.instance.attributes = attributes
        return cleaned

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
    view_on_site = True

    def get_fieldsets(self, request, obj=None):
        attributes = [f"{ATTRIBUTE_PREFIX}{key}" for key in sorted((obj and obj.attributes) or {})]
        return [
            (
                None,
                {
                    "fields": (
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
                    )
                },
            ),
            ("Attributes", {"fields": (*attributes, "new_attribute_name", "new_attribute_value")}),
            ("Indexing", {"fields": ("status", "error", "created_at", "updated_at", "preview")}),
        ]

    def get_form(self, request, obj=None, change=False, **kwargs):
        # One field per attribute is added by the form itself (GarmentForm.__init__): they are
        # no model fields, so modelform_factory must not be asked for them.
        fields = flatten_fieldsets(self.get_fieldsets(request, obj))
        kwargs["fields"] = [
            f
            for f in fields
            if not f.startswith(ATTRIBUTE_PREFIX)
            and f not in self.get_readonly_fields(request, obj)
        ]
        return super().get_form(request, obj, change, **kwargs)

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
        return badge(obj.status, title=obj.error[:500])

    def save_model(self, request, obj: Garment, form, change: bool) -> None:
        catalogue.save_garment(garment=obj, image_changed="image" in form.changed_data)

    @admin.action(description="Re-index the selected garments", permissions=("change",))
    def reindex_selected(self, request, queryset) -> None:
        count = indexing.mark_for_reindex(garment_ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"{count} garments queued for indexing.", messages.SUCCESS)

    @admin.action(
        description="Move the selected garments to the category chosen above",
        permissions=("change",),
    )
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


# A model's fields that never change by hand: what it was trained as, and its state. The
# "active" flag above all: activation is the explicit action (a free checkbox let a click
# take search offline).
FEATURE_MODEL_FIXED = (
    *("name", "backbone", "backbone_dim", "head_file", "classes", "status", "active"),
    *("promotion", "progress_text", "metrics", "progress", "error", "split"),
    *("created_at", "activated_at"),
)


@admin.register(FeatureModel)
class FeatureModelAdmin(admin.ModelAdmin):
    list_display = (
        *("name", "backbone", "colour_variant", "colour_weight", "status_badge", "progress_text"),
        *("val_accuracy", "live_badge"),
    )
    list_filter = ("backbone", "status", "active")
    actions = ("activate_selected", "delete_search_data")
    change_list_template = "admin/retrieval/featuremodel/change_list.html"
    change_form_template = "admin/retrieval/featuremodel/change_form.html"
    #: While a model trains or re-indexes, its list and page reload themselves this often.
    refresh_seconds = 5

    def _busy(self) -> bool:
        building = (FeatureModel.Status.TRAINING, FeatureModel.Status.INDEXING)
        return FeatureModel.objects.filter(status__in=building).exists()

    def has_add_permission(self, request) -> bool:
        return False  # models come from "Train a new model", never from a raw form

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.active:
            return False  # the live model: activate another one first
        return super().has_delete_permission(request, obj)

    def has_train_permission(self, request) -> bool:
        return request.user.has_perm("retrieval.add_featuremodel")

    def has_activate_permission(self, request) -> bool:
        return request.user.has_perm("retrieval.change_featuremodel")

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and (obj.active or obj.status != FeatureModel.Status.READY):
            # The live model's vectors were computed with its colour knobs: a change would
            # make new queries disagree with the stored vectors.
            return (*FEATURE_MODEL_FIXED, "colour_variant", "colour_weight", "normalize_deep")
        return FEATURE_MODEL_FIXED

    def get_fields(self, request, obj=None):
        return (*FEATURE_MODEL_FIXED, "colour_variant", "colour_weight", "normalize_deep")

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: FeatureModel) -> str:
        stage = (obj.progress or {}).get("stage")
        if obj.status == FeatureModel.Status.READY and stage == "not activated":
            return badge("not activated", title=promotion_of(obj).get("reason", ""))
        return badge(obj.status, title=obj.error[:500])

    @admin.display(description="live", ordering="active", boolean=False)
    def live_badge(self, obj: FeatureModel) -> str:
        return badge("live", tone="ok") if obj.active else badge("inactive")

    @admin.display(description="why (not) activated")
    def promotion(self, obj: FeatureModel) -> str:
        return promotion_of(obj).get("reason", "-")

    @admin.display(description="validation accuracy")
    def val_accuracy(self, obj: FeatureModel) -> str:
        value = obj.metrics.get("val_accuracy")
        return "-" if value is None else f"{value:.3f}"

    @admin.display(description="progress")
    def progress_text(self, obj: FeatureModel) -> str:
        """Stage, epoch, loss, validation accuracy, elapsed and time left
        (:func:`retrieval.training.progress_text`)."""
        return training.progress_text(obj.progress)

    @admin.action(
        description="Activate the selected model (compare with the live one first)",
        permissions=("activate",),
    )
    def activate_selected(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one model.", messages.ERROR)
            return None
        return redirect("admin:retrieval_featuremodel_activate", queryset.get().pk)

    @admin.action(
        description="Delete the search data (partitions, vectors) of inactive models",
        permissions=("delete",),
    )
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
            ),
            path(
                "<int:model_id>/activate/",
                self.admin_site.admin_view(self.activate_view),
                name="retrieval_featuremodel_activate",
            ),
        ]
        return extra + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_train": self.has_train_permission(request),
            "refresh_seconds": self.refresh_seconds if self._busy() else None,
        }
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        model = self.get_object(request, object_id)
        building = (FeatureModel.Status.TRAINING, FeatureModel.Status.INDEXING)
        busy = model is not None and model.status in building
        extra_context = {
            **(extra_context or {}),
            **(comparison_context(model) if model else {}),
            "refresh_seconds": self.refresh_seconds if busy else None,
            "can_activate": bool(
                model
                and not model.active
                and model.status == FeatureModel.Status.READY
                and self.has_activate_permission(request)
            ),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def train_view(self, request):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_train_permission(request):
            raise PermissionDenied("you need the retrieval.add_featuremodel permission")
        model = training.queue_training()
        self.message_user(
            request,
            f"Training {model.name}; progress shows in the list. It goes live only if its "
            "evaluation is not worse than the live model's (else you can compare and decide).",
        )
        return redirect("admin:retrieval_featuremodel_changelist")

    def activate_view(self, request, model_id: int):
        """Staff's explicit activation: the candidate and the live model side by side, then a
        POST to confirm (re-indexes in the background; the switch happens when done)."""
        if not self.has_activate_permission(request):
            raise PermissionDenied("you need the retrieval.change_featuremodel permission")
        model = get_object_or_404(FeatureModel, pk=model_id)
        if request.method == "POST":
            if model.active:
                self.message_user(request, f"{model} is already live.")
            elif not model.head_file:
                self.message_user(request, f"{model} has no trained head.", messages.ERROR)
            else:
                try:
                    training.queue_activation(model=model)
                except publishing.QueueUnavailable as exc:
                    self.message_user(request, str(exc), messages.ERROR)
                else:
                    self.message_user(
                        request, f"Re-indexing for {model}; it becomes live when done."
                    )
            return redirect("admin:retrieval_featuremodel_changelist")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Activate {model}?",
            "opts": self.model._meta,
            "original": model,
            **comparison_context(model),
        }
        return TemplateResponse(request, "admin/retrieval/featuremodel/activate.html", context)


def promotion_of(model: FeatureModel) -> dict:
    return (model.metrics or {}).get("promotion") or {}


def comparison_context(model: FeatureModel) -> dict:
    """The candidate beside the live model: the promotion's figures per query set (with links
    to both evaluation reports) and the models' own facts."""
    from retrieval.selectors import active_model

    live = active_model()
    decision = promotion_of(model)
    rows = []
    for c in decision.get("comparisons", []):
        rows.append(
            {
                **c,
                "verdict": "worse"
                if c["live"] is not None and c["candidate"] < c["live"]
                else "not worse",
                "candidate_url": reverse(
                    "admin:retrieval_evaluationreport_change", args=[c["candidate_report"]]
                )
                if c.get("candidate_report")
                else "",
                "live_url": reverse(
                    "admin:retrieval_evaluationreport_change", args=[c["live_report"]]
                )
                if c.get("live_report")
                else "",
            }
        )
    facts = []
    for label, read in (
        ("categories", lambda m: len(m.classes)),
        ("validation accuracy", lambda m: m.metrics.get("val_accuracy", "-")),
        ("trained on (garments)", lambda m: m.metrics.get("n_train", "-")),
        ("colour weight", lambda m: m.colour_weight),
        ("created", lambda m: m.created_at.strftime("%Y-%m-%d %H:%M")),
    ):
        facts.append((label, read(model), read(live) if live else "-"))
    return {
        "live_model": live,
        "comparison_rows": rows,
        "promotion_reason": decision.get("reason", ""),
        "model_facts": facts,
    }


@admin.register(ClusterRun)
class ClusterRunAdmin(admin.ModelAdmin):
    """Read-only: runs are fitted by K-means jobs and switched atomically, never by hand."""

    list_display = ("id", "model", "k", "n_samples", "inertia", "seconds", "live", "created_at")
    list_filter = ("active", "model")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.active:
            return False  # the run searches read
        return super().has_delete_permission(request, obj)

    @admin.display(description="live", ordering="active")
    def live(self, obj: ClusterRun) -> str:
        return badge("live", tone="ok") if obj.active else badge("inactive")


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
    list_display = ("id", "source", "status_badge", "rows", "created", "updated", "problem_count")
    list_filter = ("status",)
    # Status, counts and problems are shown once, by the live panel of the page (the
    # template polls the progress view): fields rendered at page load went stale beside it.
    readonly_fields = ("source", "created_by", "created_at")
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

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: ImportJob) -> str:
        return badge(obj.status, title=obj.error[:500])

    @admin.display(description="problems")
    def problem_count(self, obj: ImportJob) -> int:
        return len(obj.problems)

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
        if not self.has_view_permission(request):
            raise PermissionDenied("you need the retrieval.view_importjob permission")
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
