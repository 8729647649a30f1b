from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from endpoints import capacity
from endpoints import validators as v
from endpoints.choices import LIVE_PHASES, ConditionStatus, EndpointPhase, EventType

from .querysets import TenantScopedQuerySet


class EndpointQuerySet(TenantScopedQuerySet):
    def live(self):
        """Endpoints that hold (or are about to hold) GPUs, counted against quota."""
        return self.filter(phase__in=LIVE_PHASES)

    def quota_usage(self) -> dict:
        """GPUs (total and per tier), endpoints and replicas these endpoints take at max replicas."""
        per_tier = list(
            self.values("template__tier__name")
            .annotate(
                gpus=Sum(F("max_replicas") * F("template__gpus_per_replica")),
                replicas=Sum("max_replicas"),
                endpoints=Count("id"),
            )
            .order_by()
        )
        tier_gpus = {row["template__tier__name"]: row["gpus"] or 0 for row in per_tier}
        return {
            "gpus_total": sum(tier_gpus.values()),
            "tier_gpus": tier_gpus,
            # Every endpoint has a template and every template a tier: the groups count them all,
            # so one query does (quota admission and the quota bars ask on every request).
            "endpoints": sum(row["endpoints"] for row in per_tier),
            "replicas": sum(row["replicas"] or 0 for row in per_tier),
        }


class Endpoint(models.Model):
    """One tenant's served model: a template, a name and a replica range, and what the workers
    have seen of it (phase, conditions, URL, load progress).

    ``generation`` goes up on every change a person asks for (request, scale, delete); the
    workers write the generation they last acted on to ``observed_generation``, so a reconcile
    loop can tell work still to do from work done.
    """

    tenant = models.ForeignKey("Tenant", on_delete=models.PROTECT, related_name="endpoints")
    template = models.ForeignKey("Template", on_delete=models.PROTECT, related_name="endpoints")
    name = models.CharField(max_length=40, validators=[v.validate_endpoint_name])
    min_replicas = models.PositiveSmallIntegerField(validators=v.between(0, v.MAX_REPLICAS))
    max_replicas = models.PositiveSmallIntegerField(validators=v.between(1, v.MAX_REPLICAS))
    desired_replicas = models.PositiveSmallIntegerField(default=1)
    phase = models.CharField(max_length=32, choices=EndpointPhase.choices, default=EndpointPhase.REQUESTED)
    phase_reason = models.CharField(max_length=64, blank=True, help_text="CamelCase, machine-readable")
    phase_message = models.CharField(max_length=v.MAX_MESSAGE, blank=True)
    phase_changed_at = models.DateTimeField(default=timezone.now)
    conditions = models.JSONField(default=list, blank=True)
    url = models.CharField(max_length=300, blank=True, help_text="Set once the route is accepted")
    load_progress = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Per cent, while loading"
    )
    generation = models.PositiveBigIntegerField(default=1)
    observed_generation = models.PositiveBigIntegerField(default=0)
    verified_at = models.DateTimeField(
        null=True, blank=True, help_text="When a first request through the gateway last succeeded"
    )
    first_token_seconds = models.FloatField(null=True, blank=True, help_text="TTFT of that first request")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "name", "id"]
        constraints = [
            # A name is taken until the endpoint is gone: its Kubernetes objects carry the name.
            models.UniqueConstraint(
                fields=["tenant", "name"], condition=~Q(phase="deleted"), name="one_live_endpoint_per_name"
            ),
            models.CheckConstraint(
                condition=Q(min_replicas__lte=F("max_replicas")), name="endpoint_min_le_max"
            ),
            models.CheckConstraint(
                condition=Q(load_progress__isnull=True) | Q(load_progress__lte=100),
                name="load_progress_percent",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "phase"])]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.name}"

    @property
    def is_live(self) -> bool:
        return self.phase in LIVE_PHASES

    @property
    def gpus_at_max(self) -> int:
        return self.max_replicas * self.template.gpus_per_replica

    def condition(self, type_: str) -> dict | None:
        return next((c for c in self.conditions if c.get("type") == type_), None)

    def forecast(self) -> capacity.CostForecast:
        return self.template.forecast(self.min_replicas, self.max_replicas)

    def accrued_cost(self, now: datetime | None = None) -> Decimal:
        return capacity.accrued_cost((u.as_interval() for u in self.usage.all()), now or timezone.now())


def set_condition(
    conditions: list[dict], type_: str, status: str, reason: str, message: str, now: datetime
) -> list[dict]:
    """CONDITIONS with TYPE set, Kubernetes style: last_transition_time moves only when the
    status changes. Returns a new list; the input is not changed."""
    status = ConditionStatus(status)
    result = []
    found = False
    for existing in conditions:
        if existing.get("type") == type_:
            found = True
            changed = existing.get("status") != status
            result.append(
                {
                    "type": type_,
                    "status": status.value,
                    "reason": reason,
                    "message": message[: v.MAX_MESSAGE],
                    "last_transition_time": now.isoformat()
                    if changed
                    else existing.get("last_transition_time"),
                }
            )
        else:
            result.append(existing)
    if not found:
        result.append(
            {
                "type": type_,
                "status": status.value,
                "reason": reason,
                "message": message[: v.MAX_MESSAGE],
                "last_transition_time": now.isoformat(),
            }
        )
    return result


class EndpointEventQuerySet(TenantScopedQuerySet):
    tenant_lookup = "endpoint__tenant"


class EndpointEvent(models.Model):
    """One line of an endpoint's timeline, in plain words (Kubernetes event style)."""

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=8, choices=EventType.choices, default=EventType.NORMAL)
    reason = models.CharField(max_length=64)
    message = models.CharField(max_length=v.MAX_MESSAGE, blank=True)
    created = models.DateTimeField(default=timezone.now)

    objects = EndpointEventQuerySet.as_manager()

    class Meta:
        ordering = ["created", "id"]
        indexes = [models.Index(fields=["endpoint", "created"])]

    def __str__(self) -> str:
        return f"{self.endpoint}: {self.reason}"


class EndpointUsageQuerySet(TenantScopedQuerySet):
    tenant_lookup = "endpoint__tenant"

    def accrued_cost(self, now: datetime | None = None) -> Decimal:
        return capacity.accrued_cost((u.as_interval() for u in self), now or timezone.now())


class EndpointUsage(models.Model):
    """A stretch of time an endpoint ran a constant number of replicas, with the price then.

    The workers open a new interval whenever the running replica count changes and close it
    when the endpoint is gone; accrued cost is the sum over intervals, so a later price change
    never rewrites what was already spent.
    """

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="usage")
    tier = models.ForeignKey("GpuTier", on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    replicas = models.PositiveSmallIntegerField()
    gpus_per_replica = models.PositiveSmallIntegerField()
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)

    objects = EndpointUsageQuerySet.as_manager()

    class Meta:
        ordering = ["started_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint"], condition=Q(ended_at__isnull=True), name="one_open_usage_interval"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint}: {self.replicas} × {self.gpus_per_replica} GPU from {self.started_at}"

    def as_interval(self) -> capacity.UsageInterval:
        return capacity.UsageInterval(
            started_at=self.started_at,
            ended_at=self.ended_at,
            replicas=self.replicas,
            gpus_per_replica=self.gpus_per_replica,
            price_per_gpu_hour=self.price_per_gpu_hour,
        )
