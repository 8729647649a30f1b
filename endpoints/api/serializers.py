"""Serializers validate the shape of input and shape the output; the actions do the rest."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from endpoints import capacity, coldstart, dashboards, naming
from endpoints import validators as v
from endpoints.choices import Role
from endpoints.models import (
    ApiToken,
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
)

MESSAGES = {"required": "is required", "null": "must not be null", "blank": "must not be blank"}


def _messages(kwargs: dict) -> dict[str, str]:
    """Error messages that read after the field name and say the limit."""
    messages = dict(MESSAGES)
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        messages["min_value"] = messages["max_value"] = f"must be between {low} and {high}"
    elif low is not None:
        messages["min_value"] = f"must be at least {low}"
    elif high is not None:
        messages["max_value"] = f"must be at most {high}"
    if kwargs.get("max_length") is not None:
        messages["max_length"] = f"must be at most {kwargs['max_length']} characters"
    return messages


def bounded_int(low: int, high: int, **kwargs) -> serializers.IntegerField:
    kwargs.update(min_value=low, max_value=high)
    return serializers.IntegerField(error_messages=_messages(kwargs), **kwargs)


def bounded_text(max_length: int, **kwargs) -> serializers.CharField:
    kwargs["max_length"] = max_length
    return serializers.CharField(error_messages=_messages(kwargs), **kwargs)


class PortalMessages:
    """Error messages that read after the field name, for every field of a serializer."""

    def get_fields(self):
        fields = super().get_fields()
        for field in fields.values():
            field.error_messages.update(MESSAGES)
            if isinstance(field, serializers.ChoiceField) and field.choices:
                listed = ", ".join(str(choice) for choice in field.choices)
                field.error_messages["invalid_choice"] = f'must be one of {listed} (got "{{input}}")'
        return fields


class PortalSerializer(PortalMessages, serializers.Serializer):
    pass


class PortalModelSerializer(PortalMessages, serializers.ModelSerializer):
    """A ModelSerializer whose generated fields also say their limits."""

    def build_standard_field(self, field_name, model_field):
        field_class, kwargs = super().build_standard_field(field_name, model_field)
        kwargs["error_messages"] = {**_messages(kwargs), **kwargs.get("error_messages", {})}
        return field_class, kwargs


def _user(serializer: serializers.Serializer):
    request = serializer.context.get("request")
    return getattr(request, "user", None)


class TenantChoiceField(serializers.SlugRelatedField):
    """A tenant slug, looked up only among the caller's tenants (others read as unknown)."""

    default_error_messages = {
        "does_not_exist": "names no tenant of yours: {value}",
        "invalid": "must be a tenant slug",
    }

    def __init__(self, **kwargs):
        super().__init__(slug_field="slug", queryset=Tenant.objects.none(), **kwargs)

    def get_queryset(self):
        return Tenant.objects.for_user(_user(self))


def default_tenant(serializer: serializers.Serializer, attrs: dict) -> dict:
    """Fill in ``tenant`` when the caller belongs to exactly one tenant."""
    if attrs.get("tenant") is None:
        user = _user(serializer)
        tenants = list(Tenant.objects.for_user(user).values_list("slug", flat=True)[:11])
        if len(tenants) != 1 or user.is_staff:
            listed = ", ".join(tenants[:10]) or "none"
            raise serializers.ValidationError(
                {"tenant": [f"is required: give one of your tenants ({listed})"]}
            )
        attrs["tenant"] = Tenant.objects.get(slug=tenants[0])
    return attrs


# Catalog ------------------------------------------------------------------------------------


class GpuTierSerializer(PortalModelSerializer):
    is_mig = serializers.BooleanField(read_only=True)

    class Meta:
        model = GpuTier
        fields = [
            "name",
            "product",
            "gpu_memory_gib",
            "resource_name",
            "gpus_per_node",
            "node_labels",
            "taints",
            "price_per_gpu_hour",
            "is_mig",
            "created",
        ]


