from __future__ import annotations

import pytest

from endpoints import actions
from endpoints.choices import ConditionType, EndpointPhase, EventType, ModelStatus, QuotaRequestStatus, Role
from endpoints.exceptions import Conflict, IllegalTransition, NotAllowed, ValidationFailed
from endpoints.models import AuditEvent, Endpoint, Quota
from tests.factories import (
    make_endpoint,
    make_model,
    make_template,
    make_tenant,
    make_tier,
    make_user,
    member,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff():
    return make_user("staffer", staff=True)


def test_a_model_that_is_not_approved_cannot_back_a_template(staff) -> None:
    model = make_model(approved=False)
    with pytest.raises(ValidationFailed) as caught:
        make_template(model=model)
    assert caught.value.fields["model"] == [f"{model.name} is requested; only approved models back templates"]

    approved = actions.approve_model(staff, model, "licence checked")
    assert (approved.status, approved.decided_by, approved.decision_note) == (
        ModelStatus.APPROVED,
        staff,
        "licence checked",
    )
    assert approved.decided_at is not None
    assert make_template(model=approved).pk


def test_a_rejected_model_stays_rejected_and_says_where_it_may_go(staff) -> None:
    model = actions.reject_model(staff, make_model(approved=False), "licence forbids it")
    with pytest.raises(IllegalTransition, match="cannot go from rejected to approved"):
        actions.approve_model(staff, model)
    with pytest.raises(IllegalTransition, match="from requested it may go to: approved, rejected"):
        actions.retire_model(staff, make_model(approved=False))


def test_only_staff_decide_on_models() -> None:
    someone = make_user()
    with pytest.raises(NotAllowed, match="only staff may approve models"):
        actions.approve_model(someone, make_model(approved=False))


def test_retiring_a_model_blocks_new_endpoints_and_flags_the_running_ones(staff) -> None:
    tier = make_tier()
    model = make_model()
    template = make_template(model=model, tier=tier)
    tenant = make_tenant(
        quota={"gpus_total": 8, "tier_gpus": {tier.name: 8}, "max_endpoints": 8, "max_replicas": 8}
    )
    running = make_endpoint(tenant, template, "running", max_replicas=1)
    gone = make_endpoint(tenant, template, "gone", max_replicas=1)
    actions.delete_endpoint(None, gone)
    actions.transition_endpoint(gone.pk, expected=EndpointPhase.DELETING, new=EndpointPhase.DELETED)

    actions.retire_model(staff, model, "superseded by 3.2")

    with pytest.raises(ValidationFailed) as caught:
        make_endpoint(tenant, template, "new")
    assert "which is retired" in caught.value.fields["template"][0]
    running.refresh_from_db()
    condition = running.condition(ConditionType.MODEL_RETIRED)
    assert condition["status"] == "True" and "superseded by 3.2" in condition["message"]
    assert running.phase == EndpointPhase.REQUESTED  # it keeps serving; nothing is torn down
    warning = running.events.get(reason="ModelRetired")
    assert warning.type == EventType.WARNING
    gone.refresh_from_db()
    assert gone.condition(ConditionType.MODEL_RETIRED) is None
    # and no new template may use it
    with pytest.raises(ValidationFailed):
        make_template(model=model)


def test_scaling_an_endpoint_on_a_retired_model_still_works(staff) -> None:
    tier = make_tier()
    model = make_model()
    tenant = make_tenant(
        quota={"gpus_total": 8, "tier_gpus": {tier.name: 8}, "max_endpoints": 8, "max_replicas": 8}
    )
    endpoint = make_endpoint(tenant, make_template(model=model, tier=tier), "chat")
    actions.retire_model(staff, model)
    assert actions.scale_endpoint(None, endpoint, max_replicas=2).max_replicas == 2


def test_an_approved_quota_request_raises_the_quota_and_merges_tier_limits(staff) -> None:
    tier = make_tier(name="l40s")
    other = make_tier(name="h100")
    tenant = make_tenant(
        quota={"gpus_total": 4, "tier_gpus": {"h100": 4}, "max_endpoints": 2, "max_replicas": 4}
    )
    requester = member(tenant, Role.MEMBER)
    request = actions.request_quota(requester, tenant, reason="launch", gpus_total=12, tier_gpus={"l40s": 8})
    assert request.status == QuotaRequestStatus.PENDING

    decided = actions.approve_quota_request(staff, request, "ok for Q3")
    quota = Quota.objects.get(tenant=tenant)
    assert (quota.gpus_total, quota.tier_gpus, quota.max_endpoints) == (12, {"h100": 4, "l40s": 8}, 2)
    assert (decided.status, decided.decided_by, decided.decision_note) == (
        QuotaRequestStatus.APPROVED,
        staff,
        "ok for Q3",
    )
    audit = AuditEvent.objects.filter(verb="quota.set", tenant=tenant).first()
    assert audit.before["gpus_total"] == 4 and audit.after["gpus_total"] == 12
    assert audit.actor == staff
    with pytest.raises(IllegalTransition):
        actions.reject_quota_request(staff, request)
    assert tier and other


def test_a_quota_request_must_ask_for_something_known_with_a_reason() -> None:
    make_tier(name="h100")
    tenant = make_tenant()
    with pytest.raises(ValidationFailed, match="ask for at least one limit"):
        actions.request_quota(None, tenant, reason="more")
    with pytest.raises(ValidationFailed) as caught:
        actions.request_quota(None, tenant, reason="more", tier_gpus={"a100": 4})
    assert caught.value.fields == {"tier_gpus": ["names unknown GPU tiers: a100"]}
    with pytest.raises(ValidationFailed) as caught:
        actions.request_quota(None, tenant, reason=" ", gpus_total=1)
    assert "reason" in caught.value.fields


def test_viewers_cannot_request_quota_and_members_cannot_approve_it(staff) -> None:
    tenant = make_tenant()
    with pytest.raises(NotAllowed):
        actions.request_quota(member(tenant, Role.VIEWER), tenant, reason="x", gpus_total=1)
    request = actions.request_quota(member(tenant, Role.OWNER), tenant, reason="x", gpus_total=1)
    with pytest.raises(NotAllowed):
        actions.approve_quota_request(member(tenant, Role.MEMBER), request)


def test_owners_manage_members_and_a_tenant_always_keeps_an_owner() -> None:
    tenant = make_tenant()
    owner = member(tenant, Role.OWNER)
    plain = member(tenant, Role.MEMBER)
    newcomer = make_user()
    with pytest.raises(NotAllowed, match="only an owner"):
        actions.add_member(plain, tenant, newcomer, Role.VIEWER)
    membership = actions.add_member(owner, tenant, newcomer, Role.VIEWER)
    with pytest.raises(Conflict, match="already a member"):
        actions.add_member(owner, tenant, newcomer)
    with pytest.raises(Conflict, match="at least one owner"):
        actions.change_member_role(owner, tenant.memberships.get(user=owner), Role.MEMBER)
    actions.change_member_role(owner, tenant.memberships.get(user=plain), Role.OWNER)
    actions.change_member_role(owner, tenant.memberships.get(user=owner), Role.MEMBER)  # plain is owner now
    actions.remove_member(newcomer, membership)  # anyone may leave
    assert not tenant.memberships.filter(user=newcomer).exists()
    assert [a.verb for a in AuditEvent.objects.filter(tenant=tenant).order_by("id")][-4:] == [
        "member.add",
        "member.change",
        "member.change",
        "member.remove",
    ]


def test_every_endpoint_action_leaves_an_audit_event_with_before_and_after() -> None:
    tier = make_tier()
    tenant = make_tenant(
        quota={"gpus_total": 8, "tier_gpus": {tier.name: 8}, "max_endpoints": 8, "max_replicas": 8}
    )
    user = member(tenant, Role.MEMBER, username="dora")
    endpoint = actions.request_endpoint(user, tenant=tenant, template=make_template(tier=tier), name="chat")
    actions.scale_endpoint(user, endpoint, max_replicas=3)
    actions.delete_endpoint(user, Endpoint.objects.get(pk=endpoint.pk))
    events = list(
        AuditEvent.objects.filter(object_type="endpoint", object_id=str(endpoint.pk)).order_by("id")
    )
    assert [e.verb for e in events] == ["endpoint.request", "endpoint.scale", "endpoint.delete"]
    assert {e.actor_name for e in events} == {"dora"}
    assert events[0].before is None and events[0].after["name"] == "chat"
    assert (events[1].before["max_replicas"], events[1].after["max_replicas"]) == (1, 3)
    assert (events[2].before["phase"], events[2].after["phase"]) == ("requested", "deleting")
