"""Duplicate photos: the garment list's filter and change-page links for near-duplicate flags,
and the flags' own section with a side-by-side review page ("same product: merge" /
"different products")."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Q
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from retrieval import catalogue
from retrieval.models import Garment, NearDuplicate


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


@admin.register(NearDuplicate)
class NearDuplicateAdmin(admin.ModelAdmin):
    """Possible duplicate photos (flagged by indexing), each reviewed side by side."""

    list_display = (
        *("review_link", "garment", "original", "status", "photo_distance"),
        *("fused_distance", "phash_distance", "created_at"),
    )
    list_filter = ("status",)
    list_select_related = ("garment", "original")
    search_fields = ("garment__sku", "original__sku", "garment__title", "original__title")
    readonly_fields = (
        *("garment", "original", "photo_distance", "fused_distance", "phash_distance"),
        "status",
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
