"""Template filters of the shop's pages."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def thousands(value) -> str:
    """A count with thousands separators: 12045 -> "12,045" (the shop's pages are in English,
    and django.contrib.humanize's intcomma would follow the active locale)."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)
