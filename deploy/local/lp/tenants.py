"""Tenant clusters: the pinned vcluster chart, and the control plane the emulator runs for each install.

A vCluster installed in the host with the real chart is, to the rest of the platform, what the
chart renders (a Deployment or StatefulSet labelled app=vcluster, its config Secret vc-config-<name>,
a Service) plus what the running syncer would produce: a tenant API server and the kubeconfig
Secret vc-<name>. No container runs here, so `vcluster_emulator.py` produces the second half with
the functions below: each tenant gets its own kube-apiserver on a loopback port from a range, its
own prefix on the platform's etcd, its own controller-manager, scheduler and KWOK, and a Gateway API
status emulator, all started through `lp.cluster` with a `ControlPlane` of its own.

What the emulator writes back to the host, so callers can tell a tenant cluster is ready:
  - Secret vc-<name> (keys config, certificate-authority, client-certificate, client-key, token),
    labelled app=vcluster, vcluster-name=<name>, owned by the vCluster's Service as vCluster does;
  - annotations on the chart's workload: STATUS_ANNOTATION (Starting / Ready / Failed),
    SERVER_ANNOTATION (the API server URL), MESSAGE_ANNOTATION (why, when Failed) and
    CONFIG_ANNOTATION (the vc-config-<name> resourceVersion in force);
  - the control-plane pod turns Ready (the emulator lifts HOLD_UNREADY_ANNOTATION).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import cluster
from .config import LOCAL_DIR, Config
from .errors import PlatformError
from .pki import PKI
from .procs import Procs, port_free

VCLUSTER_MODULE = "github.com/loft-sh/vcluster"
VALUES_FILE = LOCAL_DIR / "vcluster-values.yaml"
WORKLOAD_SELECTOR = "app=vcluster"
STATUS_ANNOTATION = "inference-portal.io/tenant-cluster"
SERVER_ANNOTATION = "inference-portal.io/tenant-cluster-server"
MESSAGE_ANNOTATION = "inference-portal.io/tenant-cluster-message"
# The resourceVersion of vc-config-<name> the tenant cluster last served with: after `helm upgrade`
# (autoNodes changes roll no pod), compare it with the Secret's to know the new config is in force.
CONFIG_ANNOTATION = "inference-portal.io/tenant-cluster-config-version"
HOLD_UNREADY_ANNOTATION = "inference-portal.io/hold-unready"
IMPORTED_FROM_ANNOTATION = "vcluster.loft.sh/imported-from"
# Stop order: clients of the API server first, the API server last.
COMPONENTS = ["gateway", "kwok", "scheduler", "controller-manager", "apiserver"]
DEFAULT_PORT_RANGE = "57000-57199"


# -- the chart ---------------------------------------------------------------------------------


def go_module_dir(module: str, version: str) -> Path:
    """Download MODULE@VERSION through the Go module proxy (cached in the module cache); its directory."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local"), "GOFLAGS": "-mod=mod"},
        timeout=600,
    )
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        info = {}
    if result.returncode != 0 or "Dir" not in info:
        why = info.get("Error") or result.stderr.strip() or f"exit code {result.returncode}"
        raise PlatformError(f"cannot fetch {module}@{version} from the Go module proxy: {why}")
    return Path(info["Dir"])


def chart_dir(cfg: Config) -> Path:
    """The vcluster chart at VCLUSTER_VERSION: chart/ of the github.com/loft-sh/vcluster module."""
    version = cfg.versions.get("VCLUSTER_VERSION")
    if not version:
        raise PlatformError(f"{LOCAL_DIR / 'versions.env'}: VCLUSTER_VERSION is not set")
    chart = go_module_dir(VCLUSTER_MODULE, version) / "chart"
    for needed in ("Chart.yaml", "values.yaml", "values.schema.json", "templates"):
        if not (chart / needed).exists():
            raise PlatformError(f"{VCLUSTER_MODULE}@{version} has no chart: {chart / needed} is missing")
    return chart


