"""Every state change in the portal, one function per verb.

Each action checks who may do it, validates, changes rows inside one transaction, writes an
AuditEvent and, for endpoints, enqueues worker tasks that run only after the commit. Views,
serializers, the admin, commands and workers call these; none of them saves domain rows itself.

``actor`` is the person acting, or None for the system (workers, management commands).

Lock order, to keep concurrent actions free of deadlocks: a tenant's Quota row, then a Model
row, then Endpoint rows. Locks joined with select_related take ``of=("self",)`` so the joined
rows (a tenant, a template) are not locked too. Quota admission holds the Quota row lock (SELECT ... FOR UPDATE) while
it sums the tenant's live endpoints and inserts the new one, so concurrent requests for the same
tenant are admitted one after another against an up-to-date sum.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db import models as dj
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from . import capacity, dispatch
from . import validators as v
from .choices import (
    AuditVerb,
    ConditionStatus,
    ConditionType,
    EndpointPhase,
    EventType,
    ModelStatus,
    QuotaRequestStatus,
    Role,
)
from .exceptions import Conflict, NotAllowed, QuotaExceeded, ValidationFailed
from .models import (
    ApiToken,
    AuditEvent,
    Endpoint,
    EndpointEvent,
    EndpointKey,
    EndpointUsage,
    GpuTier,
    Membership,
    Model,
    Quota,
    QuotaRequest,
    RuntimeImage,
    Template,
    Tenant,
    set_condition,
)
from .models.security import TOKEN_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    from django.contrib.auth.models import AbstractBaseUser

Actor: TypeAlias = "AbstractBaseUser | None"  # None: the system (workers, commands)

# Fields never copied into audit events.
_SECRET_FIELDS = frozenset({"secret_hash", "password"})


# Helpers ------------------------------------------------------------------------------------


def snapshot(obj: dj.Model) -> dict[str, Any]:
    """OBJ's concrete fields as JSON-safe values (foreign keys as ids), secrets left out."""
    data = {}
    for field in obj._meta.concrete_fields:
        if field.name in _SECRET_FIELDS:
            continue
        data[field.name] = field.value_from_object(obj)
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def audit(
    actor: Actor,
    verb: str,
    obj: dj.Model,
    *,
    tenant: Tenant | None = None,
    before: dict | None = None,
    after: dict | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_name=actor.get_username() if actor is not None and actor.is_authenticated else "system",
        tenant=tenant,
        verb=verb,
        object_type=obj._meta.model_name,
        object_id=str(obj.pk),
        before=before,
        after=after,
    )


def _share_lock_model(model_id: int) -> Model:
    """Read a Model row under FOR SHARE: many requests may hold it at once, but a status change
    (FOR UPDATE in _decide_model) waits for them, and they wait for it. Django has no FOR SHARE."""
    (model,) = Model.objects.raw(f"SELECT * FROM {Model._meta.db_table} WHERE id = %s FOR SHARE", [model_id])  # noqa: S608
    return model


def _clean(obj: dj.Model, **kwargs: Any) -> None:
    try:
        obj.full_clean(**kwargs)
    except DjangoValidationError as exc:
        raise ValidationFailed.from_django(exc) from None


def _bounded_text(field: str, value: str, limit: int = v.MAX_TEXT) -> str:
    value = (value or "").strip()
    if len(value) > limit:
        raise ValidationFailed.for_field(field, f"must be at most {limit} characters (got {len(value)})")
    return value


def require_staff(actor: Actor, doing: str) -> None:
    if actor is not None and not (actor.is_authenticated and actor.is_staff):
        raise NotAllowed(f"only staff may {doing}")


def require_role(actor: Actor, tenant: Tenant, role: Role, doing: str) -> None:
    """Allow the system, staff, and members of TENANT whose role includes ROLE."""
    if actor is None or (actor.is_authenticated and actor.is_staff):
        return
    current = tenant.role_of(actor) if actor.is_authenticated else None
    if current is None or not current.includes(role):
        needed = "an owner" if role == Role.OWNER else "an owner or member"
        raise NotAllowed(f"only {needed} of tenant {tenant.slug} may {doing}")


def _event(endpoint: Endpoint, reason: str, message: str, type_: str = EventType.NORMAL) -> EndpointEvent:
    return EndpointEvent.objects.create(
        endpoint=endpoint, type=type_, reason=reason, message=message[: v.MAX_MESSAGE]
    )


def quota_request_url() -> str:
    return reverse("api:quota-request-list")


# Tenants and members ------------------------------------------------------------------------


def create_tenant(actor: Actor, *, slug: str, name: str) -> Tenant:
    """A new tenant with a zero quota (quota is raised through quota requests)."""
    require_staff(actor, "create tenants")
    tenant = Tenant(slug=slug, name=name)
    _clean(tenant)
    with transaction.atomic():
        tenant.save()
        Quota.objects.create(tenant=tenant)
        audit(actor, AuditVerb.TENANT_CREATE, tenant, tenant=tenant, after=snapshot(tenant))
    return tenant


