"""The local platform is real: the scheduler places GPU pods by tier, KWOK plays the kubelets,
and the Gateway API status controller follows the real rules."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.waiting import wait_for

pytestmark = pytest.mark.platform

TIER_LABEL = "inference-portal.io/gpu-tier"
GW_GROUP, GW_VERSION = "gateway.networking.k8s.io", "v1"


@pytest.fixture(scope="module")
def api(platform):
    return config.new_client_from_config(config_file=platform.kubeconfig)


@pytest.fixture
def namespace(api):
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"inference-portal.io/route-access": "allowed"})
        )
    )
    yield name
    client.CoreV1Api(api).delete_namespace(name)


def gpu_deployment(name: str, gpus: int, tier: str, load_delay: str = "2s") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {"inference-portal.io/load-delay": load_delay},
                },
                "spec": {
                    "nodeSelector": {TIER_LABEL: tier},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.11.0",
                            "resources": {
                                "limits": {"nvidia.com/gpu": str(gpus)},
                                "requests": {"nvidia.com/gpu": str(gpus)},
                            },
                        }
                    ],
                },
            },
        },
    }


def pods(api, namespace: str, app: str) -> list:
    return client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}").items


def condition(obj, ctype: str):
    return next((c for c in (obj.status.conditions or []) if c.type == ctype), None)


def test_a_gpu_pod_lands_on_its_tier_and_becomes_available_after_the_load_delay(api, namespace):
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, gpu_deployment("small", 1, "l40s-48gb", load_delay="3s"))

    pod = wait_for(
        lambda: next((p for p in pods(api, namespace, "small") if p.spec.node_name), None),
        timeout=30,
        what="the pod to be scheduled",
    )
    node = client.CoreV1Api(api).read_node(pod.spec.node_name)
    assert node.metadata.labels[TIER_LABEL] == "l40s-48gb"

    # KWOK first reports the container running but not ready: the model is still loading.
    running = wait_for(
        lambda: next((p for p in pods(api, namespace, "small") if p.status.phase == "Running"), None),
        timeout=30,
        what="the pod to run",
    )
    assert condition(running, "Ready").status == "False"

    deployment = wait_for(
        lambda: (
            (d := apps.read_namespaced_deployment("small", namespace)).status.available_replicas == 1 and d
        ),
        timeout=60,
        what="the deployment to become Available",
    )
    assert condition(deployment, "Available").status == "True"
    ready = pods(api, namespace, "small")[0]
    started = ready.status.container_statuses[0].state.running.started_at
    became_ready = condition(ready, "Ready").last_transition_time
    # The pod was held unready for the annotated load delay (3s), not made ready at once.
    assert (became_ready - started).total_seconds() >= 2


def test_a_pod_wanting_more_gpus_than_any_node_has_stays_pending_with_failed_scheduling(api, namespace):
    client.AppsV1Api(api).create_namespaced_deployment(namespace, gpu_deployment("huge", 16, "h100-80gb"))

    def failed_scheduling():
        events = (
            client.CoreV1Api(api)
            .list_namespaced_event(namespace, field_selector="reason=FailedScheduling")
            .items
        )
        return [e for e in events if "Insufficient nvidia.com/gpu" in (e.message or "")]

    events = wait_for(failed_scheduling, timeout=30, what="a FailedScheduling event")
    assert "Insufficient nvidia.com/gpu" in events[0].message
    pod = pods(api, namespace, "huge")[0]
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    scheduled = condition(pod, "PodScheduled")
    assert scheduled.status == "False" and scheduled.reason == "Unschedulable"


def route(name: str, hostname: str, service: str) -> dict:
    return {
        "apiVersion": f"{GW_GROUP}/{GW_VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "shared-inference", "namespace": "shared-gateways"}],
            "hostnames": [hostname],
            "rules": [{"backendRefs": [{"name": service, "port": 80}]}],
        },
    }


def route_conditions(api, namespace: str, name: str) -> dict[str, tuple[str, str]]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GW_GROUP, GW_VERSION, namespace, "httproutes", name
    )
    parents = (obj.get("status") or {}).get("parents") or []
    if not parents:
        return {}
    return {c["type"]: (c["status"], c["reason"]) for c in parents[0]["conditions"]}


def test_a_route_to_a_missing_service_resolves_once_the_service_exists(api, namespace, platform):
    domain = platform.env["PORTAL_GATEWAY_DOMAIN"]
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GW_GROUP, GW_VERSION, namespace, "httproutes", route("chat", f"chat.{domain}", "chat")
    )

    conds = wait_for(lambda: route_conditions(api, namespace, "chat"), timeout=30, what="route status")
    assert conds["Accepted"] == ("True", "Accepted")
    assert conds["ResolvedRefs"] == ("False", "BackendNotFound")

    client.CoreV1Api(api).create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="chat"),
            spec=client.V1ServiceSpec(
                selector={"app": "chat"}, ports=[client.V1ServicePort(port=80, target_port=8000)]
            ),
        ),
    )
    wait_for(
        lambda: route_conditions(api, namespace, "chat").get("ResolvedRefs") == ("True", "ResolvedRefs"),
        timeout=30,
        what="ResolvedRefs=True after the Service was created",
    )


def test_a_route_from_a_namespace_the_listener_does_not_allow_is_not_accepted(api, platform):
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        domain = platform.env["PORTAL_GATEWAY_DOMAIN"]
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GW_GROUP, GW_VERSION, name, "httproutes", route("chat", f"chat.{domain}", "chat")
        )
        conds = wait_for(lambda: route_conditions(api, name, "chat"), timeout=30, what="route status")
        assert conds["Accepted"] == ("False", "NotAllowedByListeners")
    finally:
        core.delete_namespace(name)


def test_a_route_whose_hostname_no_listener_serves_is_not_accepted(api, namespace):
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GW_GROUP, GW_VERSION, namespace, "httproutes", route("elsewhere", "chat.example.org", "chat")
    )
    conds = wait_for(lambda: route_conditions(api, namespace, "elsewhere"), timeout=30, what="route status")
    assert conds["Accepted"] == ("False", "NoMatchingListenerHostname")


def test_the_shared_gateway_is_programmed(api):
    gw = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GW_GROUP, GW_VERSION, "shared-gateways", "gateways", "shared-inference"
    )
    conds = {c["type"]: c["status"] for c in gw["status"]["conditions"]}
    assert conds == {"Accepted": "True", "Programmed": "True"}


def test_rbac_is_enforced_for_identities_without_a_grant(platform):
    # The gateway emulator's identity may read Services but not Secrets.
    kubeconfig = platform.kubeconfig.replace("host-admin.yaml", "host-gateway.yaml")
    limited = config.new_client_from_config(config_file=kubeconfig)
    client.CoreV1Api(limited).list_service_for_all_namespaces(limit=1)
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(limited).list_secret_for_all_namespaces(limit=1)
    assert denied.value.status == 403