def helm(cfg: Config, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the platform's helm against the host cluster; a failure raises with helm's own words."""
    if not cfg.helm_bin.exists():
        raise PlatformError(f"{cfg.helm_bin} is missing; run `bash deploy/local/build-binaries.sh tools`")
    result = subprocess.run(
        [str(cfg.helm_bin), f"--kubeconfig={cluster.host_plane(cfg).admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise PlatformError(f"helm {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result


def install(
    cfg: Config, name: str, namespace: str, values_files: list[Path] | tuple = (), *, wait: float = 0
) -> None:
    """`helm upgrade --install` the pinned chart with VALUES_FILE, then VALUES_FILES on top.

    With WAIT (seconds), helm waits for the control-plane pod to be Ready: the emulator lets it turn
    Ready once the tenant cluster serves with this release's config.
    """
    argv = ["upgrade", "--install", name, str(chart_dir(cfg)), "--namespace", namespace, "--create-namespace"]
    for path in [VALUES_FILE, *values_files]:
        argv += ["--values", str(path)]
    if wait:
        argv += ["--wait", f"--timeout={int(wait)}s"]
    helm(cfg, *argv, timeout=max(300, wait + 60))


def uninstall(cfg: Config, name: str, namespace: str) -> None:
    helm(cfg, "uninstall", name, "--namespace", namespace, "--ignore-not-found")


# -- one tenant cluster ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    """One installed vCluster, known by the host namespace and the release name."""

    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def proc_prefix(self) -> str:
        return f"vc-{self.namespace}-{self.name}"

    @property
    def etcd_prefix(self) -> str:
        return f"/vcluster/{self.namespace}/{self.name}"

    @property
    def secret_name(self) -> str:
        return f"vc-{self.name}"

    @property
    def config_secret_name(self) -> str:
        return f"vc-config-{self.name}"

    def state_dir(self, cfg: Config) -> Path:
        return tenants_dir(cfg) / self.namespace / self.name


def tenants_dir(cfg: Config) -> Path:
    return cfg.state_dir / "tenants"


def known_tenants(cfg: Config) -> list[Tenant]:
    """Tenants with a state directory: installed now, or uninstalled while the emulator was away."""
    found = []
    for path in sorted(tenants_dir(cfg).glob("*/*/tenant.json")):
        data = json.loads(path.read_text())
        found.append(Tenant(data["namespace"], data["name"]))
    return found


def port_range() -> range:
    raw = os.environ.get("PORTAL_TENANT_PORTS") or DEFAULT_PORT_RANGE
    try:
        low, high = (int(part) for part in raw.split("-", 1))
    except ValueError:
        raise PlatformError(
            f"PORTAL_TENANT_PORTS={raw!r}: expected a range such as {DEFAULT_PORT_RANGE}"
        ) from None
    if not 1024 <= low <= high <= 65535:
        raise PlatformError(f"PORTAL_TENANT_PORTS={raw!r}: choose ports between 1024 and 65535, low to high")
    return range(low, high + 1)


@contextlib.contextmanager
def _state_lock(cfg: Config) -> Iterator[None]:
    directory = tenants_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tenant_port(cfg: Config, tenant: Tenant) -> int:
    """The tenant API server's port: the one recorded for it, or the lowest free one, then recorded."""
    record = tenant.state_dir(cfg) / "tenant.json"
    with _state_lock(cfg):
        if record.exists():
            return json.loads(record.read_text())["port"]
        taken = {json.loads(p.read_text())["port"] for p in tenants_dir(cfg).glob("*/*/tenant.json")}
        reserved = set(cfg.ports.values())
        for port in port_range():
            if port not in taken and port not in reserved and port_free(port):
                record.parent.mkdir(parents=True, exist_ok=True)
                tmp = record.with_suffix(".tmp")
                tmp.write_text(
                    json.dumps(
                        {
                            "namespace": tenant.namespace,
                            "name": tenant.name,
                            "port": port,
                            "etcdPrefix": tenant.etcd_prefix,
                        }
                    )
                )
                tmp.replace(record)
                return port
    raise PlatformError(
        f"no free port left in {port_range().start}-{port_range().stop - 1} for tenant cluster {tenant.key}; "
        "set PORTAL_TENANT_PORTS to a wider range"
    )


def recorded_port(cfg: Config, tenant: Tenant) -> int | None:
    record = tenant.state_dir(cfg) / "tenant.json"
    return json.loads(record.read_text())["port"] if record.exists() else None


def plane(cfg: Config, tenant: Tenant, port: int) -> cluster.ControlPlane:
    directory = tenant.state_dir(cfg)
    return cluster.ControlPlane(
        name=tenant.proc_prefix,
        port=port,
        etcd_url=f"http://127.0.0.1:{cfg.ports['etcd']}",
        etcd_prefix=tenant.etcd_prefix,
        pki=PKI(directory / "pki"),
        kubeconfig_dir=directory / "kubeconfig",
    )


def processes_running(procs: Procs, tenant_plane: cluster.ControlPlane) -> bool:
    return all(procs.pid(tenant_plane.proc(c)) is not None for c in COMPONENTS)


def ensure_control_plane(
    cfg: Config, procs: Procs, tenant_plane: cluster.ControlPlane, crds: list[dict]
) -> None:
    """Start whatever of the tenant's control plane is not running, and its Gateway API CRDs. Idempotent."""
    cluster.ensure_pki(tenant_plane)
    try:
        cluster.ensure_apiserver(cfg, procs, tenant_plane, "PORTAL_TENANT_PORTS")
    except PlatformError:
        # An API server told to stop while its clients still watch can linger without listening;
        # left alone it would fail every retry. Stop it for good (SIGKILL after a grace period).
        if not apiserver_answers(tenant_plane):
            procs.stop(tenant_plane.proc("apiserver"))
        raise
    cluster.ensure_controllers(cfg, procs, tenant_plane)
    cluster.ensure_kwok(cfg, procs, tenant_plane)
    cluster.apply(cfg, tenant_plane, crds + cluster.GATEWAY_RBAC)
    names = [f"crd/{c['metadata']['name']}" for c in crds]
    cluster.kubectl(cfg, tenant_plane, "wait", "--for=condition=Established", "--timeout=60s", *names)
    cluster.ensure_gateway_emulator(procs, tenant_plane)


def apiserver_answers(tenant_plane: cluster.ControlPlane) -> bool:
    try:
        return cluster._apiserver_ready(tenant_plane)
    except Exception:  # noqa: BLE001 - refused, reset, timed out: it does not answer
        return False


# kube-apiserver drains open watches for up to a minute when told to stop, and clients outside the
# platform (the portal's cluster watcher) keep theirs open. Every write it acknowledged is in etcd
# already, so it gets a short grace period, then SIGKILL.
APISERVER_STOP_GRACE = 3.0


def _stop(procs: Procs, name: str) -> bool:
    pid = procs.pid(name)
    stopped = procs.stop(name, timeout=APISERVER_STOP_GRACE if name.endswith("-apiserver") else 20)
    if pid is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if this process started it: no zombie left behind
    return stopped


def stop_control_plane(procs: Procs, tenant_plane: cluster.ControlPlane) -> list[str]:
    stopped = []
    for component in COMPONENTS:
        if _stop(procs, tenant_plane.proc(component)):
            stopped.append(tenant_plane.proc(component))
    return stopped


def delete_etcd_prefix(cfg: Config, prefix: str) -> int:
    """Delete every key under PREFIX/ through etcd's JSON gateway; the number of keys deleted."""
    start = prefix.rstrip("/") + "/"
    end = start[:-1] + chr(ord("/") + 1)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    request = urllib.request.Request(  # noqa: S310 - loopback etcd
        f"http://127.0.0.1:{cfg.ports['etcd']}/v3/kv/deleterange",
        data=json.dumps({"key": b64(start), "range_end": b64(end)}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        return int(json.load(resp).get("deleted", 0))


def etcd_key_count(cfg: Config, prefix: str) -> int:
    start = prefix.rstrip("/") + "/"
    end = start[:-1] + chr(ord("/") + 1)
    body = {
        "key": base64.b64encode(start.encode()).decode(),
        "range_end": base64.b64encode(end.encode()).decode(),
        "count_only": True,
    }
    request = urllib.request.Request(  # noqa: S310 - loopback etcd
        f"http://127.0.0.1:{cfg.ports['etcd']}/v3/kv/range",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        return int(json.load(resp).get("count", 0))


def remove_state(cfg: Config, procs: Procs, tenant: Tenant, tenant_plane: cluster.ControlPlane) -> None:
    shutil.rmtree(tenant.state_dir(cfg), ignore_errors=True)
    for component in COMPONENTS:
        procs.logfile(tenant_plane.proc(component)).unlink(missing_ok=True)
    parent = tenant.state_dir(cfg).parent
    with contextlib.suppress(OSError):
        parent.rmdir()  # the namespace's directory, once its last tenant is gone


# -- what the tenant's config asks for ---------------------------------------------------------


def read_config(secret_data: dict[str, str] | None) -> dict:
    """The vcluster.yaml the chart stored in vc-config-<name> (key config.yaml), parsed."""
    raw = (secret_data or {}).get("config.yaml")
    if not raw:
        return {}
    return yaml.safe_load(base64.b64decode(raw)) or {}


def kubeconfig_secret_data(tenant_plane: cluster.ControlPlane, context: str) -> dict[str, str]:
    """The keys vCluster writes into vc-<name>, base64-encoded as Secret data."""
    pki = tenant_plane.pki
    ca, cert, key = (pki.path(n).read_bytes() for n in ("ca.crt", "admin.crt", "admin.key"))

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {"server": tenant_plane.server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {"name": context, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
        "current-context": context,
    }
    return {
        "config": b64(yaml.safe_dump(kubeconfig).encode()),
        "certificate-authority": b64(ca),
        "client-certificate": b64(cert),
        "client-key": b64(key),
        "token": "",
    }


def _mapping_matches(pattern: str, namespace: str, name: str, own_namespace: str) -> bool:
    if pattern in ("", "/*"):
        return namespace == own_namespace
    if pattern.startswith("/"):
        return namespace == own_namespace and name == pattern[1:]
    ns, _, obj = pattern.partition("/")
    return ns == namespace and obj in ("*", name)


def imported_gateway_objects(config: dict, host_classes: list[dict], host_gateways: list[dict], own_ns: str):
    """What sync.fromHost.customResources asks to import: GatewayClasses, then (namespace, Gateway) pairs.

    Honours mappings.byName as v0.30.0 documents it ("ns/name", "ns/*", "" and "/name" for the
    vCluster's own namespace); with no mappings a namespaced resource imports from the vCluster's
    own namespace under the same names.
    """
    custom = ((config.get("sync") or {}).get("fromHost") or {}).get("customResources") or {}
    classes_cfg = custom.get("gatewayclasses.gateway.networking.k8s.io") or {}
    gateways_cfg = custom.get("gateways.gateway.networking.k8s.io") or {}
    classes: list[dict] = []
    if classes_cfg.get("enabled"):
        for gc in host_classes:
            classes.append(
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "GatewayClass",
                    "metadata": {
                        "name": gc["metadata"]["name"],
                        "labels": gc["metadata"].get("labels") or {},
                        "annotations": {IMPORTED_FROM_ANNOTATION: gc["metadata"]["name"]},
                    },
                    "spec": gc["spec"],
                }
            )
    gateways: list[dict] = []
    if gateways_cfg.get("enabled"):
        mappings = ((gateways_cfg.get("mappings") or {}).get("byName")) or {"": f"{own_ns}/*"}
        for gw in host_gateways:
            ns, name = gw["metadata"]["namespace"], gw["metadata"]["name"]
            for pattern, target in mappings.items():
                if _mapping_matches(pattern, ns, name, own_ns):
                    vns, _, vname = target.partition("/")
                    vname = name if vname in ("*", "") else vname
                    gateways.append(
                        {
                            "apiVersion": "gateway.networking.k8s.io/v1",
                            "kind": "Gateway",
                            "metadata": {
                                "name": vname,
                                "namespace": vns,
                                "labels": gw["metadata"].get("labels") or {},
                                "annotations": {IMPORTED_FROM_ANNOTATION: f"{ns}/{name}"},
                            },
                            "spec": gw["spec"],
                        }
                    )
                    break
    return classes, gateways


# -- the emulator process ----------------------------------------------------------------------

EMULATOR = "vcluster-emulator"


def emulator_marker(cfg: Config) -> Path:
    """Written by the emulator once it has looked at the host; holds its pid."""
    return tenants_dir(cfg) / "emulator.synced"


def ensure_emulator(cfg: Config, procs: Procs) -> None:
    """Start the vCluster emulator unless it runs; wait until it has reconciled the host once."""
    chart_dir(cfg)  # fetch and check the pinned chart now, so a missing one fails `up` with its cause
    marker = emulator_marker(cfg)
    if procs.pid(EMULATOR) is None:
        marker.unlink(missing_ok=True)
        procs.start(
            EMULATOR,
            [sys.executable, str(LOCAL_DIR / "vcluster_emulator.py")],
            env={"PYTHONUNBUFFERED": "1"},
        )

    def synced() -> bool:
        return marker.exists() and marker.read_text().strip() == str(procs.pid(EMULATOR))

    procs.wait(EMULATOR, synced, 240, "bringing up the tenant clusters installed in the host")


def stop_tenant_clusters(procs: Procs) -> list[str]:
    """Stop the emulator, then every tenant cluster's processes, each API server after its clients.

    The emulator goes first or it would restart what is being stopped; an API server stopped while
    its clients still watch lingers until it is killed.
    """
    stopped = [EMULATOR] if procs.stop(EMULATOR) else []
    names = sorted(p.stem for p in procs.run_dir.glob("vc-*.pid"))

    def rank(name: str) -> int:
        return next((i for i, c in enumerate(COMPONENTS) if name.endswith(f"-{c}")), -1)

    for name in sorted(names, key=rank):
        if _stop(procs, name):
            stopped.append(name)
    return stopped
