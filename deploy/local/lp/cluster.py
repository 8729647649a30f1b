"""The host cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK.

The same functions start a tenant cluster's control plane (issue 3), with its own etcd prefix,
ports and names, which is why they take a `ControlPlane` rather than reading globals.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import tiers as tiers_mod
from .config import LOCAL_DIR, Config
from .errors import PlatformError
from .pki import PKI
from .procs import Procs, port_free, require_port

SERVICE_CIDR = "10.96.0.0/16"
GATEWAY_CONTROLLER = "inference-portal.io/gateway-emulator"
GATEWAY_CLASS = "portal-gateway"
GATEWAY_NAMESPACE = "shared-gateways"
GATEWAY_NAME = "shared-inference"
ROUTE_ACCESS_LABEL = "inference-portal.io/route-access"
# The control planes' Go processes collect garbage less often: on this platform a dozen of them
# share two cores with the portal, and memory is the cheaper of the two (a tenant API server's heap
# is a few hundred MiB). In a tenant API server under a burst, GC was 15 % of its CPU at the
# default of 100.
GO_RUNTIME_ENV = {"GOGC": "400"}


@dataclass
class ControlPlane:
    """One API server and its companions. `name` prefixes process names; `etcd_prefix` isolates it."""

    name: str
    port: int
    etcd_url: str
    etcd_prefix: str
    pki: PKI
    kubeconfig_dir: Path
    # KWOK's server, the kubelet endpoint its nodes advertise (pod logs); 0: pick one and record it.
    kwok_port: int = 0

    def kubeconfig(self, user: str) -> Path:
        return self.kubeconfig_dir / f"{self.name}-{user}.yaml"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig("admin")

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def proc(self, component: str) -> str:
        return f"{self.name}-{component}"


def host_plane(cfg: Config) -> ControlPlane:
    return ControlPlane(
        name="host",
        port=cfg.ports["apiserver"],
        etcd_url=f"http://127.0.0.1:{cfg.ports['etcd']}",
        etcd_prefix="/registry",
        pki=PKI(cfg.pki),
        kubeconfig_dir=cfg.kubeconfigs,
        kwok_port=cfg.ports["kwok"],
    )


# -- etcd ------------------------------------------------------------------------------------


def _etcd_healthy(cfg: Config) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{cfg.ports['etcd']}/health", timeout=2) as resp:  # noqa: S310
        return json.load(resp).get("health") == "true"


def ensure_etcd(cfg: Config, procs: Procs) -> None:
    if procs.pid("etcd") is not None:
        return
    require_port(cfg.ports["etcd"], "etcd", "PORTAL_ETCD_PORT")
    require_port(cfg.ports["etcd-peer"], "etcd (peer)", "PORTAL_ETCD_PEER_PORT")
    client, peer = f"http://127.0.0.1:{cfg.ports['etcd']}", f"http://127.0.0.1:{cfg.ports['etcd-peer']}"
    procs.start(
        "etcd",
        [
            str(cfg.binary("etcd")),
            "--name",
            "portal",
            "--data-dir",
            str(cfg.state_dir / "etcd"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"portal={peer}",
            "--listen-metrics-urls",
            "",
            # A throwaway development store: durability is not worth the fsync latency on a VM disk.
            "--unsafe-no-fsync",
            "--quota-backend-bytes",
            str(4 << 30),
            "--log-level",
            "warn",
        ],
        env=GO_RUNTIME_ENV,
    )
    procs.wait("etcd", lambda: _etcd_healthy(cfg), 60, "healthy")


# -- certificates and kubeconfigs ------------------------------------------------------------

# Identities: the controller-manager and scheduler use the names the bootstrap RBAC policy
# grants; KWOK plays every kubelet and writes node and pod status, which the Node authorizer
# would only allow per node, so it is a cluster admin.
CLIENTS = {
    "admin": ("portal-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kwok": ("kwok-controller", "system:masters"),
    "gateway": ("gateway-emulator", None),
}


def ensure_pki(plane: ControlPlane) -> None:
    plane.pki.ensure_ca()
    plane.pki.ensure_service_account_keys()
    plane.pki.issue(
        "apiserver",
        "kube-apiserver",
        client=False,
        server_names=[
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
        ],
    )
    for user, (cn, org) in CLIENTS.items():
        plane.pki.issue(user, cn, org=org)
        plane.pki.kubeconfig(plane.kubeconfig(user), plane.server, user, cluster=plane.name)
    # The API server reaches KWOK's server as it would a kubelet (logs): mutual TLS, one CA.
    plane.pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", org="system:masters")
    plane.pki.issue("kwok-server", "kwok-server", client=False, server_names=["127.0.0.1", "localhost"])


# -- kube-apiserver, controller-manager, scheduler -------------------------------------------


def _apiserver_ready(plane: ControlPlane) -> bool:
    ctx = ssl.create_default_context(cafile=str(plane.pki.path("ca.crt")))
    ctx.load_cert_chain(str(plane.pki.path("admin.crt")), str(plane.pki.path("admin.key")))
    with urllib.request.urlopen(f"{plane.server}/readyz", context=ctx, timeout=3) as resp:  # noqa: S310
        return resp.status == 200


def ensure_apiserver(cfg: Config, procs: Procs, plane: ControlPlane, env_name: str) -> None:
    name = plane.proc("apiserver")
    if procs.pid(name) is None:
        require_port(plane.port, f"kube-apiserver ({plane.name})", env_name)
        pki = plane.pki
        procs.start(
            name,
            [
                str(cfg.binary("kube-apiserver")),
                "--bind-address=127.0.0.1",
                f"--secure-port={plane.port}",
                "--advertise-address=127.0.0.1",
                f"--etcd-servers={plane.etcd_url}",
                f"--etcd-prefix={plane.etcd_prefix}",
                f"--tls-cert-file={pki.path('apiserver.crt')}",
                f"--tls-private-key-file={pki.path('apiserver.key')}",
                f"--client-ca-file={pki.path('ca.crt')}",
                f"--service-account-key-file={pki.path('sa.pub')}",
                f"--service-account-signing-key-file={pki.path('sa.key')}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Pod logs: nodes advertise 127.0.0.1 and their KWOK's port (ensure_kwok).
                f"--kubelet-client-certificate={pki.path('apiserver-kubelet-client.crt')}",
                f"--kubelet-client-key={pki.path('apiserver-kubelet-client.key')}",
                f"--kubelet-certificate-authority={pki.path('ca.crt')}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                # The "kubernetes" Service would point at 127.0.0.1, which Endpoints reject.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                f"--cert-dir={pki.dir}",
            ],
            env=GO_RUNTIME_ENV,
        )
    procs.wait(name, lambda: _apiserver_ready(plane), 120, "ready (/readyz)")


def ensure_controllers(cfg: Config, procs: Procs, plane: ControlPlane) -> None:
    pki = plane.pki
    cm = plane.proc("controller-manager")
    if procs.pid(cm) is None:
        kc = plane.kubeconfig("controller-manager")
        procs.start(
            cm,
            [
                str(cfg.binary("kube-controller-manager")),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.path('sa.key')}",
                f"--root-ca-file={pki.path('ca.crt')}",
                f"--cluster-signing-cert-file={pki.path('ca.crt')}",
                f"--cluster-signing-key-file={pki.path('ca.key')}",
                # Pods on KWOK nodes never report real health; node lifecycle must not evict them.
                "--controllers=*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
            env=GO_RUNTIME_ENV,
        )
    sched = plane.proc("scheduler")
    if procs.pid(sched) is None:
        kc = plane.kubeconfig("scheduler")
        procs.start(
            sched,
            [
                str(cfg.binary("kube-scheduler")),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--secure-port=0",
                "--leader-elect=false",
            ],
            env=GO_RUNTIME_ENV,
        )
    procs.wait(
        cm,
        lambda: (
            kubectl(cfg, plane, "get", "serviceaccount", "default", "-n", "default", check=False).returncode
            == 0
        ),
        90,
        "creating service accounts",
    )


def free_port(reserved: set[int]) -> int:
    """A loopback port nothing listens on, outside RESERVED (the platform's fixed ports)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in reserved and port_free(port):
            return port
    raise PlatformError("found no free loopback port")


def kwok_port(cfg: Config, plane: ControlPlane) -> int:
    """PLANE's KWOK server port: the plane's own, or one picked once and recorded beside its kubeconfigs."""
    if plane.kwok_port:
        return plane.kwok_port
    record = plane.kubeconfig_dir / f"{plane.name}-kwok.port"
    with contextlib.suppress(OSError, ValueError):
        recorded = int(record.read_text())
        if port_free(recorded):
            return recorded
    port = free_port(set(cfg.ports.values()))
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(str(port))
    return port


def _kwok_healthy(plane: ControlPlane, port: int) -> bool:
    ctx = ssl.create_default_context(cafile=str(plane.pki.path("ca.crt")))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2) as resp:  # noqa: S310
        return resp.status == 200


