from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from endpoints import capacity
from endpoints import validators as v
from endpoints.choices import MODEL_VISIBLE_TO_TENANTS, Dtype, KvCacheDtype, ModelStatus, WorkloadClass


class GpuTier(models.Model):
    """An admin-defined node type: which GPU, how much memory, how the pods ask for it and land
    on it (resource name, node labels, taints), and what a GPU-hour costs."""

    name = models.CharField(max_length=40, unique=True, validators=[v.validate_tier_name])
    product = models.CharField(
        max_length=63, help_text="The nvidia.com/gpu.product label, e.g. NVIDIA-H100-80GB-HBM3"
    )
    gpu_memory_gib = models.DecimalField(
        max_digits=7,
        decimal_places=2,
        validators=v.between(Decimal(1), Decimal(1024)),
        help_text="Memory of one GPU or MIG slice in GiB, as reported by nvidia-smi (MiB / 1024).",
    )
    resource_name = models.CharField(
        max_length=253, default="nvidia.com/gpu", validators=[v.validate_resource_name]
    )
    gpus_per_node = models.PositiveSmallIntegerField(validators=v.between(1, 64))
    node_labels = models.JSONField(
        default=dict, blank=True, validators=[v.validate_node_labels], help_text="nodeSelector for the pods"
    )
    taints = models.JSONField(
        default=list, blank=True, validators=[v.validate_taints], help_text="Taints the pods must tolerate"
    )
    price_per_gpu_hour = models.DecimalField(
        max_digits=10, decimal_places=4, validators=v.between(Decimal(0), Decimal(1000))
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "GPU tier"

    def __str__(self) -> str:
        return self.name

    @property
    def is_mig(self) -> bool:
        return self.resource_name.startswith("nvidia.com/mig-")


class ModelQuerySet(models.QuerySet):
    def for_user(self, user):
        """Staff see the whole catalog; everyone else sees approved models and retired ones
        (which their running endpoints may still use)."""
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(status__in=MODEL_VISIBLE_TO_TENANTS)


class Model(models.Model):
    """A catalog entry: where the weights come from (pinned), under which licence, and the
    architecture facts that decide how much GPU memory it needs."""

    name = models.CharField(max_length=100, unique=True, help_text="Display name, e.g. Llama-3.1-8B-Instruct")
    source = models.CharField(
        max_length=300,
        validators=[v.validate_model_source],
        help_text="hf://org/name, s3://bucket/path or pvc://claim/path",
    )
    revision = models.CharField(
        max_length=128, help_text="Commit hash (hf://) or object version; never a branch"
    )
    licence = models.CharField(max_length=64)
    parameters = models.BigIntegerField(validators=v.between(1_000_000, 2_000_000_000_000))
    dtype = models.CharField(max_length=8, choices=Dtype.choices, default=Dtype.BF16)
    num_layers = models.PositiveIntegerField(validators=v.between(1, 512))
    num_kv_heads = models.PositiveIntegerField(validators=v.between(1, 256))
    head_dim = models.PositiveIntegerField(validators=v.between(16, 1024))
    max_context = models.PositiveIntegerField(validators=v.between(256, 10_485_760))
    status = models.CharField(max_length=16, choices=ModelStatus.choices, default=ModelStatus.REQUESTED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=v.MAX_TEXT, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    objects = ModelQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        problem = v.revision_problem(self.source or "", self.revision or "")
        if problem:
            raise ValidationError({"revision": problem})

    @property
    def bytes_per_parameter(self) -> Decimal:
        return Dtype(self.dtype).bytes_per_parameter


class RuntimeImage(models.Model):
    """A serving image pinned by tag, digest or both; never a moving tag like 'latest'."""

    repository = models.CharField(max_length=255, validators=[v.validate_image_repository])
    tag = models.CharField(max_length=128, blank=True, validators=[v.validate_image_tag])
    digest = models.CharField(max_length=71, blank=True, validators=[v.validate_image_digest])
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["repository", "tag"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "tag", "digest"], name="one_runtime_image_per_pin"),
            models.CheckConstraint(condition=~Q(tag="", digest=""), name="runtime_image_is_pinned"),
        ]

    def __str__(self) -> str:
        return self.reference

    def clean(self) -> None:
        if not self.tag and not self.digest:
            raise ValidationError({"tag": "give a tag or a digest (or both) to pin the image"})

    @property
    def reference(self) -> str:
        """The image reference for a pod spec: repository[:tag][@digest]."""
        ref = self.repository
        if self.tag:
            ref += f":{self.tag}"
        if self.digest:
            ref += f"@{self.digest}"
        return ref


