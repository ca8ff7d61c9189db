"""The catalogue's admin: categories (merge, counts) and garments (upload, attributes)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.utils import flatten_fieldsets
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html

from retrieval import catalogue, indexing
from retrieval.admin.common import UploadAdminMixin, badge
from retrieval.admin.duplicates import GarmentDuplicatesMixin, PossibleDuplicateFilter
from retrieval.catalogue import duplicates
from retrieval.models import (
    Category,
    Garment,
)


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


ATTRIBUTE_PREFIX = "attribute__"


class GarmentForm(forms.ModelForm):
    """The garment's attributes (gender, season, usage... from imports) as one text field each,
    plus a blank pair to add one, instead of raw JSON."""

    new_attribute_name = forms.CharField(required=False, max_length=40, label="new attribute")
    new_attribute_value = forms.CharField(required=False, max_length=200, label="its value")
    allow_duplicate = forms.BooleanField(
        required=False,
        label="Save even if another garment has this photo",
        help_text="A photo with the same pixels as another garment's is refused otherwise.",
    )

    class Meta:
        model = Garment
        fields = (
            *Garment.DESCRIPTION_FIELDS,
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
        self._refuse_duplicate(cleaned)
        return cleaned

    def _refuse_duplicate(self, cleaned: dict) -> None:
        """A new photo with the same pixels as another garment's: an error on the image
        field, linking to that garment, unless "allow_duplicate" is ticked."""
        upload = cleaned.get("image")
        if (
            not upload
            or "image" not in self.changed_data
            or "image" in self.errors
            or cleaned.get("allow_duplicate")
        ):
            return
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

    def clean_image(self):
        upload = self.cleaned_data.get("image")
        if upload and upload != getattr(self.instance, "image", None):
            catalogue.validate_upload(upload=upload)
        return upload


@admin.register(Garment)
class GarmentAdmin(GarmentDuplicatesMixin, UploadAdminMixin, admin.ModelAdmin):
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
    list_filter = ("status", "gender", "season", "usage", "category", PossibleDuplicateFilter)
    search_fields = ("sku", "title", "colour")
    list_select_related = ("category",)
    readonly_fields = (
        *("status", "error", "created_at", "updated_at", "preview"),
        "possible_duplicates",
    )
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
                        "allow_duplicate",
                    )
                },
            ),
            ("Attributes", {"fields": (*attributes, "new_attribute_name", "new_attribute_value")}),
            ("Indexing", {"fields": ("status", "error", "created_at", "updated_at", "preview")}),
            ("Duplicates", {"fields": ("possible_duplicates",)}),
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