class RuntimeImageSerializer(PortalModelSerializer):
    reference = serializers.CharField(read_only=True)

    class Meta:
        model = RuntimeImage
        fields = ["id", "repository", "tag", "digest", "reference", "created"]


class ModelSerializer(PortalModelSerializer):
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    decided_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Model
        fields = [
            "id",
            "name",
            "source",
            "revision",
            "licence",
            "parameters",
            "dtype",
            "num_layers",
            "num_kv_heads",
            "head_dim",
            "max_context",
            "status",
            "requested_by",
            "decided_by",
            "decided_at",
            "decision_note",
            "created",
        ]
        read_only_fields = ["status", "decided_at", "decision_note", "created"]


class DecisionSerializer(PortalSerializer):
    note = bounded_text(v.MAX_TEXT, required=False, allow_blank=True, default="")


class CapacitySerializer(serializers.Serializer):
    """Every number behind a fit verdict (capacity.Fit); memory in GiB."""

    fits = serializers.BooleanField()
    reasons = serializers.ListField(child=serializers.CharField())
    weights_gib = serializers.DecimalField(max_digits=12, decimal_places=2)
    kv_cache_bytes_per_token = serializers.IntegerField()
    gpu_memory_gib = serializers.DecimalField(max_digits=12, decimal_places=2)
    gpus = serializers.IntegerField()
    gpu_memory_utilization = serializers.DecimalField(max_digits=3, decimal_places=2)
    budget_gib = serializers.DecimalField(max_digits=12, decimal_places=2)
    overhead_gib = serializers.DecimalField(max_digits=12, decimal_places=2)
    kv_cache_gib = serializers.DecimalField(max_digits=12, decimal_places=2)
    kv_cache_tokens = serializers.IntegerField()
    max_model_len = serializers.IntegerField()
    sequences_at_max_model_len = serializers.IntegerField()

    def to_representation(self, instance: capacity.Fit) -> dict:
        return instance.as_dict()


class CostSerializer(serializers.Serializer):
    """Hourly and monthly (730 h) cost at min and max replicas, in the tiers' currency."""

    hourly_at_min_replicas = serializers.DecimalField(max_digits=14, decimal_places=2)
    hourly_at_max_replicas = serializers.DecimalField(max_digits=14, decimal_places=2)
    monthly_at_min_replicas = serializers.DecimalField(max_digits=14, decimal_places=2)
    monthly_at_max_replicas = serializers.DecimalField(max_digits=14, decimal_places=2)
    hours_per_month = serializers.IntegerField()


class EndpointCostSerializer(CostSerializer):
    accrued = serializers.DecimalField(
        max_digits=14, decimal_places=2, help_text="Spent so far, from usage history"
    )


class TemplateSerializer(PortalModelSerializer):
    model = serializers.PrimaryKeyRelatedField(queryset=Model.objects.all())
    model_name = serializers.CharField(source="model.name", read_only=True)
    model_status = serializers.CharField(source="model.status", read_only=True)
    tier = serializers.SlugRelatedField(slug_field="name", queryset=GpuTier.objects.all())
    image = serializers.PrimaryKeyRelatedField(queryset=RuntimeImage.objects.all())
    image_reference = serializers.CharField(source="image.reference", read_only=True)
    allowed_tenants = serializers.SlugRelatedField(
        slug_field="slug", many=True, queryset=Tenant.objects.all(), required=False
    )
    capacity = CapacitySerializer(source="fit", read_only=True)
    cost = serializers.SerializerMethodField()

    class Meta:
        model = Template
        fields = [
            "id",
            "name",
            "description",
            "model",
            "model_name",
            "model_status",
            "tier",
            "image",
            "image_reference",
            "gpus_per_replica",
            "tensor_parallel_size",
            "max_model_len",
            "gpu_memory_utilization",
            "max_num_seqs",
            "kv_cache_dtype",
            "min_replicas",
            "max_replicas",
            "target_queue_depth",
            "scale_to_zero",
            "workload_class",
            "tenant_restricted",
            "allowed_tenants",
            "capacity",
            "cost",
            "created",
        ]

    @extend_schema_field(CostSerializer)
    def get_cost(self, template: Template) -> dict:
        return template.forecast(max(template.min_replicas, 1), template.max_replicas).as_dict()

    def to_representation(self, instance):
        data = super().to_representation(instance)
        user = _user(self)
        if not (user and user.is_staff):
            data.pop("allowed_tenants", None)  # other tenants' names are not for tenants to see
        return data


