"""Endpoint keys through the API: shown once, stored hashed, scoped to the tenant, revocable."""

from __future__ import annotations

import pytest

from endpoints.models import EndpointKey
from tests.factories import make_endpoint, make_template, make_tenant, member, roomy_quota

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup():
    template = make_template()
    tenant = make_tenant(quota=roomy_quota(template.tier))
    endpoint = make_endpoint(tenant, template, name="chat")
    return tenant, endpoint


def client_for(user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_member_creates_a_key_that_is_shown_once_and_stored_hashed(
    setup, sent_tasks, django_capture_on_commit_callbacks
):
    tenant, endpoint = setup
    api = client_for(member(tenant))
    with django_capture_on_commit_callbacks(execute=True):
        created = api.post(f"/api/v1/endpoints/{endpoint.pk}/keys/", {"name": "ci"}, format="json")
    assert created.status_code == 201, created.json()
    raw = created.json()["key"]
    assert raw.startswith("ipk_")
    stored = EndpointKey.objects.get(pk=created.json()["id"])
    assert stored.key_hash == EndpointKey.hash(raw) and raw not in str(stored.__dict__)
    listed = api.get(f"/api/v1/endpoints/{endpoint.pk}/keys/").json()
    assert "key" not in listed["results"][0]
    # The endpoint's objects change (the gateway's hash list), so a deploy is queued.
    assert ("workers.tasks.deploy_endpoint", endpoint.pk) in sent_tasks


def test_a_retried_create_with_the_same_idempotency_key_makes_one_key(setup):
    tenant, endpoint = setup
    api = client_for(member(tenant))
    first = api.post(
        f"/api/v1/endpoints/{endpoint.pk}/keys/", {"name": "ci"}, format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    again = api.post(
        f"/api/v1/endpoints/{endpoint.pk}/keys/", {"name": "ci"}, format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert first.status_code == again.status_code == 201
    assert EndpointKey.objects.filter(endpoint=endpoint).count() == 1
    assert again.json()["key"] is None  # the key is never stored, so a replay cannot show it


def test_bad_input_names_the_field(setup):
    tenant, endpoint = setup
    api = client_for(member(tenant))
    response = api.post(f"/api/v1/endpoints/{endpoint.pk}/keys/", {"name": "x" * 65}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["error"]["fields"]


def test_revoking_a_key_keeps_its_record_and_redeploys(setup, sent_tasks, django_capture_on_commit_callbacks):
    tenant, endpoint = setup
    api = client_for(member(tenant))
    key_id = api.post(f"/api/v1/endpoints/{endpoint.pk}/keys/", {"name": "ci"}, format="json").json()["id"]
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/v1/endpoints/{endpoint.pk}/keys/{key_id}/").status_code == 204
    assert EndpointKey.objects.get(pk=key_id).revoked_at is not None
    assert ("workers.tasks.deploy_endpoint", endpoint.pk) in sent_tasks


def test_a_viewer_lists_but_cannot_create(setup):
    from endpoints.choices import Role

    tenant, endpoint = setup
    api = client_for(member(tenant, Role.VIEWER))
    assert api.get(f"/api/v1/endpoints/{endpoint.pk}/keys/").status_code == 200
    assert (
        api.post(f"/api/v1/endpoints/{endpoint.pk}/keys/", {"name": "ci"}, format="json").status_code == 403
    )


def test_another_tenants_endpoint_keys_answer_404(setup):
    tenant, endpoint = setup
    template = endpoint.template
    stranger = member(make_tenant(quota=roomy_quota(template.tier)))
    api = client_for(stranger)
    assert api.get(f"/api/v1/endpoints/{endpoint.pk}/keys/").status_code == 404
    assert api.post(f"/api/v1/endpoints/{endpoint.pk}/keys/", {"name": "x"}, format="json").status_code == 404
