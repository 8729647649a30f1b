"""GPU tiers, runtime images, models and templates: tenants read, staff write and decide."""

from __future__ import annotations

import pytest

from endpoints.models import GpuTier, Model, RuntimeImage, Template
from tests.api.conftest import error
from tests.factories import REVISION, make_model

TIER = {
    "name": "b200",
    "product": "NVIDIA-B200",
    "gpu_memory_gib": "178.00",
    "resource_name": "nvidia.com/gpu",
    "gpus_per_node": 8,
    "node_labels": {"inference-portal.io/gpu-tier": "b200"},
    "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    "price_per_gpu_hour": "6.50",
}
MODEL = {
    "name": "Qwen2.5-7B-Instruct",
    "source": "hf://Qwen/Qwen2.5-7B-Instruct",
    "revision": REVISION,
    "licence": "apache-2.0",
    "parameters": 7_620_000_000,
    "dtype": "bf16",
    "num_layers": 28,
    "num_kv_heads": 4,
    "head_dim": 128,
    "max_context": 32768,
}


# GPU tiers ----------------------------------------------------------------------------------


def test_everyone_reads_gpu_tiers_and_only_staff_add_them(world, as_user):
    assert [t["name"] for t in as_user(world.carol).get("/api/v1/gpu-tiers/").json()["results"]] == [
        "h100",
        "l40s",
    ]
    refused = as_user(world.alice).post("/api/v1/gpu-tiers/", TIER, format="json")
    assert refused.status_code == 403 and error(refused)["code"] == "permission_denied"
    made = as_user(world.staff).post("/api/v1/gpu-tiers/", TIER, format="json")
    assert made.status_code == 201 and made.json()["price_per_gpu_hour"] == "6.5000"
    assert as_user(world.bob).get("/api/v1/gpu-tiers/b200/").json()["gpus_per_node"] == 8


def test_an_unknown_gpu_tier_answers_404(world, as_user):
    # Tiers belong to no tenant, so "another tenant's tier" does not exist; unknown ones are 404.
    response = as_user(world.bob).get("/api/v1/gpu-tiers/a100/")
    assert response.status_code == 404 and error(response)["code"] == "not_found"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"name": "B200"}, "name", "must be a DNS label"),
        ({"price_per_gpu_hour": "-1"}, "price_per_gpu_hour", "must be between 0 and 1000"),
        ({"gpus_per_node": 65}, "gpus_per_node", "must be between 1 and 64"),
        ({"taints": [{"key": "x", "effect": "Never"}]}, "taints", "effect must be one of"),
        ({"product": "x" * 64}, "product", "must be at most 63 characters"),
    ],
)
def test_bad_gpu_tier_input_names_the_field(world, as_user, change, field, message):
    response = as_user(world.staff).post("/api/v1/gpu-tiers/", {**TIER, **change}, format="json")
    assert response.status_code == 400
    assert error(response)["fields"][field][0].startswith(message)


def test_a_retried_gpu_tier_create_creates_one(world, as_user):
    staff = as_user(world.staff)
    first = staff.post("/api/v1/gpu-tiers/", TIER, format="json", HTTP_IDEMPOTENCY_KEY="tier-1")
    second = staff.post("/api/v1/gpu-tiers/", TIER, format="json", HTTP_IDEMPOTENCY_KEY="tier-1")
    assert (first.status_code, second.status_code, second.json()) == (201, 201, first.json())
    assert GpuTier.objects.filter(name="b200").count() == 1


# Runtime images -----------------------------------------------------------------------------


