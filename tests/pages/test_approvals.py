"""Staff approval queue: pending models and quota requests, approve or reject with a comment,
and GPU capacity per tier from the clusters."""

from __future__ import annotations

from unittest import mock

import pytest

from endpoints import actions
from endpoints.models import Model, Quota, QuotaRequest
from tests.factories import make_model
from workers.capacity import CapacityReport, TierCapacity

from .conftest import no_external_links, text

pytestmark = pytest.mark.django_db


@pytest.fixture
def pending(world):
    model = make_model(name="Mistral-7B-Instruct", approved=False, licence="apache-2.0")
    request = actions.request_quota(world.alice, world.acme, reason="launch week", tier_gpus={"h100": 16})
    return model, request


def test_staff_see_pending_models_and_quota_requests(world, signed_in, pending):
    html = text(signed_in(world.staff).get("/approvals/"))
    assert "Mistral-7B-Instruct" in html and "apache-2.0" in html
    assert "launch week" in html and "GPUs on h100" in html
    assert 'hx-get="/approvals/capacity/"' in html
    no_external_links(html)


def test_members_are_refused(world, signed_in, pending):
    for user in (world.alice, world.carol):
        assert signed_in(user).get("/approvals/").status_code == 403
        assert signed_in(user).post(f"/approvals/model/{pending[0].pk}/approve/").status_code == 403
    assert Model.objects.get(pk=pending[0].pk).status == "requested"


def test_staff_approve_a_model_with_a_comment(world, signed_in, pending):
    response = signed_in(world.staff).post(
        f"/approvals/model/{pending[0].pk}/approve/", {"note": "licence ok"}
    )
    assert response.status_code == 302
    model = Model.objects.get(pk=pending[0].pk)
    assert (
        model.status == "approved" and model.decision_note == "licence ok" and model.decided_by == world.staff
    )


def test_staff_approve_a_quota_request_and_the_quota_changes(world, signed_in, pending):
    signed_in(world.staff).post(f"/approvals/quota/{pending[1].pk}/approve/", {"note": "fine"})
    assert QuotaRequest.objects.get(pk=pending[1].pk).status == "approved"
    assert Quota.objects.get(tenant=world.acme).tier_gpus["h100"] == 16


def test_staff_reject_with_a_comment_the_tenant_then_reads(world, signed_in, pending):
    signed_in(world.staff).post(f"/approvals/quota/{pending[1].pk}/reject/", {"note": "not this month"})
    assert "not this month" in text(signed_in(world.alice).get("/quota/"))


def test_deciding_twice_says_why_it_cannot(world, signed_in, pending):
    c = signed_in(world.staff)
    c.post(f"/approvals/model/{pending[0].pk}/approve/")
    html = text(c.post(f"/approvals/model/{pending[0].pk}/reject/", follow=True))
    assert "Could not reject model Mistral-7B-Instruct" in html


def test_gpu_capacity_per_tier(world, signed_in):
    report = CapacityReport(
        tiers=[TierCapacity("h100", nodes=2, allocatable=16, requested=12)], clusters_read=1
    )
    with mock.patch("workers.capacity.gpu_capacity", return_value=report):
        html = text(signed_in(world.staff).get("/approvals/capacity/"))
    assert "h100" in html and ">16<" in html and ">12<" in html and "<strong>4</strong>" in html


def test_gpu_capacity_degrades_when_the_cluster_is_unreachable(world, signed_in, settings):
    settings.KUBECONFIG = "/nonexistent/kubeconfig"
    from workers.kube import client

    client._clients.pop("host", None)
    try:
        html = text(signed_in(world.staff).get("/approvals/capacity/"))
    finally:
        client._clients.pop("host", None)
    assert "The cluster could not be reached" in html and "host cluster" in html


def test_another_tenants_endpoint_answers_404_for_members(world, signed_in):
    assert signed_in(world.grace).get(f"/endpoints/{world.acme_endpoint.pk}/").status_code == 404