# Endpoints ----------------------------------------------------------------------------------


class ConditionSerializer(serializers.Serializer):
    type = serializers.CharField()
    status = serializers.ChoiceField(choices=["True", "False", "Unknown"])
    reason = serializers.CharField()
    message = serializers.CharField()
    last_transition_time = serializers.DateTimeField()


class TemplateChoiceField(serializers.SlugRelatedField):
    default_error_messages = {"does_not_exist": "names no template available to you: {value}"}

    def __init__(self, **kwargs):
        super().__init__(slug_field="name", queryset=Template.objects.none(), **kwargs)

    def get_queryset(self):
        # With what request_endpoint and the response need, so neither reads the template again.
        return Template.objects.for_user(_user(self)).select_related("tier", "image")


class EndpointSerializer(PortalModelSerializer):
    tenant = TenantChoiceField(required=False, help_text="Tenant slug; optional if you belong to one tenant")
    template = TemplateChoiceField()
    name = serializers.CharField(
        validators=[v.validate_endpoint_name],
        help_text=f"A DNS label of at most {naming.MAX_ENDPOINT_NAME_LENGTH} characters",
    )
    min_replicas = bounded_int(0, v.MAX_REPLICAS, required=False)
    max_replicas = bounded_int(1, v.MAX_REPLICAS, required=False)
    tier = serializers.CharField(source="template.tier.name", read_only=True)
    model = serializers.CharField(source="template.model.name", read_only=True)
    conditions = ConditionSerializer(many=True, read_only=True)
    capacity = CapacitySerializer(source="template.fit", read_only=True)
    cost = serializers.SerializerMethodField()

    class Meta:
        model = Endpoint
        fields = [
            "id",
            "tenant",
            "name",
            "template",
            "tier",
            "model",
            "min_replicas",
            "max_replicas",
            "desired_replicas",
            "phase",
            "phase_reason",
            "phase_message",
            "phase_changed_at",
            "conditions",
            "url",
            "load_progress",
            "generation",
            "observed_generation",
            "capacity",
            "cost",
            "created",
            "updated",
        ]
        read_only_fields = [
            "desired_replicas",
            "phase",
            "phase_reason",
            "phase_message",
            "phase_changed_at",
            "url",
            "load_progress",
            "generation",
            "observed_generation",
            "created",
            "updated",
        ]
        # Name uniqueness is checked by request_endpoint under the tenant's quota lock.
        validators: list = []

    def validate(self, attrs: dict) -> dict:
        return default_tenant(self, attrs)

    @extend_schema_field(EndpointCostSerializer)
    def get_cost(self, endpoint: Endpoint) -> dict:
        return {**endpoint.forecast().as_dict(), "accrued": capacity.money(endpoint.accrued_cost())}


class ColdStartStageSerializer(serializers.Serializer):
    key = serializers.ChoiceField(choices=[key for key, _ in coldstart.STAGES])
    label = serializers.CharField()
    state = serializers.ChoiceField(
        choices=[
            coldstart.DONE,
            coldstart.IN_PROGRESS,
            coldstart.FAILED,
            coldstart.STOPPED,
            coldstart.PENDING,
        ]
    )
    start = serializers.DateTimeField(allow_null=True)
    end = serializers.DateTimeField(allow_null=True)
    seconds = serializers.FloatField(allow_null=True)