def test_runtime_images_are_read_by_all_and_pinned_by_staff(world, as_user):
    assert as_user(world.carol).get("/api/v1/runtime-images/").json()["count"] == 2
    payload = {"repository": "vllm/vllm-openai", "tag": "v0.10.0", "digest": "sha256:" + "b" * 64}
    assert as_user(world.bob).post("/api/v1/runtime-images/", payload).status_code == 403
    made = as_user(world.staff).post("/api/v1/runtime-images/", payload, HTTP_IDEMPOTENCY_KEY="img")
    again = as_user(world.staff).post("/api/v1/runtime-images/", payload, HTTP_IDEMPOTENCY_KEY="img")
    assert made.status_code == 201 and again.json() == made.json()
    assert made.json()["reference"] == "vllm/vllm-openai:v0.10.0@sha256:" + "b" * 64
    assert RuntimeImage.objects.filter(tag="v0.10.0").count() == 1
    assert as_user(world.bob).get("/api/v1/runtime-images/99999/").status_code == 404


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"repository": "vllm/vllm-openai", "tag": "latest"}, "tag"),
        ({"repository": "vllm/vllm-openai"}, "tag"),
        ({"repository": "Not A Repo", "tag": "v1"}, "repository"),
        ({"repository": "vllm/vllm-openai", "digest": "sha256:abc"}, "digest"),
    ],
)
def test_bad_runtime_images_are_refused_naming_the_field(world, as_user, payload, field):
    response = as_user(world.staff).post("/api/v1/runtime-images/", payload)
    assert response.status_code == 400 and field in error(response)["fields"]


# Models -------------------------------------------------------------------------------------


def test_tenants_see_approved_and_retired_models_only(world, as_user):
    hidden = make_model(name="Unvetted", approved=False)
    bob = as_user(world.bob)
    names = [m["name"] for m in bob.get("/api/v1/models/").json()["results"]]
    assert "Unvetted" not in names and "Llama-3.1-8B" in names
    assert bob.get(f"/api/v1/models/{hidden.pk}/").status_code == 404
    assert as_user(world.staff).get(f"/api/v1/models/{hidden.pk}/").status_code == 200


def test_staff_add_a_model_then_approve_reject_or_retire_it(world, as_user):
    staff = as_user(world.staff)
    made = staff.post("/api/v1/models/", MODEL, format="json")
    assert made.status_code == 201 and made.json()["status"] == "requested"
    url = f"/api/v1/models/{made.json()['id']}/"
    approved = staff.post(f"{url}approve/", {"note": "licence ok"}, HTTP_IDEMPOTENCY_KEY="approve-1")
    replayed = staff.post(f"{url}approve/", {"note": "licence ok"}, HTTP_IDEMPOTENCY_KEY="approve-1")
    assert approved.status_code == 200 and replayed.json() == approved.json()
    assert (approved.json()["status"], approved.json()["decided_by"]) == ("approved", "root")
    twice = staff.post(f"{url}approve/")
    assert twice.status_code == 409 and error(twice)["code"] == "illegal_transition"
    retired = staff.post(f"{url}retire/", {"note": "replaced"})
    assert retired.json()["status"] == "retired"
    rejected = staff.post(f"/api/v1/models/{make_model(approved=False).pk}/reject/", {"note": "no"})
    assert rejected.json()["status"] == "rejected"


def test_tenants_cannot_add_or_decide_on_models(world, as_user):
    pending = make_model(approved=False)
    alice = as_user(world.alice)
    assert alice.post("/api/v1/models/", MODEL, format="json").status_code == 403
    assert alice.post(f"/api/v1/models/{pending.pk}/approve/").status_code == 403
    assert Model.objects.get(pk=pending.pk).status == "requested"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"revision": "main"}, "revision", "must be a fixed revision, not the moving name 'main'"),
        ({"source": "ftp://x/y"}, "source", "must start with hf://, s3:// or pvc://"),
        ({"num_kv_heads": 0}, "num_kv_heads", "must be between 1 and 256"),
        ({"dtype": "fp4"}, "dtype", 'must be one of bf16, fp16, fp8, int8, awq, gptq, int4 (got "fp4")'),
        ({"licence": "x" * 65}, "licence", "must be at most 64 characters"),
    ],
)
def test_bad_model_input_names_the_field(world, as_user, change, field, message):
    response = as_user(world.staff).post("/api/v1/models/", {**MODEL, **change}, format="json")
    assert response.status_code == 400
    assert error(response)["fields"][field] == [message]