def add_member(actor: Actor, tenant: Tenant, user: AbstractBaseUser, role: str = Role.MEMBER) -> Membership:
    require_role(actor, tenant, Role.OWNER, "add members")
    role = _role(role)
    with transaction.atomic():
        if Membership.objects.filter(tenant=tenant, user=user).exists():
            raise Conflict.for_field("user", f"is already a member of tenant {tenant.slug}")
        membership = Membership.objects.create(tenant=tenant, user=user, role=role)
        audit(actor, AuditVerb.MEMBER_ADD, membership, tenant=tenant, after=snapshot(membership))
    return membership


def change_member_role(actor: Actor, membership: Membership, role: str) -> Membership:
    tenant = membership.tenant
    require_role(actor, tenant, Role.OWNER, "change roles")
    role = _role(role)
    with transaction.atomic():
        membership = Membership.objects.select_for_update().get(pk=membership.pk)
        if membership.role == role:
            return membership
        before = snapshot(membership)
        if membership.role == Role.OWNER:
            _keep_an_owner(tenant, membership)
        membership.role = role
        membership.save(update_fields=["role"])
        audit(
            actor,
            AuditVerb.MEMBER_CHANGE,
            membership,
            tenant=tenant,
            before=before,
            after=snapshot(membership),
        )
    return membership


def remove_member(actor: Actor, membership: Membership) -> None:
    tenant = membership.tenant
    if actor is None or actor.pk != membership.user_id:  # anyone may leave; owners remove others
        require_role(actor, tenant, Role.OWNER, "remove members")
    with transaction.atomic():
        membership = Membership.objects.select_for_update().get(pk=membership.pk)
        if membership.role == Role.OWNER:
            _keep_an_owner(tenant, membership)
        before = snapshot(membership)
        audit(actor, AuditVerb.MEMBER_REMOVE, membership, tenant=tenant, before=before)
        membership.delete()


def _keep_an_owner(tenant: Tenant, leaving: Membership) -> None:
    # Lock the owners so two owners demoting each other at once cannot leave none.
    owners = list(Membership.objects.select_for_update().filter(tenant=tenant, role=Role.OWNER))
    if all(o.pk == leaving.pk for o in owners):
        raise Conflict(f"tenant {tenant.slug} needs at least one owner; make someone else owner first")


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ValidationFailed.for_field("role", f"must be one of {', '.join(Role.values)}") from None


# Quotas -------------------------------------------------------------------------------------


def _check_tiers_exist(field: str, tier_gpus: dict) -> None:
    unknown = sorted(
        set(tier_gpus) - set(GpuTier.objects.filter(name__in=list(tier_gpus)).values_list("name", flat=True))
    )
    if unknown:
        raise ValidationFailed.for_field(field, f"names unknown GPU tiers: {', '.join(unknown)}")


def set_quota(
    actor: Actor,
    tenant: Tenant,
    *,
    gpus_total: int | None = None,
    tier_gpus: dict[str, int] | None = None,
    max_endpoints: int | None = None,
    max_replicas: int | None = None,
) -> Quota:
    """Staff set limits directly (the admin and seed_demo); tenants go through quota requests.

    Lowering a limit below what is in use evicts nothing; it only stops new admissions.
    """
    require_staff(actor, "set quotas")
    with transaction.atomic():
        quota = Quota.objects.select_for_update().get(tenant=tenant)
        before = snapshot(quota)
        _apply_limits(quota, gpus_total, tier_gpus, max_endpoints, max_replicas, replace_tiers=True)
        audit(actor, AuditVerb.QUOTA_SET, quota, tenant=tenant, before=before, after=snapshot(quota))
    return quota


def _apply_limits(
    quota: Quota, gpus_total, tier_gpus, max_endpoints, max_replicas, *, replace_tiers: bool
) -> None:
    if gpus_total is not None:
        quota.gpus_total = gpus_total
    if tier_gpus is not None:
        v.validate_tier_gpus(tier_gpus)
        _check_tiers_exist("tier_gpus", tier_gpus)
        quota.tier_gpus = dict(tier_gpus) if replace_tiers else {**quota.tier_gpus, **tier_gpus}
    if max_endpoints is not None:
        quota.max_endpoints = max_endpoints
    if max_replicas is not None:
        quota.max_replicas = max_replicas
    _clean(quota, exclude=["tenant"])
    quota.save()


def request_quota(
    actor: Actor,
    tenant: Tenant,
    *,
    reason: str,
    gpus_total: int | None = None,
    tier_gpus: dict[str, int] | None = None,
    max_endpoints: int | None = None,
    max_replicas: int | None = None,
) -> QuotaRequest:
    """Ask staff for new limits; empty ones stay as they are."""
    require_role(actor, tenant, Role.MEMBER, "request quota")
    if gpus_total is None and not tier_gpus and max_endpoints is None and max_replicas is None:
        raise ValidationFailed(
            "ask for at least one limit: gpus_total, tier_gpus, max_endpoints or max_replicas",
            fields={"non_field_errors": ["ask for at least one limit"]},
        )
    request = QuotaRequest(
        tenant=tenant,
        requested_by=actor,
        gpus_total=gpus_total,
        tier_gpus=tier_gpus or {},
        max_endpoints=max_endpoints,
        max_replicas=max_replicas,
        reason=_bounded_text("reason", reason),
    )
    if not request.reason:
        raise ValidationFailed.for_field("reason", "is required: say what the quota is for")
    _clean(request)
    _check_tiers_exist("tier_gpus", request.tier_gpus)
    with transaction.atomic():
        request.save()
        audit(actor, AuditVerb.QUOTA_REQUEST, request, tenant=tenant, after=snapshot(request))
    return request


