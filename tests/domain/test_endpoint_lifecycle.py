from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from endpoints import actions, dispatch
from endpoints.choices import (
    ACTIVE_PHASES,
    LIVE_PHASES,
    PHASE_TRANSITIONS,
    TERMINAL_PHASES,
    ConditionStatus,
    EndpointPhase,
)
from endpoints.exceptions import Conflict, IllegalTransition, QuotaExceeded
from endpoints.models import Endpoint, EndpointEvent, EndpointUsage, set_condition
from tests.factories import make_endpoint, make_template, make_tenant, make_tier

pytestmark = pytest.mark.django_db


@pytest.fixture
def tier():
    return make_tier(price_per_gpu_hour=Decimal("4.00"))


@pytest.fixture
def tenant(tier):
    return make_tenant(
        quota={"gpus_total": 16, "tier_gpus": {tier.name: 16}, "max_endpoints": 9, "max_replicas": 16}
    )


@pytest.fixture
def endpoint(tenant, tier):
    return make_endpoint(tenant, make_template(tier=tier, gpus_per_replica=2, tensor_parallel_size=2), "chat")


def test_the_transition_table_covers_every_phase_and_deleted_is_the_end() -> None:
    assert set(PHASE_TRANSITIONS) == set(EndpointPhase)
    assert all(target in set(EndpointPhase) for targets in PHASE_TRANSITIONS.values() for target in targets)
    assert PHASE_TRANSITIONS[EndpointPhase.DELETED] == frozenset()
    assert TERMINAL_PHASES == {EndpointPhase.FAILED, EndpointPhase.DELETED}
    assert EndpointPhase.DELETED not in LIVE_PHASES and EndpointPhase.DELETING in LIVE_PHASES
    assert not ACTIVE_PHASES & TERMINAL_PHASES
    # every live phase can be deleted, and only Deleting reaches Deleted
    for phase in LIVE_PHASES - {EndpointPhase.DELETING}:
        assert EndpointPhase.DELETING in PHASE_TRANSITIONS[phase], phase
    assert [p for p, t in PHASE_TRANSITIONS.items() if EndpointPhase.DELETED in t] == [EndpointPhase.DELETING]


def test_an_illegal_transition_raises_and_says_what_is_allowed(endpoint) -> None:
    with pytest.raises(IllegalTransition, match="cannot go from requested to ready"):
        actions.transition_endpoint(endpoint.pk, expected=EndpointPhase.REQUESTED, new=EndpointPhase.READY)


def test_a_transition_is_compare_and_set(endpoint) -> None:
    assert actions.transition_endpoint(
        endpoint.pk, expected=EndpointPhase.REQUESTED, new=EndpointPhase.SCHEDULING, reason="TenantReady"
    )
    # a second worker that still believes the endpoint is Requested changes nothing
    assert not actions.transition_endpoint(
        endpoint.pk, expected=EndpointPhase.REQUESTED, new=EndpointPhase.FAILED, reason="Late"
    )
    endpoint.refresh_from_db()
    assert (endpoint.phase, endpoint.phase_reason) == (EndpointPhase.SCHEDULING, "TenantReady")
    assert list(endpoint.events.values_list("reason", flat=True)) == ["Requested", "TenantReady"]


def test_failed_and_degraded_land_on_the_timeline_as_warnings(endpoint) -> None:
    actions.transition_endpoint(
        endpoint.pk,
        expected=EndpointPhase.REQUESTED,
        new=EndpointPhase.FAILED,
        reason="Unschedulable",
        message="0/2 nodes have 2 free nvidia.com/gpu",
    )
    event = endpoint.events.get(reason="Unschedulable")
    assert event.type == "Warning" and "nvidia.com/gpu" in event.message


def test_deleting_twice_is_harmless_and_a_deleting_endpoint_cannot_be_scaled(endpoint, sent_tasks) -> None:
    first = actions.delete_endpoint(None, endpoint)
    second = actions.delete_endpoint(None, endpoint)
    assert first.phase == second.phase == EndpointPhase.DELETING
    assert first.generation == 2
    assert endpoint.events.filter(reason="DeleteRequested").count() == 1
    with pytest.raises(Conflict, match="is deleting"):
        actions.scale_endpoint(None, endpoint, max_replicas=2)


