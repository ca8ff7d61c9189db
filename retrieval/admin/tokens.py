"""API tokens (superusers only) and the user admin's action issuing them."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from retrieval import tokens
from retrieval.models import (
    ApiToken,
)


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
