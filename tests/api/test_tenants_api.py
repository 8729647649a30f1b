from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from endpoints import actions
from endpoints.models import Membership, Quota, Tenant
from tests.api.conftest import error
from tests.factories import make_user


def members(tenant: str) -> str:
    return f"/api/v1/tenants/{tenant}/members/"


def test_people_see_their_tenants_with_their_role(world, as_user):
    body = as_user(world.dual).get("/api/v1/tenants/").json()
    assert [(t["slug"], t["role"]) for t in body["results"]] == [("acme", "member"), ("globex", "member")]
    assert as_user(world.carol).get("/api/v1/tenants/acme/").json()["role"] == "viewer"
    assert as_user(world.carol).get("/api/v1/tenants/acme/").json()["accrued_cost"] == "0.00"


def test_another_tenant_answers_404_and_so_do_its_members(world, as_user):
    bob = as_user(world.bob)
    for response in (
        bob.get("/api/v1/tenants/globex/"),
        bob.get(members("globex")),
        bob.get(f"{members('globex')}grace/"),
        bob.post(members("globex"), {"username": "bob", "role": "owner"}),
        bob.delete(f"{members('globex')}grace/"),
    ):
        assert response.status_code == 404, response.content
    assert not Membership.objects.filter(tenant=world.globex, user=world.bob).exists()


def test_staff_create_tenants_with_a_zero_quota(world, as_user):
    staff = as_user(world.staff)
    first = staff.post("/api/v1/tenants/", {"slug": "initech", "name": "Initech"}, HTTP_IDEMPOTENCY_KEY="t")
    second = staff.post("/api/v1/tenants/", {"slug": "initech", "name": "Initech"}, HTTP_IDEMPOTENCY_KEY="t")
    assert first.status_code == 201 and second.json() == first.json()
    assert Quota.objects.get(tenant__slug="initech").gpus_total == 0
    assert as_user(world.alice).post("/api/v1/tenants/", {"slug": "mine", "name": "x"}).status_code == 403


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"slug": "big-corp", "name": "x"}, "slug", "must be lowercase letters and digits only"),
        ({"slug": "a" * 21, "name": "x"}, "slug", "must be at most 20 characters"),
        ({"slug": "acme", "name": "x"}, "slug", "tenant with this slug already exists."),
        ({"slug": "ok", "name": "x" * 101}, "name", "must be at most 100 characters"),
    ],
)
def test_bad_tenant_input_names_the_field(world, as_user, payload, field, message):
    response = as_user(world.staff).post("/api/v1/tenants/", payload)
    assert response.status_code == 400
    assert error(response)["fields"][field][0].startswith(message), error(response)


def test_everyone_in_the_tenant_reads_the_members(world, as_user):
    body = as_user(world.carol).get(members("acme")).json()
    assert {(m["username"], m["role"]) for m in body["results"]} == {
        ("alice", "owner"),
        ("bob", "member"),
        ("carol", "viewer"),
        ("dual", "member"),
    }


def test_owners_add_change_and_remove_members(world, as_user):
    make_user("erin")
    alice = as_user(world.alice)
    first = alice.post(members("acme"), {"username": "erin", "role": "viewer"}, HTTP_IDEMPOTENCY_KEY="m-1")
    second = alice.post(members("acme"), {"username": "erin", "role": "viewer"}, HTTP_IDEMPOTENCY_KEY="m-1")
    assert first.status_code == 201 and second.json() == first.json()
    duplicate = alice.post(members("acme"), {"username": "erin"})
    assert duplicate.status_code == 409 and error(duplicate)["fields"] == {
        "user": ["is already a member of tenant acme"]
    }
    changed = alice.patch(f"{members('acme')}erin/", {"role": "member"})
    assert changed.status_code == 200 and changed.json()["role"] == "member"
    assert alice.delete(f"{members('acme')}erin/").status_code == 204
    assert not Membership.objects.filter(tenant=world.acme, user__username="erin").exists()


def test_members_cannot_manage_members_and_the_last_owner_stays(world, as_user):
    make_user("erin")
    bob = as_user(world.bob)
    refused = bob.post(members("acme"), {"username": "erin"})
    assert refused.status_code == 403 and "only an owner of tenant acme" in error(refused)["message"]
    assert bob.patch(f"{members('acme')}carol/", {"role": "owner"}).status_code == 403
    last = as_user(world.alice).delete(f"{members('acme')}alice/")
    assert last.status_code == 409 and "at least one owner" in error(last)["message"]


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"username": "nobody"}, "username", "names no user: nobody"),
        ({"username": "root", "role": "admin"}, "role", 'must be one of owner, member, viewer (got "admin")'),
        ({}, "username", "is required"),
    ],
)
def test_bad_member_input_names_the_field(world, as_user, payload, field, message):
    response = as_user(world.alice).post(members("acme"), payload)
    assert response.status_code == 400
    assert error(response)["fields"][field] == [message]
    assert Tenant.objects.get(slug="acme").memberships.count() == 4


def test_a_tenant_shows_what_its_endpoints_have_cost_so_far(world, as_user):
    now = timezone.now()
    actions.record_running_replicas(world.acme_endpoint.pk, 2, at=now - timedelta(hours=2))
    actions.record_running_replicas(world.acme_endpoint.pk, 0, at=now)
    actions.record_running_replicas(world.globex_endpoint.pk, 1, at=now - timedelta(hours=1))
    actions.record_running_replicas(world.globex_endpoint.pk, 0, at=now)
    # 2 h × 2 replicas × 1 GPU × 4.00 = 16.00 for acme; globex's 4.00 is not acme's
    assert as_user(world.bob).get("/api/v1/tenants/acme/").json()["accrued_cost"] == "16.00"
    assert (
        as_user(world.bob).get(f"/api/v1/endpoints/{world.acme_endpoint.pk}/").json()["cost"]["accrued"]
        == "16.00"
    )
    assert as_user(world.grace).get("/api/v1/tenants/globex/").json()["accrued_cost"] == "4.00"