def approve_quota_request(actor: Actor, request: QuotaRequest, note: str = "") -> QuotaRequest:
    """Approve and write the asked-for limits into the tenant's quota, in one transaction."""
    require_staff(actor, "approve quota requests")
    note = _bounded_text("note", note)
    with transaction.atomic():
        quota = Quota.objects.select_for_update().get(tenant_id=request.tenant_id)
        request = _decide_quota_request(actor, request, QuotaRequestStatus.APPROVED, note)
        before = snapshot(quota)
        _apply_limits(
            quota,
            request.gpus_total,
            request.tier_gpus or None,
            request.max_endpoints,
            request.max_replicas,
            replace_tiers=False,
        )
        audit(actor, AuditVerb.QUOTA_SET, quota, tenant=quota.tenant, before=before, after=snapshot(quota))
    return request


def reject_quota_request(actor: Actor, request: QuotaRequest, note: str = "") -> QuotaRequest:
    require_staff(actor, "reject quota requests")
    note = _bounded_text("note", note)
    with transaction.atomic():
        return _decide_quota_request(actor, request, QuotaRequestStatus.REJECTED, note)


def _decide_quota_request(
    actor: Actor, request: QuotaRequest, status: QuotaRequestStatus, note: str
) -> QuotaRequest:
    request = QuotaRequest.objects.select_for_update(of=("self",)).select_related("tenant").get(pk=request.pk)
    QuotaRequestStatus(request.status).check_transition(status)
    before = snapshot(request)
    request.status = status
    request.decided_by = actor
    request.decided_at = timezone.now()
    request.decision_note = note
    request.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
    verb = AuditVerb.QUOTA_APPROVE if status == QuotaRequestStatus.APPROVED else AuditVerb.QUOTA_REJECT
    audit(actor, verb, request, tenant=request.tenant, before=before, after=snapshot(request))
    return request


@dataclass(frozen=True)
class QuotaLine:
    """One quota dimension of an admission: what is in use, what is asked, what is allowed."""

    dimension: str
    used: int
    requested: int
    limit: int

    @property
    def exceeded(self) -> bool:
        return self.used + self.requested > self.limit

    def as_dict(self) -> dict:
        return {
            "dimension": self.dimension,
            "used": self.used,
            "requested": self.requested,
            "limit": self.limit,
        }


def _admit(quota: Quota, others, tier: GpuTier, gpus: int, replicas: int, *, new_endpoint: bool) -> None:
    """Raise QuotaExceeded unless OTHERS (live endpoints) plus this ask stay within QUOTA.

    The caller holds QUOTA's row lock, so OTHERS cannot change under us.
    """
    used = others.quota_usage()
    lines = [
        QuotaLine("gpus_total", used["gpus_total"], gpus, quota.gpus_total),
        QuotaLine(
            f"tier_gpus.{tier.name}",
            used["tier_gpus"].get(tier.name, 0),
            gpus,
            quota.tier_gpus.get(tier.name, 0),
        ),
        QuotaLine("replicas", used["replicas"], replicas, quota.max_replicas),
    ]
    if new_endpoint:
        lines.append(QuotaLine("endpoints", used["endpoints"], 1, quota.max_endpoints))
    over = [line for line in lines if line.exceeded]
    if not over:
        return
    url = quota_request_url()
    said = "; ".join(
        f"{o.dimension}: {o.used} used + {o.requested} requested > {o.limit} allowed" for o in over
    )
    raise QuotaExceeded(
        f"over quota for tenant {quota.tenant.slug}: {said}. Ask for more at {url}",
        fields={"max_replicas": [f"would exceed the quota of tenant {quota.tenant.slug} ({said})"]},
        details={
            "exceeded": [o.as_dict() for o in over],
            "quota": [line.as_dict() for line in lines],
            "quota_request_url": url,
        },
    )


# Catalog ------------------------------------------------------------------------------------


def create_gpu_tier(actor: Actor, **fields: Any) -> GpuTier:
    require_staff(actor, "create GPU tiers")
    tier = GpuTier(**fields)
    _clean(tier)
    with transaction.atomic():
        tier.save()
        audit(actor, AuditVerb.TIER_CREATE, tier, after=snapshot(tier))
    return tier


def create_runtime_image(actor: Actor, **fields: Any) -> RuntimeImage:
    require_staff(actor, "add runtime images")
    image = RuntimeImage(**fields)
    _clean(image)
    with transaction.atomic():
        image.save()
        audit(actor, AuditVerb.IMAGE_CREATE, image, after=snapshot(image))
    return image


def register_model(actor: Actor, **fields: Any) -> Model:
    """Add a model to the catalog as requested; it backs nothing until approved."""
    require_staff(actor, "add models")
    model = Model(**fields, status=ModelStatus.REQUESTED, requested_by=actor)
    _clean(model)
    with transaction.atomic():
        model.save()
        audit(actor, AuditVerb.MODEL_REGISTER, model, after=snapshot(model))
    return model


