"""Turning what the cluster says into phases, conditions, progress and plain-language problems."""

from __future__ import annotations

import datetime as dt

from workers import status as st

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)


def pod(
    *,
    node=None,
    phase="Pending",
    ready=False,
    waiting=None,
    running_since=None,
    last_terminated=None,
    sched_reason=None,
    sched_message="",
    name="ep-chat-1",
):
    conditions = []
    if node:
        conditions.append(
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-22T11:58:00Z"}
        )
    elif sched_reason:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": sched_reason, "message": sched_message}
        )
    conditions.append(
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "lastTransitionTime": "2026-11-22T11:59:30Z",
        }
    )
    state = {}
    if waiting:
        state = {"waiting": waiting}
    elif running_since:
        state = {"running": {"startedAt": running_since}}
    cs = {"name": "vllm", "ready": ready, "state": state}
    if last_terminated:
        cs["lastState"] = {"terminated": {"reason": last_terminated}}
    return {
        "metadata": {"name": name, "creationTimestamp": "2026-11-22T11:57:00Z"},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "conditions": conditions, "containerStatuses": [cs] if state else []},
    }


def route(accepted=("True", "Accepted", ""), resolved=("True", "ResolvedRefs", "")):
    return {
        "status": {
            "parents": [
                {
                    "controllerName": "x",
                    "conditions": [
                        {
                            "type": "Accepted",
                            "status": accepted[0],
                            "reason": accepted[1],
                            "message": accepted[2],
                        },
                        {
                            "type": "ResolvedRefs",
                            "status": resolved[0],
                            "reason": resolved[1],
                            "message": resolved[2],
                        },
                    ],
                }
            ]
        }
    }


def snap(**kw) -> st.Snapshot:
    base = dict(
        tenant_ready=True,
        deployment={"metadata": {"name": "ep-chat"}},
        route=route(),
        tier="h100-80gb",
        image="vllm/vllm-openai:v0.11.0",
        now=NOW,
        expected_load_seconds=100,
    )
    base.update(kw)
    return st.Snapshot(**base)


def codes(reading: st.Reading) -> list[str]:
    return [p.code for p in reading.problems]


def test_a_tenant_cluster_still_coming_up_is_the_first_stage():
    r = st.read(snap(tenant_ready=False, tenant_message="installing vCluster"))
    assert r.phase == st.PROVISIONING_TENANT
    assert r.conditions["TenantReady"].status == "False"
    assert 0 < r.progress < 10


def test_a_full_tier_says_so_with_the_queue_position():
    p = pod(
        sched_reason="Unschedulable", sched_message="0/5 nodes are available: 2 Insufficient nvidia.com/gpu."
    )
    r = st.read(snap(pods=[p], queue_position=3))
    assert r.phase == st.SCHEDULING
    assert codes(r) == ["insufficient_gpu"]
    assert "h100-80gb tier is full" in r.problems[0].message
    assert "number 3 in the queue" in r.problems[0].message
    assert r.conditions["Scheduled"].status == "False"


def test_a_missing_tier_is_not_reported_as_a_full_one():
    p = pod(
        sched_reason="Unschedulable",
        sched_message="0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
    )
    assert codes(st.read(snap(pods=[p]))) == ["no_matching_node"]


def test_a_scheduled_pod_creating_its_container_is_pulling():
    r = st.read(snap(pods=[pod(node="gpu-1", waiting={"reason": "ContainerCreating"})]))
    assert r.phase == st.PULLING
    assert r.conditions["Scheduled"].status == "True"


def test_an_image_that_cannot_be_pulled_fails_with_the_fix():
    p = pod(node="gpu-1", waiting={"reason": "ImagePullBackOff", "message": "manifest unknown"})
    r = st.read(snap(pods=[p]))
    assert r.phase == st.FAILED
    assert codes(r) == ["image_pull"]
    assert "manifest unknown" in r.problems[0].message


def test_weight_download_progress_comes_from_the_log():
    lines = ["INFO Downloading shards:  40%|####      | 2/5 [00:30<00:45]"]
    r = st.read(
        snap(pods=[pod(node="gpu-1", phase="Running", running_since="2026-11-22T11:59:00Z")], log_lines=lines)
    )
    assert (r.phase, r.stage_percent) == (st.DOWNLOADING_WEIGHTS, 40)
    assert r.progress == 30 + round(40 * 0.4)


def test_model_loading_milestones_advance_the_bar():
    running = [pod(node="gpu-1", phase="Running", running_since="2026-11-22T11:59:00Z")]
    lines = ["Downloading shards: 100%", "Loading weights took 12.31 seconds"]
    first = st.read(snap(pods=running, log_lines=lines))
    later = st.read(
        snap(
            pods=running,
            log_lines=[
                *lines,
                "Model loading took 15.0 GiB and 13.2 seconds",
                "Available KV cache memory: 52.1 GiB",
            ],
        )
    )
    assert first.phase == later.phase == st.LOADING_MODEL
    assert first.progress < later.progress < 95


def test_without_log_lines_progress_is_estimated_from_elapsed_time():
    r = st.read(snap(pods=[pod(node="gpu-1", phase="Running", running_since="2026-11-22T11:59:10Z")]))
    assert r.phase == st.LOADING_MODEL
    assert r.stage_percent == 50  # 50 s of an expected 100 s


