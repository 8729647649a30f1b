"""Endpoints serve on the local platform: an emulated vLLM per pod, its logs through the API server,
readiness from its /health, traffic through the gateway's data plane with tenant keys, and metrics
in Prometheus with the labels a ServiceMonitor gives."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass

import httpx
import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.waiting import wait_for
from tests.workers.test_manifests import spec
from workers.kube import Cluster
from workers.manifests import render_endpoint, render_namespace
from workers.status import Snapshot, read

pytestmark = pytest.mark.platform

EMULATE = {"inference-portal.io/emulate": "vllm", "inference-portal.io/load-delay": "2s"}
MODEL = "llama-3.1-8b"


@dataclass
class Endpoint:
    name: str
    namespace: str
    hostname: str
    key: str

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name}"


class Served:
    """Endpoints rendered by workers.manifests and applied by workers.kube into one fresh namespace."""

    def __init__(self, platform, kube: Cluster, api: client.ApiClient) -> None:
        self.platform, self.kube, self.api = platform, kube, api
        self.core = client.CoreV1Api(api)
        self.suffix = uuid.uuid4().hex[:6]
        self.tenant = f"acme{self.suffix}"
        self.namespace = f"serve-{self.suffix}"
        self.domain = platform.env["PORTAL_GATEWAY_DOMAIN"]
        self.gateway = platform.env["PORTAL_GATEWAY_URL"]
        kube.apply(render_namespace(self.tenant, self.namespace))

    def deploy(self, endpoint: str, **annotations: str) -> Endpoint:
        key = f"sk-{secrets.token_urlsafe(24)}"
        hostname = f"{endpoint}-{self.tenant}.{self.domain}"
        docs = render_endpoint(
            spec(
                tenant=self.tenant,
                endpoint=endpoint,
                namespace=self.namespace,
                name=f"ep-{endpoint}",
                hostname=hostname,
                served_model_name=MODEL,
                max_model_len=4096,
                max_num_seqs=4,
                internal_api_key=secrets.token_urlsafe(32),
                tenant_key_hashes=(hashlib.sha256(key.encode()).hexdigest(),),
                extra_pod_annotations={**EMULATE, **annotations},
            )
        )
        for doc in docs:
            self.kube.apply(doc)
        return Endpoint(f"ep-{endpoint}", self.namespace, hostname, key)

    def pods(self, ep: Endpoint) -> list:
        return [
            p
            for p in self.core.list_namespaced_pod(ep.namespace, label_selector=ep.selector).items
            if not p.metadata.deletion_timestamp
        ]

    def pod(self, ep: Endpoint, *, ready: bool | None = None, timeout: float = 60):
        def find():
            for p in self.pods(ep):
                if p.status.phase == "Running" and (ready is None or is_ready(p) == ready):
                    return p
            return None

        return wait_for(find, timeout=timeout, what=f"a running pod of {ep.name} (ready={ready})")

    def logs(self, pod, *, previous: bool = False) -> str:
        try:
            return self.core.read_namespaced_pod_log(
                pod.metadata.name, pod.metadata.namespace, container="vllm", previous=previous
            )
        except ApiException:
            return ""

    def call(self, ep: Endpoint | None, path: str, *, key: str | None = None, host: str | None = None, **kw):
        headers = {"Host": host or ep.hostname}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        method = "POST" if "json" in kw else "GET"
        return httpx.request(method, f"{self.gateway}{path}", headers=headers, timeout=30, **kw)


def is_ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def chat(max_tokens: int = 8, stream: bool = False) -> dict:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


@pytest.fixture(scope="module")
def served(platform):
    api = config.new_client_from_config(config_file=platform.kubeconfig)
    kube = Cluster.from_kubeconfig(platform.kubeconfig)
    s = Served(platform, kube, api)
    # Deployed together so their loads overlap: a healthy one, one held unready, one that runs out of memory.
    s.chat = s.deploy("chat")
    s.held = s.deploy("held", **{"inference-portal.io/emulate-fail": "unready"})
    s.oom = s.deploy("oom", **{"inference-portal.io/emulate-fail": "oom-log"})
    yield s
    s.core.delete_namespace(s.namespace)


@pytest.fixture(scope="module")
def chat_pod(served):
    return served.pod(served.chat, ready=True)


def test_the_pod_log_is_the_emulators_vllm_startup_log_through_the_api_server(served, chat_pod):
    text = served.logs(chat_pod)
    for line in ("Loading weights took", "Starting vLLM API server", "Application startup complete"):
        assert line in text
    # It went through the kubelet's door: the API server asked the node (KWOK's server on loopback).
    node = served.core.read_node(chat_pod.spec.node_name)
    assert [a.address for a in node.status.addresses] == ["127.0.0.1"]
    assert node.status.daemon_endpoints.kubelet_endpoint.port > 0


def test_a_pod_stays_unready_while_health_says_503_and_turns_ready_once_it_says_200(served):
    ep = served.held
    pod = served.pod(ep)
    # The load hangs (fail mode "unready"); the prober has asked /health and was told 503.
    wait_for(
        lambda: (
            '"GET /health HTTP/1.1" 503' in (text := served.logs(pod))
            and "No available shared memory broadcast block" in text
        ),
        timeout=60,
        what="the prober's 503 from /health in the held pod's log",
    )
    assert not is_ready(served.core.read_namespaced_pod(pod.metadata.name, ep.namespace))
    # A replica that is loading is a cold start: 503 with Retry-After, not 404.
    cold = served.call(ep, "/v1/models", key=ep.key)
    assert cold.status_code == 503
    assert int(cold.headers["Retry-After"]) > 0

    served.core.patch_namespaced_pod(
        pod.metadata.name,
        ep.namespace,
        {"metadata": {"annotations": {"inference-portal.io/emulate-fail": "none"}}},
    )
    ready = served.pod(ep, ready=True, timeout=60)
    assert '"GET /health HTTP/1.1" 200' in served.logs(ready)
    assert served.call(ep, "/v1/models", key=ep.key).status_code == 200


def test_a_chat_completion_through_the_gateway_with_the_tenant_key(served, chat_pod):
    ep = served.chat
    models = served.call(ep, "/v1/models", key=ep.key)
    assert models.status_code == 200
    assert [m["id"] for m in models.json()["data"]] == [MODEL]

    answer = served.call(ep, "/v1/chat/completions", key=ep.key, json=chat())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == MODEL
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0


def test_streaming_passes_through_the_gateway_event_by_event(served, chat_pod):
    ep = served.chat
    events = []
    with httpx.stream(
        "POST",
        f"{served.gateway}/v1/chat/completions",
        headers={"Host": ep.hostname, "Authorization": f"Bearer {ep.key}"},
        json=chat(max_tokens=12, stream=True),
        timeout=30,
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in resp.headers
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(chunks) > 3 and text
    assert chunks[-1]["usage"]["completion_tokens"] == 12


def test_the_gateway_wants_a_key_of_this_endpoint(served, chat_pod):
    ep = served.chat
    missing = served.call(ep, "/v1/chat/completions", json=chat())
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert served.call(ep, "/v1/chat/completions", key="sk-not-a-key", json=chat()).status_code == 401
    # Another endpoint's key is a wrong key here, and the internal key is not a tenant key either.
    assert served.call(ep, "/v1/models", key=served.held.key).status_code == 401


def test_an_unknown_hostname_is_404(served):
    resp = served.call(
        None, "/v1/models", key="sk-whatever", host=f"nobody-{uuid.uuid4().hex[:6]}.{served.domain}"
    )
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == 404


def test_prometheus_has_the_pods_vllm_series_with_service_monitor_labels(served, chat_pod):
    ep = served.chat
    for _ in range(3):
        assert served.call(ep, "/v1/chat/completions", key=ep.key, json=chat()).status_code == 200
    prometheus = served.platform.env["PROMETHEUS_URL"]
    selector = f'namespace="{ep.namespace}",pod="{chat_pod.metadata.name}"'

    def series(metric: str) -> list[dict]:
        resp = httpx.get(
            f"{prometheus}/api/v1/query", params={"query": f"{metric}{{{selector}}}"}, timeout=10
        )
        return resp.json()["data"]["result"]

    ttft = wait_for(
        lambda: [s for s in series("vllm:time_to_first_token_seconds_count") if float(s["value"][1]) >= 3],
        timeout=60,
        what="TTFT samples in Prometheus",
    )
    running = wait_for(
        lambda: series("vllm:num_requests_running"), timeout=30, what="vllm:num_requests_running"
    )
    for found in (ttft[0], running[0]):
        labels = found["metric"]
        assert labels["service"] == ep.name
        assert labels["model_name"] == MODEL
        assert labels["namespace"] == ep.namespace
        assert labels["pod"] == chat_pod.metadata.name
        assert labels["tenant"] == served.tenant


def test_a_cuda_oom_during_load_shows_as_a_crashing_container_with_the_oom_in_its_log(served):
    ep = served.oom

    def crashed():
        for pod in served.pods(ep):
            for status in pod.status.container_statuses or []:
                last = status.last_state.terminated if status.last_state else None
                terminated = status.state.terminated or (last if status.state.waiting else None)
                if terminated and terminated.exit_code == 1:
                    return pod
        return None

    pod = wait_for(crashed, timeout=60, what="the oom pod's container to exit with 1")
    lines = wait_for(
        lambda: [
            line
            for text in (served.logs(pod), served.logs(pod, previous=True))
            for line in text.splitlines()
            if "CUDA out of memory" in line
        ],
        timeout=30,
        what="CUDA out of memory in the pod's log",
    )
    assert not is_ready(pod)

    # The portal's status reader says what happened, from the same status and log.
    api = served.api
    deployment = api.sanitize_for_serialization(
        client.AppsV1Api(api).read_namespaced_deployment(ep.name, ep.namespace)
    )
    reading = read(
        Snapshot(
            tenant_ready=True,
            deployment=deployment,
            pods=[api.sanitize_for_serialization(pod)],
            log_lines=lines,
        )
    )
    assert reading.phase == "failed"
    assert any("out of GPU memory" in p.message for p in reading.problems)


def test_a_deployment_scaled_to_zero_answers_503_with_retry_after(served):
    ep = served.held
    pod = served.pod(ep)
    served.core.patch_namespaced_pod(  # released, if the readiness test has not done it yet
        pod.metadata.name,
        ep.namespace,
        {"metadata": {"annotations": {"inference-portal.io/emulate-fail": "none"}}},
    )
    served.pod(ep, ready=True, timeout=60)
    client.AppsV1Api(served.api).patch_namespaced_deployment_scale(
        ep.name, ep.namespace, {"spec": {"replicas": 0}}
    )
    wait_for(lambda: not served.pods(ep), timeout=60, what="the held endpoint's pods to go")
    resp = wait_for(
        lambda: (r := served.call(ep, "/v1/models", key=ep.key)).status_code == 503 and r,
        timeout=30,
        what="503 from the gateway",
    )
    assert int(resp.headers["Retry-After"]) > 0
    assert "scaled to zero" in resp.json()["error"]["message"]


def test_an_endpoint_in_a_tenant_cluster_serves_through_the_gateway_with_its_logs(platform, tenant_clusters):
    name, namespace = tenant_clusters.install("srv")
    tc = tenant_clusters.wait_ready(name, namespace)
    kube = Cluster.from_kubeconfig(str(tc.kubeconfig), name=f"{namespace}/{name}")
    served = Served(platform, kube, tc.api)
    ep = served.deploy("chat")
    # A GPU node joins from the pool (Auto Nodes), KWOK runs the pod, the emulator loads.
    pod = served.pod(ep, ready=True, timeout=120)
    assert "Application startup complete" in served.logs(pod)
    answer = served.call(ep, "/v1/chat/completions", key=ep.key, json=chat())
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == MODEL
    assert served.call(ep, "/v1/models").status_code == 401