def approve_model(actor: Actor, model: Model, note: str = "") -> Model:
    require_staff(actor, "approve models")
    return _decide_model(actor, model, ModelStatus.APPROVED, AuditVerb.MODEL_APPROVE, note)


def reject_model(actor: Actor, model: Model, note: str = "") -> Model:
    require_staff(actor, "reject models")
    return _decide_model(actor, model, ModelStatus.REJECTED, AuditVerb.MODEL_REJECT, note)


def retire_model(actor: Actor, model: Model, note: str = "") -> Model:
    """Stop new endpoints on MODEL and flag the live ones with a ModelRetired condition.

    Running endpoints keep serving: retiring is a decision for new work, and the tenant needs
    time to move. The condition and a timeline event tell them to.
    """
    require_staff(actor, "retire models")
    with transaction.atomic():
        model = _decide_model(actor, model, ModelStatus.RETIRED, AuditVerb.MODEL_RETIRE, note)
        why = f"Model {model.name} was retired" + (f": {model.decision_note}" if model.decision_note else "")
        ids = Endpoint.objects.live().filter(template__model=model).values_list("pk", flat=True)
        for endpoint_id in ids:
            set_endpoint_condition(
                endpoint_id,
                ConditionType.MODEL_RETIRED,
                ConditionStatus.TRUE,
                "ModelRetired",
                f"{why}. It keeps serving; move to another template before it is removed.",
                event_type=EventType.WARNING,
            )
    return model


def _decide_model(actor: Actor, model: Model, status: ModelStatus, verb: str, note: str) -> Model:
    note = _bounded_text("note", note)
    with transaction.atomic():
        model = Model.objects.select_for_update().get(pk=model.pk)
        ModelStatus(model.status).check_transition(status)
        before = snapshot(model)
        model.status = status
        model.decided_by = actor
        model.decided_at = timezone.now()
        model.decision_note = note
        model.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
        audit(actor, verb, model, before=before, after=snapshot(model))
    return model


def create_template(actor: Actor, *, allowed_tenants: Iterable[Tenant] = (), **fields: Any) -> Template:
    """A template, only from an approved model and only if one replica holds a full-length
    sequence; otherwise refused with the numbers."""
    require_staff(actor, "create templates")
    template = Template(**fields, created_by=actor)
    _clean(template)
    with transaction.atomic():
        # Lock the model so it cannot be retired between the check and the insert.
        template.model = _share_lock_model(template.model_id)
        check_template(template)
        template.save()
        template.allowed_tenants.set(list(allowed_tenants))
        audit(
            actor,
            AuditVerb.TEMPLATE_CREATE,
            template,
            after={**snapshot(template), "allowed_tenants": sorted(t.slug for t in allowed_tenants)},
        )
    return template


def check_template(template: Template) -> None:
    """Raise ValidationFailed unless TEMPLATE's model is approved and one replica fits."""
    if template.model.status != ModelStatus.APPROVED:
        raise ValidationFailed.for_field(
            "model", f"{template.model.name} is {template.model.status}; only approved models back templates"
        )
    fit = template.fit()
    if not fit.fits:
        fields_at_fault = fit.field_errors()
        raise ValidationFailed(
            "the template does not fit: " + "; ".join(f"{k} {m[0]}" for k, m in fields_at_fault.items()),
            fields=fields_at_fault,
            details={"capacity": fit.as_dict()},
        )


def save_catalog_entry(actor: Actor, obj: GpuTier | RuntimeImage | Model | Template | Tenant) -> None:
    """Save an edit made in the admin to a catalog row (or a tenant's name), audited. Status fields change only
    through the approve/reject/retire actions, and a template's serving fields never change
    (endpoints were admitted against them)."""
    require_staff(actor, "edit the catalog")
    old = type(obj).objects.get(pk=obj.pk)
    if isinstance(obj, Model) and obj.status != old.status:
        raise ValidationFailed.for_field("status", "changes only through approve, reject or retire")
    if isinstance(obj, Template):
        changed = [f for f in Template.SERVING_FIELDS if getattr(obj, f) != getattr(old, f)]
        if changed:
            raise ValidationFailed.for_field(
                changed[0], "is fixed once the template exists; make a new template"
            )
    if isinstance(obj, Tenant) and obj.slug != old.slug:
        raise ValidationFailed.for_field(
            "slug", "is fixed once the tenant exists (it names Kubernetes objects)"
        )
    _clean(obj)
    with transaction.atomic():
        obj.save()
        tenant = obj if isinstance(obj, Tenant) else None
        audit(actor, AuditVerb.CATALOG_UPDATE, obj, tenant=tenant, before=snapshot(old), after=snapshot(obj))


# Endpoints ----------------------------------------------------------------------------------


def _replica_range(template: Template, min_replicas: int | None, max_replicas: int | None) -> tuple[int, int]:
    """The asked-for range with defaults filled in, checked against the template's policy."""
    low = template.min_replicas if min_replicas is None else min_replicas
    high = max(low, 1) if max_replicas is None else max_replicas
    floor = template.min_replicas
    ceiling = template.max_replicas
    if not floor <= low <= ceiling:
        raise ValidationFailed.for_field(
            "min_replicas", f"must be between {floor} and {ceiling} for template {template.name} (got {low})"
        )
    if not max(1, floor) <= high <= ceiling:
        raise ValidationFailed.for_field(
            "max_replicas",
            f"must be between {max(1, floor)} and {ceiling} for template {template.name} (got {high})",
        )
    if low > high:
        raise ValidationFailed.for_field("min_replicas", f"must be at most max_replicas ({high}, got {low})")
    return low, high


