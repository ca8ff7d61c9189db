"""python manage.py create_token USERNAME [--replace]: a new API token, shown once."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from retrieval import tokens


class Command(BaseCommand):
    help = (
        "Issue a new API token to USERNAME and print it once (only its SHA-256 digest is "
        "stored: it cannot be shown again). Clients send it as 'Authorization: Token <key>'."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--replace",
            action="store_true",
            help="Revoke the user's other tokens (a rotation).",
        )

    def handle(self, *args, username: str, replace: bool, **options) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"no user {username!r}") from None
        if not user.is_active:
            raise CommandError(f"{username!r} is inactive: a token would not authenticate")
        issued = tokens.issue_token(user=user, replace=replace)
        self.stderr.write(
            f"token {issued.token.prefix}… for {username}"
            f"{' (other tokens revoked)' if replace else ''}; shown once, store it now:"
        )
        # The key alone on stdout, so that scripts can capture it.
        self.stdout.write(issued.key)
