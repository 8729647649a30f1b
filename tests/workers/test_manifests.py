"""Rendering an endpoint's objects: the serving practices of seeds 000-004, and no injection."""

from __future__ import annotations

import dataclasses

import pytest

from workers.manifests import EndpointSpec, ManifestError, render_endpoint, render_namespace


def spec(**overrides) -> EndpointSpec:
    values = dict(
        tenant="acme",
        endpoint="chat",
        namespace="t-acme",
        name="ep-chat",
        hostname="chat-acme.inference.localhost",
        model_source="hf://meta-llama/Llama-3.1-8B-Instruct",
        model_revision="0e9e39f249a16976918f6564b8830bc894c89659",
        served_model_name="llama-3.1-8b",
        image="vllm/vllm-openai:v0.11.0",
        resource_name="nvidia.com/gpu",
        gpus_per_replica=1,
        node_selector={"inference-portal.io/gpu-tier": "h100-80gb"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        max_model_len=8192,
        gpu_memory_utilization=0.9,
        max_num_seqs=64,
        min_replicas=1,
        max_replicas=1,
        replicas=1,
        tier="h100-80gb",
        internal_api_key="k" * 40,
    )
    values.update(overrides)
    return EndpointSpec(**values)


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def container(docs: list[dict]) -> dict:
    return by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def arg(docs: list[dict], flag: str) -> str:
    args = container(docs)["args"]
    return args[args.index(flag) + 1]


def test_tensor_parallel_size_equals_the_gpu_limit():
    docs = render_endpoint(spec(gpus_per_replica=4, max_replicas=1))
    assert arg(docs, "--tensor-parallel-size") == "4"
    assert container(docs)["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_the_model_is_pinned_and_served_under_its_name():
    docs = render_endpoint(spec())
    assert arg(docs, "--model") == "meta-llama/Llama-3.1-8B-Instruct"
    assert arg(docs, "--revision") == "0e9e39f249a16976918f6564b8830bc894c89659"
    assert arg(docs, "--served-model-name") == "llama-3.1-8b"
    assert arg(docs, "--max-model-len") == "8192"
    assert arg(docs, "--gpu-memory-utilization") == "0.90"


def test_shared_memory_is_mounted_only_for_tensor_parallel_pods():
    single = by_kind(render_endpoint(spec()))["Deployment"]["spec"]["template"]["spec"]
    multi = by_kind(render_endpoint(spec(gpus_per_replica=2)))["Deployment"]["spec"]["template"]["spec"]
    assert "dshm" not in [v["name"] for v in single["volumes"]]
    dshm = next(v for v in multi["volumes"] if v["name"] == "dshm")
    assert dshm["emptyDir"]["medium"] == "Memory"


def test_the_hf_token_comes_from_a_secret_never_inline():
    env = {e["name"]: e for e in container(render_endpoint(spec()))["env"]}
    assert env["HUGGING_FACE_HUB_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    assert "value" not in env["HUGGING_FACE_HUB_TOKEN"]
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "ep-chat-auth", "key": "api-key"}


def test_probes_and_graceful_shutdown_are_sized_for_model_serving():
    docs = render_endpoint(spec(expected_load_seconds=600))
    c = container(docs)
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    # A 600s expected load gets 3x headroom: 180 probes 10s apart.
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 1800
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "livenessProbe" in c and "preStop" in c["lifecycle"]
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert pod["nodeSelector"] == {"inference-portal.io/gpu-tier": "h100-80gb"}


def test_an_autoscaled_endpoint_gets_a_queue_depth_hpa_and_leaves_replicas_to_it():
    docs = by_kind(render_endpoint(spec(min_replicas=1, max_replicas=4, replicas=None)))
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm:num_requests_waiting"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert "replicas" not in docs["Deployment"]["spec"]


def test_a_scale_to_zero_endpoint_gets_a_keda_scaled_object_instead():
    docs = by_kind(render_endpoint(spec(min_replicas=0, max_replicas=2, replicas=None, scale_to_zero=True)))
    assert docs["ScaledObject"]["spec"]["minReplicaCount"] == 0
    assert "HorizontalPodAutoscaler" not in docs


def test_every_object_carries_tenant_endpoint_model_and_tier_labels():
    for doc in render_endpoint(spec(max_replicas=2, replicas=None)):
        labels = doc["metadata"]["labels"]
        assert labels["inference-portal.io/tenant"] == "acme"
        assert labels["inference-portal.io/endpoint"] == "chat"
        assert labels["inference-portal.io/tier"] == "h100-80gb"
        assert labels["inference-portal.io/model"] == "llama-3.1-8b"


def test_hostile_text_stays_inside_its_value():
    hostile = 'x"\n  injected: true\n---\nkind: Secret #'
    docs = render_endpoint(spec(served_model_name=hostile))
    assert arg(docs, "--served-model-name") == hostile
    assert [d["kind"] for d in docs].count("Secret") == 1
    assert all("injected" not in d["metadata"] for d in docs)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "Bad_Name", "is not a DNS-1123 label"),
        ("image", "vllm/vllm-openai:latest", "is not pinned"),
        ("image", "vllm/vllm-openai", "is not pinned"),
        ("model_source", "http://evil/x", "is not hf://, s3:// or pvc://"),
        ("gpu_memory_utilization", 1.5, "between 0.1 and 0.99"),
        ("min_replicas", 0, "needs a scale-to-zero template"),
        ("internal_api_key", "short", "at least 32 characters"),
    ],
)
def test_bad_values_are_refused_before_rendering(field, value, message):
    with pytest.raises(ManifestError, match=message):
        render_endpoint(spec(**{field: value}))


def test_the_internal_key_never_appears_in_the_specs_repr():
    assert "k" * 40 not in repr(spec())
    assert "internal_api_key" not in repr(dataclasses.replace(spec()))


def test_the_namespace_allows_routes_and_enforces_baseline_pod_security():
    ns = render_namespace("acme", "t-acme")
    assert ns["metadata"]["labels"]["inference-portal.io/route-access"] == "allowed"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"


def test_the_hf_token_secret_holds_the_token_and_refuses_malformed_ones():
    from workers.manifests import render_hf_token_secret

    secret = render_hf_token_secret("acme", "t-acme", "hf_abc123")
    assert secret["stringData"] == {"token": "hf_abc123"} and secret["metadata"]["name"] == "hf-token"
    with pytest.raises(ManifestError, match="malformed"):
        render_hf_token_secret("acme", "t-acme", "hf abc\nkind: x")