def request_endpoint(
    actor: Actor,
    *,
    tenant: Tenant,
    template: Template,
    name: str,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
) -> Endpoint:
    """Admit a new endpoint within the tenant's quota and enqueue its deployment."""
    require_role(actor, tenant, Role.MEMBER, "request endpoints")
    with transaction.atomic():
        # The template and its model first, the tenant's quota after: the quota's row lock
        # serialises the tenant's requests, so it is held for the admission and the inserts only.
        # (retire_model locks the model alone, so the order of the two locks cannot deadlock.)
        if not all(Template._meta.get_field(f).is_cached(template) for f in ("tier", "image")):
            template = Template.objects.select_related("tier", "image").get(pk=template.pk)
        # So that a concurrent retire_model either sees this endpoint (and flags it) or commits
        # before we read the status.
        model = _share_lock_model(template.model_id)
        template.model = model
        if model.status != ModelStatus.APPROVED:
            raise ValidationFailed.for_field(
                "template",
                f"uses model {model.name}, which is {model.status}; pick a template with an approved model",
            )
        if not template.is_available_to(tenant):
            raise ValidationFailed.for_field("template", f"is not available to tenant {tenant.slug}")
        low, high = _replica_range(template, min_replicas, max_replicas)
        endpoint = Endpoint(
            tenant=tenant,
            template=template,
            name=name,
            min_replicas=low,
            max_replicas=high,
            desired_replicas=min(max(low, 1), high),
            created_by=actor if actor is not None and actor.is_authenticated else None,
        )
        # The related rows are in hand: no query per foreign key.
        _clean(endpoint, exclude=["tenant", "template", "created_by"], validate_constraints=False)
        quota = Quota.objects.select_for_update(of=("self",)).select_related("tenant").get(tenant=tenant)
        if quota.tenant.deleted_at is not None:
            raise ValidationFailed.for_field("tenant", f"{tenant.slug} has been deleted")
        live = Endpoint.objects.live().filter(tenant=tenant)
        if live.filter(name=name).exists():
            raise Conflict.for_field(
                "name", f"is taken: tenant {tenant.slug} already has an endpoint named {name}"
            )
        _admit(quota, live, template.tier, high * template.gpus_per_replica, high, new_endpoint=True)
        try:
            # No savepoint: on an IntegrityError the whole transaction is rolled back anyway.
            endpoint.save()
        except IntegrityError:  # the partial unique index, should the check above ever be bypassed
            raise Conflict.for_field(
                "name", f"is taken: tenant {tenant.slug} already has an endpoint named {name}"
            ) from None
        cost = endpoint.forecast()
        _event(
            endpoint,
            "Requested",
            f"Requested from template {template.name}: {low} to {high} replicas of {template.gpus_per_replica} "
            f"× {template.tier.name}; about {capacity.money(cost.monthly_at_min)} to "
            f"{capacity.money(cost.monthly_at_max)} a month.",
        )
        audit(actor, AuditVerb.ENDPOINT_REQUEST, endpoint, tenant=tenant, after=snapshot(endpoint))
        dispatch.enqueue_deploy(endpoint.pk)
    return endpoint


def scale_endpoint(
    actor: Actor, endpoint: Endpoint, *, min_replicas: int | None = None, max_replicas: int | None = None
) -> Endpoint:
    """Change the replica range; a larger max is admitted against quota like a new request."""
    require_role(actor, endpoint.tenant, Role.MEMBER, "scale endpoints")
    with transaction.atomic():
        quota = (
            Quota.objects.select_for_update(of=("self",))
            .select_related("tenant")
            .get(tenant_id=endpoint.tenant_id)
        )
        endpoint = Endpoint.objects.select_for_update().get(pk=endpoint.pk)
        template = Template.objects.select_related("tier").get(pk=endpoint.template_id)
        if endpoint.phase in (EndpointPhase.DELETING, EndpointPhase.DELETED):
            raise Conflict(f"endpoint {endpoint.name} is {endpoint.phase}; it cannot be scaled")
        low, high = _replica_range(
            template,
            endpoint.min_replicas if min_replicas is None else min_replicas,
            endpoint.max_replicas if max_replicas is None else max_replicas,
        )
        if (low, high) == (endpoint.min_replicas, endpoint.max_replicas):
            return endpoint
        if high > endpoint.max_replicas:
            others = Endpoint.objects.live().filter(tenant_id=endpoint.tenant_id).exclude(pk=endpoint.pk)
            _admit(quota, others, template.tier, high * template.gpus_per_replica, high, new_endpoint=False)
        before = snapshot(endpoint)
        endpoint.min_replicas, endpoint.max_replicas = low, high
        endpoint.desired_replicas = min(max(endpoint.desired_replicas, low, 1), high)
        endpoint.generation += 1
        endpoint.save(
            update_fields=["min_replicas", "max_replicas", "desired_replicas", "generation", "updated"]
        )
        endpoint.template = template
        cost = endpoint.forecast()
        _event(
            endpoint,
            "Scaled",
            f"Replica range changed from {before['min_replicas']}–{before['max_replicas']} to {low}–{high}; "
            f"about {capacity.money(cost.monthly_at_min)} to {capacity.money(cost.monthly_at_max)} a month.",
        )
        audit(
            actor,
            AuditVerb.ENDPOINT_SCALE,
            endpoint,
            tenant=quota.tenant,
            before=before,
            after=snapshot(endpoint),
        )
        dispatch.enqueue_scale(endpoint.pk)
    return endpoint


