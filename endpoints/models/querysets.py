"""Row-level access in one place: ``for_user`` on every tenant-owned model's queryset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models

if TYPE_CHECKING:  # pragma: no cover
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


class TenantScopedQuerySet(models.QuerySet):
    """A queryset whose rows belong to a tenant.

    Subclasses name the lookup from the row to its tenant in ``tenant_lookup``. ``for_user`` is
    the only tenant filter the views and pages use: staff see everything, members see the rows
    of their tenants, everyone else sees nothing (so other tenants' objects answer 404).
    """

    tenant_lookup = "tenant"

    def for_user(self, user: AbstractBaseUser | AnonymousUser | Any, min_role: str | None = None):
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_staff:
            return self
        from .tenancy import Membership  # a cycle otherwise: Membership's queryset is one of these

        memberships = Membership.objects.filter(user=user)
        if min_role is not None:
            from endpoints.choices import Role

            memberships = memberships.filter(role__in=[r for r in Role if r.includes(min_role)])
        return self.filter(**{f"{self.tenant_lookup}__in": memberships.values("tenant_id")})