def test_scale_checks_the_template_bounds_and_unchanged_scale_is_a_no_op(endpoint) -> None:
    from endpoints.exceptions import ValidationFailed

    with pytest.raises(ValidationFailed) as caught:
        actions.scale_endpoint(None, endpoint, max_replicas=9)
    assert caught.value.fields["max_replicas"][0].startswith("must be between 1 and 8 for template")
    with pytest.raises(ValidationFailed) as caught:
        actions.scale_endpoint(None, endpoint, min_replicas=3, max_replicas=2)
    assert caught.value.fields == {"min_replicas": ["must be at most max_replicas (2, got 3)"]}
    same = actions.scale_endpoint(None, endpoint, max_replicas=1)
    assert same.generation == 1


def test_conditions_keep_their_transition_time_while_the_status_holds() -> None:
    t0 = timezone.now()
    t1 = t0 + timedelta(minutes=5)
    first = set_condition([], "Ready", ConditionStatus.FALSE, "Loading", "loading", t0)
    same = set_condition(first, "Ready", ConditionStatus.FALSE, "Loading", "still loading", t1)
    flipped = set_condition(same, "Ready", ConditionStatus.TRUE, "Answering", "first token served", t1)
    assert same[0]["last_transition_time"] == t0.isoformat() and same[0]["message"] == "still loading"
    assert flipped[0]["last_transition_time"] == t1.isoformat()
    assert len(flipped) == 1 and first[0]["message"] == "loading"  # the input is not changed


def test_actions_enqueue_work_only_after_the_commit(
    tenant, tier, sent_tasks, django_capture_on_commit_callbacks
) -> None:
    template = make_template(tier=tier)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        endpoint = make_endpoint(tenant, template, "chat")
    assert sent_tasks == [] and len(callbacks) == 1
    callbacks[0]()
    assert sent_tasks == [(dispatch.DEPLOY, endpoint.pk)]

    with django_capture_on_commit_callbacks(execute=True):
        actions.scale_endpoint(None, endpoint, max_replicas=2)
        actions.delete_endpoint(None, endpoint)
    assert sent_tasks[1:] == [(dispatch.SCALE, endpoint.pk), (dispatch.DELETE, endpoint.pk)]


def test_a_refused_action_enqueues_nothing(tier, sent_tasks, django_capture_on_commit_callbacks) -> None:
    poor = make_tenant(quota={"gpus_total": 0, "tier_gpus": {}, "max_endpoints": 1, "max_replicas": 1})
    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(QuotaExceeded):
        make_endpoint(poor, make_template(tier=tier), "chat")
    assert callbacks == [] and sent_tasks == []


def test_send_task_hands_celery_the_task_by_name(monkeypatch) -> None:
    from endpoints import dispatch as real
    from portal.celery import app

    calls = []
    monkeypatch.undo()  # the autouse fixture replaced dispatch.send_task; test the real one here
    monkeypatch.setattr(app, "send_task", lambda name, args: calls.append((name, args)))
    real.send_task(real.DEPLOY, 7)
    assert calls == [("workers.tasks.deploy_endpoint", [7])]


def test_accrued_cost_per_endpoint_and_per_tenant_comes_from_the_usage_history(tenant, tier) -> None:
    now = timezone.now()
    first = make_endpoint(tenant, make_template(tier=tier, gpus_per_replica=2, tensor_parallel_size=2), "a")
    second = make_endpoint(tenant, make_template(tier=tier), "b")
    # a: 1 replica × 2 GPUs for 2 h, then 3 replicas × 2 GPUs for 1 h, at 4.00 → 16 + 24 = 40.00
    actions.record_running_replicas(first.pk, 1, at=now - timedelta(hours=3))
    actions.record_running_replicas(first.pk, 1, at=now - timedelta(hours=2, minutes=30))  # no change
    actions.record_running_replicas(first.pk, 3, at=now - timedelta(hours=1))
    actions.record_running_replicas(first.pk, 0, at=now)
    # b: 1 × 1 GPU for 30 min at 4.00 = 2.00, then the price rises; history keeps the old price
    actions.record_running_replicas(second.pk, 1, at=now - timedelta(minutes=30))
    tier.price_per_gpu_hour = Decimal("10.00")
    tier.save()
    actions.transition_endpoint(second.pk, expected=EndpointPhase.REQUESTED, new=EndpointPhase.DELETING)
    actions.transition_endpoint(second.pk, expected=EndpointPhase.DELETING, new=EndpointPhase.DELETED)

    later = timezone.now() + timedelta(hours=5)
    assert first.accrued_cost(later).quantize(Decimal("0.01")) == Decimal("40.00")
    assert second.accrued_cost(later).quantize(Decimal("0.01")) == Decimal("2.00")
    per_tenant = EndpointUsage.objects.filter(endpoint__tenant=tenant).accrued_cost(later)
    assert per_tenant.quantize(Decimal("0.01")) == Decimal("42.00")
    assert first.usage.count() == 2 and not first.usage.filter(ended_at__isnull=True).exists()


