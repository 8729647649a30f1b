"""Tenant clusters on the local platform: the real vcluster chart installed with the real helm, an
emulated syncer that gives each install its own API server, and GPU nodes that join from the pool
on demand (vCluster private nodes with Auto Nodes) and go back once empty."""

from __future__ import annotations

import os

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from lp import cluster, tenants
from lp import tenants_autonodes as autonodes
from lp import tiers as tiers_mod
from lp.errors import PlatformError
from lp.procs import Procs, port_free

from tests.waiting import wait_for

pytestmark = pytest.mark.platform

TIER_LABEL = tiers_mod.TIER_LABEL
GW_GROUP, GW_VERSION = "gateway.networking.k8s.io", "v1"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def two_tenants(tenant_clusters):
    # Installed together: the emulator brings tenant clusters up side by side.
    first = tenant_clusters.install("a")
    second = tenant_clusters.install("b")
    return tenant_clusters.wait_ready(*first), tenant_clusters.wait_ready(*second)


@pytest.fixture(scope="module")
def tenant_a(two_tenants):
    return two_tenants[0]


@pytest.fixture(scope="module")
def tenant_b(two_tenants):
    return two_tenants[1]


@pytest.fixture(scope="module")
def tier_file(platform):
    return tiers_mod.load(platform.cfg.tiers_file)


def holders(platform) -> dict[str, str]:
    return autonodes.read_holders(tenants.tenants_dir(platform.cfg) / "autonodes.json")


def free_tier(platform, tier_file, count: int, *, exclude: tuple[str, ...] = ()) -> tiers_mod.Tier:
    """A tier with COUNT free nodes in the pool; waits for one, since other sessions share the pool."""

    def find():
        held = set(holders(platform))
        for tier in sorted(tier_file.tiers, key=lambda t: t.auto_nodes):
            if tier.name not in exclude and len(set(tier.auto_node_names()) - held) >= count:
                return tier
        return None

    return wait_for(
        find, timeout=180, interval=1, what=f"a tier with {count} free node(s) (held: {holders(platform)})"
    )


def gpu_pod(name: str, tier: tiers_mod.Tier, count: int = 1) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": {"inference-portal.io/load-delay": "1s"}},
        "spec": {
            "nodeSelector": {TIER_LABEL: tier.name},
            "tolerations": [GPU_TOLERATION],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.11.0",
                    "resources": {"limits": {tier.resource: str(count)}},
                }
            ],
        },
    }


def running_pod(tc, name: str, namespace: str = "default", timeout: float = 60):
    def check():
        pod = tc.core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == "Running" and pod.spec.node_name else None

    return wait_for(check, timeout=timeout, what=f"pod {name} in tenant cluster {tc.name} to run")


def events_for(tc, pod: str, reason: str, namespace: str = "default") -> list:
    return [
        e
        for e in tc.core.list_namespaced_event(namespace, field_selector=f"reason={reason}").items
        if e.involved_object.name == pod
    ]


def not_found(fn) -> bool:
    try:
        fn()
    except ApiException as exc:
        return exc.status == 404
    return False


# -- install ----------------------------------------------------------------------------------


def test_installing_a_vcluster_yields_a_kubeconfig_secret_for_a_separate_api_server(
    tenant_a, host_api, platform
):
    secret = client.CoreV1Api(host_api).read_namespaced_secret(f"vc-{tenant_a.name}", tenant_a.namespace)
    assert {"config", "certificate-authority", "client-certificate", "client-key"} <= set(secret.data)
    assert secret.metadata.labels == {"app": "vcluster", "vcluster-name": tenant_a.name}

    # Its own API server: another address, and objects made there stay there.
    tenant_server = tenant_a.api.configuration.host
    assert tenant_server != host_api.configuration.host
    tenant_a.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="only-in-tenant")))
    tenant_a.core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="only-in-tenant"), data={"k": "v"})
    )
    assert tenant_a.core.read_namespaced_config_map("only-in-tenant", "default").data == {"k": "v"}
    host = client.CoreV1Api(host_api)
    assert not_found(lambda: host.read_namespace("only-in-tenant"))
    assert not_found(lambda: host.read_namespaced_config_map("only-in-tenant", "default"))

    # The chart's workload says the tenant cluster is ready and where, and its pod is Ready.
    deployment = client.AppsV1Api(host_api).read_namespaced_deployment(tenant_a.name, tenant_a.namespace)
    annotations = deployment.metadata.annotations
    assert annotations[tenants.STATUS_ANNOTATION] == "Ready"
    assert annotations[tenants.SERVER_ANNOTATION] == tenant_server
    wait_for(
        lambda: (
            client.AppsV1Api(host_api)
            .read_namespaced_deployment(tenant_a.name, tenant_a.namespace)
            .status.ready_replicas
            == 1
        ),
        timeout=30,
        what="the vCluster control-plane pod to be Ready",
    )

    # Its control plane is a set of processes of its own, on its own etcd prefix.
    procs = Procs(platform.cfg.run, platform.cfg.logs)
    for component in tenants.COMPONENTS:
        assert procs.pid(f"{tenant_a.tenant.proc_prefix}-{component}") is not None, component
    assert tenants.etcd_key_count(platform.cfg, tenant_a.tenant.etcd_prefix) > 0


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_two_tenant_clusters_do_not_see_each_others_objects(tenant_a, tenant_b):
    for owner, other in ((tenant_a, tenant_b), (tenant_b, tenant_a)):
        name = f"from-{owner.name}"
        owner.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        owner.core.create_namespaced_secret(
            name, client.V1Secret(metadata=client.V1ObjectMeta(name="key"), string_data={"k": owner.name})
        )
        assert not_found(lambda other=other, name=name: other.core.read_namespace(name))
        assert not_found(lambda other=other, name=name: other.core.read_namespaced_secret("key", name))
    assert tenant_a.api.configuration.host != tenant_b.api.configuration.host

    # One tenant's credentials are worth nothing against the other's API server.
    stolen = client.Configuration()
    config.load_kube_config(config_file=str(tenant_a.kubeconfig), client_configuration=stolen)
    stolen.host = tenant_b.api.configuration.host
    stolen.verify_ssl = False  # B's server certificate is from B's CA; get as far as authentication
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(client.ApiClient(stolen)).list_namespace()
    assert denied.value.status in (401, 403)


