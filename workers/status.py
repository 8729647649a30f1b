"""Read what a tenant cluster says about one endpoint and say it in the portal's words.

Pure functions: the watcher gathers a `Snapshot` (Deployment, pods, events, HTTPRoute, the lead
pod's recent log lines) and `read()` returns the phase, the six conditions, the load progress and
any problems, each problem in plain words with the fix. Nothing here talks to the cluster or DB.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

# Phase values match endpoints.choices.Phase (the domain's TextChoices).
REQUESTED = "requested"
PROVISIONING_TENANT = "provisioning_tenant"
SCHEDULING = "scheduling"
PULLING = "pulling"
DOWNLOADING_WEIGHTS = "downloading_weights"
LOADING_MODEL = "loading_model"
VERIFYING = "verifying"
READY = "ready"
DEGRADED = "degraded"
FAILED = "failed"

CONDITION_TYPES = ("TenantReady", "Scheduled", "ModelLoaded", "RouteAccepted", "RouteResolvedRefs", "Ready")

# Where each stage sits on the overall bar; a stage's own percentage fills its span.
STAGE_SPANS = {
    PROVISIONING_TENANT: (0, 10),
    SCHEDULING: (10, 20),
    PULLING: (20, 30),
    DOWNLOADING_WEIGHTS: (30, 70),
    LOADING_MODEL: (70, 95),
    VERIFYING: (95, 99),
    READY: (100, 100),
}

DOWNLOAD_RE = re.compile(r"(?:Downloading|Fetching|download)[^\n]*?(\d{1,3})%", re.IGNORECASE)
SHARDS_RE = re.compile(r"Loading safetensors checkpoint shards:\s*(\d{1,3})%")
LOAD_MILESTONES = [  # (log text, percentage of the loading stage once seen)
    ("Loading weights took", 40),
    ("Model loading took", 60),
    ("Available KV cache memory", 75),
    ("Starting vLLM API server", 90),
    ("Application startup complete", 100),
]
OOM_RE = re.compile(r"CUDA out of memory|OutOfMemoryError|torch\.cuda\.OutOfMemoryError")
HUB_401_RE = re.compile(
    r"401 Client Error|GatedRepoError|Unauthorized for url|Access to model .* is restricted"
)
INSUFFICIENT_RE = re.compile(r"Insufficient ([\w./-]*[\w])")


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    fix: str


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True", "False", "Unknown"
    reason: str
    message: str = ""


@dataclass
class Snapshot:
    """What the watcher saw for one endpoint. Objects are the API server's JSON (dicts)."""

    tenant_ready: bool
    tenant_message: str = ""
    deployment: dict | None = None
    pods: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    route: dict | None = None
    log_lines: list[str] = field(default_factory=list)
    desired_replicas: int = 1
    tier: str = ""
    resource_name: str = "nvidia.com/gpu"
    image: str = ""
    namespace: str = ""
    expected_load_seconds: int = 120
    queue_position: int | None = None
    verified: bool = False  # the first-request gate passed (issue 6)
    verify_error: str = ""
    gateway_controller: str = ""
    now: dt.datetime | None = None


@dataclass
class Reading:
    phase: str
    stage: str
    stage_percent: int
    progress: int
    conditions: dict[str, Condition]
    problems: list[Problem]
    ready_replicas: int = 0
    pod_ready_at: str | None = None  # when the lead pod turned Ready (cold-start breakdown)
    scheduled_at: str | None = None
    started_at: str | None = None

    @property
    def summary(self) -> str:
        return self.problems[0].message if self.problems else ""


def _cond(obj: dict, ctype: str) -> dict | None:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == ctype), None
    )


def _overall(stage: str, percent: int) -> int:
    low, high = STAGE_SPANS.get(stage, (0, 0))
    return round(low + (high - low) * max(0, min(100, percent)) / 100)


