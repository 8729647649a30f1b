"""The admin goes through the actions: bulk decisions, checked template creation, audit."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from endpoints import actions
from endpoints.models import AuditEvent, Model, Quota, QuotaRequest, Template
from tests.factories import (
    make_endpoint,
    make_image,
    make_model,
    make_template,
    make_tenant,
    make_tier,
    make_user,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    user = make_user("boss", staff=True)
    user.is_superuser = True
    user.save()
    client.force_login(user)
    return client


def test_every_admin_page_opens(staff_client):
    tier = make_tier()
    tenant = make_tenant(
        quota={"gpus_total": 1, "tier_gpus": {tier.name: 1}, "max_endpoints": 1, "max_replicas": 1}
    )
    endpoint = make_endpoint(tenant, make_template(tier=tier), "chat")
    actions.record_running_replicas(endpoint.pk, 1)
    actions.issue_api_token(None, make_user(), name="ci")
    actions.add_member(None, tenant, make_user(), "viewer")
    QuotaRequest.objects.create(tenant=tenant, gpus_total=2, reason="x")
    for model in admin.site._registry:
        if model._meta.app_label != "endpoints":
            continue
        name = f"admin:endpoints_{model._meta.model_name}_changelist"
        assert staff_client.get(reverse(name)).status_code == 200, name
        obj = model.objects.first()
        if obj is not None:
            change = reverse(f"admin:endpoints_{model._meta.model_name}_change", args=[obj.pk])
            assert staff_client.get(change).status_code == 200, change


def test_staff_approve_models_in_bulk(staff_client):
    first, second = make_model(approved=False), make_model(approved=False)
    rejected = make_model(approved=False)
    staff_client.post(
        reverse("admin:endpoints_model_changelist"),
        {"action": "reject", "_selected_action": [rejected.pk]},
    )
    response = staff_client.post(
        reverse("admin:endpoints_model_changelist"),
        {"action": "approve", "_selected_action": [first.pk, second.pk, rejected.pk]},
        follow=True,
    )
    statuses = dict(Model.objects.values_list("pk", "status"))
    assert (statuses[first.pk], statuses[second.pk], statuses[rejected.pk]) == (
        "approved",
        "approved",
        "rejected",
    )
    page = response.content.decode()
    assert "Approved 2 of 3" in page and "cannot go from rejected to approved" in page
    assert AuditEvent.objects.filter(verb="model.approve", actor_name="boss").count() == 2


def test_staff_approve_quota_requests_in_bulk(staff_client):
    tenant = make_tenant(quota={"gpus_total": 1})
    request = QuotaRequest.objects.create(tenant=tenant, gpus_total=12, reason="launch")
    staff_client.post(
        reverse("admin:endpoints_quotarequest_changelist"),
        {"action": "approve", "_selected_action": [request.pk]},
    )
    assert QuotaRequest.objects.get(pk=request.pk).status == "approved"
    assert Quota.objects.get(tenant=tenant).gpus_total == 12


def test_the_admin_refuses_a_template_that_does_not_fit_with_the_numbers(staff_client):
    tier = make_tier(gpu_memory_gib=24)
    model = make_model()
    data = {
        "name": "too-long",
        "model": model.pk,
        "tier": tier.pk,
        "image": make_image().pk,
        "gpus_per_replica": 1,
        "tensor_parallel_size": 1,
        "max_model_len": 131072,
        "gpu_memory_utilization": "0.90",
        "max_num_seqs": 256,
        "kv_cache_dtype": "auto",
        "min_replicas": 1,
        "max_replicas": 2,
        "target_queue_depth": 5,
        "workload_class": "interactive",
    }
    response = staff_client.post(reverse("admin:endpoints_template_add"), data)
    assert response.status_code == 200
    assert "at most 38492 tokens fit" in response.content.decode()
    assert not Template.objects.filter(name="too-long").exists()
    data["max_model_len"] = 16384
    response = staff_client.post(reverse("admin:endpoints_template_add"), data)
    assert response.status_code == 302
    assert AuditEvent.objects.filter(verb="template.create", actor_name="boss").exists()