# -- Gateway API ------------------------------------------------------------------------------


def route_conditions(tc, namespace: str, name: str) -> dict[str, tuple[str, str]]:
    obj = client.CustomObjectsApi(tc.api).get_namespaced_custom_object(
        GW_GROUP, GW_VERSION, namespace, "httproutes", name
    )
    parents = (obj.get("status") or {}).get("parents") or []
    if not parents:
        return {}
    return {c["type"]: (c["status"], c["reason"]) for c in parents[0]["conditions"]}


def test_an_httproute_in_a_tenant_cluster_gets_accepted_and_resolved_refs(tenant_a, host_api, platform):
    # The shared Gateway is imported from the host, listeners and all (sync.fromHost).
    host_gw = client.CustomObjectsApi(host_api).get_namespaced_custom_object(
        GW_GROUP, GW_VERSION, cluster.GATEWAY_NAMESPACE, "gateways", cluster.GATEWAY_NAME
    )
    tenant_gw = client.CustomObjectsApi(tenant_a.api).get_namespaced_custom_object(
        GW_GROUP, GW_VERSION, cluster.GATEWAY_NAMESPACE, "gateways", cluster.GATEWAY_NAME
    )
    assert tenant_gw["spec"]["listeners"] == host_gw["spec"]["listeners"]

    namespace = "inference"
    tenant_a.core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=namespace, labels={cluster.ROUTE_ACCESS_LABEL: "allowed"})
        )
    )
    domain = platform.env["PORTAL_GATEWAY_DOMAIN"]
    route = {
        "apiVersion": f"{GW_GROUP}/{GW_VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": "chat"},
        "spec": {
            "parentRefs": [{"name": cluster.GATEWAY_NAME, "namespace": cluster.GATEWAY_NAMESPACE}],
            "hostnames": [f"{tenant_a.name}.{domain}"],
            "rules": [{"backendRefs": [{"name": "chat", "port": 80}]}],
        },
    }
    client.CustomObjectsApi(tenant_a.api).create_namespaced_custom_object(
        GW_GROUP, GW_VERSION, namespace, "httproutes", route
    )
    conds = wait_for(lambda: route_conditions(tenant_a, namespace, "chat"), timeout=30, what="route status")
    assert conds["Accepted"] == ("True", "Accepted")
    assert conds["ResolvedRefs"] == ("False", "BackendNotFound")

    tenant_a.core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="chat"),
            spec=client.V1ServiceSpec(
                selector={"app": "chat"}, ports=[client.V1ServicePort(port=80, target_port=8000)]
            ),
        ),
    )
    wait_for(
        lambda: route_conditions(tenant_a, namespace, "chat").get("ResolvedRefs") == ("True", "ResolvedRefs"),
        timeout=30,
        what="ResolvedRefs=True once the Service exists",
    )


# -- GPU nodes from the pool ------------------------------------------------------------------