def ensure_kwok(cfg: Config, procs: Procs, plane: ControlPlane) -> None:
    name = plane.proc("kwok")
    if procs.pid(name) is not None:
        return
    if not cfg.kwok_bin.exists():
        raise PlatformError(f"{cfg.kwok_bin} is missing; run `bash deploy/local/build-binaries.sh tools`")
    port = kwok_port(cfg, plane)
    require_port(port, f"KWOK's server ({plane.name})", "PORTAL_KWOK_PORT")
    # Pod logs come from KWOK's server, one `Logs` object per pod (written by serving_emulator.py).
    apply(cfg, plane, kwok_crds(cfg, ["logs"]))
    procs.start(
        name,
        [
            str(cfg.kwok_bin),
            f"--kubeconfig={plane.kubeconfig('kwok')}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40",
            # The API server connects to what nodes advertise: loopback only, and KWOK's server.
            "--node-ip=127.0.0.1",
            f"--node-port={port}",
            f"--server-address=127.0.0.1:{port}",
            f"--tls-cert-file={plane.pki.path('kwok-server.crt')}",
            f"--tls-private-key-file={plane.pki.path('kwok-server.key')}",
            "--enable-crds=Logs",
            f"--config={LOCAL_DIR / 'kwok-stages.yaml'}",
        ],
    )
    procs.wait(name, lambda: _kwok_healthy(plane, port), 60, "serving (/healthz)")
    # KWOK sets a node's address and kubelet port only while the node is not Ready yet: bring
    # nodes that are Ready already (KWOK restarted, or started before it had a server) up to date.
    endpoint = {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
    }
    for node in json.loads(kubectl(cfg, plane, "get", "nodes", "-o", "json").stdout)["items"]:
        status = node.get("status") or {}
        managed = (node["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake"
        if managed and {k: status.get(k) for k in endpoint} != endpoint:
            kubectl(
                cfg,
                plane,
                "patch",
                "node",
                node["metadata"]["name"],
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps({"status": endpoint}),
            )


# -- objects --------------------------------------------------------------------------------


def kubectl(
    cfg: Config, plane: ControlPlane, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(cfg.binary("kubectl")), f"--kubeconfig={plane.admin_kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise PlatformError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def apply(cfg: Config, plane: ControlPlane, objects: list[dict]) -> None:
    if objects:
        kubectl(
            cfg,
            plane,
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=local-platform",
            "-f",
            "-",
            stdin=yaml.safe_dump_all(objects),
        )


def ensure_nodes(cfg: Config, plane: ControlPlane, tier_file: tiers_mod.TierFile) -> None:
    nodes = tiers_mod.node_manifests(tier_file)
    # A node's capacity is status: set on create, then kept current through the status subresource.
    apply(cfg, plane, nodes)
    for node in nodes:
        kubectl(
            cfg,
            plane,
            "patch",
            "node",
            node["metadata"]["name"],
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": node["status"]}),
        )
        # TaintNodesByCondition adds node.kubernetes.io/not-ready on create, and the node lifecycle
        # controller that would lift it is off: set the taints we mean after the create.
        kubectl(
            cfg,
            plane,
            "patch",
            "node",
            node["metadata"]["name"],
            "--type=merge",
            "-p",
            json.dumps({"spec": {"taints": node["spec"]["taints"]}}),
        )
    wanted = {n["metadata"]["name"] for n in nodes}
    existing = kubectl(cfg, plane, "get", "nodes", "-l", "type=kwok", "-o", "name").stdout.split()
    stale = [n.split("/", 1)[1] for n in existing if n.split("/", 1)[1] not in wanted]
    if stale:
        kubectl(cfg, plane, "delete", "node", *stale, "--wait=false")


def _module_dir(module: str, version: str) -> Path:
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=False,
        env={**_go_env(), "GOFLAGS": "-mod=mod"},
    )
    if result.returncode != 0:
        raise PlatformError(f"cannot fetch {module}@{version}: {result.stderr.strip()}")
    return Path(json.loads(result.stdout)["Dir"])


def kwok_crds(cfg: Config, plurals: list[str]) -> list[dict]:
    """KWOK's own CRDs (kwok.x-k8s.io) at KWOK_VERSION, from its module."""
    crd_dir = _module_dir("sigs.k8s.io/kwok", cfg.versions["KWOK_VERSION"]) / "kustomize" / "crd" / "bases"
    return [yaml.safe_load((crd_dir / f"kwok.x-k8s.io_{plural}.yaml").read_text()) for plural in plurals]


def gateway_api_crds(cfg: Config) -> list[dict]:
    version = cfg.versions["GATEWAY_API_VERSION"]
    crd_dir = _module_dir("sigs.k8s.io/gateway-api", version) / "config" / "crd" / "standard"
    docs: list[dict] = []
    for path in sorted(crd_dir.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    if not docs:
        raise PlatformError(f"no CRDs found under {crd_dir}")
    return docs


def _go_env() -> dict[str, str]:
    import os

    return {**os.environ, "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local")}


def gateway_objects(domain: str) -> list[dict]:
    return [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": GATEWAY_CONTROLLER},
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}},
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {
                "name": GATEWAY_NAME,
                "namespace": GATEWAY_NAMESPACE,
                "labels": {"inference-portal.io/sync": "yes"},
            },
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [
                    {
                        "name": "http",
                        "protocol": "HTTP",
                        "port": 80,
                        "hostname": f"*.{domain}",
                        "allowedRoutes": {
                            "namespaces": {
                                "from": "Selector",
                                "selector": {"matchLabels": {ROUTE_ACCESS_LABEL: "allowed"}},
                            }
                        },
                    }
                ],
            },
        },
    ]