class TemplateQuerySet(models.QuerySet):
    def for_user(self, user):
        """Staff see every template; members see the open ones and those restricted to one of
        their tenants, as long as the model was ever approved."""
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_staff:
            return self
        from .tenancy import Membership

        tenant_ids = Membership.objects.filter(user=user).values("tenant_id")
        allowed = Template.allowed_tenants.through.objects.filter(tenant_id__in=tenant_ids).values(
            "template_id"
        )
        return self.filter(model__status__in=MODEL_VISIBLE_TO_TENANTS).filter(
            Q(tenant_restricted=False) | Q(pk__in=allowed)
        )


class Template(models.Model):
    """An approved way to serve a model: model × tier × image × vLLM flags × scaling policy.

    The serving fields are fixed once created (endpoints and their quota were admitted against
    them); make a new template to change them. ``tenant_restricted`` decides who may use it:
    off means every tenant, on means only ``allowed_tenants`` (none when the list is empty).
    """

    name = models.CharField(max_length=63, unique=True, validators=[v.validate_dns_label])
    description = models.CharField(max_length=500, blank=True)
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="templates")
    tier = models.ForeignKey(GpuTier, on_delete=models.PROTECT, related_name="templates")
    image = models.ForeignKey(RuntimeImage, on_delete=models.PROTECT, related_name="templates")
    gpus_per_replica = models.PositiveSmallIntegerField(
        default=1, validators=v.between(1, v.MAX_GPUS_PER_REPLICA)
    )
    tensor_parallel_size = models.PositiveSmallIntegerField(
        default=1, validators=v.between(1, v.MAX_GPUS_PER_REPLICA), help_text="Must equal GPUs per replica."
    )
    max_model_len = models.PositiveIntegerField(validators=v.between(256, 10_485_760))
    gpu_memory_utilization = models.DecimalField(
        max_digits=3,
        decimal_places=2,
        default=Decimal("0.90"),
        validators=v.between(Decimal("0.5"), Decimal("0.98")),
    )
    max_num_seqs = models.PositiveIntegerField(default=256, validators=v.between(1, 4096))
    kv_cache_dtype = models.CharField(max_length=8, choices=KvCacheDtype.choices, default=KvCacheDtype.AUTO)
    min_replicas = models.PositiveSmallIntegerField(
        default=1,
        validators=v.between(0, v.MAX_REPLICAS),
        help_text="Lowest min replicas an endpoint may ask for.",
    )
    max_replicas = models.PositiveSmallIntegerField(
        default=4,
        validators=v.between(1, v.MAX_REPLICAS),
        help_text="Highest max replicas an endpoint may ask for.",
    )
    target_queue_depth = models.PositiveIntegerField(
        default=5,
        validators=v.between(1, 1000),
        help_text="Waiting requests per replica the autoscaler aims for.",
    )
    scale_to_zero = models.BooleanField(default=False)
    workload_class = models.CharField(
        max_length=16, choices=WorkloadClass.choices, default=WorkloadClass.INTERACTIVE
    )
    tenant_restricted = models.BooleanField(default=False)
    allowed_tenants = models.ManyToManyField("Tenant", blank=True, related_name="templates")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)

    objects = TemplateQuerySet.as_manager()

    # Fields that decide what runs and what quota an endpoint takes; fixed after creation.
    SERVING_FIELDS = (
        "model",
        "tier",
        "image",
        "gpus_per_replica",
        "tensor_parallel_size",
        "max_model_len",
        "gpu_memory_utilization",
        "max_num_seqs",
        "kv_cache_dtype",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and self.min_replicas > self.max_replicas
        ):
            errors["min_replicas"] = f"must be at most max_replicas ({self.max_replicas})"
        if self.min_replicas == 0 and not self.scale_to_zero:
            errors["min_replicas"] = "must be at least 1 unless scale_to_zero is on"
        if errors:
            raise ValidationError(errors)

    def fit(self) -> capacity.Fit:
        """Capacity fit of one replica of this template (see capacity.py for the arithmetic)."""
        return capacity.fit(
            parameters=self.model.parameters,
            bytes_per_parameter=self.model.bytes_per_parameter,
            num_layers=self.model.num_layers,
            num_kv_heads=self.model.num_kv_heads,
            head_dim=self.model.head_dim,
            max_context=self.model.max_context,
            kv_dtype_bytes=KvCacheDtype(self.kv_cache_dtype).bytes_per_element,
            gpu_memory_gib=self.tier.gpu_memory_gib,
            gpus_per_node=self.tier.gpus_per_node,
            gpus_per_replica=self.gpus_per_replica,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            mig=self.tier.is_mig,
        )

    def forecast(self, min_replicas: int, max_replicas: int) -> capacity.CostForecast:
        return capacity.forecast(
            self.tier.price_per_gpu_hour, self.gpus_per_replica, min_replicas, max_replicas
        )

    def is_available_to(self, tenant) -> bool:
        if not self.tenant_restricted:
            return True
        return self.allowed_tenants.filter(pk=tenant.pk).exists()