def test_a_gpu_pod_gets_a_node_of_its_tier_joined_from_the_pool_and_runs_there(
    tenant_a, tier_file, host_api, platform
):
    tier = free_tier(platform, tier_file, 1)
    tenant_a.core.create_namespaced_pod("default", gpu_pod("one-gpu", tier))

    pod = running_pod(tenant_a, "one-gpu")
    node = tenant_a.core.read_node(pod.spec.node_name)
    assert node.metadata.name in tier.auto_node_names()
    assert node.metadata.labels[TIER_LABEL] == tier.name
    assert node.metadata.labels["nvidia.com/gpu.product"] == tier.product
    assert node.status.allocatable[tier.resource] == str(tier.gpus_per_node)
    assert holders(platform)[node.metadata.name] == tenant_a.tenant.key
    # A private node: it belongs to the tenant cluster, not to the host.
    assert not_found(lambda: client.CoreV1Api(host_api).read_node(node.metadata.name))
    assert events_for(tenant_a, "one-gpu", "TriggeredScaleUp")

    # Once empty for the tenant's consolidateAfter, the node leaves and returns to the pool.
    tenant_a.core.delete_namespaced_pod("one-gpu", "default")
    wait_for(
        lambda: not_found(lambda: tenant_a.core.read_node(node.metadata.name)),
        timeout=60,
        what=f"node {node.metadata.name} to leave tenant cluster {tenant_a.name}",
    )
    wait_for(
        lambda: node.metadata.name not in holders(platform),
        timeout=10,
        what=f"node {node.metadata.name} to be free in the pool again",
    )


def test_with_the_pool_empty_a_pod_waits_with_failed_scheduling_until_another_tenant_returns_a_node(
    tenant_a, tenant_b, tier_file, platform
):
    tier = min((t for t in tier_file.tiers if t.auto_nodes), key=lambda t: t.auto_nodes)
    # Tenant A takes every node of the tier: one pod per node, each wanting a whole node.
    wait_for(
        lambda: not set(tier.auto_node_names()) & set(holders(platform)),
        timeout=180,
        interval=1,
        what=f"every node of tier {tier.name} to be free (held: {holders(platform)})",
    )
    taken = []
    for i in range(tier.auto_nodes):
        tenant_a.core.create_namespaced_pod("default", gpu_pod(f"whole-{i}", tier, tier.gpus_per_node))
    for i in range(tier.auto_nodes):
        taken.append(running_pod(tenant_a, f"whole-{i}").spec.node_name)
    assert sorted(taken) == sorted(tier.auto_node_names())

    tenant_b.core.create_namespaced_pod("default", gpu_pod("waiting", tier))
    events = wait_for(
        lambda: events_for(tenant_b, "waiting", "FailedScheduling"),
        timeout=30,
        what="FailedScheduling for the pod in tenant cluster B",
    )
    assert events[0].type == "Warning"
    wait_for(
        lambda: events_for(tenant_b, "waiting", "NotTriggerScaleUp"),
        timeout=30,
        what="the auto-nodes controller to say the pool is empty",
    )
    pod = tenant_b.core.read_namespaced_pod("waiting", "default")
    assert pod.status.phase == "Pending" and pod.spec.node_name is None

    # A's pod goes; once its node has been empty for consolidateAfter it returns, and B gets it.
    tenant_a.core.delete_namespaced_pod("whole-0", "default")
    pod = running_pod(tenant_b, "waiting", timeout=90)
    assert pod.spec.node_name == taken[0]
    assert tenant_b.core.read_node(pod.spec.node_name).metadata.labels[TIER_LABEL] == tier.name
    assert not_found(lambda: tenant_a.core.read_node(taken[0]))
    for i in range(1, tier.auto_nodes):
        tenant_a.core.delete_namespaced_pod(f"whole-{i}", "default")
    tenant_b.core.delete_namespaced_pod("waiting", "default")


