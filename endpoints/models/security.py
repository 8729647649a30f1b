from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .querysets import TenantScopedQuerySet

TOKEN_PREFIX = "ipt"  # noqa: S105 - "inference portal token": lets secret scanners recognise a leaked token


class ApiTokenQuerySet(models.QuerySet):
    def for_user(self, user):
        """A person's own tokens; nobody else's, staff included (the admin shows them all)."""
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(user=user)

    def authenticate(self, raw: str) -> ApiToken | None:
        """The usable token RAW stands for, or None. Marks it used, at most once a minute."""
        kind, _, rest = raw.partition("_")
        prefix, _, secret = rest.partition("_")
        if kind != TOKEN_PREFIX or not prefix or not secret:
            return None
        token = self.select_related("user").filter(prefix=prefix).first()
        if token is None or not hmac.compare_digest(token.secret_hash, ApiToken.hash(raw)):
            return None
        now = timezone.now()
        if not token.is_usable(now) or not token.user.is_active:
            return None
        # At most once a minute, so busy automation does not write the row on every request (nor
        # send a query that changes nothing); the UPDATE is conditional for concurrent requests.
        stale = now - timedelta(minutes=1)
        if token.last_used_at is None or token.last_used_at < stale:
            self.filter(pk=token.pk).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale)).update(
                last_used_at=now
            )
        return token


class ApiToken(models.Model):
    """A key for automation that acts as its user, within the tenants that user belongs to.

    Only a SHA-256 hash of the token is stored; the token itself is shown once, when issued.
    The token looks like ``ipt_<prefix>_<secret>``; ``prefix`` is stored in clear so a token can
    be found by it and recognised in lists without revealing anything that grants access.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=64)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix})"

    @property
    def display_prefix(self) -> str:
        return f"{TOKEN_PREFIX}_{self.prefix}"

    @staticmethod
    def hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def is_usable(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class AuditEventQuerySet(TenantScopedQuerySet):
    pass


class AuditEvent(models.Model):
    """Who did what to which object, when, with the object before and after."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, help_text="Username at the time, or 'system'")
    tenant = models.ForeignKey("Tenant", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    verb = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    before = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    after = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    created = models.DateTimeField(default=timezone.now)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id"]),
            models.Index(fields=["tenant", "created"]),
        ]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.verb} {self.object_type}:{self.object_id}"


class IdempotencyRecord(models.Model):
    """The response to a POST made with an Idempotency-Key, replayed when the key comes again."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=2000)
    request_hash = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField(null=True, encoder=DjangoJSONEncoder)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="one_response_per_idempotency_key")
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} [{self.key}]"
