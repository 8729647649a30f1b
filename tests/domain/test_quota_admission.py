from __future__ import annotations

import threading

import pytest
from django.db import connection

from endpoints import actions
from endpoints.choices import EndpointPhase, Role
from endpoints.exceptions import QuotaExceeded
from endpoints.models import Endpoint
from tests.factories import make_endpoint, make_template, make_tenant, make_tier, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def tier():
    return make_tier(name="h100")


@pytest.fixture
def template(tier):
    return make_template(tier=tier, gpus_per_replica=2, tensor_parallel_size=2, max_replicas=8)


def quota(gpus=8, tier_gpus=None, endpoints=10, replicas=20) -> dict:
    return {
        "gpus_total": gpus,
        "tier_gpus": {"h100": gpus} if tier_gpus is None else tier_gpus,
        "max_endpoints": endpoints,
        "max_replicas": replicas,
    }


def test_it_admits_a_request_within_quota(template) -> None:
    tenant = make_tenant(quota=quota(gpus=8))
    endpoint = make_endpoint(tenant, template, "chat", max_replicas=4)  # 4 × 2 GPUs = 8
    assert endpoint.phase == EndpointPhase.REQUESTED
    assert endpoint.desired_replicas == 1


def test_it_rejects_a_request_over_quota_with_used_requested_and_limit(template) -> None:
    tenant = make_tenant(quota=quota(gpus=8))
    make_endpoint(tenant, template, "first", max_replicas=3)  # 6 GPUs at max replicas
    with pytest.raises(QuotaExceeded) as caught:
        make_endpoint(tenant, template, "second", max_replicas=2)  # 4 more
    error = caught.value
    assert {"dimension": "gpus_total", "used": 6, "requested": 4, "limit": 8} in error.details["exceeded"]
    assert {"dimension": "tier_gpus.h100", "used": 6, "requested": 4, "limit": 8} in error.details["exceeded"]
    assert error.details["quota_request_url"] == "/api/v1/quota-requests/"
    assert "gpus_total: 6 used + 4 requested > 8 allowed" in error.message
    assert "/api/v1/quota-requests/" in error.message
    assert Endpoint.objects.filter(tenant=tenant).count() == 1


def test_the_tier_limit_applies_even_when_the_total_has_room(template) -> None:
    tenant = make_tenant(quota=quota(gpus=100, tier_gpus={"h100": 4}))
    with pytest.raises(QuotaExceeded) as caught:
        make_endpoint(tenant, template, "chat", max_replicas=3)
    assert [e["dimension"] for e in caught.value.details["exceeded"]] == ["tier_gpus.h100"]


def test_a_tier_missing_from_the_quota_allows_no_gpus(template) -> None:
    tenant = make_tenant(quota=quota(gpus=100, tier_gpus={}))
    with pytest.raises(QuotaExceeded) as caught:
        make_endpoint(tenant, template, "chat")
    assert caught.value.details["exceeded"][0] == {
        "dimension": "tier_gpus.h100",
        "used": 0,
        "requested": 2,
        "limit": 0,
    }


def test_the_endpoint_and_replica_counts_are_limited_too(template) -> None:
    tenant = make_tenant(quota=quota(gpus=100, endpoints=1, replicas=50))
    make_endpoint(tenant, template, "one")
    with pytest.raises(QuotaExceeded) as caught:
        make_endpoint(tenant, template, "two")
    assert [e["dimension"] for e in caught.value.details["exceeded"]] == ["endpoints"]

    other = make_tenant(quota=quota(gpus=100, replicas=3))
    make_endpoint(other, template, "one", max_replicas=2)
    with pytest.raises(QuotaExceeded) as caught:
        make_endpoint(other, template, "two", max_replicas=2)
    assert [e["dimension"] for e in caught.value.details["exceeded"]] == ["replicas"]


def test_a_deleted_endpoint_frees_its_quota_and_its_name_but_a_deleting_one_does_not(template) -> None:
    tenant = make_tenant(quota=quota(gpus=4))
    endpoint = make_endpoint(tenant, template, "chat", max_replicas=2)
    actions.delete_endpoint(None, endpoint)
    with pytest.raises(QuotaExceeded):
        make_endpoint(tenant, template, "chat2", max_replicas=1)
    assert actions.transition_endpoint(
        endpoint.pk, expected=EndpointPhase.DELETING, new=EndpointPhase.DELETED
    )
    again = make_endpoint(tenant, template, "chat", max_replicas=2)
    assert again.pk != endpoint.pk


def test_scaling_up_is_admitted_against_quota_and_scaling_down_always_works(template) -> None:
    tenant = make_tenant(quota=quota(gpus=8))
    endpoint = make_endpoint(tenant, template, "chat", max_replicas=2)
    endpoint = actions.scale_endpoint(None, endpoint, max_replicas=4)
    assert (endpoint.max_replicas, endpoint.generation) == (4, 2)
    with pytest.raises(QuotaExceeded) as caught:
        actions.scale_endpoint(None, endpoint, max_replicas=5)
    # the endpoint's own current GPUs are not counted twice: 0 used by others, 10 requested
    assert caught.value.details["exceeded"][0] == {
        "dimension": "gpus_total",
        "used": 0,
        "requested": 10,
        "limit": 8,
    }
    actions.set_quota(None, tenant, gpus_total=2)  # lowered below what is in use
    assert actions.scale_endpoint(None, endpoint, max_replicas=3).max_replicas == 3


def test_it_rejects_a_name_already_taken_in_the_tenant_but_not_in_another(template) -> None:
    first = make_tenant(quota=quota())
    second = make_tenant(quota=quota())
    make_endpoint(first, template, "chat")
    with pytest.raises(Exception) as caught:
        make_endpoint(first, template, "chat")
    assert caught.value.fields == {
        "name": [f"is taken: tenant {first.slug} already has an endpoint named chat"]
    }
    assert make_endpoint(second, template, "chat").pk


def test_viewers_and_outsiders_cannot_request_endpoints_but_members_can(template) -> None:
    tenant = make_tenant(quota=quota())
    viewer = member(tenant, Role.VIEWER)
    outsider = member(make_tenant(), Role.OWNER)
    for user in (viewer, outsider):
        with pytest.raises(Exception, match="only an owner or member of tenant"):
            actions.request_endpoint(user, tenant=tenant, template=template, name="x")
    assert actions.request_endpoint(member(tenant), tenant=tenant, template=template, name="x").pk


@pytest.mark.django_db(transaction=True)
def test_fifty_simultaneous_requests_against_room_for_five_admit_exactly_five(sent_tasks) -> None:
    tier = make_tier(name="h100")
    template = make_template(tier=tier, max_replicas=1)
    tenant = make_tenant(
        quota={"gpus_total": 5, "tier_gpus": {"h100": 5}, "max_endpoints": 100, "max_replicas": 100}
    )
    start = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def request(i: int) -> None:
        try:
            start.wait(timeout=30)
            actions.request_endpoint(None, tenant=tenant, template=template, name=f"ep-{i}", max_replicas=1)
            result = "admitted"
        except QuotaExceeded:
            result = "refused"
        except Exception as exc:  # anything else is a failure the assertion below shows
            result = repr(exc)
        finally:
            connection.close()  # each thread had its own connection
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert sorted(set(outcomes)) == ["admitted", "refused"], outcomes
    assert outcomes.count("admitted") == 5
    assert outcomes.count("refused") == 45
    assert Endpoint.objects.filter(tenant=tenant).count() == 5
    assert len(sent_tasks) == 5  # one deploy per admitted endpoint, none for the refused
