"""Token authentication against hashed tokens (retrieval.tokens): ``Authorization: Token <key>``."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

from retrieval import tokens


class HashedTokenAuthentication(TokenAuthentication):
    """DRF's TokenAuthentication (same header, same answers: 401 "Invalid token." with
    ``WWW-Authenticate: Token``), with the key checked against its stored SHA-256 digest."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        token = tokens.authenticate_key(key)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return (token.user, token)
