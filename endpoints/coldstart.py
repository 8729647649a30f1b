"""The measured cold start of an endpoint: how long each step on the way to a first token took.

Seven stages, back to back, each ending where the next begins:

- ``tenant_cluster``: from the request until the endpoint's objects were applied in its tenant
  cluster (creating the cluster first when the tenant had none);
- ``scheduling``: until the pod was bound to a GPU node (waiting for a free node or an Auto Node);
- ``image_pull``: until the runtime image was there and the container started;
- ``weight_download``: until the weights were downloaded and loading began;
- ``model_load``: until the model was in GPU memory and the pod passed its readiness probe;
- ``route``: until the gateway had accepted the route, when that came after the model loaded
  (usually 0: the route is accepted while the model loads);
- ``first_token``: until a real completion through the gateway returned its first token (the
  first-request gate, `workers/verify.py`).

Where the times come from: phase changes (the audit rows `transition_endpoint` writes, which name
the old and new phase exactly), the timeline's condition events (``Scheduled``; ``Accepted`` and
``ResolvedRefs`` of the route), ``verified_at`` and ``first_token_seconds``. The watcher may see a
fast stage only after it is over (a cached image, weights on a local disk): a skipped stage takes
0 seconds. Times are when the portal saw each step, so each stage can be late by up to the
watcher's tick (about a second).

A cold start begins at the request, at a redeploy (back to Requested), or when a serving endpoint
starts again from Scheduling (scaled up from zero, or every pod replaced); the breakdown shows the
latest one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from django.utils import timezone

from .choices import AuditVerb, EndpointPhase

if TYPE_CHECKING:  # pragma: no cover
    from .models import Endpoint

P = EndpointPhase

STAGES: tuple[tuple[str, str], ...] = (
    ("tenant_cluster", "Tenant cluster"),
    ("scheduling", "Scheduling"),
    ("image_pull", "Image pull"),
    ("weight_download", "Weight download"),
    ("model_load", "Model load"),
    ("route", "Route"),
    ("first_token", "First token"),
)

# How far along the way up a phase is; a phase of rank k means stages 0..k-1 are over.
RANK: dict[str, int] = {
    P.PROVISIONING_TENANT: 0,
    P.SCHEDULING: 1,
    P.PULLING: 2,
    P.DOWNLOADING_WEIGHTS: 3,
    P.LOADING_MODEL: 4,
    P.VERIFYING: 5,
    P.READY: 6,
    P.DEGRADED: 6,
}
SCHEDULED = "Scheduled"  # the Scheduled condition turning True
ROUTE_REASONS = ("Accepted", "ResolvedRefs")  # the route's two conditions turning True
MILESTONE_REASONS = (SCHEDULED, *ROUTE_REASONS)

DONE, IN_PROGRESS, FAILED, STOPPED, PENDING = "done", "in_progress", "failed", "stopped", "pending"


@dataclass(frozen=True)
class Transition:
    """A phase change: when, from which phase, to which."""

    at: datetime
    old: str
    new: str


@dataclass(frozen=True)
class Milestone:
    """A condition event on the timeline: when, and its reason (e.g. Scheduled, Accepted)."""

    at: datetime
    reason: str


@dataclass(frozen=True)
class Stage:
    """One step. ``state``: done, in_progress (the endpoint is in it now), failed (the endpoint
    failed in it), stopped (deleted while in it) or pending (not reached). ``start`` is None until
    the stage begins, ``end`` and ``seconds`` until it is over."""

    key: str
    label: str
    state: str
    start: datetime | None
    end: datetime | None
    seconds: float | None


@dataclass(frozen=True)
class ColdStart:
    """The latest cold start: its stages in order, when it began, when the first token came
    (``ready_at``, None until then), the total, and the TTFT the first-request gate measured."""

    started_at: datetime
    ready_at: datetime | None
    total_seconds: float | None
    first_token_seconds: float | None
    stages: list[Stage] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.ready_at is not None


def compute(
    *,
    created: datetime,
    phase: str,
    transitions: Iterable[Transition],
    milestones: Iterable[Milestone],
    verified_at: datetime | None = None,
    first_token_seconds: float | None = None,
) -> ColdStart:
    """The breakdown from an endpoint's facts (pure: no database). TRANSITIONS and MILESTONES in
    any order; PHASE is the endpoint's phase now."""
    transitions = sorted(transitions, key=lambda t: t.at)
    milestones = sorted(milestones, key=lambda m: m.at)

    started = created
    for t in transitions:
        restarted = t.new == P.SCHEDULING and t.old in (P.READY, P.DEGRADED)
        if t.new == P.REQUESTED or restarted:
            started = max(started, t.at)
    attempt = [t for t in transitions if t.at >= started]

    def reached(rank: int) -> datetime | None:
        return next((t.at for t in attempt if RANK.get(t.new, -1) >= rank), None)

    def first(reason: str) -> datetime | None:
        return next((m.at for m in milestones if m.reason == reason and m.at >= started), None)

    verified = verified_at if verified_at is not None and verified_at >= started else None
    # Without the gate's own record (gate turned off, or it ran at an earlier start), Ready is
    # the first sign of an answer; Degraded is not (it may mean the route was never accepted).
    first_token_at = verified or next((t.at for t in attempt if t.new == P.READY), None)

    # The route: the latest time each of its conditions turned True, up to the first token.
    cut = first_token_at or timezone.now()
    route_times = [
        max((m.at for m in milestones if m.reason == reason and m.at <= cut), default=None)
        for reason in ROUTE_REASONS
    ]
    route_ready = max((t for t in route_times if t is not None), default=None)

    # The end of each stage as seen, before making them consistent.
    model_loaded = reached(5)
    route_end = None
    if model_loaded is not None and route_ready is not None:
        route_end = max(model_loaded, route_ready)
    elif model_loaded is not None and first_token_at is not None:
        route_end = model_loaded  # no route events to go by, yet it answered: no wait for the route
    ends: list[datetime | None] = [
        reached(1),
        _earliest(first(SCHEDULED), reached(2)),
        reached(3),
        reached(4),
        model_loaded,
        route_end,
        first_token_at,
    ]
    # A stage that ended unseen (the watcher looked before and after it): it ended when the next
    # known one did. Then no stage may end before the one before it (two writes of one look can
    # land a few milliseconds apart in either order).
    for i in range(len(ends) - 2, -1, -1):
        if ends[i] is None and ends[i + 1] is not None:
            ends[i] = ends[i + 1]
    previous = started
    for i, end in enumerate(ends):
        if end is not None:
            ends[i] = previous = max(end, previous)

    # The state of the stage the endpoint has begun but not finished.
    unfinished = {P.FAILED: FAILED, P.DELETING: STOPPED, P.DELETED: STOPPED}.get(phase, IN_PROGRESS)
    stages = []
    start: datetime | None = started
    for (key, label), end in zip(STAGES, ends, strict=True):
        if end is not None:
            state = DONE
        elif start is not None:
            state = unfinished
        else:
            state = PENDING
        seconds = (end - start).total_seconds() if start is not None and end is not None else None
        stages.append(Stage(key, label, state, start, end, seconds))
        start = end
    ready_at = ends[-1]
    return ColdStart(
        started_at=started,
        ready_at=ready_at,
        total_seconds=(ready_at - started).total_seconds() if ready_at else None,
        first_token_seconds=first_token_seconds if verified else None,
        stages=stages,
    )


def _earliest(*times: datetime | None) -> datetime | None:
    return min((t for t in times if t is not None), default=None)


def breakdown(endpoint: Endpoint) -> ColdStart:
    """ENDPOINT's latest cold start, from its phase changes, timeline, verified_at and
    first_token_seconds (two queries)."""
    from .models import AuditEvent, EndpointEvent

    transitions = [
        Transition(created, (before or {}).get("phase", ""), (after or {}).get("phase", ""))
        for created, before, after in AuditEvent.objects.filter(
            object_type="endpoint",
            object_id=str(endpoint.pk),
            verb__in=[AuditVerb.ENDPOINT_PHASE, AuditVerb.ENDPOINT_REDEPLOY],
        )
        .order_by("created", "id")
        .values_list("created", "before", "after")
    ]
    milestones = [
        Milestone(created, reason)
        for created, reason in EndpointEvent.objects.filter(
            endpoint=endpoint, reason__in=MILESTONE_REASONS
        ).values_list("created", "reason")
    ]
    return compute(
        created=endpoint.created,
        phase=endpoint.phase,
        transitions=transitions,
        milestones=milestones,
        verified_at=endpoint.verified_at,
        first_token_seconds=endpoint.first_token_seconds,
    )
