"""Status values, their named groups and the one table of legal transitions for each.

A transition table maps a status to the statuses it may move to. ``check_transition`` is the
only place that decides whether a change is legal; actions call it before they write.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models

from .exceptions import IllegalTransition


def check_transition(table: dict[str, frozenset[str]], old: str, new: str, what: str) -> None:
    """Raise IllegalTransition unless TABLE allows OLD -> NEW."""
    if new not in table.get(old, frozenset()):
        allowed = ", ".join(sorted(table.get(old, frozenset()))) or "nothing"
        raise IllegalTransition(f"{what} cannot go from {old} to {new} (from {old} it may go to: {allowed})")


class Role(models.TextChoices):
    """A member's role in a tenant. Viewers read; members also create and change; owners also
    manage members."""

    OWNER = "owner", "Owner"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]

    def includes(self, required: Role) -> bool:
        """Whether this role may do what REQUIRED may do."""
        return self.rank >= Role(required).rank


_ROLE_RANK = {Role.VIEWER: 1, Role.MEMBER: 2, Role.OWNER: 3}


class ModelStatus(models.TextChoices):
    """Where a catalog model is in its approval life."""

    REQUESTED = "requested", "Requested"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    RETIRED = "retired", "Retired"

    def check_transition(self, new: str) -> None:
        check_transition(MODEL_TRANSITIONS, self, new, "a model")


MODEL_TRANSITIONS: dict[str, frozenset[str]] = {
    ModelStatus.REQUESTED: frozenset({ModelStatus.APPROVED, ModelStatus.REJECTED}),
    ModelStatus.APPROVED: frozenset({ModelStatus.RETIRED}),
    ModelStatus.REJECTED: frozenset(),
    ModelStatus.RETIRED: frozenset(),
}
# Statuses a tenant may see in the catalog (retired stays visible: running endpoints use it).
MODEL_VISIBLE_TO_TENANTS = frozenset({ModelStatus.APPROVED, ModelStatus.RETIRED})


class QuotaRequestStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"

    def check_transition(self, new: str) -> None:
        check_transition(QUOTA_REQUEST_TRANSITIONS, self, new, "a quota request")


QUOTA_REQUEST_TRANSITIONS: dict[str, frozenset[str]] = {
    QuotaRequestStatus.PENDING: frozenset({QuotaRequestStatus.APPROVED, QuotaRequestStatus.REJECTED}),
    QuotaRequestStatus.APPROVED: frozenset(),
    QuotaRequestStatus.REJECTED: frozenset(),
}


class Dtype(models.TextChoices):
    """How model weights are stored; decides bytes per parameter."""

    BF16 = "bf16", "bfloat16"
    FP16 = "fp16", "float16"
    FP8 = "fp8", "FP8"
    INT8 = "int8", "INT8"
    AWQ = "awq", "AWQ (4-bit)"
    GPTQ = "gptq", "GPTQ (4-bit)"
    INT4 = "int4", "INT4"

    @property
    def bytes_per_parameter(self) -> Decimal:
        return BYTES_PER_PARAMETER[self]


# 4-bit formats also store scales and zero points (a few per cent more); the runtime overhead
# in capacity.py absorbs that rather than pretending to know each format's exact layout.
BYTES_PER_PARAMETER: dict[str, Decimal] = {
    Dtype.BF16: Decimal(2),
    Dtype.FP16: Decimal(2),
    Dtype.FP8: Decimal(1),
    Dtype.INT8: Decimal(1),
    Dtype.AWQ: Decimal("0.5"),
    Dtype.GPTQ: Decimal("0.5"),
    Dtype.INT4: Decimal("0.5"),
}


class KvCacheDtype(models.TextChoices):
    """vLLM's --kv-cache-dtype. ``auto`` keeps the activation dtype (16-bit, 2 bytes)."""

    AUTO = "auto", "auto (16-bit)"
    FP8 = "fp8", "FP8"

    @property
    def bytes_per_element(self) -> int:
        return {KvCacheDtype.AUTO: 2, KvCacheDtype.FP8: 1}[self]