def test_an_oom_killed_server_fails_with_advice_to_shrink_the_context():
    p = pod(
        node="gpu-1", phase="Running", waiting={"reason": "CrashLoopBackOff"}, last_terminated="OOMKilled"
    )
    r = st.read(snap(pods=[p]))
    assert r.phase == st.FAILED
    assert "oom_killed" in codes(r)
    assert "max model length" in r.problems[0].fix


def test_cuda_out_of_memory_in_the_log_is_recognised():
    running = [pod(node="gpu-1", phase="Running", running_since="2026-11-22T11:59:00Z")]
    r = st.read(
        snap(
            pods=running, log_lines=["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"]
        )
    )
    assert r.phase == st.FAILED and codes(r) == ["cuda_oom"]


def test_a_401_from_the_model_hub_points_at_the_token_and_licence():
    running = [pod(node="gpu-1", phase="Running", running_since="2026-11-22T11:59:00Z")]
    r = st.read(
        snap(
            pods=running, log_lines=["requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url"]
        )
    )
    assert r.phase == st.FAILED and codes(r) == ["hub_unauthorized"]
    assert "licence" in r.problems[0].fix


def test_a_ready_pod_behind_a_rejected_route_is_not_ready():
    r = st.read(
        snap(
            pods=[pod(node="gpu-1", phase="Running", ready=True, running_since="2026-11-22T11:59:00Z")],
            route=route(accepted=("False", "NotAllowedByListeners", "no listener allows t-acme")),
            verified=True,
        )
    )
    assert r.phase == st.DEGRADED
    assert r.conditions["Ready"].status == "False"
    assert r.conditions["RouteAccepted"].reason == "NotAllowedByListeners"
    assert codes(r) == ["route_not_allowed"]


def test_a_missing_backend_shows_on_the_resolved_refs_condition():
    r = st.read(
        snap(
            pods=[pod(node="gpu-1", phase="Running", ready=True, running_since="2026-11-22T11:59:00Z")],
            route=route(resolved=("False", "BackendNotFound", "Service t-acme/ep-chat not found")),
        )
    )
    assert r.conditions["RouteResolvedRefs"].status == "False"
    assert "BackendNotFound" in r.problems[0].message


def test_ready_waits_for_the_first_request_gate():
    ready_pod = pod(node="gpu-1", phase="Running", ready=True, running_since="2026-11-22T11:59:00Z")
    gated = st.read(snap(pods=[ready_pod]))
    failing = st.read(snap(pods=[ready_pod], verify_error="HTTP 500 from /v1/completions"))
    served = st.read(snap(pods=[ready_pod], verified=True))
    assert gated.phase == st.VERIFYING and gated.conditions["ModelLoaded"].status == "True"
    assert failing.phase == st.VERIFYING and codes(failing) == ["first_request_failed"]
    assert served.phase == st.READY and served.progress == 100
    assert served.conditions["Ready"].status == "True"
    assert served.pod_ready_at == "2026-11-22T11:59:30Z"


def test_one_of_two_replicas_crashing_is_degraded_not_failed():
    ok = pod(node="gpu-1", phase="Running", ready=True, running_since="2026-11-22T11:59:00Z", name="a")
    crashing = pod(
        node="gpu-2",
        phase="Running",
        waiting={"reason": "CrashLoopBackOff"},
        last_terminated="OOMKilled",
        name="b",
    )
    r = st.read(snap(pods=[ok, crashing], desired_replicas=2, verified=True))
    assert r.phase == st.DEGRADED
    assert r.ready_replicas == 1
    assert codes(r) == ["oom_killed"]


def test_the_watcher_never_moves_the_bar_back_within_a_stage(monkeypatch):
    from types import SimpleNamespace

    from workers import watcher as w

    calls = []
    monkeypatch.setattr(w.actions, "record_observation", lambda pk, **kw: calls.append(kw["load_progress"]))
    monkeypatch.setattr(w.actions, "set_endpoint_condition", lambda *a, **k: None)
    monkeypatch.setattr(w.actions, "record_running_replicas", lambda *a, **k: None)
    endpoint = SimpleNamespace(pk=1, phase=st.LOADING_MODEL, phase_reason="", phase_message="", conditions=[],
                               load_progress=80)
    early = st.Reading(phase=st.DOWNLOADING_WEIGHTS, stage=st.DOWNLOADING_WEIGHTS, stage_percent=50, progress=50,
                       conditions={}, problems=[])
    w.Watcher.write(SimpleNamespace(seen_replicas={1: 0}), endpoint, early)
    assert calls == []  # the phase stays Loading and the bar stays at 80


def test_a_gpu_node_joining_is_progress_not_a_problem():
    p = pod(sched_reason="Unschedulable", sched_message="0/0 nodes are available: no nodes available to schedule pods.")
    joining = {"reason": "TriggeredScaleUp", "message": "auto node auto-l40s-48gb-1 of GPU tier l40s-48gb joined"}
    r = st.read(snap(pods=[p], events=[joining]))
    assert r.phase == st.SCHEDULING and r.problems == []
    assert r.conditions["Scheduled"].reason == "NodeJoining"


def test_an_empty_pool_is_a_full_tier():
    p = pod(sched_reason="Unschedulable", sched_message="0/0 nodes are available: no nodes available to schedule pods.")
    full = {"reason": "NotTriggerScaleUp", "message": "pod didn't trigger scale-up: no free node of GPU tier l40s-48gb"}
    r = st.read(snap(pods=[p], events=[full], queue_position=2))
    assert codes(r) == ["insufficient_gpu"]
    assert "number 2 in the queue" in r.problems[0].message
