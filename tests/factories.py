"""Small builders for domain rows. They go through endpoints.actions (as the system, actor None)
so tests start from states the portal itself can reach."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from endpoints import actions, dispatch
from endpoints.choices import Dtype, Role
from endpoints.models import Endpoint, GpuTier, Model, RuntimeImage, Template, Tenant

_n = itertools.count(1)

REVISION = "0e9e39f249a16976918f6564b8830bc894c89659"


def make_user(username: str | None = None, *, staff: bool = False):
    username = username or f"user{next(_n)}"
    return get_user_model().objects.create_user(
        username=username, password="pw-not-secret", is_staff=staff, email=f"{username}@example.com"
    )


def make_tenant(slug: str | None = None, *, quota: dict | None = None, members: dict | None = None) -> Tenant:
    """A tenant with QUOTA (set_quota keywords) and MEMBERS ({user: role})."""
    tenant = actions.create_tenant(None, slug=slug or f"tenant{next(_n)}", name="Test tenant")
    if quota:
        actions.set_quota(None, tenant, **quota)
    for user, role in (members or {}).items():
        actions.add_member(None, tenant, user, role)
    return tenant


def roomy_quota(tier: GpuTier, gpus: int = 64) -> dict:
    return {"gpus_total": gpus, "tier_gpus": {tier.name: gpus}, "max_endpoints": 50, "max_replicas": 100}


def make_tier(**fields) -> GpuTier:
    values = {
        "name": f"tier{next(_n)}",
        "product": "NVIDIA-H100-80GB-HBM3",
        "gpu_memory_gib": Decimal(80),
        "resource_name": "nvidia.com/gpu",
        "gpus_per_node": 8,
        "node_labels": {"inference-portal.io/gpu-tier": "h100"},
        "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        "price_per_gpu_hour": Decimal("4.00"),
    }
    values.update(fields)
    return actions.create_gpu_tier(None, **values)


def make_model(*, approved: bool = True, **fields) -> Model:
    """By default an 8B bf16 model shaped like Llama 3.1 8B."""
    values = {
        "name": f"Model-{next(_n)}",
        "source": "hf://meta-llama/Llama-3.1-8B-Instruct",
        "revision": REVISION,
        "licence": "llama3.1",
        "parameters": 8_000_000_000,
        "dtype": Dtype.BF16,
        "num_layers": 32,
        "num_kv_heads": 8,
        "head_dim": 128,
        "max_context": 131_072,
    }
    values.update(fields)
    model = actions.register_model(None, **values)
    return actions.approve_model(None, model) if approved else model


def make_image(**fields) -> RuntimeImage:
    values = {"repository": "vllm/vllm-openai", "tag": f"v0.9.{next(_n)}"}
    values.update(fields)
    return actions.create_runtime_image(None, **values)


def make_template(*, model: Model | None = None, tier: GpuTier | None = None, **fields) -> Template:
    values = {
        "name": f"template-{next(_n)}",
        "model": model or make_model(),
        "tier": tier or make_tier(),
        "image": make_image(),
        "max_model_len": 8192,
        "min_replicas": 1,
        "max_replicas": 8,
    }
    values.update(fields)
    return actions.create_template(None, **values)


def make_endpoint(tenant: Tenant, template: Template, name: str | None = None, **fields) -> Endpoint:
    return actions.request_endpoint(
        None, tenant=tenant, template=template, name=name or f"ep-{next(_n)}", **fields
    )


def member(tenant: Tenant, role: Role = Role.MEMBER, username: str | None = None):
    user = make_user(username)
    actions.add_member(None, tenant, user, role)
    return user


@pytest.fixture(autouse=True)
def sent_tasks(monkeypatch) -> list[tuple[str, int]]:
    """Tasks the actions sent after commit, instead of sending them to Redis (the one seam)."""
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(dispatch, "send_task", lambda name, endpoint_id: sent.append((name, endpoint_id)))
    return sent
