"""Staff curation of example photos: labelled shoppers' photos that train the model and are
never shown in the shop (issue #14). One section of :mod:`retrieval.admin`.

Their files are not public media (the site serves ``/media/garments/`` only): people's home
photos are shown to staff with the view permission, through :meth:`ExamplePhotoAdmin.image_view`.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from retrieval import catalogue
from retrieval.models import ExamplePhoto


class ExamplePhotoForm(forms.ModelForm):
    class Meta:
        model = ExamplePhoto
        fields = ("key", "image", "category", "sender")
        help_texts = {
            "key": "A unique id for the photo (a re-import of a file with the same id skips it).",
            "sender": "Who took it: all of one sender's photos train, or all are held out.",
        }

    def clean_image(self):
        upload = self.cleaned_data.get("image")
        if upload and upload != getattr(self.instance, "image", None):
            catalogue.validate_upload(upload=upload)
        return upload


class ExampleImportForm(forms.Form):
    upload = forms.FileField(
        label="zip",
        help_text="styles.csv (id, image, articleType, sender) and images/, like "
        "shared/data/shopper-photos.zip. Categories are matched to the catalogue's by name. "
        "Imported while you wait, so up to the upload limit (RETRIEVAL_MAX_UPLOAD_BYTES); "
        "larger sets: manage.py import_examples.",
    )
    holdout = forms.FloatField(
        min_value=0,
        max_value=0.9,
        help_text="Share of senders held out for evaluation (never trained on); 0 = none.",
    )

    def clean_upload(self):
        upload = self.cleaned_data["upload"]
        # The request's own limit (retrieval.http.limits: this is not a catalogue import
        # path) stops a larger body before it is read; this says so in the form too.
        if upload.size > settings.RETRIEVAL_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(
                f"the file is over the upload limit ({settings.RETRIEVAL_MAX_UPLOAD_BYTES} bytes):"
                " import it with manage.py import_examples"
            )
        if not zipfile.is_zipfile(upload):
            raise forms.ValidationError("that file is not a zip archive")
        upload.seek(0)
        return upload


@admin.register(ExamplePhoto)
class ExamplePhotoAdmin(admin.ModelAdmin):
    form = ExamplePhotoForm
    list_display = ("thumbnail", "key", "category", "sender", "role", "created_at")
    list_display_links = ("thumbnail", "key")
    list_filter = ("role", "category")
    search_fields = ("key", "sender")
    list_select_related = ("category",)
    readonly_fields = ("role", "source", "created_at", "preview")
    change_list_template = "admin/retrieval/examplephoto/change_list.html"
    list_per_page = 100

    @staticmethod
    def image_url(obj: ExamplePhoto) -> str:
        return reverse("admin:retrieval_examplephoto_image", args=[obj.pk])

    @admin.display(description="image")
    def thumbnail(self, obj: ExamplePhoto) -> str:
        if not obj.image:
            return "-"
        return format_html(
            '<img src="{}" alt="" style="height:48px;width:auto" loading="lazy">',
            self.image_url(obj),
        )

    @admin.display(description="preview")
    def preview(self, obj: ExamplePhoto) -> str:
        if not obj.image or obj.pk is None:
            return "-"
        return format_html('<img src="{}" alt="" style="max-height:240px">', self.image_url(obj))

    def save_model(self, request, obj: ExamplePhoto, form, change: bool) -> None:
        upload = form.cleaned_data.get("image") if "image" in form.changed_data else None
        if upload is not None:
            obj.image = None  # the re-encoded copy is stored, never the client's bytes
        catalogue.save_example_photo(photo=obj, upload=upload)

    def get_urls(self):
        extra = [
            path(
                "import/",
                self.admin_site.admin_view(self.import_view),
                name="retrieval_examplephoto_import",
            ),
            path(
                "<int:photo_id>/image/",
                self.admin_site.admin_view(self.image_view),
                name="retrieval_examplephoto_image",
            ),
        ]
        return extra + super().get_urls()

    def image_view(self, request, photo_id: int):
        """The photo's stored (re-encoded) JPEG, for staff who may view example photos."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        photo = ExamplePhoto.objects.filter(pk=photo_id).first()
        if photo is None or not photo.image:
            raise Http404("no such example photo")
        try:
            handle = photo.image.open("rb")
        except OSError as exc:
            raise Http404("the photo's file is missing") from exc
        response = FileResponse(handle, content_type="image/jpeg")
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
        response["Cache-Control"] = "private, max-age=3600"
        return response

    def import_view(self, request):
        """Import a zip of labelled photos (catalogue.import_example_photos), in the request:
        a shop's set is small (the shared one, 989 photos, takes seconds)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        report = None
        if request.method == "POST":
            form = ExampleImportForm(request.POST, request.FILES)
            if form.is_valid():
                report = self._import(request, form)
        else:
            form = ExampleImportForm(initial={"holdout": settings.RETRIEVAL_EXAMPLE_HOLDOUT})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Import example photos",
            "form": form,
            "report": report,
        }
        response = TemplateResponse(request, "admin/retrieval/examplephoto/import.html", context)
        if request.method == "POST" and report is None:
            response.status_code = 400
        return response

    def _import(self, request, form: ExampleImportForm):
        upload = form.cleaned_data["upload"]
        spool = settings.VAR_DIR / "tmp"
        spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=spool) as folder:
            target = Path(folder) / "examples.zip"
            with target.open("wb") as handle:
                for chunk in upload.chunks():
                    handle.write(chunk)
            try:
                report = catalogue.import_example_photos(
                    source=target, holdout=form.cleaned_data["holdout"]
                )
            except (catalogue.CatalogError, catalogue.MediaStorageError) as exc:
                form.add_error("upload", str(exc))
                return None
        self.message_user(request, f"Example photos: {report.summary()}.", messages.SUCCESS)
        return report

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_import": self.has_add_permission(request),
        }
        return super().changelist_view(request, extra_context)
