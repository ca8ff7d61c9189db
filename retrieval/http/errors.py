"""The JSON error body shared by the API, the shop's /api/ fallbacks and the middleware."""

from __future__ import annotations


def error_body(code: str, message: str, details=None) -> dict:
    return {"error": {"code": code, "message": message, "details": details}}