def test_workers_record_what_they_observe_without_touching_the_rest(endpoint) -> None:
    actions.record_observation(endpoint.pk, load_progress=40, observed_generation=1)
    actions.record_observation(endpoint.pk, url="https://chat-acme.inference.localhost/v1")
    endpoint.refresh_from_db()
    assert (endpoint.load_progress, endpoint.observed_generation, endpoint.url) == (
        40,
        1,
        "https://chat-acme.inference.localhost/v1",
    )
    from endpoints.exceptions import ValidationFailed

    with pytest.raises(ValidationFailed, match="load_progress must be between 0 and 100"):
        actions.record_observation(endpoint.pk, load_progress=101)
    with pytest.raises(ValidationFailed, match="url must be an http"):
        actions.record_observation(endpoint.pk, url="javascript:alert(1)")


def test_conditions_by_compare_and_set_write_once_and_lose_nothing_to_a_concurrent_writer(
    endpoint, django_assert_num_queries
) -> None:
    read = Endpoint.objects.get(pk=endpoint.pk).conditions
    with django_assert_num_queries(4):  # savepoint, the UPDATE, the timeline, release: no row lock
        actions.set_endpoint_conditions(
            endpoint.pk, [("RouteAccepted", "True", "Accepted", "by the gateway")], read=read
        )
    first = Endpoint.objects.get(pk=endpoint.pk)
    assert first.condition("RouteAccepted")["status"] == "True"
    assert EndpointEvent.objects.filter(endpoint=endpoint, reason="Accepted").count() == 1

    # Someone else writes a condition after the watcher read the row: the compare-and-set misses,
    # the row is read again under its lock, and both conditions stay.
    actions.set_endpoint_condition(endpoint.pk, "Ready", "False", "Draining", "being deleted")
    actions.set_endpoint_conditions(
        endpoint.pk, [("Scheduled", "True", "Scheduled", "on node-1")], read=first.conditions
    )
    after = Endpoint.objects.get(pk=endpoint.pk)
    assert after.condition("Ready")["reason"] == "Draining"
    assert after.condition("Scheduled")["status"] == "True"
    assert after.condition("RouteAccepted")["status"] == "True"


def test_what_the_watcher_writes_with_the_conditions_holds_only_in_the_phase_it_read(endpoint) -> None:
    row = Endpoint.objects.get(pk=endpoint.pk)
    actions.set_endpoint_conditions(
        endpoint.pk,
        [("Scheduled", "False", "Unschedulable", "no node has a free GPU")],
        read=row.conditions,
        also={"phase_reason": "Unschedulable", "load_progress": 3},
        phase=row.phase,
    )
    row = Endpoint.objects.get(pk=endpoint.pk)
    assert (row.phase_reason, row.load_progress) == ("Unschedulable", 3)

    # The phase moved on after the watcher read the row: the conditions land, the rest does not.
    assert actions.transition_endpoint(endpoint.pk, expected=row.phase, new=EndpointPhase.FAILED, reason="GaveUp")
    actions.set_endpoint_conditions(
        endpoint.pk,
        [("Scheduled", "True", "Scheduled", "on node-1")],
        read=row.conditions,
        also={"phase_reason": "Unschedulable", "load_progress": 5},
        phase=row.phase,
    )
    after = Endpoint.objects.get(pk=endpoint.pk)
    assert after.condition("Scheduled")["status"] == "True"
    assert (after.phase, after.phase_reason, after.load_progress) == (EndpointPhase.FAILED, "GaveUp", 3)
