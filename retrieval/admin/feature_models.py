"""Feature models and their search data: vectors, the models (train, progress, the promotion
gate's comparison, activation after confirmation) and K-means cluster runs."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from retrieval import training
from retrieval.admin.common import badge
from retrieval.jobs import publishing
from retrieval.models import (
    BackboneFeature,
    ClusterRun,
    FeatureModel,
    GarmentFeature,
)


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
