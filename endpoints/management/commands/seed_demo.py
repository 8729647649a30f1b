"""Load demo data: GPU tiers, approved models with their real architecture facts, a runtime
image, templates that fit, two tenants with members and quotas, and a staff user.

Safe to run again: what exists is left alone (passwords too, unless --reset-passwords).
"""

from __future__ import annotations

import hashlib
import secrets
from decimal import Decimal
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from endpoints import actions
from endpoints.choices import Dtype, ModelStatus, Role, WorkloadClass
from endpoints.models import GpuTier, Membership, Model, RuntimeImage, Template, Tenant

GPU_TAINT = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
TIER_LABEL = "inference-portal.io/gpu-tier"

# Memory is what nvidia-smi reports, in GiB (the local platform's deploy/local/gpu-tiers.yaml
# has the same MiB figures): "80GB" H100 = 81559 MiB, L40S = 46068 MiB, MIG 1g.10gb = 9728 MiB.
TIERS = [
    dict(
        name="h100-80gb",
        product="NVIDIA-H100-80GB-HBM3",
        gpu_memory_gib=Decimal("79.65"),
        resource_name="nvidia.com/gpu",
        gpus_per_node=8,
        price_per_gpu_hour=Decimal("4.00"),
    ),
    dict(
        name="l40s-48gb",
        product="NVIDIA-L40S",
        gpu_memory_gib=Decimal("44.99"),
        resource_name="nvidia.com/gpu",
        gpus_per_node=4,
        price_per_gpu_hour=Decimal("1.20"),
    ),
    dict(
        name="a100-mig-1g10gb",
        product="NVIDIA-A100-SXM4-80GB-MIG-1g.10gb",
        gpu_memory_gib=Decimal("9.50"),
        resource_name="nvidia.com/mig-1g.10gb",
        gpus_per_node=7,
        price_per_gpu_hour=Decimal("0.50"),
    ),
]

# Architecture facts from each model's config.json. Parameter counts as published.
MODELS = [
    dict(
        name="Llama-3.1-8B-Instruct",
        source="hf://meta-llama/Llama-3.1-8B-Instruct",
        licence="llama3.1",
        parameters=8_030_000_000,
        dtype=Dtype.BF16,
        num_layers=32,
        num_kv_heads=8,
        head_dim=128,
        max_context=131_072,
    ),
    dict(
        name="Qwen2.5-7B-Instruct",
        source="hf://Qwen/Qwen2.5-7B-Instruct",
        licence="apache-2.0",
        parameters=7_620_000_000,
        dtype=Dtype.BF16,
        num_layers=28,
        num_kv_heads=4,
        head_dim=128,
        max_context=32_768,
    ),
    dict(
        name="Mistral-7B-Instruct-v0.3",
        source="hf://mistralai/Mistral-7B-Instruct-v0.3",
        licence="apache-2.0",
        parameters=7_250_000_000,
        dtype=Dtype.BF16,
        num_layers=32,
        num_kv_heads=8,
        head_dim=128,
        max_context=32_768,
    ),
    dict(
        name="Llama-3.1-70B-Instruct-FP8",
        source="hf://neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8",
        licence="llama3.1",
        parameters=70_600_000_000,
        dtype=Dtype.FP8,
        num_layers=80,
        num_kv_heads=8,
        head_dim=128,
        max_context=131_072,
    ),
    dict(
        name="Qwen2.5-0.5B-Instruct",
        source="hf://Qwen/Qwen2.5-0.5B-Instruct",
        licence="apache-2.0",
        parameters=494_000_000,
        dtype=Dtype.BF16,
        num_layers=24,
        num_kv_heads=2,
        head_dim=64,
        max_context=32_768,
    ),
]

IMAGE = dict(repository="vllm/vllm-openai", tag="v0.9.2")

TEMPLATES = [
    dict(
        name="llama-3-1-8b-h100",
        model="Llama-3.1-8B-Instruct",
        tier="h100-80gb",
        max_model_len=32_768,
        description="Llama 3.1 8B on one H100, 32k context, for chat.",
    ),
    dict(
        name="qwen2-5-7b-l40s",
        model="Qwen2.5-7B-Instruct",
        tier="l40s-48gb",
        max_model_len=32_768,
        description="Qwen2.5 7B on one L40S, 32k context.",
    ),
    dict(
        name="mistral-7b-l40s-batch",
        model="Mistral-7B-Instruct-v0.3",
        tier="l40s-48gb",
        max_model_len=16_384,
        workload_class=WorkloadClass.BATCH,
        min_replicas=0,
        scale_to_zero=True,
        max_num_seqs=512,
        description="Mistral 7B for batch jobs; scales to zero when idle.",
    ),
    dict(
        name="llama-3-1-70b-fp8-h100x2",
        model="Llama-3.1-70B-Instruct-FP8",
        tier="h100-80gb",
        gpus_per_replica=2,
        tensor_parallel_size=2,
        max_model_len=16_384,
        max_replicas=2,
        tenant_restricted=True,
        allowed=["acme"],
        description="Llama 3.1 70B in FP8 over two H100s.",
    ),
    dict(
        name="qwen2-5-0-5b-mig",
        model="Qwen2.5-0.5B-Instruct",
        tier="a100-mig-1g10gb",
        max_model_len=32_768,
        min_replicas=0,
        max_replicas=7,
        scale_to_zero=True,
        description="A small model on one MIG slice.",
    ),
]