def delete_endpoint(actor: Actor, endpoint: Endpoint) -> Endpoint:
    """Mark the endpoint Deleting and enqueue the teardown; asking twice is harmless."""
    require_role(actor, endpoint.tenant, Role.MEMBER, "delete endpoints")
    with transaction.atomic():
        endpoint = (
            Endpoint.objects.select_for_update(of=("self",)).select_related("tenant").get(pk=endpoint.pk)
        )
        if endpoint.phase in (EndpointPhase.DELETING, EndpointPhase.DELETED):
            return endpoint
        EndpointPhase(endpoint.phase).check_transition(EndpointPhase.DELETING)
        before = snapshot(endpoint)
        endpoint.phase = EndpointPhase.DELETING
        endpoint.phase_reason = "DeleteRequested"
        endpoint.phase_message = "Removing the endpoint's workloads."
        endpoint.phase_changed_at = timezone.now()
        endpoint.generation += 1
        endpoint.save()
        who = actor.get_username() if actor is not None and actor.is_authenticated else "the system"
        _event(endpoint, "DeleteRequested", f"Deletion requested by {who}.")
        audit(
            actor,
            AuditVerb.ENDPOINT_DELETE,
            endpoint,
            tenant=endpoint.tenant,
            before=before,
            after=snapshot(endpoint),
        )
        dispatch.enqueue_delete(endpoint.pk)
    return endpoint


def transition_endpoint(
    endpoint_id: int,
    *,
    expected: str,
    new: str,
    reason: str = "",
    message: str = "",
    actor: Actor = None,
    observed: dict[str, Any] | None = None,
) -> bool:
    """Move an endpoint from EXPECTED to NEW if it is still in EXPECTED (compare-and-set).

    Returns False, changing nothing, when someone else moved it first; raises
    IllegalTransition when the table does not allow EXPECTED -> NEW. For the workers. OBSERVED,
    fields record_observation would write, go in the same UPDATE (only if the phase moves).
    """
    EndpointPhase(expected).check_transition(new)
    now = timezone.now()
    changes: dict[str, Any] = {
        **(observed or {}),
        "phase": new,
        "phase_reason": reason[:64],
        "phase_message": message[: v.MAX_MESSAGE],
        "phase_changed_at": now,
        "updated": now,
    }
    if new == EndpointPhase.DELETED:
        changes["deleted_at"] = now
    with transaction.atomic():
        if Endpoint.objects.filter(pk=endpoint_id, phase=expected).update(**changes) != 1:
            return False
        endpoint = Endpoint.objects.select_related("tenant").get(pk=endpoint_id)
        if new == EndpointPhase.DELETED:
            EndpointUsage.objects.filter(endpoint=endpoint, ended_at__isnull=True).update(ended_at=now)
        warn = new in (EndpointPhase.FAILED, EndpointPhase.DEGRADED)
        label = EndpointPhase(new).label
        _event(
            endpoint,
            reason or label.replace(" ", ""),
            message or f"{label}.",
            EventType.WARNING if warn else EventType.NORMAL,
        )
        audit(
            actor,
            AuditVerb.ENDPOINT_PHASE,
            endpoint,
            tenant=endpoint.tenant,
            before={"phase": expected},
            after={"phase": new, "reason": reason, "message": message[: v.MAX_MESSAGE]},
        )
    return True


def set_endpoint_condition(
    endpoint_id: int,
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    event_type: str | None = None,
) -> None:
    """Set one condition under the endpoint's row lock (conditions are read-modify-write, so
    everyone who changes them, workers included, goes through here). A change of status also
    lands on the timeline."""
    set_endpoint_conditions(endpoint_id, [(type_, status, reason, message)], event_type=event_type)


def set_endpoint_conditions(
    endpoint_id: int,
    changes: Iterable[tuple[str, str, str, str]],
    *,
    event_type: str | None = None,
    read: list[dict] | None = None,
    also: dict[str, Any] | None = None,
    phase: str | None = None,
) -> None:
    """Set several conditions, each (type, status, reason, message), in one transaction: what
    set_endpoint_condition does for each, with one write of the row (the watcher often has five or
    six to set at once).

    Conditions are read-modify-write. READ, when given, is the conditions as the caller read them
    a moment ago: they are written by compare-and-set against it (one UPDATE, no row lock; the
    watcher writes hundreds of endpoints in a burst). Should they have changed meanwhile, or
    without READ, the row is read again under its lock.

    ALSO, other fields the watcher observed (phase reason, progress), go in the same UPDATE while
    the endpoint is still in PHASE; if it has moved on, they are left out (the next reading says
    what holds in the new phase)."""
    changes = list(changes)
    also = also or {}
    with transaction.atomic():
        now = timezone.now()
        if read is not None:
            conditions, news = _with_conditions(read, changes, now, event_type)
            rows = Endpoint.objects.filter(pk=endpoint_id, conditions=read)
            written = rows.filter(**({"phase": phase} if also and phase else {})).update(
                **also, conditions=conditions, updated=now
            )
        if read is None or not written:
            endpoint = Endpoint.objects.select_for_update().only("conditions", "phase").get(pk=endpoint_id)
            conditions, news = _with_conditions(endpoint.conditions, changes, now, event_type)
            extra = also if phase is None or endpoint.phase == phase else {}
            Endpoint.objects.filter(pk=endpoint_id).update(**extra, conditions=conditions, updated=now)
        EndpointEvent.objects.bulk_create(
            EndpointEvent(endpoint_id=endpoint_id, type=kind, reason=reason, message=message[: v.MAX_MESSAGE])
            for reason, message, kind in news
        )


