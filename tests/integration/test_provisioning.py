"""Provisioning end to end: a request becomes a tenant cluster, applied objects, a scheduled pod,
advancing phases and a routed, ready endpoint; and it converges again after failures."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from decimal import Decimal

import pytest

from endpoints import actions, naming
from endpoints.choices import EndpointPhase
from endpoints.models import Endpoint, EndpointEvent, TenantCluster
from tests.waiting import wait_for
from workers import manifests
from workers.kube import tenant_cluster

pytestmark = [pytest.mark.platform, pytest.mark.django_db(transaction=True)]
P = EndpointPhase
KINDS = [
    ("apps/v1", "Deployment", "{name}"),
    ("v1", "Service", "{name}"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute", "{name}"),
    ("policy/v1", "PodDisruptionBudget", "{name}"),
    ("networking.k8s.io/v1", "NetworkPolicy", "{name}"),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "{name}"),
    ("v1", "Secret", "{name}-auth"),
    ("v1", "ServiceAccount", "{name}"),
]


def phase(endpoint_id: int) -> str:
    return Endpoint.objects.get(pk=endpoint_id).phase


def reaches(endpoint_id: int, wanted: str, timeout: float = 120) -> Endpoint:
    def check():
        ep = Endpoint.objects.get(pk=endpoint_id)
        assert ep.phase != P.FAILED or wanted == P.FAILED, (
            f"endpoint failed: {ep.phase_reason}: {ep.phase_message}"
        )
        return ep if ep.phase == wanted else None

    return wait_for(check, timeout=timeout, interval=0.3, what=f"endpoint {endpoint_id} to reach {wanted}")


def applied(endpoint_id: int, timeout: float = 180) -> Endpoint:
    """Wait until a worker has applied the endpoint's latest generation (its phase may already be
    past Scheduling by then, when the tenant cluster and a node were there already)."""

    def check():
        ep = Endpoint.objects.get(pk=endpoint_id)
        assert ep.phase != P.FAILED, f"endpoint failed: {ep.phase_reason}: {ep.phase_message}"
        return ep if ep.observed_generation >= ep.generation else None

    return wait_for(check, timeout=timeout, interval=0.3, what=f"endpoint {endpoint_id} to be applied")


def cluster_for(tenant):
    return tenant_cluster(naming.namespace_for(tenant), tenant.slug)


def objects(tenant, endpoint) -> dict[str, dict | None]:
    c = cluster_for(tenant)
    ns, name = naming.namespace_for(tenant), naming.object_name(endpoint)
    return {kind: c.get(api, kind, pattern.format(name=name), ns) for api, kind, pattern in KINDS}


@pytest.fixture
def stack(worker, watcher):
    return worker, watcher


def test_a_request_becomes_a_routed_ready_endpoint_on_its_tier(stack, catalog, make_tenant):
    tenant = make_tenant()
    ep = actions.request_endpoint(
        None, tenant=tenant, template=catalog["template"], name="chat", min_replicas=1, max_replicas=2
    )

    wait_for(
        lambda: TenantCluster.objects.filter(tenant=tenant, phase="ready").exists(),
        timeout=180,
        what="the tenant cluster",
    )
    ready = reaches(ep.pk, P.READY, timeout=180)

    found = objects(tenant, ep)
    assert all(found.values()), {k: bool(v) for k, v in found.items()}
    owner = found["Deployment"]["metadata"]["uid"]
    for kind, obj in found.items():
        if kind in manifests.PREREQUISITE_KINDS:
            # applied before the Deployment, so its pods never wait for them
            assert not obj["metadata"].get("ownerReferences"), kind
        elif kind != "Deployment":
            assert obj["metadata"]["ownerReferences"][0]["uid"] == owner, kind
    c = cluster_for(tenant)
    events = c.list("v1", "Event", naming.namespace_for(tenant))["items"]
    assert not [e["message"] for e in events if e["reason"] == "FailedCreate"]
    pods = c.list(
        "v1", "Pod", naming.namespace_for(tenant), label_selector="inference-portal.io/endpoint=chat"
    )["items"]
    node = c.get("v1", "Node", pods[0]["spec"]["nodeName"])
    assert node["metadata"]["labels"]["inference-portal.io/gpu-tier"] == "l40s-48gb"

    conditions = {c["type"]: c["status"] for c in ready.conditions}
    assert conditions == {
        "TenantReady": "True",
        "Scheduled": "True",
        "ModelLoaded": "True",
        "RouteAccepted": "True",
        "RouteResolvedRefs": "True",
        "Ready": "True",
    }
    assert ready.url.startswith("http://chat-" + tenant.slug)
    assert ready.load_progress == 100

    # The timeline shows the way up, in order.
    phases = [e.reason for e in EndpointEvent.objects.filter(endpoint=ep).order_by("created", "pk")]
    assert phases.index("Applied") < phases.index("Ready" if "Ready" in phases else phases[-1])


def test_a_second_endpoint_reuses_the_tenant_cluster(stack, catalog, make_tenant):
    tenant = make_tenant()
    first = actions.request_endpoint(
        None, tenant=tenant, template=catalog["template"], name="one", min_replicas=1, max_replicas=1
    )
    applied(first.pk)
    tc = TenantCluster.objects.get(tenant=tenant)
    secret_version = cluster_for(tenant).version()  # the client works before the second request

    second = actions.request_endpoint(
        None, tenant=tenant, template=catalog["template"], name="two", min_replicas=1, max_replicas=1
    )
    applied(second.pk, timeout=60)
    again = TenantCluster.objects.get(tenant=tenant)
    assert again.install_started_at == tc.install_started_at
    assert TenantCluster.objects.filter(tenant=tenant).count() == 1
    assert secret_version


def test_delete_removes_every_object(stack, catalog, make_tenant):
    tenant = make_tenant()
    ep = actions.request_endpoint(
        None, tenant=tenant, template=catalog["template"], name="gone", min_replicas=1, max_replicas=2
    )
    reaches(ep.pk, P.READY, timeout=180)
    actions.delete_endpoint(None, Endpoint.objects.get(pk=ep.pk))
    reaches(ep.pk, P.DELETED, timeout=120)
    c = cluster_for(tenant)
    ns = naming.namespace_for(tenant)
    wait_for(lambda: not any(objects(tenant, ep).values()), timeout=60, what="every object to be removed")
    assert c.list("v1", "Pod", ns, label_selector="inference-portal.io/endpoint=gone")["items"] == []


def test_a_tier_with_no_free_gpus_says_so_with_the_queue_position(stack, catalog, make_tenant):
    from tests.factories import make_model

    h100 = actions.create_gpu_tier(
        None,
        name="h100-80gb",
        product="NVIDIA-H100-80GB-HBM3",
        gpu_memory_gib=Decimal("79.65"),
        resource_name="nvidia.com/gpu",
        gpus_per_node=8,
        node_labels={},
        taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        price_per_gpu_hour=Decimal("4"),
    )
    big = actions.create_template(
        None,
        name="llama-70b-h100x8",
        model=make_model(
            name="Llama-3.1-70B-Instruct",
            parameters=70_553_706_496,
            num_layers=80,
            num_kv_heads=8,
            head_dim=128,
        ),
        tier=h100,
        image=catalog["template"].image,
        gpus_per_replica=8,
        tensor_parallel_size=8,
        max_model_len=8192,
        min_replicas=1,
        max_replicas=3,
    )
    tenant = make_tenant("h", gpus=32, tiers={"h100-80gb": 32})
    # Two replicas take both H100 nodes the pool holds; the third endpoint's pod cannot fit.
    filler = actions.request_endpoint(
        None, tenant=tenant, template=big, name="filler", min_replicas=2, max_replicas=2
    )
    reaches(filler.pk, P.READY, timeout=240)
    waiting = actions.request_endpoint(
        None, tenant=tenant, template=big, name="waiting", min_replicas=1, max_replicas=1
    )

    def insufficient():
        ep = Endpoint.objects.get(pk=waiting.pk)
        return ep if ep.phase_reason == "InsufficientGpu" else None

    ep = wait_for(insufficient, timeout=120, what="the insufficient-GPU reason")
    assert ep.phase == P.SCHEDULING
    assert "h100-80gb tier is full" in ep.phase_message
    assert "number 1 in the queue" in ep.phase_message
    scheduled = next(c for c in ep.conditions if c["type"] == "Scheduled")
    assert scheduled["status"] == "False" and "Insufficient nvidia.com/gpu" in scheduled["message"]
    for e in (filler, waiting):
        actions.delete_endpoint(None, Endpoint.objects.get(pk=e.pk))
    reaches(filler.pk, P.DELETED, timeout=120)


def test_a_hand_deleted_service_is_restored_by_the_reconcile_and_no_drift_writes_nothing(
    stack, catalog, make_tenant
):
    from portal.celery import app
    from workers import provision

    tenant = make_tenant()
    ep = actions.request_endpoint(
        None, tenant=tenant, template=catalog["template"], name="drift", min_replicas=1, max_replicas=1
    )
    reaches(ep.pk, P.READY, timeout=180)
    c, ns, name = cluster_for(tenant), naming.namespace_for(tenant), naming.object_name(ep)

    before = {k: v["metadata"]["resourceVersion"] for k, v in objects(tenant, ep).items() if v}
    assert provision.drifted(c, Endpoint.objects.get(pk=ep.pk)) == []
    result = provision.repair_drift()
    assert result["repaired"] == 0 and result["checked"] >= 1
    after = {k: v["metadata"]["resourceVersion"] for k, v in objects(tenant, ep).items() if v}
    assert after == before

    c.delete("v1", "Service", name, ns, propagation="Background")
    wait_for(lambda: c.get("v1", "Service", name, ns) is None, timeout=30, what="the Service to go")
    app.send_task("workers.tasks.reconcile")
    wait_for(
        lambda: c.get("v1", "Service", name, ns), timeout=60, what="the reconcile to restore the Service"
    )
    restored = c.get("v1", "Service", name, ns)
    # Applied before the Deployment (the route needs it), so owned by nothing, as at first.
    assert "Service" in manifests.PREREQUISITE_KINDS and not restored["metadata"].get("ownerReferences")


@pytest.mark.parametrize(
    "point",
    [
        "after-claim",
        "after-helm",
        "before-deployment",
        "after-deployment",
        "mid-companions",
        "before-record",
        "after-record",
    ],
)
def test_a_worker_killed_between_steps_converges_after_restart_without_duplicates(
    point, platform, stack_env, worker, watcher, catalog, make_tenant, tmp_path, monkeypatch
):
    from endpoints import dispatch
    from portal.celery import app
    from tests.stack import Proc

    # This test's tasks go to a queue only its own workers read, so the doomed worker is the one
    # that takes the deploy, whatever else the session's worker is busy with.
    queue = f"kill-{point}"
    monkeypatch.setattr(dispatch, "send_task", lambda name, pk: app.send_task(name, args=[pk], queue=queue))
    env = {
        **stack_env,
        "PORTAL_FAILPOINTS": point,
        "PORTAL_FAILPOINT_DIR": str(tmp_path),
        "CELERY_VISIBILITY_TIMEOUT": "30",
        "PORTAL_CLAIM_STALE_SECONDS": "8",
    }
    argv = [
        os.path.join(os.path.dirname(__file__), "..", "..", ".venv", "bin", "celery"),
        "-A",
        "portal",
        "worker",
        "-P",
        "threads",
        "-c",
        "4",
        "-Q",
        queue,
        "--loglevel=INFO",
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"kill-{uuid.uuid4().hex[:6]}@%h",
    ]
    doomed = Proc(f"doomed-{point}", argv, env, tmp_path).start()
    rescuer = Proc(f"rescuer-{point}", argv, env, tmp_path)
    try:
        # A tenant cluster of its own (uninstalled afterwards): the failpoints in the install need a fresh one.
        tenant = make_tenant("k" + point.replace("-", "")[:8], own_cluster=True)
        ep = actions.request_endpoint(
            None, tenant=tenant, template=catalog["template"], name="survivor", min_replicas=1, max_replicas=1
        )
        wait_for(lambda: doomed.proc.poll() is not None, timeout=180, what=f"the worker to die at {point}")
        assert doomed.proc.returncode == -signal.SIGKILL, doomed.tail()
        assert (tmp_path / point).exists()

        # A new worker: the unacknowledged task comes back (acks_late), or the reconcile finds it.
        rescuer.start()

        def converged():
            app.send_task("workers.tasks.reconcile", queue=queue)
            return Endpoint.objects.get(pk=ep.pk).phase == P.READY

        wait_for(converged, timeout=240, interval=3, what=f"convergence after a kill at {point}")
    finally:
        rescuer.stop()
        doomed.kill()
    c, ns = cluster_for(tenant), naming.namespace_for(tenant)
    assert len(c.list("apps/v1", "Deployment", ns)["items"]) == 1
    assert len(c.list("v1", "Service", ns)["items"]) == 1
    assert TenantCluster.objects.filter(tenant=tenant).count() == 1
    releases = subprocess.run(
        [platform.env["PORTAL_HELM_BIN"], "list", "-n", ns, "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": platform.kubeconfig},
        check=True,
    ).stdout.split()
    assert releases == [tenant.slug]


def test_a_30_second_api_server_outage_mid_deploy_recovers_without_help(
    stack, catalog, make_tenant, platform
):
    import time

    tenant = make_tenant()
    first = actions.request_endpoint(
        None, tenant=tenant, template=catalog["template"], name="before", min_replicas=1, max_replicas=1
    )
    applied(first.pk)
    pidfile = platform.cfg.run / f"vc-t-{tenant.slug}-{tenant.slug}-apiserver.pid"
    pid = int(pidfile.read_text())

    # Freeze the tenant's API server: connections hang, as when it is unreachable.
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        ep = actions.request_endpoint(
            None, tenant=tenant, template=catalog["template"], name="during", min_replicas=1, max_replicas=1
        )
        wait_for(
            lambda: Endpoint.objects.get(pk=ep.pk).observed_generation == 0,
            timeout=5,
            what="the deploy to start",
        )
        # The outage itself lasts 30 s; nothing here waits for the portal.
        time.sleep(max(0.0, 30 - (time.monotonic() - stopped_at)))
        assert Endpoint.objects.get(pk=ep.pk).observed_generation == 0  # nothing could be applied meanwhile
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # the vCluster emulator replaced it; the new one serves the same etcd prefix
    reaches(ep.pk, P.READY, timeout=240)
    reaches(first.pk, P.READY, timeout=120)  # the one caught half-way converges too


def test_deleting_a_tenant_removes_its_endpoints_and_then_its_tenant_cluster(
    stack, catalog, make_tenant, platform
):
    from tests.factories import make_user
    from workers.kube import host_cluster

    tenant = make_tenant("gone", own_cluster=True)
    ep = actions.request_endpoint(
        None, tenant=tenant, template=catalog["template"], name="last", min_replicas=1, max_replicas=1
    )
    applied(ep.pk)
    actions.delete_tenant(make_user(staff=True), tenant)
    reaches(ep.pk, P.DELETED, timeout=120)
    wait_for(
        lambda: TenantCluster.objects.filter(tenant=tenant, phase="deleted").exists(),
        timeout=180,
        what="the tenant cluster to be removed",
    )
    assert host_cluster().get("v1", "Namespace", naming.namespace_for(tenant)) is None
    assert not list(platform.cfg.run.glob(f"vc-t-{tenant.slug}-*.pid"))
