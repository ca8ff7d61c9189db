"""The JSON error body shared by the API, the shop's /api/ fallbacks and the middleware."""

from __future__ import annotations


def error_body(code: str, message: str, details=None, **extra) -> dict:
    """``{"error": {"code", "message", "details", **extra}}``; ``extra``: facts a client acts on
    (e.g. ``duplicate_of``, the garment a refused photo duplicates)."""
    return {"error": {"code": code, "message": message, "details": details, **extra}}