class ColdStartSerializer(serializers.Serializer):
    """The latest cold start, stage by stage (endpoints/coldstart.py)."""

    started_at = serializers.DateTimeField()
    ready_at = serializers.DateTimeField(
        allow_null=True, help_text="When the first token came; null until then"
    )
    total_seconds = serializers.FloatField(allow_null=True)
    first_token_seconds = serializers.FloatField(
        allow_null=True, help_text="Time to first token of the first-request gate's completion"
    )
    complete = serializers.BooleanField()
    stages = ColdStartStageSerializer(many=True)


class EndpointDetailSerializer(EndpointSerializer):
    """An endpoint with its cold-start breakdown (only on the detail: it reads the timeline)."""

    cold_start = serializers.SerializerMethodField()

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "cold_start"]

    @extend_schema_field(ColdStartSerializer)
    def get_cold_start(self, endpoint: Endpoint) -> dict:
        return ColdStartSerializer(coldstart.breakdown(endpoint)).data


class ScaleSerializer(PortalSerializer):
    min_replicas = bounded_int(0, v.MAX_REPLICAS, required=False)
    max_replicas = bounded_int(1, v.MAX_REPLICAS, required=False)

    def validate(self, attrs: dict) -> dict:
        if not attrs:
            raise serializers.ValidationError("give min_replicas, max_replicas or both")
        return attrs


class EndpointEventSerializer(PortalModelSerializer):
    class Meta:
        model = EndpointEvent
        fields = ["id", "type", "reason", "message", "created"]


# Dashboards ---------------------------------------------------------------------------------


class MetricsQuerySerializer(PortalSerializer):
    window = serializers.ChoiceField(choices=list(dashboards.WINDOWS), default=dashboards.DEFAULT_WINDOW)


class FiguresSerializer(serializers.Serializer):
    """Current figures; null where Prometheus has no value. Seconds, per second, or 0 to 1."""

    ttft_p50 = serializers.FloatField(allow_null=True, help_text="Time to first token, p50, seconds")
    ttft_p95 = serializers.FloatField(allow_null=True, help_text="Time to first token, p95, seconds")
    ttft_p99 = serializers.FloatField(allow_null=True, help_text="Time to first token, p99, seconds")
    tpot_p50 = serializers.FloatField(allow_null=True, help_text="Time per output token, p50, seconds")
    tpot_p95 = serializers.FloatField(allow_null=True, help_text="Time per output token, p95, seconds")
    request_rate = serializers.FloatField(allow_null=True, help_text="Finished requests per second")
    error_rate = serializers.FloatField(allow_null=True, help_text="Share of requests that failed, 0 to 1")
    prompt_tokens_per_second = serializers.FloatField(allow_null=True, help_text="Tokens in per second")
    generation_tokens_per_second = serializers.FloatField(allow_null=True, help_text="Tokens out per second")
    queue_depth = serializers.FloatField(allow_null=True, help_text="Requests waiting now")
    running_requests = serializers.FloatField(allow_null=True, help_text="Requests running now")
    kv_cache_usage = serializers.FloatField(allow_null=True, help_text="Fullest replica's KV cache, 0 to 1")


class PointSerializer(serializers.Serializer):
    time = serializers.DateTimeField()
    value = serializers.FloatField(allow_null=True)


class SeriesSerializer(serializers.Serializer):
    key = serializers.ChoiceField(choices=list(dashboards.METRIC_KEYS))
    label = serializers.CharField()
    unit = serializers.CharField()
    points = PointSerializer(many=True)


class DashboardSerializer(serializers.Serializer):
    """Serving figures from Prometheus over a window (endpoints/dashboards.py)."""

    scope = serializers.ChoiceField(choices=["endpoint", "tenant"])
    subject = serializers.CharField()
    window = serializers.ChoiceField(choices=list(dashboards.WINDOWS))
    window_label = serializers.CharField()
    status = serializers.ChoiceField(choices=list(dashboards.STATUSES))
    available = serializers.BooleanField(help_text="False when there is nothing to show: see message")
    message = serializers.CharField(allow_blank=True)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    step_seconds = serializers.IntegerField()
    current = FiguresSerializer()
    series = SeriesSerializer(many=True)


