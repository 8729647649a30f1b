"""Tenant clusters and the keys tenants call their endpoints with."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from endpoints import validators as v
from endpoints.choices import TenantClusterPhase

from .querysets import TenantScopedQuerySet

ENDPOINT_KEY_PREFIX = "ipk"  # "inference portal key": recognisable by secret scanners


class TenantClusterQuerySet(TenantScopedQuerySet):
    def claimable(self, stale_after: timedelta):
        """Rows a worker may claim for (re)installing: not being installed, or whose installer
        has been silent for longer than STALE_AFTER (it died)."""
        stale = timezone.now() - stale_after
        return self.filter(
            models.Q(
                phase__in=[TenantClusterPhase.PENDING, TenantClusterPhase.READY, TenantClusterPhase.FAILED]
            )
            | models.Q(phase=TenantClusterPhase.INSTALLING, claimed_at__lt=stale)
        )


class TenantCluster(models.Model):
    """The vCluster that holds one tenant's workloads: helm release ``<tenant>`` in host namespace
    ``t-<tenant>``; its kubeconfig lives in Secret ``vc-<tenant>`` there.

    The row is the claim on installing it (compare-and-set on ``phase``), so concurrent deploys
    of one tenant's endpoints install it once.
    """

    tenant = models.OneToOneField("Tenant", on_delete=models.CASCADE, related_name="cluster")
    phase = models.CharField(
        max_length=16, choices=TenantClusterPhase.choices, default=TenantClusterPhase.PENDING
    )
    message = models.CharField(max_length=v.MAX_MESSAGE, blank=True)
    values_hash = models.CharField(max_length=64, blank=True, help_text="Of the chart values last installed")
    chart_version = models.CharField(max_length=64, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    install_started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    objects = TenantClusterQuerySet.as_manager()

    def __str__(self) -> str:
        return f"tenant cluster {self.release} ({self.phase})"

    @property
    def release(self) -> str:
        return self.tenant.slug

    @property
    def host_namespace(self) -> str:
        from endpoints import naming

        return naming.namespace_for(self.tenant)

    @property
    def is_ready(self) -> bool:
        return self.phase == TenantClusterPhase.READY


class EndpointKeyQuerySet(TenantScopedQuerySet):
    tenant_lookup = "endpoint__tenant"

    def active(self):
        return self.filter(revoked_at__isnull=True)


class EndpointKey(models.Model):
    """A key a tenant's applications call one endpoint with (``Authorization: Bearer ...``).

    Stored as a SHA-256 hash; the key is shown once. The gateway checks callers against the
    hashes the workers put into the endpoint's auth Secret, so no raw key leaves this process.
    """

    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=64)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = EndpointKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix})"

    @property
    def display_prefix(self) -> str:
        return f"{ENDPOINT_KEY_PREFIX}_{self.prefix}"

    @staticmethod
    def hash(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @staticmethod
    def generate() -> tuple[str, str]:
        """A new (prefix, raw key)."""
        prefix = secrets.token_hex(4)
        return prefix, f"{ENDPOINT_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
