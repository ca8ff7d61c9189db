"""API pagination: page numbers, or keyset cursors in list order."""

from __future__ import annotations

import base64
from datetime import datetime

from django.db.models import Q
from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

from retrieval.models import Garment


class ApiPagination(PageNumberPagination):
    """Page numbers (``?page=N``: ``count``, ``next``, ``previous``, ``results``), or, with
    ``?cursor=`` (empty for the first page), keyset pages in the list order (newest first):
    ``next`` and ``results`` only. A cursor page costs the same at any depth and runs no
    ``COUNT(*)``; walking ``next`` returns every garment that existed at the start exactly once,
    even while garments are added (they are newer than the cursor) or deleted.
    """

    page_size_query_param = "page_size"
    max_page_size = 100
    cursor_query_param = "cursor"
    keyset = False

    def paginate_queryset(self, queryset, request, view=None):
        self.keyset = self.cursor_query_param in request.query_params
        if not self.keyset:
            return super().paginate_queryset(queryset, request, view)
        self.request = request
        size = self.get_page_size(request)
        queryset = queryset.order_by("-created_at", "-id")  # Garment.Meta.ordering, indexed
        if token := request.query_params[self.cursor_query_param]:
            created_at, pk = decode_cursor(token)
            # Rows after (created_at, pk) in (-created_at, -id) order; the first condition
            # bounds the index scan, the second drops the cursor's own timestamp's earlier ids.
            queryset = queryset.filter(
                Q(created_at__lte=created_at) & (Q(created_at__lt=created_at) | Q(id__lt=pk))
            )
        rows = list(queryset[: size + 1])
        self.next_token = encode_cursor(rows[size - 1]) if len(rows) > size else None
        return rows[:size]

    def get_paginated_response_schema(self, schema):
        body = super().get_paginated_response_schema(schema)
        body["required"] = ["next", "results"]
        for name in ("count", "previous"):
            body["properties"][name]["description"] = "Page numbers only: absent with `cursor`."
        return body

    def get_paginated_response(self, data):
        if not self.keyset:
            return super().get_paginated_response(data)
        return Response({"next": self.get_next_link(), "results": data})

    def get_next_link(self):
        if not self.keyset:
            return super().get_next_link()
        if self.next_token is None:
            return None
        url = remove_query_param(self.request.build_absolute_uri(), self.page_query_param)
        return replace_query_param(url, self.cursor_query_param, self.next_token)


def encode_cursor(garment: Garment) -> str:
    raw = f"{garment.created_at.isoformat()}|{garment.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        stamp, pk = raw.split("|")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at, int(pk)
    except (ValueError, UnicodeDecodeError):
        raise exceptions.ValidationError(
            {"cursor": ["invalid cursor: use the `next` link of the previous page"]}
        ) from None
