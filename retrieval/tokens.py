"""API tokens: issued once in plain text, stored as a SHA-256 digest (:class:`ApiToken`).

A key is ``secrets.token_urlsafe(32)`` (43 characters, 256 random bits). Keys issued by Django
REST framework's authtoken before (40 hex characters) were hashed into :class:`ApiToken` by
migration 0009 and keep working: a key is looked up by its prefix and digest, whatever its
length.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from retrieval.models import ApiToken

if TYPE_CHECKING:
    from django.contrib.auth.models import User

#: Characters of the key kept in clear (ApiToken.prefix): enough to tell tokens apart in the
#: admin, far too few to help guess the rest.
PREFIX_LENGTH = 8

#: last_used_at is written when it is older than this: an API client sending many requests a
#: second costs no write per request.
LAST_USED_PRECISION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedToken:
    """A newly issued token: ``key`` is the only copy of the secret, shown once."""

    token: ApiToken
    key: str


def digest(key: str) -> str:
    """The SHA-256 hex digest stored for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def issue_token(*, user: User, replace: bool = False) -> IssuedToken:
    """A new token for ``user``; with ``replace``, the user's other tokens are revoked."""
    key = secrets.token_urlsafe(32)
    with transaction.atomic():
        if replace:
            ApiToken.objects.filter(user=user).delete()
        token = ApiToken.objects.create(user=user, prefix=key[:PREFIX_LENGTH], digest=digest(key))
    return IssuedToken(token=token, key=key)


def authenticate_key(key: str) -> ApiToken | None:
    """The token whose key is ``key`` (with its user), or None; notes when it was last used."""
    if len(key) < PREFIX_LENGTH:
        return None
    wanted = digest(key)
    candidates = ApiToken.objects.select_related("user").filter(prefix=key[:PREFIX_LENGTH])
    token = next((t for t in candidates if hmac.compare_digest(t.digest, wanted)), None)
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_PRECISION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