class WorkloadClass(models.TextChoices):
    """Interactive endpoints protect time to first token; batch endpoints favour throughput."""

    INTERACTIVE = "interactive", "Interactive"
    BATCH = "batch", "Batch"


class EndpointPhase(models.TextChoices):
    """Where an endpoint is on its way up, serving, or down.

    The order of the starting phases follows what a user waits for: the tenant cluster, a GPU
    node, the image, the weights, loading into GPU memory, a first answer.
    """

    REQUESTED = "requested", "Requested"
    PROVISIONING_TENANT = "provisioning_tenant", "Provisioning tenant cluster"
    SCHEDULING = "scheduling", "Scheduling"
    PULLING = "pulling", "Pulling image"
    DOWNLOADING_WEIGHTS = "downloading_weights", "Downloading weights"
    LOADING_MODEL = "loading_model", "Loading model"
    VERIFYING = "verifying", "Verifying"
    READY = "ready", "Ready"
    DEGRADED = "degraded", "Degraded"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"

    @property
    def is_live(self) -> bool:
        return self in LIVE_PHASES

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_PHASES

    def check_transition(self, new: str) -> None:
        check_transition(PHASE_TRANSITIONS, self, new, "an endpoint")


_P = EndpointPhase
STARTING_PHASES = frozenset(
    {
        _P.REQUESTED,
        _P.PROVISIONING_TENANT,
        _P.SCHEDULING,
        _P.PULLING,
        _P.DOWNLOADING_WEIGHTS,
        _P.LOADING_MODEL,
        _P.VERIFYING,
    }
)
SERVING_PHASES = frozenset({_P.READY, _P.DEGRADED})
# Meant to be up: the workers converge these towards Ready.
ACTIVE_PHASES = STARTING_PHASES | SERVING_PHASES
# The workers stop converging: Failed waits for a person (retry or delete), Deleted is gone.
TERMINAL_PHASES = frozenset({_P.FAILED, _P.DELETED})
# Holding (or about to hold) GPUs, so counted against quota: everything but Deleted. A Failed
# endpoint still counts, because it can be retried without asking for quota again; a Deleting one
# still counts until the workers confirm its pods are gone.
LIVE_PHASES = ACTIVE_PHASES | frozenset({_P.FAILED, _P.DELETING})

# The one table of legal phase changes. Starting phases may fall back to Scheduling (a pod was
# evicted or restarted); a serving endpoint falls back to Scheduling when it scales up from zero.
PHASE_TRANSITIONS: dict[str, frozenset[str]] = {
    _P.REQUESTED: frozenset({_P.PROVISIONING_TENANT, _P.SCHEDULING, _P.FAILED, _P.DELETING}),
    _P.PROVISIONING_TENANT: frozenset({_P.SCHEDULING, _P.FAILED, _P.DELETING}),
    # The watcher reports what it sees; a fast stage can pass between two of its looks, so the
    # starting phases may skip forward (never back past Scheduling, which means "start over").
    _P.SCHEDULING: frozenset(
        {
            _P.PULLING,
            _P.DOWNLOADING_WEIGHTS,
            _P.LOADING_MODEL,
            _P.VERIFYING,
            _P.READY,
            _P.DEGRADED,
            _P.FAILED,
            _P.DELETING,
        }
    ),
    _P.PULLING: frozenset(
        {
            _P.SCHEDULING,
            _P.DOWNLOADING_WEIGHTS,
            _P.LOADING_MODEL,
            _P.VERIFYING,
            _P.READY,
            _P.DEGRADED,
            _P.FAILED,
            _P.DELETING,
        }
    ),
    _P.DOWNLOADING_WEIGHTS: frozenset(
        {_P.SCHEDULING, _P.LOADING_MODEL, _P.VERIFYING, _P.READY, _P.DEGRADED, _P.FAILED, _P.DELETING}
    ),
    _P.LOADING_MODEL: frozenset({_P.SCHEDULING, _P.VERIFYING, _P.READY, _P.DEGRADED, _P.FAILED, _P.DELETING}),
    _P.VERIFYING: frozenset({_P.SCHEDULING, _P.LOADING_MODEL, _P.READY, _P.DEGRADED, _P.FAILED, _P.DELETING}),
    _P.READY: frozenset({_P.DEGRADED, _P.VERIFYING, _P.SCHEDULING, _P.FAILED, _P.DELETING}),
    _P.DEGRADED: frozenset({_P.READY, _P.VERIFYING, _P.SCHEDULING, _P.FAILED, _P.DELETING}),
    # A failure the watcher saw can clear by itself (a crash-looping pod that recovers), and a
    # person can ask for a redeploy (back to Requested).
    _P.FAILED: frozenset(
        {_P.REQUESTED, _P.SCHEDULING, _P.LOADING_MODEL, _P.VERIFYING, _P.READY, _P.DELETING}
    ),
    _P.DELETING: frozenset({_P.DELETED}),
    _P.DELETED: frozenset(),
}


