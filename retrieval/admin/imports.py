"""Catalogue imports: the upload form and the live progress panel."""

from __future__ import annotations

import uuid
import zipfile

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.urls import path

from retrieval import catalogue
from retrieval.admin.common import UploadAdminMixin, badge
from retrieval.models import (
    ImportJob,
)


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
