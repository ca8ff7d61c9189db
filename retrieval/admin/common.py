"""Helpers every admin section shares: status badges, the permission check of custom views,
and change forms that take a file upload."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.utils.html import format_html

from retrieval import catalogue

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
