"""Deleting a tenant: its endpoints go, then its tenant cluster; its history stays."""

from __future__ import annotations

import pytest

from endpoints import actions
from endpoints.choices import EndpointPhase
from endpoints.exceptions import NotAllowed, ValidationFailed
from tests.factories import make_endpoint, make_template, make_tenant, make_user, member, roomy_quota

pytestmark = pytest.mark.django_db


def test_staff_deleting_a_tenant_deletes_its_endpoints_then_queues_its_cluster_removal(
    sent_tasks, django_capture_on_commit_callbacks
):
    template = make_template()
    tenant = make_tenant(quota=roomy_quota(template.tier))
    endpoints = [make_endpoint(tenant, template, name=n) for n in ("one", "two")]
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        actions.delete_tenant(make_user(staff=True), tenant)
    tenant.refresh_from_db()
    assert tenant.deleted_at is not None
    for ep in endpoints:
        ep.refresh_from_db()
        assert ep.phase == EndpointPhase.DELETING
    assert sorted(sent_tasks) == sorted(
        [("workers.tasks.delete_endpoint", ep.pk) for ep in endpoints]
        + [("workers.tasks.delete_tenant_cluster", tenant.pk)]
    )


def test_only_staff_may_delete_a_tenant():
    template = make_template()
    tenant = make_tenant(quota=roomy_quota(template.tier))
    with pytest.raises(NotAllowed):
        actions.delete_tenant(member(tenant), tenant)


def test_a_deleted_tenant_cannot_request_endpoints():
    template = make_template()
    tenant = make_tenant(quota=roomy_quota(template.tier))
    actions.delete_tenant(make_user(staff=True), tenant)
    with pytest.raises(ValidationFailed) as refused:
        make_endpoint(tenant, template, name="late")
    assert "tenant" in str(refused.value.fields if hasattr(refused.value, "fields") else refused.value)


def test_the_api_deletes_a_tenant_for_staff_only(sent_tasks):
    from rest_framework.test import APIClient

    template = make_template()
    tenant = make_tenant(quota=roomy_quota(template.tier))
    api = APIClient()
    api.force_authenticate(member(tenant))
    assert api.delete(f"/api/v1/tenants/{tenant.slug}/").status_code == 403
    api.force_authenticate(make_user(staff=True))
    response = api.delete(f"/api/v1/tenants/{tenant.slug}/")
    assert response.status_code == 202
    tenant.refresh_from_db()
    assert tenant.deleted_at is not None
