"""Every rendered object passes the real API server's validation (server-side dry run)."""

from __future__ import annotations

import uuid

import pytest

from tests.workers.test_manifests import spec
from workers.kube import Cluster, PermanentKubeError
from workers.manifests import render_endpoint, render_namespace

pytestmark = pytest.mark.platform


@pytest.fixture(scope="module")
def host(platform) -> Cluster:
    return Cluster.from_kubeconfig(platform.kubeconfig)


@pytest.fixture
def namespace(host):
    name = f"t-{uuid.uuid4().hex[:8]}"
    host.apply(render_namespace("acme", name))
    yield name
    host.delete("v1", "Namespace", name, propagation="Background")


@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(gpus_per_replica=4, max_replicas=3, replicas=None),
        dict(model_source="pvc://models/llama-3.1-8b", workload_class="batch"),
        dict(
            model_source="s3://weights/llama",
            quantization="awq",
            resource_name="nvidia.com/mig-1g.10gb",
            node_selector={"inference-portal.io/gpu-tier": "a100-mig-1g10gb"},
        ),
    ],
)
def test_rendered_objects_pass_server_side_dry_run(host, namespace, variant):
    docs = render_endpoint(spec(namespace=namespace, **variant))
    for doc in docs:
        stored = host.apply(doc, dry_run=True)
        assert stored["metadata"]["name"] == doc["metadata"]["name"]
    # A dry run stores nothing.
    assert host.get("apps/v1", "Deployment", "ep-chat", namespace) is None


def test_the_api_server_rejects_an_invalid_object_as_permanent(host, namespace):
    (deployment,) = [d for d in render_endpoint(spec(namespace=namespace)) if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1.5"
    with pytest.raises(PermanentKubeError, match="invalid"):
        host.apply(deployment, dry_run=True)
