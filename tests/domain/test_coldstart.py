"""The cold-start breakdown: stages from hand-built timelines, and from an endpoint's own rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from endpoints import actions, coldstart
from endpoints.choices import EndpointPhase
from endpoints.coldstart import Milestone, Transition
from endpoints.models import Endpoint
from tests.factories import make_endpoint, make_template, make_tenant, make_tier, roomy_quota

P = EndpointPhase
T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
KEYS = [key for key, _ in coldstart.STAGES]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def moves(*steps: tuple[float, str, str]) -> list[Transition]:
    return [Transition(at(s), old, new) for s, old, new in steps]


def marks(*steps: tuple[float, str]) -> list[Milestone]:
    return [Milestone(at(s), reason) for s, reason in steps]


def seconds(result: coldstart.ColdStart) -> dict[str, float | None]:
    return {s.key: s.seconds for s in result.stages}


def states(result: coldstart.ColdStart) -> dict[str, str]:
    return {s.key: s.state for s in result.stages}


# The way up as the watcher writes it (times in seconds after the request; the order of writes
# within one look is phase first, then conditions, so Scheduled lands after DownloadingWeights).
WAY_UP = moves(
    (1.6, P.REQUESTED, P.PROVISIONING_TENANT),
    (8.8, P.PROVISIONING_TENANT, P.SCHEDULING),
    (11.5, P.SCHEDULING, P.PULLING),
    (14.0, P.PULLING, P.DOWNLOADING_WEIGHTS),
    (20.0, P.DOWNLOADING_WEIGHTS, P.LOADING_MODEL),
    (26.0, P.LOADING_MODEL, P.VERIFYING),
    (26.7, P.VERIFYING, P.READY),
)
MILESTONES = marks((11.6, "Scheduled"), (12.0, "Accepted"), (12.1, "ResolvedRefs"))


def test_each_stage_of_a_cold_start_ends_where_the_next_begins():
    result = coldstart.compute(
        created=T0,
        phase=P.READY,
        transitions=WAY_UP,
        milestones=MILESTONES,
        verified_at=at(26.4),
        first_token_seconds=0.07,
    )

    assert seconds(result) == pytest.approx(
        {
            "tenant_cluster": 8.8,
            "scheduling": 2.7,
            "image_pull": 2.5,
            "weight_download": 6.0,
            "model_load": 6.0,
            "route": 0.0,  # accepted while the model loaded
            "first_token": 0.4,  # until the gate's completion came back
        }
    )
    assert states(result) == dict.fromkeys(KEYS, "done")
    assert [s.key for s in result.stages] == KEYS
    assert all(a.end == b.start for a, b in zip(result.stages, result.stages[1:], strict=False))
    assert (result.started_at, result.ready_at, result.complete) == (T0, at(26.4), True)
    assert result.total_seconds == pytest.approx(26.4)
    assert result.first_token_seconds == 0.07


def test_stages_not_reached_yet_have_no_end_and_the_current_one_is_in_progress():
    result = coldstart.compute(
        created=T0,
        phase=P.DOWNLOADING_WEIGHTS,
        transitions=WAY_UP[:4],
        milestones=MILESTONES,
    )

    assert states(result) == {
        "tenant_cluster": "done",
        "scheduling": "done",
        "image_pull": "done",
        "weight_download": "in_progress",
        "model_load": "pending",
        "route": "pending",
        "first_token": "pending",
    }
    download = result.stages[3]
    assert (download.start, download.end, download.seconds) == (at(14.0), None, None)
    assert all(s.start is None and s.seconds is None for s in result.stages[4:])
    assert (result.ready_at, result.total_seconds, result.complete) == (None, None, False)


def test_stages_the_watcher_never_saw_took_no_time():
    # A cached image and local weights: Scheduling straight to Loading model.
    result = coldstart.compute(
        created=T0,
        phase=P.READY,
        transitions=moves(
            (2.0, P.REQUESTED, P.SCHEDULING),
            (5.0, P.SCHEDULING, P.LOADING_MODEL),
            (9.0, P.LOADING_MODEL, P.VERIFYING),
            (9.5, P.VERIFYING, P.READY),
        ),
        milestones=marks((5.0, "Scheduled"), (3.0, "Accepted"), (3.0, "ResolvedRefs")),
        verified_at=at(9.3),
        first_token_seconds=0.1,
    )

    assert seconds(result) == pytest.approx(
        {
            "tenant_cluster": 2.0,
            "scheduling": 3.0,
            "image_pull": 0.0,
            "weight_download": 0.0,
            "model_load": 4.0,
            "route": 0.0,
            "first_token": 0.3,
        }
    )


def test_a_route_accepted_after_the_model_loaded_is_waited_for():
    result = coldstart.compute(
        created=T0,
        phase=P.READY,
        transitions=WAY_UP,
        milestones=marks((11.6, "Scheduled"), (12.0, "ResolvedRefs"), (29.0, "Accepted")),
        verified_at=at(29.5),
    )

    assert seconds(result)["route"] == pytest.approx(3.0)  # model loaded at 26, route at 29
    assert seconds(result)["first_token"] == pytest.approx(0.5)


def test_a_gate_that_answers_before_the_verifying_phase_is_written_takes_no_time():
    # The gate runs on its own thread and may record verified_at a moment before the watcher
    # writes Verifying: stages never run backwards.
    result = coldstart.compute(
        created=T0, phase=P.READY, transitions=WAY_UP, milestones=MILESTONES, verified_at=at(25.9)
    )

    assert seconds(result)["first_token"] == 0.0
    assert all(s.seconds >= 0 for s in result.stages)


def test_a_loaded_model_behind_a_refused_route_is_still_waiting_for_its_route():
    result = coldstart.compute(
        created=T0,
        phase=P.DEGRADED,
        transitions=[*WAY_UP[:5], Transition(at(26.0), P.LOADING_MODEL, P.DEGRADED)],
        milestones=marks((11.6, "Scheduled")),  # the route was never accepted
    )

    assert states(result)["model_load"] == "done"
    assert states(result)["route"] == "in_progress"
    assert states(result)["first_token"] == "pending"
    assert not result.complete


def test_the_stage_an_endpoint_failed_in_says_so():
    result = coldstart.compute(
        created=T0,
        phase=P.FAILED,
        transitions=[*WAY_UP[:5], Transition(at(23.0), P.LOADING_MODEL, P.FAILED)],
        milestones=MILESTONES,
    )

    assert states(result)["model_load"] == "failed"
    assert states(result)["weight_download"] == "done"
    assert states(result)["route"] == "pending"


def test_an_endpoint_deleted_while_starting_stops_in_that_stage():
    result = coldstart.compute(
        created=T0,
        phase=P.DELETED,
        transitions=[
            *WAY_UP[:2],
            Transition(at(9.0), P.SCHEDULING, P.DELETING),
            Transition(at(12.0), P.DELETING, P.DELETED),
        ],
        milestones=[],
    )

    assert states(result)["scheduling"] == "stopped"
    assert result.stages[1].end is None


def test_a_scale_up_from_zero_is_a_new_cold_start_in_a_ready_tenant_cluster():
    later = moves(
        (600.0, P.READY, P.SCHEDULING),
        (604.0, P.SCHEDULING, P.LOADING_MODEL),
        (610.0, P.LOADING_MODEL, P.VERIFYING),
        (610.5, P.VERIFYING, P.READY),
    )
    result = coldstart.compute(
        created=T0,
        phase=P.READY,
        transitions=[*WAY_UP, *later],
        milestones=[*MILESTONES, *marks((603.0, "Scheduled"))],
        # The gate ran at the first start only: this start's first token is its Ready.
        verified_at=at(26.4),
        first_token_seconds=0.07,
    )

    assert result.started_at == at(600.0)
    assert seconds(result) == pytest.approx(
        {
            "tenant_cluster": 0.0,
            "scheduling": 3.0,
            "image_pull": 1.0,
            "weight_download": 0.0,
            "model_load": 6.0,
            "route": 0.0,
            "first_token": 0.5,
        }
    )
    assert result.first_token_seconds is None  # that TTFT belongs to the earlier start


def test_a_redeploy_after_a_failure_starts_the_breakdown_again():
    result = coldstart.compute(
        created=T0,
        phase=P.SCHEDULING,
        transitions=[
            *WAY_UP[:3],
            Transition(at(12.0), P.PULLING, P.FAILED),
            Transition(at(100.0), P.FAILED, P.REQUESTED),
            Transition(at(101.5), P.REQUESTED, P.SCHEDULING),
        ],
        milestones=MILESTONES,
    )

    assert result.started_at == at(100.0)
    assert seconds(result)["tenant_cluster"] == pytest.approx(1.5)
    assert states(result)["scheduling"] == "in_progress"
    assert states(result)["image_pull"] == "pending"


def test_a_request_not_yet_picked_up_is_in_its_first_stage():
    result = coldstart.compute(created=T0, phase=P.REQUESTED, transitions=[], milestones=[])

    assert states(result)["tenant_cluster"] == "in_progress"
    assert result.stages[0].start == T0
    assert [s.state for s in result.stages[1:]] == ["pending"] * 6


# -- from the database -----------------------------------------------------------------------


def test_the_breakdown_of_an_endpoint_reads_its_phase_changes_timeline_and_gate(db):
    tier = make_tier(name="h100")
    endpoint = make_endpoint(make_tenant("acme", quota=roomy_quota(tier)), make_template(tier=tier), "chat")
    path = [P.SCHEDULING, P.DOWNLOADING_WEIGHTS, P.LOADING_MODEL, P.VERIFYING]
    old = P.REQUESTED
    for new in path:
        assert actions.transition_endpoint(endpoint.pk, expected=old, new=new, reason="Test")
        if new == P.DOWNLOADING_WEIGHTS:
            actions.set_endpoint_condition(endpoint.pk, "Scheduled", "True", "Scheduled", "on node-1")
            actions.set_endpoint_condition(endpoint.pk, "RouteAccepted", "True", "Accepted", "")
        old = new
    Endpoint.objects.filter(pk=endpoint.pk).update(verified_at=timezone.now(), first_token_seconds=0.05)
    actions.transition_endpoint(endpoint.pk, expected=P.VERIFYING, new=P.READY, reason="Ready")

    result = coldstart.breakdown(Endpoint.objects.get(pk=endpoint.pk))

    assert states(result) == dict.fromkeys(KEYS, "done")
    assert result.started_at == endpoint.created
    assert result.first_token_seconds == 0.05
    assert result.stages[-1].end == Endpoint.objects.get(pk=endpoint.pk).verified_at
    assert all(s.seconds >= 0 for s in result.stages)


def test_a_fresh_endpoint_is_waiting_for_its_tenant_cluster(db):
    tier = make_tier(name="h100")
    endpoint = make_endpoint(make_tenant("acme", quota=roomy_quota(tier)), make_template(tier=tier), "chat")

    result = coldstart.breakdown(endpoint)

    assert states(result)["tenant_cluster"] == "in_progress"
    assert not result.complete