def _with_conditions(
    conditions: list[dict], changes: list[tuple[str, str, str, str]], now: datetime, event_type: str | None
) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """CONDITIONS with CHANGES set, and the changes that are news for the timeline."""
    news = []
    for type_, status, reason, message in changes:
        old = next((c for c in conditions if c.get("type") == type_), None)
        conditions = set_condition(conditions, type_, status, reason, message, now)
        # The timeline shows changes: a condition's first report is news only when it is True
        # (its first False says nothing the phase event has not said already).
        if (old is None and status == ConditionStatus.TRUE) or (
            old is not None and old.get("status") != status
        ):
            kind = event_type or (EventType.NORMAL if status == ConditionStatus.TRUE else EventType.WARNING)
            news.append((reason, message, kind))
    return conditions, news


_KEEP: Any = object()


def record_observation(
    endpoint_id: int,
    *,
    url: str = _KEEP,
    load_progress: int | None = _KEEP,
    observed_generation: int = _KEEP,
) -> None:
    """Write what the workers saw of an endpoint: its URL once the route is accepted, how far the
    weights have loaded (per cent; None when not loading), the generation they acted on. Fields
    not given stay as they are. Observations, not decisions: no audit event, and phases change
    only through transition_endpoint."""
    changes: dict[str, Any] = {"updated": timezone.now()}
    if url is not _KEEP:
        if url and (len(url) > 300 or not url.startswith(("https://", "http://"))):
            raise ValidationFailed.for_field("url", "must be an http(s) URL of at most 300 characters")
        changes["url"] = url
    if load_progress is not _KEEP:
        if load_progress is not None and not 0 <= load_progress <= 100:
            raise ValidationFailed.for_field("load_progress", "must be between 0 and 100")
        changes["load_progress"] = load_progress
    if observed_generation is not _KEEP:
        changes["observed_generation"] = observed_generation
    Endpoint.objects.filter(pk=endpoint_id).update(**changes)


def record_running_replicas(endpoint_id: int, replicas: int, *, at: datetime | None = None) -> None:
    """Record how many replicas run now, for cost: close the open usage interval and open a new
    one when the count changed. Called by the workers when they observe pods; a measurement,
    so it leaves no audit event (the usage rows are the record)."""
    at = at or timezone.now()
    with transaction.atomic():
        endpoint = (
            Endpoint.objects.select_for_update(of=("self",))
            .select_related("template__tier")
            .get(pk=endpoint_id)
        )
        open_interval = endpoint.usage.filter(ended_at__isnull=True).first()
        if open_interval is not None:
            if open_interval.replicas == replicas:
                return
            open_interval.ended_at = at
            open_interval.save(update_fields=["ended_at"])
        if replicas > 0 and endpoint.phase != EndpointPhase.DELETED:
            EndpointUsage.objects.create(
                endpoint=endpoint,
                tier=endpoint.template.tier,
                started_at=at,
                replicas=replicas,
                gpus_per_replica=endpoint.template.gpus_per_replica,
                price_per_gpu_hour=endpoint.template.tier.price_per_gpu_hour,
            )


# API tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    """A new token and its secret. The secret exists only here: show it once, then drop it."""

    token: ApiToken
    secret: str


def issue_api_token(
    actor: Actor, user: AbstractBaseUser, *, name: str, expires_at: datetime | None = None
) -> IssuedToken:
    if actor is not None and actor.pk != user.pk and not actor.is_staff:
        raise NotAllowed("you may issue tokens only for yourself")
    name = (name or "").strip()
    if not name:
        raise ValidationFailed.for_field("name", "is required: say what the token is for")
    if len(name) > 64:
        raise ValidationFailed.for_field("name", f"must be at most 64 characters (got {len(name)})")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed.for_field("expires_at", "must be in the future")
    prefix = secrets.token_hex(4)
    secret = f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user, name=name, prefix=prefix, secret_hash=ApiToken.hash(secret), expires_at=expires_at
        )
        audit(actor, AuditVerb.TOKEN_ISSUE, token, after=snapshot(token))
    return IssuedToken(token=token, secret=secret)


def revoke_api_token(actor: Actor, token: ApiToken) -> ApiToken:
    if actor is not None and actor.pk != token.user_id and not actor.is_staff:
        raise NotAllowed("you may revoke only your own tokens")
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().get(pk=token.pk)
        if token.revoked_at is not None:
            return token
        before = snapshot(token)
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit(actor, AuditVerb.TOKEN_REVOKE, token, before=before, after=snapshot(token))
    return token