GATEWAY_RBAC = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "gateway-emulator"},
        "rules": [
            {
                "apiGroups": ["gateway.networking.k8s.io"],
                "resources": ["gatewayclasses", "gateways", "httproutes", "referencegrants"],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": ["gateway.networking.k8s.io"],
                "resources": ["gatewayclasses/status", "gateways/status", "httproutes/status"],
                "verbs": ["get", "patch", "update"],
            },
            {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["get", "list", "watch"]},
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "gateway-emulator"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "gateway-emulator",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "gateway-emulator"}],
    },
]


def ensure_gateway_emulator(procs: Procs, plane: ControlPlane) -> str:
    """Start the Gateway API status controller for PLANE (needs GATEWAY_RBAC applied there)."""
    name = plane.proc("gateway")
    if procs.pid(name) is None:
        procs.start(
            name,
            [
                sys.executable,
                str(LOCAL_DIR / "gateway_emulator.py"),
                f"--kubeconfig={plane.kubeconfig('gateway')}",
                f"--controller-name={GATEWAY_CONTROLLER}",
            ],
            env={"PYTHONUNBUFFERED": "1"},
        )
    return name


def ensure_gateway(cfg: Config, procs: Procs, plane: ControlPlane, crds: list[dict]) -> None:
    apply(cfg, plane, crds)
    names = [f"crd/{c['metadata']['name']}" for c in crds]
    kubectl(cfg, plane, "wait", "--for=condition=Established", "--timeout=60s", *names)
    apply(cfg, plane, GATEWAY_RBAC + gateway_objects(cfg.gateway_domain))
    name = ensure_gateway_emulator(procs, plane)
    procs.wait(
        name,
        lambda: (
            "True"
            in kubectl(
                cfg,
                plane,
                "get",
                "gateway",
                GATEWAY_NAME,
                "-n",
                GATEWAY_NAMESPACE,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Programmed')].status}",
                check=False,
            ).stdout
        ),
        60,
        "programming the shared Gateway",
    )


def wait_nodes_ready(cfg: Config, procs: Procs, plane: ControlPlane) -> None:
    procs.wait(
        plane.proc("kwok"),
        lambda: (
            kubectl(
                cfg,
                plane,
                "wait",
                "--for=condition=Ready",
                "node",
                "-l",
                "type=kwok",
                "--timeout=5s",
                check=False,
            ).returncode
            == 0
        ),
        90,
        "reporting its nodes Ready",
    )
