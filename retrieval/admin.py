"""Staff curation: categories, garments, feature models, cluster runs and evaluation reports."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count
from django.utils.html import format_html

from retrieval.models import (
    BackboneFeature,
    Category,
    ClusterRun,
    EvaluationReport,
    FeatureModel,
    Garment,
    GarmentFeature,
)


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "parent", "active", "garment_count")
    list_filter = ("active",)
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_garments=Count("garments"))

    @admin.display(description="garments", ordering="_garments")
    def garment_count(self, obj: Category) -> int:
        return obj._garments


@admin.register(Garment)
class GarmentAdmin(admin.ModelAdmin):
    list_display = ("thumbnail", "sku", "title", "category", "colour", "status", "updated_at")
    list_display_links = ("thumbnail", "sku")
    list_filter = ("status", "category")
    search_fields = ("sku", "title", "colour")
    list_select_related = ("category",)
    readonly_fields = ("status", "error", "created_at", "updated_at", "preview")
    list_per_page = 50

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


@admin.register(GarmentFeature)
class GarmentFeatureAdmin(admin.ModelAdmin):
    list_display = ("garment", "model", "cluster", "created_at")
    list_filter = ("model",)
    exclude = ("deep", "fused")
    readonly_fields = ("garment", "model", "cluster", "created_at")

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
    list_display = ("name", "backbone", "colour_variant", "colour_weight", "status", "active")
    list_filter = ("backbone", "status", "active")
    readonly_fields = ("metrics", "progress", "error", "created_at", "activated_at")


@admin.register(ClusterRun)
class ClusterRunAdmin(admin.ModelAdmin):
    list_display = ("id", "model", "k", "n_samples", "inertia", "seconds", "active", "created_at")
    list_filter = ("active", "model")
    readonly_fields = ("sizes",)


@admin.register(EvaluationReport)
class EvaluationReportAdmin(admin.ModelAdmin):
    list_display = ("id", "model", "status", "created_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = ("parameters", "metrics", "error", "created_at", "finished_at")