def test_a_decision_note_is_bounded(world, as_user):
    pending = make_model(approved=False)
    response = as_user(world.staff).post(f"/api/v1/models/{pending.pk}/reject/", {"note": "x" * 1001})
    assert response.status_code == 400
    assert error(response)["fields"]["note"] == ["must be at most 1000 characters"]


# Templates ----------------------------------------------------------------------------------


def template_payload(world, **change) -> dict:
    return {
        "name": "llama-long",
        "model": world.template.model_id,
        "tier": "h100",
        "image": world.template.image_id,
        "gpus_per_replica": 1,
        "tensor_parallel_size": 1,
        "max_model_len": 32768,
        **change,
    }


def test_a_template_restricted_to_another_tenant_answers_404(world, as_user):
    bob = as_user(world.bob)
    assert [t["name"] for t in bob.get("/api/v1/templates/").json()["results"]] == ["llama-h100"]
    assert bob.get("/api/v1/templates/secret-h100/").status_code == 404
    grace = as_user(world.grace)
    assert grace.get("/api/v1/templates/secret-h100/").status_code == 200
    assert "allowed_tenants" not in grace.get("/api/v1/templates/secret-h100/").json()
    assert as_user(world.staff).get("/api/v1/templates/secret-h100/").json()["allowed_tenants"] == ["globex"]


def test_staff_create_a_template_that_fits_and_see_its_numbers(world, as_user):
    staff = as_user(world.staff)
    payload = template_payload(world, allowed_tenants=["acme"], tenant_restricted=True)
    first = staff.post("/api/v1/templates/", payload, format="json", HTTP_IDEMPOTENCY_KEY="t-1")
    second = staff.post("/api/v1/templates/", payload, format="json", HTTP_IDEMPOTENCY_KEY="t-1")
    assert first.status_code == 201, first.json()
    assert second.json() == first.json() and Template.objects.filter(name="llama-long").count() == 1
    capacity = first.json()["capacity"]
    assert capacity["fits"] and capacity["sequences_at_max_model_len"] == 13  # 451,369 tokens // 32,768
    assert first.json()["allowed_tenants"] == ["acme"]
    assert as_user(world.bob).get("/api/v1/templates/llama-long/").status_code == 200
    assert as_user(world.grace).get("/api/v1/templates/llama-long/").status_code == 404


def test_a_template_that_cannot_hold_one_sequence_is_refused_with_the_numbers(world, as_user):
    response = as_user(world.staff).post(
        "/api/v1/templates/",
        template_payload(world, tier="l40s", max_model_len=131072, gpu_memory_utilization="0.50"),
        format="json",
    )
    assert response.status_code == 400
    body = error(response)
    assert "max_model_len" in body["fields"] and "tokens fit" in body["fields"]["max_model_len"][0]
    assert body["details"]["capacity"]["fits"] is False
    assert body["details"]["capacity"]["kv_cache_bytes_per_token"] == 131072


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tensor_parallel_size": 2}, "tensor_parallel_size"),
        ({"name": "Llama Long"}, "name"),
        ({"gpu_memory_utilization": "0.99"}, "gpu_memory_utilization"),
        ({"tier": "nope"}, "tier"),
        ({"min_replicas": 0}, "min_replicas"),
        ({"description": "x" * 501}, "description"),
    ],
)
def test_bad_template_input_names_the_field(world, as_user, change, field):
    response = as_user(world.staff).post(
        "/api/v1/templates/", template_payload(world, **change), format="json"
    )
    assert response.status_code == 400
    assert field in error(response)["fields"], error(response)


def test_a_template_needs_an_approved_model(world, as_user):
    pending = make_model(approved=False)
    response = as_user(world.staff).post(
        "/api/v1/templates/", template_payload(world, model=pending.pk), format="json"
    )
    assert response.status_code == 400
    assert error(response)["fields"]["model"] == [
        f"{pending.name} is requested; only approved models back templates"
    ]
    assert (
        as_user(world.bob).post("/api/v1/templates/", template_payload(world), format="json").status_code
        == 403
    )