# Endpoint keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedEndpointKey:
    """A new endpoint key and its raw value. The raw value exists only here: show it once."""

    key: EndpointKey
    raw: str


MAX_KEYS_PER_ENDPOINT = 20


def create_endpoint_key(actor: Actor, endpoint: Endpoint, *, name: str) -> IssuedEndpointKey:
    """A key for calling ENDPOINT. The workers put only its hash into the endpoint's auth Secret."""
    require_role(actor, endpoint.tenant, Role.MEMBER, "create endpoint keys")
    name = (name or "").strip()
    if not name:
        raise ValidationFailed.for_field("name", "is required: say what the key is for")
    if len(name) > 64:
        raise ValidationFailed.for_field("name", f"must be at most 64 characters (got {len(name)})")
    if not EndpointPhase(endpoint.phase).is_live:
        raise ValidationFailed.for_field("endpoint", f"is {endpoint.phase}; keys are for live endpoints")
    with transaction.atomic():
        locked = Endpoint.objects.select_for_update().get(pk=endpoint.pk)
        active = EndpointKey.objects.filter(endpoint=locked).active().count()
        if active >= MAX_KEYS_PER_ENDPOINT:
            raise ValidationFailed.for_field(
                "name",
                f"this endpoint already has {active} active keys (at most {MAX_KEYS_PER_ENDPOINT}); revoke one first",
            )
        prefix, raw = EndpointKey.generate()
        key = EndpointKey.objects.create(
            endpoint=locked,
            name=name,
            prefix=prefix,
            key_hash=EndpointKey.hash(raw),
            created_by=actor if actor is not None and actor.is_authenticated else None,
        )
        _bump_and_redeploy(locked)
        audit(actor, AuditVerb.ENDPOINT_KEY_CREATE, key, tenant=locked.tenant, after=snapshot(key))
    return IssuedEndpointKey(key=key, raw=raw)


def revoke_endpoint_key(actor: Actor, key: EndpointKey) -> EndpointKey:
    require_role(actor, key.endpoint.tenant, Role.MEMBER, "revoke endpoint keys")
    with transaction.atomic():
        locked = EndpointKey.objects.select_for_update().select_related("endpoint__tenant").get(pk=key.pk)
        if locked.revoked_at is not None:
            return locked
        before = snapshot(locked)
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        endpoint = Endpoint.objects.select_for_update().get(pk=locked.endpoint_id)
        if EndpointPhase(endpoint.phase).is_live:
            _bump_and_redeploy(endpoint)
        audit(
            actor,
            AuditVerb.ENDPOINT_KEY_REVOKE,
            locked,
            tenant=locked.endpoint.tenant,
            before=before,
            after=snapshot(locked),
        )
    return locked


def _bump_and_redeploy(endpoint: Endpoint) -> None:
    """The endpoint's desired objects changed (keys): a new generation, and a deploy after commit."""
    Endpoint.objects.filter(pk=endpoint.pk).update(generation=F("generation") + 1, updated=timezone.now())
    if endpoint.phase not in (EndpointPhase.DELETING, EndpointPhase.DELETED, EndpointPhase.FAILED):
        dispatch.enqueue_deploy(endpoint.pk)


def redeploy_endpoint(actor: Actor, endpoint: Endpoint) -> Endpoint:
    """Try a failed endpoint again: back to Requested, and a deploy after commit."""
    require_role(actor, endpoint.tenant, Role.MEMBER, "redeploy endpoints")
    with transaction.atomic():
        locked = Endpoint.objects.select_for_update().get(pk=endpoint.pk)
        EndpointPhase(locked.phase).check_transition(EndpointPhase.REQUESTED)
        before = snapshot(locked)
        locked.phase = EndpointPhase.REQUESTED
        locked.phase_reason = "RedeployRequested"
        locked.phase_message = "Trying again."
        locked.phase_changed_at = timezone.now()
        locked.generation += 1
        locked.save()
        _event(locked, "RedeployRequested", "Redeploy requested.")
        audit(
            actor,
            AuditVerb.ENDPOINT_REDEPLOY,
            locked,
            tenant=locked.tenant,
            before=before,
            after=snapshot(locked),
        )
        dispatch.enqueue_deploy(locked.pk)
    return locked


def delete_tenant(actor: Actor, tenant: Tenant) -> Tenant:
    """Delete a tenant (staff): its live endpoints are deleted, and once they are gone the workers
    remove its tenant cluster. Its rows stay, for the audit log and the cost history."""
    require_staff(actor, "delete tenants")
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.deleted_at is not None:
            return locked
        before = snapshot(locked)
        live = list(
            Endpoint.objects.filter(tenant=locked).exclude(
                phase__in=[EndpointPhase.DELETING, EndpointPhase.DELETED]
            )
        )
        for endpoint in live:
            delete_endpoint(actor, endpoint)
        locked.deleted_at = timezone.now()
        locked.save(update_fields=["deleted_at"])
        audit(actor, AuditVerb.TENANT_DELETE, locked, tenant=locked, before=before, after=snapshot(locked))
        dispatch.enqueue_delete_tenant_cluster(locked.pk)
    return locked