def _live(pods: list[dict]) -> list[dict]:
    return [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


def _lead(pods: list[dict]) -> dict | None:
    """The pod whose progress the page shows: the furthest along, then the newest."""

    def rank(p: dict) -> tuple:
        status = p.get("status") or {}
        ready = (_cond(p, "Ready") or {}).get("status") == "True"
        return (
            ready,
            status.get("phase") == "Running",
            bool(p["spec"].get("nodeName")),
            p["metadata"].get("creationTimestamp", ""),
        )

    live = _live(pods)
    return max(live, key=rank) if live else None


def _container_state(pod: dict) -> tuple[dict, dict]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    main = next((s for s in statuses if s.get("name") == "vllm"), statuses[0] if statuses else {})
    return main.get("state") or {}, main.get("lastState") or {}


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def scheduling_problem(s: Snapshot, message: str) -> Problem | None:
    """Why the pod waits, or None when the wait is progress (a GPU node is joining)."""
    autoscaling = next(
        (e for e in reversed(s.events) if e.get("reason") in ("TriggeredScaleUp", "NotTriggerScaleUp")), None
    )
    if autoscaling is not None and autoscaling["reason"] == "TriggeredScaleUp":
        return None  # Auto Nodes is bringing a GPU node of the tier into the tenant cluster
    if autoscaling is not None:
        position = f" It is number {s.queue_position} in the queue for this tier." if s.queue_position else ""
        return Problem(
            "insufficient_gpu",
            f"The {s.tier or 'requested'} tier is full: no free GPU node can join this tenant cluster.{position}",
            "Wait for capacity to free up, lower the replica count, or pick a template on another tier.",
        )
    match = INSUFFICIENT_RE.search(message)
    if match and match.group(1) not in ("cpu", "memory", "pods", "ephemeral-storage"):
        position = f" It is number {s.queue_position} in the queue for this tier." if s.queue_position else ""
        return Problem(
            "insufficient_gpu",
            f"The {s.tier or 'requested'} tier is full: no node has {match.group(1)} free.{position}",
            "Wait for capacity to free up, lower the replica count, or pick a template on another tier.",
        )
    if "node affinity" in message or "node selector" in message or "didn't match" in message:
        return Problem(
            "no_matching_node",
            f"No node of the {s.tier or 'requested'} tier exists in this cluster.",
            "Ask the platform team to add nodes of this tier, or pick a template on another tier.",
        )
    if "taint" in message:
        return Problem(
            "untolerated_taint",
            "The only free nodes carry a taint this endpoint does not tolerate.",
            "Ask the platform team to check the tier's taints.",
        )
    return Problem(
        "unschedulable",
        f"The pod cannot be scheduled: {message}",
        "Check the tier's capacity, or pick another template.",
    )


def _log_problems(lines: list[str]) -> list[Problem]:
    text = "\n".join(lines)
    problems = []
    if OOM_RE.search(text):
        problems.append(
            Problem(
                "cuda_oom",
                "The model ran out of GPU memory while loading (CUDA out of memory).",
                "Lower the max model length or GPU memory utilisation, or pick a template with a bigger tier.",
            )
        )
    if HUB_401_RE.search(text):
        problems.append(
            Problem(
                "hub_unauthorized",
                "The model hub refused the download (401 Unauthorized).",
                "Check the HF token in the tenant's hf-token Secret, and that its account accepted the model's licence.",
            )
        )
    return problems


def load_progress(lines: list[str]) -> tuple[str, int] | None:
    """The loading stage and its percentage from vLLM's log lines, or None if they say nothing."""
    stage, percent = None, 0
    for line in lines:
        if m := SHARDS_RE.search(line):
            stage, percent = (
                LOADING_MODEL,
                max(percent if stage == LOADING_MODEL else 0, int(m.group(1)) * 40 // 100),
            )
            continue
        for text, milestone in LOAD_MILESTONES:
            if text in line:
                stage, percent = LOADING_MODEL, max(percent if stage == LOADING_MODEL else 0, milestone)
                break
        else:
            if stage != LOADING_MODEL and (m := DOWNLOAD_RE.search(line)):
                stage, percent = DOWNLOADING_WEIGHTS, min(100, int(m.group(1)))
    return (stage, percent) if stage else None


def route_conditions(s: Snapshot) -> tuple[Condition, Condition, list[Problem]]:
    unknown = ("Unknown", "Pending", "The gateway has not reported on the route yet.")
    if s.route is None:
        return (
            Condition("RouteAccepted", "False", "NotApplied", "The route has not been applied yet."),
            Condition("RouteResolvedRefs", "False", "NotApplied", ""),
            [],
        )
    parents = (s.route.get("status") or {}).get("parents") or []
    if s.gateway_controller:
        parents = [p for p in parents if p.get("controllerName") == s.gateway_controller] or parents
    conds = {c["type"]: c for c in (parents[0].get("conditions") if parents else [])}
    acc, res = conds.get("Accepted"), conds.get("ResolvedRefs")
    accepted = Condition(
        "RouteAccepted", *(acc and (acc["status"], acc.get("reason", ""), acc.get("message", "")) or unknown)
    )
    resolved = Condition(
        "RouteResolvedRefs",
        *(res and (res["status"], res.get("reason", ""), res.get("message", "")) or unknown),
    )
    problems = []
    if accepted.status == "False":
        if accepted.reason == "NotAllowedByListeners":
            problems.append(
                Problem(
                    "route_not_allowed",
                    "The shared gateway does not accept routes from this endpoint's namespace.",
                    "The portal labels the namespace for route access; if this persists, ask the platform team "
                    "to check the gateway's allowedRoutes.",
                )
            )
        elif accepted.reason == "NoMatchingListenerHostname":
            problems.append(
                Problem(
                    "route_hostname",
                    f"The gateway serves no listener for this hostname: {accepted.message}",
                    "Ask the platform team to check the gateway's domain setting (PORTAL_GATEWAY_DOMAIN).",
                )
            )
        else:
            problems.append(
                Problem(
                    "route_not_accepted",
                    f"The gateway did not accept the route: {accepted.message}",
                    "Ask the platform team to check the shared gateway.",
                )
            )
    if resolved.status == "False":
        problems.append(
            Problem(
                "route_backend",
                f"The route's backend is not resolved ({resolved.reason}): {resolved.message}",
                "The portal restores missing Services on its next reconcile; if this persists, contact support.",
            )
        )
    return accepted, resolved, problems


def read(s: Snapshot) -> Reading:
    now = s.now or dt.datetime.now(dt.UTC)
    conditions: dict[str, Condition] = {}
    problems: list[Problem] = []

    conditions["TenantReady"] = Condition(
        "TenantReady",
        "True" if s.tenant_ready else "False",
        "TenantClusterReady" if s.tenant_ready else "Provisioning",
        s.tenant_message,
    )
    accepted, resolved, route_problems = route_conditions(s)
    conditions["RouteAccepted"], conditions["RouteResolvedRefs"] = accepted, resolved

    def finish(phase: str, stage: str, percent: int, ready: int = 0, **times: str | None) -> Reading:
        for ctype in CONDITION_TYPES:
            conditions.setdefault(ctype, Condition(ctype, "False", "Pending", ""))
        return Reading(
            phase,
            stage,
            percent,
            _overall(stage, percent),
            conditions,
            problems + route_problems,
            ready,
            **times,
        )

    if not s.tenant_ready:
        return finish(PROVISIONING_TENANT, PROVISIONING_TENANT, 50)
    if s.deployment is None:
        return finish(REQUESTED, PROVISIONING_TENANT, 100)

    live = _live(s.pods)
    ready_pods = [p for p in live if (_cond(p, "Ready") or {}).get("status") == "True"]
    lead = _lead(s.pods)

    # Scheduled
    if lead is None:
        conditions["Scheduled"] = Condition(
            "Scheduled", "False", "NoPods", "Waiting for the pod to be created."
        )
    else:
        sched = _cond(lead, "PodScheduled") or {}
        if lead["spec"].get("nodeName"):
            conditions["Scheduled"] = Condition(
                "Scheduled", "True", "Scheduled", f"on {lead['spec']['nodeName']}"
            )
        else:
            message = sched.get("message") or next(
                (e.get("message", "") for e in reversed(s.events) if e.get("reason") == "FailedScheduling"),
                "",
            )
            joining = next((e for e in reversed(s.events) if e.get("reason") == "TriggeredScaleUp"), None)
            if joining is not None and not INSUFFICIENT_RE.search(message):
                conditions["Scheduled"] = Condition(
                    "Scheduled", "False", "NodeJoining", joining.get("message", "")
                )
            else:
                conditions["Scheduled"] = Condition(
                    "Scheduled", "False", sched.get("reason") or "Pending", message
                )
            if sched.get("reason") == "Unschedulable" or message:
                problem = scheduling_problem(s, message)
                if problem is not None:
                    problems.append(problem)

    # ModelLoaded, from the pods' states, their events and the lead pod's log lines
    state, _last = _container_state(lead) if lead else ({}, {})
    waiting = state.get("waiting") or {}
    log_problems = _log_problems(s.log_lines)
    for p in live:  # any replica's crash explains a missing one, not only the lead's
        p_state, p_last = _container_state(p)
        p_waiting = p_state.get("waiting") or {}
        if "OOMKilled" in (
            (p_last.get("terminated") or {}).get("reason"),
            (p_state.get("terminated") or {}).get("reason"),
        ):
            problems.append(
                Problem(
                    "oom_killed",
                    "The model server was killed for using more memory than its limit (OOMKilled).",
                    "Lower the max model length, or pick a template with a bigger tier.",
                )
            )
        if p_waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            problems.append(
                Problem(
                    "image_pull",
                    f"The runtime image {s.image} could not be pulled: {p_waiting.get('message', p_waiting['reason'])}",
                    "Check that the image tag exists and that the cluster can reach its registry.",
                )
            )
    problems[:] = list({p.code: p for p in problems}.values())
    problems.extend(p for p in log_problems if p.code not in {q.code for q in problems})

    times = {
        "scheduled_at": (_cond(lead, "PodScheduled") or {}).get("lastTransitionTime") if lead else None,
        "started_at": (state.get("running") or {}).get("startedAt"),
        "pod_ready_at": (_cond(lead, "Ready") or {}).get("lastTransitionTime") if ready_pods else None,
    }
    if ready_pods:
        conditions["ModelLoaded"] = Condition(
            "ModelLoaded", "True", "Ready", f"{len(ready_pods)} of {s.desired_replicas} replicas ready"
        )
    else:
        conditions["ModelLoaded"] = Condition(
            "ModelLoaded", "False", "Loading" if lead else "Pending", problems[0].message if problems else ""
        )

    route_ok = accepted.status == "True" and resolved.status == "True"
    fatal = [p for p in problems if p.code in ("oom_killed", "cuda_oom", "hub_unauthorized", "image_pull")]

    if ready_pods:
        if not route_ok:
            conditions["Ready"] = Condition(
                "Ready", "False", "RouteNotReady", "The route is not accepted yet."
            )
            return finish(
                VERIFYING if not route_problems else DEGRADED, VERIFYING, 20, len(ready_pods), **times
            )
        if not s.verified:
            conditions["Ready"] = Condition(
                "Ready",
                "False",
                "Verifying",
                s.verify_error or "Sending a first request through the gateway.",
            )
            if s.verify_error:
                problems.append(
                    Problem(
                        "first_request_failed",
                        f"The endpoint is up but did not answer a test request: {s.verify_error}",
                        "The portal keeps retrying; check the problems above or contact support.",
                    )
                )
            return finish(VERIFYING, VERIFYING, 50, len(ready_pods), **times)
        degraded = len(ready_pods) < min(s.desired_replicas, len(live) or 1) or bool(fatal)
        conditions["Ready"] = Condition(
            "Ready",
            "True",
            "Degraded" if degraded else "Ready",
            f"{len(ready_pods)} of {s.desired_replicas} replicas serving",
        )
        return finish(DEGRADED if degraded else READY, READY, 100, len(ready_pods), **times)

    conditions["Ready"] = Condition("Ready", "False", "NotReady", problems[0].message if problems else "")
    if fatal:
        return finish(FAILED, LOADING_MODEL, 0, **times)
    if lead is None or not lead["spec"].get("nodeName"):
        return finish(SCHEDULING, SCHEDULING, 50, **times)
    if waiting or (lead.get("status") or {}).get("phase") == "Pending":
        return finish(PULLING, PULLING, 50, **times)
    progress = load_progress(s.log_lines)
    if progress:
        return finish(progress[0], progress[0], progress[1], **times)
    # No log lines to go by: estimate from the time since the container started.
    started = _parse_time(times["started_at"])
    elapsed = (now - started).total_seconds() if started else 0
    estimate = min(95, int(100 * elapsed / max(1, s.expected_load_seconds)))
    return finish(LOADING_MODEL, LOADING_MODEL, estimate, **times)