# Tenants, members, quotas -------------------------------------------------------------------


class TenantSerializer(PortalModelSerializer):
    role = serializers.SerializerMethodField()
    accrued_cost = serializers.SerializerMethodField()

    class Meta:
        model = Tenant
        fields = ["slug", "name", "role", "accrued_cost", "created"]

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices, allow_null=True))
    def get_role(self, tenant: Tenant) -> str | None:
        role = tenant.role_of(_user(self))
        return role.value if role else None

    @extend_schema_field(serializers.DecimalField(max_digits=14, decimal_places=2))
    def get_accrued_cost(self, tenant: Tenant) -> str:
        return capacity.money(EndpointUsage.objects.filter(endpoint__tenant=tenant).accrued_cost())


class MembershipSerializer(PortalModelSerializer):
    username = serializers.SlugRelatedField(
        source="user",
        slug_field="username",
        queryset=get_user_model().objects.filter(is_active=True),
        error_messages={"does_not_exist": "names no user: {value}"},
    )

    class Meta:
        model = Membership
        fields = ["username", "role", "created"]
        read_only_fields = ["created"]
        validators: list = []  # add_member says "already a member" itself


class MembershipRoleSerializer(PortalSerializer):
    role = serializers.ChoiceField(choices=Role.choices)


class QuotaSerializer(PortalModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    usage = serializers.SerializerMethodField()

    class Meta:
        model = Quota
        fields = ["tenant", "gpus_total", "tier_gpus", "max_endpoints", "max_replicas", "usage", "updated"]

    @extend_schema_field(serializers.DictField())
    def get_usage(self, quota: Quota) -> dict:
        """What the tenant's live endpoints take now, at their max replicas."""
        return Endpoint.objects.live().filter(tenant_id=quota.tenant_id).quota_usage()


class QuotaRequestSerializer(PortalModelSerializer):
    tenant = TenantChoiceField(required=False)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    decided_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    gpus_total = bounded_int(0, v.MAX_QUOTA_GPUS, required=False, allow_null=True)
    max_endpoints = bounded_int(0, v.MAX_QUOTA_ENDPOINTS, required=False, allow_null=True)
    max_replicas = bounded_int(0, v.MAX_QUOTA_REPLICAS, required=False, allow_null=True)
    reason = bounded_text(v.MAX_TEXT)

    class Meta:
        model = QuotaRequest
        fields = [
            "id",
            "tenant",
            "gpus_total",
            "tier_gpus",
            "max_endpoints",
            "max_replicas",
            "reason",
            "status",
            "requested_by",
            "decided_by",
            "decided_at",
            "decision_note",
            "created",
        ]
        read_only_fields = ["status", "decided_at", "decision_note", "created"]

    def validate(self, attrs: dict) -> dict:
        return default_tenant(self, attrs)


# Tokens -------------------------------------------------------------------------------------


class ApiTokenSerializer(PortalModelSerializer):
    prefix = serializers.CharField(source="display_prefix", read_only=True)
    name = bounded_text(64)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created", "last_used_at", "expires_at", "revoked_at"]
        read_only_fields = ["created", "last_used_at", "revoked_at"]

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("must be in the future")
        return value


class NewApiTokenSerializer(ApiTokenSerializer):
    secret = serializers.CharField(read_only=True, help_text="The token. Shown only in this response.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "secret"]


class EndpointKeySerializer(PortalModelSerializer):
    """A key applications call one endpoint with. Only a hash is stored; the key is in the create
    response only."""

    prefix = serializers.CharField(source="display_prefix", read_only=True)
    name = bounded_text(64)

    class Meta:
        model = EndpointKey
        fields = ["id", "name", "prefix", "created", "revoked_at"]
        read_only_fields = ["created", "revoked_at"]


class NewEndpointKeySerializer(EndpointKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key. Shown only in this response.")

    class Meta(EndpointKeySerializer.Meta):
        fields = [*EndpointKeySerializer.Meta.fields, "key"]
