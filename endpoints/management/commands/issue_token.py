"""Print a new API token for a user. The token goes to stdout alone, so scripts can capture it:

TOKEN=$(python manage.py issue_token alice --name ci)
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from endpoints import actions
from endpoints.exceptions import DomainError


class Command(BaseCommand):
    help = "Issue an API token for USERNAME and print it once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="what the token is for (at most 64 characters)")
        parser.add_argument("--expires-days", type=int, default=None, help="expire after this many days")

    def handle(self, *args, username: str, name: str, expires_days: int | None, **options) -> None:
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user named {username!r}")
        if expires_days is not None and not 1 <= expires_days <= 3650:
            raise CommandError("--expires-days must be between 1 and 3650")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
        try:
            issued = actions.issue_api_token(None, user, name=name, expires_at=expires_at)
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(f"Token {issued.token.display_prefix}… for {username}; it is shown only now.")
        self.stdout.write(issued.secret)
