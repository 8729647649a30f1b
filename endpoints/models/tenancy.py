from __future__ import annotations

from django.conf import settings
from django.db import models

from endpoints import validators as v
from endpoints.choices import QuotaRequestStatus, Role

from .querysets import TenantScopedQuerySet


class TenantQuerySet(TenantScopedQuerySet):
    tenant_lookup = "pk"


class Tenant(models.Model):
    """A customer organisation: members, one quota, one tenant cluster (namespace ``t-<slug>``)."""

    slug = models.CharField(
        max_length=20,
        unique=True,
        validators=[v.validate_tenant_slug],
        help_text="Lowercase letters and digits; names the tenant's namespace and hostnames.",
    )
    name = models.CharField(max_length=100)
    created = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when the tenant was deleted; its rows stay for history and cost"
    )

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def role_of(self, user) -> Role | None:
        """USER's role in this tenant, or None when they are not a member."""
        membership = self.memberships.filter(user=user).first()
        return Role(membership.role) if membership else None


class MembershipQuerySet(TenantScopedQuerySet):
    pass


class Membership(models.Model):
    """A user's role in one tenant."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created = models.DateTimeField(auto_now_add=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "user__username"]
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="one_membership_per_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"


class QuotaQuerySet(TenantScopedQuerySet):
    pass


class Quota(models.Model):
    """What a tenant may hold at once, counted over its live endpoints at max replicas.

    ``tier_gpus`` maps a GPU tier name to the GPUs allowed on that tier. A tier that is not in
    the map allows none: expensive GPUs are opt-in, raised through a quota request.
    """

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="quota")
    gpus_total = models.PositiveIntegerField(default=0, validators=v.between(0, v.MAX_QUOTA_GPUS))
    tier_gpus = models.JSONField(default=dict, blank=True, validators=[v.validate_tier_gpus])
    max_endpoints = models.PositiveIntegerField(default=0, validators=v.between(0, v.MAX_QUOTA_ENDPOINTS))
    max_replicas = models.PositiveIntegerField(
        default=0,
        validators=v.between(0, v.MAX_QUOTA_REPLICAS),
        help_text="Sum of max replicas over the tenant's live endpoints.",
    )
    updated = models.DateTimeField(auto_now=True)

    objects = QuotaQuerySet.as_manager()

    def __str__(self) -> str:
        return f"quota of {self.tenant}"

    def limits(self) -> dict:
        return {
            "gpus_total": self.gpus_total,
            "tier_gpus": dict(self.tier_gpus),
            "max_endpoints": self.max_endpoints,
            "max_replicas": self.max_replicas,
        }


class QuotaRequestQuerySet(TenantScopedQuerySet):
    pass


class QuotaRequest(models.Model):
    """A tenant asking for new quota limits. Empty fields mean "keep the current limit"; an
    approval writes the asked-for limits into the tenant's Quota."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="quota_requests")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    gpus_total = models.PositiveIntegerField(null=True, blank=True, validators=v.between(0, v.MAX_QUOTA_GPUS))
    tier_gpus = models.JSONField(
        default=dict,
        blank=True,
        validators=[v.validate_tier_gpus],
        help_text="Tier name to GPUs; merged into the quota.",
    )
    max_endpoints = models.PositiveIntegerField(
        null=True, blank=True, validators=v.between(0, v.MAX_QUOTA_ENDPOINTS)
    )
    max_replicas = models.PositiveIntegerField(
        null=True, blank=True, validators=v.between(0, v.MAX_QUOTA_REPLICAS)
    )
    reason = models.CharField(max_length=v.MAX_TEXT)
    status = models.CharField(
        max_length=16, choices=QuotaRequestStatus.choices, default=QuotaRequestStatus.PENDING
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=v.MAX_TEXT, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    objects = QuotaRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"quota request {self.pk} for {self.tenant} ({self.status})"