class TenantClusterPhase(models.TextChoices):
    """Where a tenant's vCluster is. INSTALLING is also the claim a worker holds while it installs."""

    PENDING = "pending", "Pending"
    INSTALLING = "installing", "Installing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"


class ConditionType(models.TextChoices):
    """Condition types on an endpoint, Kubernetes style: each is True, False or Unknown."""

    TENANT_READY = "TenantReady", "Tenant cluster ready"
    SCHEDULED = "Scheduled", "Scheduled on a GPU node"
    WEIGHTS_READY = "WeightsReady", "Weights downloaded"
    MODEL_LOADED = "ModelLoaded", "Model loaded"
    ROUTE_ACCEPTED = "RouteAccepted", "Route accepted"
    READY = "Ready", "Answering requests"
    MODEL_RETIRED = "ModelRetired", "Model retired"


class ConditionStatus(models.TextChoices):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class EventType(models.TextChoices):
    """Kubernetes-style event types for the endpoint timeline."""

    NORMAL = "Normal"
    WARNING = "Warning"


class AuditVerb(models.TextChoices):
    TENANT_CREATE = "tenant.create"
    MEMBER_ADD = "member.add"
    MEMBER_CHANGE = "member.change"
    MEMBER_REMOVE = "member.remove"
    QUOTA_SET = "quota.set"
    QUOTA_REQUEST = "quota_request.create"
    QUOTA_APPROVE = "quota_request.approve"
    QUOTA_REJECT = "quota_request.reject"
    TIER_CREATE = "gpu_tier.create"
    IMAGE_CREATE = "runtime_image.create"
    MODEL_REGISTER = "model.register"
    MODEL_APPROVE = "model.approve"
    MODEL_REJECT = "model.reject"
    MODEL_RETIRE = "model.retire"
    TEMPLATE_CREATE = "template.create"
    CATALOG_UPDATE = "catalog.update"
    ENDPOINT_REQUEST = "endpoint.request"
    ENDPOINT_SCALE = "endpoint.scale"
    ENDPOINT_DELETE = "endpoint.delete"
    ENDPOINT_PHASE = "endpoint.phase"
    TOKEN_ISSUE = "token.issue"  # noqa: S105 (an audit verb, not a secret)
    TOKEN_REVOKE = "token.revoke"  # noqa: S105
    ENDPOINT_KEY_CREATE = "endpoint_key.create"
    ENDPOINT_KEY_REVOKE = "endpoint_key.revoke"
    ENDPOINT_REDEPLOY = "endpoint.redeploy"
    TENANT_DELETE = "tenant.delete"