def test_a_tenant_gets_nodes_only_of_the_tiers_its_pools_select_and_within_their_limits(
    tenant_b, tenant_clusters, tier_file, tmp_path, host_api, platform
):
    # One tier this tenant may use (two of its nodes free, to show the limit is what stops it),
    # and one it may not.
    allowed = free_tier(platform, tier_file, 2)
    other = next(t for t in tier_file.tiers if t.name != allowed.name and t.auto_nodes)
    values = tmp_path / "one-node-of-one-tier.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "privateNodes": {
                    "enabled": True,
                    "autoNodes": [
                        {
                            "provider": "local-kwok-pool",
                            "dynamic": [
                                {
                                    "name": "only-one",
                                    "nodeTypeSelector": [
                                        {"property": TIER_LABEL, "operator": "In", "values": [allowed.name]}
                                    ],
                                    "limits": {allowed.resource: str(allowed.gpus_per_node)},
                                    "disruption": {"consolidateAfter": "3s"},
                                }
                            ],
                        }
                    ],
                }
            }
        )
    )
    tenants.install(tenant_clusters.cfg, tenant_b.name, tenant_b.namespace, [tenant_clusters.values, values])
    # autoNodes changes roll no pod (the chart leaves them out of its config hash): wait until the
    # tenant cluster says it serves the Secret's new version.
    host = client.CoreV1Api(host_api)
    apps = client.AppsV1Api(host_api)
    wait_for(
        lambda: (
            apps.read_namespaced_deployment(tenant_b.name, tenant_b.namespace).metadata.annotations.get(
                tenants.CONFIG_ANNOTATION
            )
            == host.read_namespaced_secret(
                f"vc-config-{tenant_b.name}", tenant_b.namespace
            ).metadata.resource_version
        ),
        timeout=30,
        what="the tenant cluster to serve its new config",
    )

    # A tier no pool selects never joins: the pod keeps the scheduler's FailedScheduling.
    tenant_b.core.create_namespaced_pod("default", gpu_pod("wrong-tier", other))
    wait_for(
        lambda: events_for(tenant_b, "wrong-tier", "FailedScheduling"), timeout=30, what="FailedScheduling"
    )
    # One node's worth of the tier is allowed; a second whole node is over the limit.
    tenant_b.core.create_namespaced_pod("default", gpu_pod("first", allowed, allowed.gpus_per_node))
    node = running_pod(tenant_b, "first").spec.node_name
    tenant_b.core.create_namespaced_pod("default", gpu_pod("second", allowed, allowed.gpus_per_node))
    refused = wait_for(
        lambda: events_for(tenant_b, "second", "NotTriggerScaleUp"), timeout=30, what="the limit to refuse"
    )
    assert "limit" in refused[0].message
    joined = [n.metadata.name for n in tenant_b.core.list_node().items]
    assert [n for n in joined if n in allowed.auto_node_names()] == [node]
    assert not [n for n in joined if n in other.auto_node_names()]
    assert not events_for(tenant_b, "wrong-tier", "TriggeredScaleUp")
    for pod in ("wrong-tier", "first", "second"):
        tenant_b.core.delete_namespaced_pod(pod, "default")


# -- restart and uninstall --------------------------------------------------------------------


def test_a_restarted_emulator_adopts_running_tenant_clusters(tenant_a, platform, host_api):
    procs = Procs(platform.cfg.run, platform.cfg.logs)
    apiserver = f"{tenant_a.tenant.proc_prefix}-apiserver"
    before = procs.pid(apiserver)
    procs.stop(tenants.EMULATOR)
    tenants.ensure_emulator(platform.cfg, procs)

    assert procs.pid(apiserver) == before  # adopted, not restarted
    client.CoreV1Api(host_api).read_namespaced_secret(f"vc-{tenant_a.name}", tenant_a.namespace)
    tier = free_tier(platform, tiers_mod.load(platform.cfg.tiers_file), 1)
    tenant_a.core.create_namespaced_pod("default", gpu_pod("after-restart", tier))
    running_pod(tenant_a, "after-restart")
    tenant_a.core.delete_namespaced_pod("after-restart", "default")


def test_uninstalling_stops_its_processes_returns_its_nodes_and_removes_its_secret(
    tenant_clusters, tier_file, host_api, platform
):
    tc = tenant_clusters.wait_ready(*tenant_clusters.install("gone"))
    tier = free_tier(platform, tier_file, 1)
    tc.core.create_namespaced_pod("default", gpu_pod("holding", tier))
    node = running_pod(tc, "holding").spec.node_name
    assert holders(platform)[node] == tc.tenant.key
    procs = Procs(platform.cfg.run, platform.cfg.logs)
    pids = {c: procs.pid(f"{tc.tenant.proc_prefix}-{c}") for c in tenants.COMPONENTS}
    assert all(pids.values())

    tenant_clusters.uninstall(tc)

    for component, pid in pids.items():
        assert procs.pid(f"{tc.tenant.proc_prefix}-{component}") is None, component
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), component
    assert tc.tenant.key not in holders(platform).values()
    assert node not in holders(platform)
    assert not_found(lambda: client.CoreV1Api(host_api).read_namespaced_secret(f"vc-{tc.name}", tc.namespace))
    assert tenants.etcd_key_count(platform.cfg, tc.tenant.etcd_prefix) == 0
    assert port_free(int(tc.api.configuration.host.rsplit(":", 1)[1]))  # nothing listens there now


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_pool_size_that_is_not_a_whole_number_names_the_file_and_the_tier(tmp_path):
    path = tmp_path / "tiers.yaml"
    path.write_text(
        "tiers:\n  - name: h100\n    product: NVIDIA-H100\n    memoryMiB: 81559\n"
        "    gpusPerNode: 8\n    autoNodes: two\n"
    )
    with pytest.raises(PlatformError) as bad:
        tiers_mod.load(path)
    assert str(bad.value) == f"{path}: tiers[0].autoNodes: 'two' is not a whole number"
