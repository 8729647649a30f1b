from __future__ import annotations

import pytest

from endpoints.models import Quota, QuotaRequest
from tests.api.conftest import error

REQUESTS = "/api/v1/quota-requests/"


def test_members_see_their_tenants_quota_with_what_is_in_use(world, as_user):
    body = as_user(world.carol).get("/api/v1/quotas/").json()
    assert [q["tenant"] for q in body["results"]] == ["acme"]
    acme = as_user(world.carol).get("/api/v1/quotas/acme/").json()
    assert (acme["gpus_total"], acme["tier_gpus"]) == (8, {"h100": 8})
    assert acme["usage"] == {"gpus_total": 1, "tier_gpus": {"h100": 1}, "endpoints": 1, "replicas": 1}
    assert as_user(world.staff).get("/api/v1/quotas/").json()["count"] == 2


def test_another_tenants_quota_answers_404(world, as_user):
    response = as_user(world.bob).get("/api/v1/quotas/globex/")
    assert response.status_code == 404 and error(response)["code"] == "not_found"


def test_a_member_asks_for_more_and_staff_approve_it(world, as_user):
    bob = as_user(world.bob)
    made = bob.post(
        REQUESTS, {"gpus_total": 16, "tier_gpus": {"h100": 16}, "reason": "launch"}, format="json"
    )
    assert made.status_code == 201, made.json()
    assert (made.json()["tenant"], made.json()["status"], made.json()["requested_by"]) == (
        "acme",
        "pending",
        "bob",
    )
    url = f"{REQUESTS}{made.json()['id']}/"
    assert bob.post(f"{url}approve/").status_code == 403
    approved = as_user(world.staff).post(f"{url}approve/", {"note": "go"})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    quota = Quota.objects.get(tenant=world.acme)
    assert (quota.gpus_total, quota.tier_gpus, quota.max_endpoints) == (16, {"h100": 16}, 5)
    again = as_user(world.staff).post(f"{url}reject/")
    assert again.status_code == 409 and error(again)["code"] == "illegal_transition"


def test_staff_reject_with_a_note(world, as_user):
    made = as_user(world.bob).post(REQUESTS, {"max_endpoints": 50, "reason": "many"}, format="json").json()
    rejected = as_user(world.staff).post(f"{REQUESTS}{made['id']}/reject/", {"note": "too many"})
    assert (rejected.json()["status"], rejected.json()["decision_note"]) == ("rejected", "too many")
    assert Quota.objects.get(tenant=world.acme).max_endpoints == 5


def test_another_tenants_quota_requests_answer_404(world, as_user):
    theirs = as_user(world.grace).post(REQUESTS, {"gpus_total": 9, "reason": "x"}, format="json").json()
    bob = as_user(world.bob)
    assert bob.get(f"{REQUESTS}{theirs['id']}/").status_code == 404
    assert bob.get(REQUESTS).json()["count"] == 0
    assert bob.get(REQUESTS, {"tenant": "globex"}).json()["count"] == 0
    assert as_user(world.staff).get(REQUESTS, {"status": "pending"}).json()["count"] == 1


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"gpus_total": 1, "reason": "x" * 1001}, "reason", "must be at most 1000 characters"),
        ({"gpus_total": 1}, "reason", "is required"),
        ({"gpus_total": -1, "reason": "x"}, "gpus_total", "must be between 0 and 10000"),
        ({"tier_gpus": {"a100": 4}, "reason": "x"}, "tier_gpus", "names unknown GPU tiers: a100"),
        (
            {"tier_gpus": {"h100": "four"}, "reason": "x"},
            "tier_gpus",
            "tier 'h100': GPUs must be a whole number",
        ),
        ({"reason": "x"}, "non_field_errors", "ask for at least one limit"),
        ({"gpus_total": 1, "reason": "x", "tenant": "globex"}, "tenant", "names no tenant of yours: globex"),
    ],
)
def test_bad_quota_requests_name_the_field(world, as_user, payload, field, message):
    response = as_user(world.bob).post(REQUESTS, payload, format="json")
    assert response.status_code == 400
    assert error(response)["fields"][field][0].startswith(message), error(response)


def test_viewers_cannot_ask_for_quota(world, as_user):
    response = as_user(world.carol).post(REQUESTS, {"gpus_total": 9, "reason": "x"}, format="json")
    assert response.status_code == 403


def test_a_retried_quota_request_is_made_once(world, as_user):
    bob = as_user(world.bob)
    payload = {"gpus_total": 9, "reason": "retry"}
    first = bob.post(REQUESTS, payload, format="json", HTTP_IDEMPOTENCY_KEY="q-1")
    second = bob.post(REQUESTS, payload, format="json", HTTP_IDEMPOTENCY_KEY="q-1")
    assert (first.status_code, second.status_code, second.json()) == (201, 201, first.json())
    assert QuotaRequest.objects.filter(reason="retry").count() == 1
    approve = f"{REQUESTS}{first.json()['id']}/approve/"
    staff = as_user(world.staff)
    assert (
        staff.post(approve, HTTP_IDEMPOTENCY_KEY="a-1").json()
        == staff.post(approve, HTTP_IDEMPOTENCY_KEY="a-1").json()
    )