TENANTS = [
    dict(
        slug="acme",
        name="Acme Corporation",
        quota=dict(
            gpus_total=16, tier_gpus={"h100-80gb": 8, "l40s-48gb": 8}, max_endpoints=10, max_replicas=20
        ),
    ),
    dict(
        slug="globex",
        name="Globex",
        quota=dict(
            gpus_total=11, tier_gpus={"l40s-48gb": 4, "a100-mig-1g10gb": 7}, max_endpoints=5, max_replicas=12
        ),
    ),
]

# (username, staff, [(tenant, role), ...])
USERS = [
    ("admin", True, []),
    ("alice", False, [("acme", Role.OWNER)]),
    ("bob", False, [("acme", Role.MEMBER), ("globex", Role.MEMBER)]),
    ("carol", False, [("acme", Role.VIEWER)]),
    ("grace", False, [("globex", Role.OWNER)]),
]


def demo_revision(name: str) -> str:
    """A fixed 40-hex revision for a demo model. DEMO PIN: not the real commit; pin the real one
    (the model page's "Files and versions" history) before serving these weights."""
    return hashlib.sha1(f"demo-pin:{name}".encode(), usedforsecurity=False).hexdigest()


class Command(BaseCommand):
    help = "Load demo tiers, models, templates, tenants and users (idempotent); print the logins."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--reset-passwords", action="store_true", help="give existing demo users new passwords"
        )
        parser.add_argument(
            "--credentials-file",
            help="keep the demo passwords in this file (mode 600): reuse those it holds, record new ones, "
            "and always print them (used by `make demo`)",
        )

    @transaction.atomic
    def handle(
        self, *args, reset_passwords: bool = False, credentials_file: str | None = None, **options
    ) -> None:
        known = self._read_credentials(credentials_file)
        logins = self._users(reset_passwords, known if credentials_file else None)
        if credentials_file:
            self._write_credentials(credentials_file, {**known, **logins})
            logins = {**known, **logins}
        staff = get_user_model().objects.get(username="admin")

        for tier in TIERS:
            if not GpuTier.objects.filter(name=tier["name"]).exists():
                actions.create_gpu_tier(
                    staff,
                    **tier,
                    node_labels={TIER_LABEL: tier["name"], "nvidia.com/gpu.product": tier["product"]},
                    taints=GPU_TAINT,
                )
        image = RuntimeImage.objects.filter(**IMAGE).first() or actions.create_runtime_image(staff, **IMAGE)
        for spec in MODELS:
            model = Model.objects.filter(name=spec["name"]).first()
            if model is None:
                model = actions.register_model(staff, **spec, revision=demo_revision(spec["name"]))
            if model.status == ModelStatus.REQUESTED:
                actions.approve_model(staff, model, "demo data")
        for spec in TENANTS:
            tenant = Tenant.objects.filter(slug=spec["slug"]).first()
            if tenant is None:
                tenant = actions.create_tenant(staff, slug=spec["slug"], name=spec["name"])
                actions.set_quota(staff, tenant, **spec["quota"])
        for username, _staff, roles in USERS:
            user = get_user_model().objects.get(username=username)
            for slug, role in roles:
                tenant = Tenant.objects.get(slug=slug)
                if not Membership.objects.filter(tenant=tenant, user=user).exists():
                    actions.add_member(staff, tenant, user, role)
        for spec in TEMPLATES:
            spec = dict(spec)
            if Template.objects.filter(name=spec["name"]).exists():
                continue
            allowed = [Tenant.objects.get(slug=slug) for slug in spec.pop("allowed", [])]
            actions.create_template(
                staff,
                model=Model.objects.get(name=spec.pop("model")),
                tier=GpuTier.objects.get(name=spec.pop("tier")),
                image=image,
                allowed_tenants=allowed,
                **spec,
            )

        self.stdout.write(self.style.SUCCESS("Demo data is in place."))
        self.stdout.write("Logins (the passwords are shown only when set; rerun with --reset-passwords):")
        for username, _staff, roles in USERS:
            where = ", ".join(f"{role} of {slug}" for slug, role in roles) or "staff (admin site at /admin/)"
            self.stdout.write(f"  {username:<8} {logins.get(username, '(unchanged)'):<20} {where}")

    @staticmethod
    def _read_credentials(path: str | None) -> dict[str, str]:
        if not path or not Path(path).exists():
            return {}
        pairs = (line.split(":", 1) for line in Path(path).read_text().splitlines() if ":" in line)
        return {user: password for user, password in pairs}

    @staticmethod
    def _write_credentials(path: str, logins: dict[str, str]) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(mode=0o600, exist_ok=True)
        target.chmod(0o600)
        target.write_text("".join(f"{user}:{password}\n" for user, password in sorted(logins.items())))

    def _users(self, reset: bool, known: dict[str, str] | None = None) -> dict[str, str]:
        """Create the demo users. Passwords are set for new users, on --reset-passwords, and (with a
        credentials file) for users the file does not know, so every login it prints works."""
        passwords: dict[str, str] = {}
        User = get_user_model()  # noqa: N806
        for username, staff, _roles in USERS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={"is_staff": staff, "is_superuser": staff, "email": f"{username}@example.com"},
            )
            unknown = known is not None and (
                username not in known or not user.check_password(known[username])
            )
            if created or reset or unknown:
                password = secrets.token_urlsafe(12)
                user.set_password(password)
                user.save(update_fields=["password"])
                passwords[username] = password
        return passwords
