#!/usr/bin/env python3
"""The vCluster emulator: stands in for the syncer of every vCluster installed with the real chart.

No container runs on the local platform, so the chart's control-plane pod is only played by KWOK.
This process does, for each vCluster it finds in the host (the chart's Deployment or StatefulSet,
labelled app=vcluster, release=<name>), what the running syncer would:
  - once the host runs the control-plane pod, it starts a tenant control plane: kube-apiserver on a
    loopback port of its own (kept across restarts), etcd prefix /vcluster/<namespace>/<name>,
    controller-manager, scheduler, KWOK and a Gateway API status controller (processes
    vc-<namespace>-<name>-<component>, stopped by `platformctl down`);
  - it installs the Gateway API CRDs there and imports what the vCluster's config asks for with
    sync.fromHost.customResources (the shared GatewayClass and Gateway);
  - it writes Secret vc-<name> with the tenant's kubeconfig and marks the vCluster ready
    (annotation inference-portal.io/tenant-cluster=Ready on the workload, pod Ready);
  - with privateNodes.enabled it joins GPU nodes from the platform's pool on demand and takes idle
    ones back (lp/tenants_autonodes.py);
  - on uninstall it stops the tenant's processes, deletes its etcd prefix, returns its nodes to the
    pool and deletes the Secret.
Every step is idempotent and level-triggered: on start it reconciles whatever it finds, including
tenants uninstalled while it was not running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubernetes import client, config  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402
from lp import cluster, tenants  # noqa: E402
from lp import tenants_autonodes as autonodes  # noqa: E402
from lp import tiers as tiers_mod  # noqa: E402
from lp.config import Config  # noqa: E402
from lp.procs import Procs  # noqa: E402

log = logging.getLogger("vcluster-emulator")
GW_GROUP, GW_VERSION = "gateway.networking.k8s.io", "v1"


def _not_found(exc: ApiException) -> bool:
    return exc.status == 404


def describe(exc: Exception) -> str:
    """One line for the log and the workload's message annotation."""
    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except ValueError:
            message = ""
        return f"Kubernetes API {exc.status} {exc.reason}: {message}".strip()
    return str(exc).strip() or exc.__class__.__name__


class TenantWorker(threading.Thread):
    """Brings one tenant cluster up, keeps it up, and takes it down when its vCluster is uninstalled."""

    RESYNC_SECONDS = 5.0

    def __init__(self, emulator: Emulator, tenant: tenants.Tenant) -> None:
        super().__init__(daemon=True, name=f"tenant {tenant.key}")
        self.emu = emulator
        self.tenant = tenant
        self.cfg = emulator.cfg
        self.wake = threading.Event()
        self.uninstall = threading.Event()
        self.done = threading.Event()
        self.attempted = threading.Event()  # one pass done, whatever its outcome
        self.ready = False
        self.api: client.ApiClient | None = None
        self.config: dict = {}
        self.generation: int | None = None  # of the chart's workload, as last seen

    # -- loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        backoff = 1.0
        while not self.emu.stopping.is_set():
            try:
                if self.uninstall.is_set():
                    self.teardown()
                    break
                delay = self.reconcile()
                backoff = 1.0
            except Exception as exc:  # noqa: BLE001 - record it, retry with a capped backoff
                log.warning("tenant cluster %s: %s", self.tenant.key, describe(exc))
                # Trouble reaching the host (an API server restart, say) leaves a serving tenant
                # cluster serving, Auto Nodes included; only a tenant that does not answer is Failed.
                if not self.uninstall.is_set() and not self.serving():
                    self.ready = False
                    with contextlib.suppress(Exception):
                        self.mark("Failed", describe(exc)[:1000])
                delay, backoff = backoff, min(backoff * 2, 30.0)
            self.attempted.set()
            self.wake.wait(delay)
            self.wake.clear()
        self.done.set()

    def serving(self) -> bool:
        port = tenants.recorded_port(self.cfg, self.tenant)
        if not self.ready or port is None:
            return False
        return tenants.apiserver_answers(tenants.plane(self.cfg, self.tenant, port))

    # -- bring-up ------------------------------------------------------------------------------

    def reconcile(self) -> float:
        """One idempotent pass; returns the seconds until the next."""
        t, procs = self.tenant, self.emu.procs
        core = client.CoreV1Api(self.emu.host)
        try:
            secret = core.read_namespaced_secret(t.config_secret_name, t.namespace)
            self.config = tenants.read_config(secret.data)
            config_version = secret.metadata.resource_version
        except ApiException as exc:
            if not _not_found(exc):
                raise
            self.config, config_version = {}, ""
        port = tenants.recorded_port(self.cfg, t)
        plane = tenants.plane(self.cfg, t, port or 0)
        if port is None or not tenants.processes_running(procs, plane):
            self.ready = False
            # The control plane lives in the chart's pod: nothing starts before the host runs it.
            pods = core.list_namespaced_pod(
                t.namespace, label_selector=f"app=vcluster,release={t.name}"
            ).items
            if not any(p.status.phase == "Running" for p in pods):
                self.mark("Starting", "waiting for the host to run the vCluster control-plane pod")
                return 0.25
            self.mark("Starting", "starting the tenant control plane")
            plane = tenants.plane(self.cfg, t, tenants.tenant_port(self.cfg, t))
            started = time.monotonic()
            tenants.ensure_control_plane(self.cfg, procs, plane, self.emu.crds)
            log.info(
                "tenant cluster %s: control plane up at %s in %.1fs",
                t.key,
                plane.server,
                time.monotonic() - started,
            )
        if self.api is None:
            self.api = config.new_client_from_config(config_file=str(plane.admin_kubeconfig))
        started = time.monotonic()
        self.import_gateways()
        imported = time.monotonic()
        self.write_kubeconfig_secrets(plane)
        self.release_pods()
        self.mark("Ready", "", plane.server, config_version)
        if not self.ready:
            log.info(
                "tenant cluster %s: ready (Gateway import %.1fs, kubeconfig Secret %.1fs)",
                t.key,
                imported - started,
                time.monotonic() - imported,
            )
        self.ready = True
        return self.RESYNC_SECONDS

    def mark(
        self, status: str, message: str, server: str | None = None, config_version: str | None = None
    ) -> None:
        """Record the tenant cluster's state on the chart's workload, when it changed."""
        workload = self.emu.workloads.get(self.tenant.key)
        if workload is None:
            return
        annotations = {
            tenants.STATUS_ANNOTATION: status,
            tenants.MESSAGE_ANNOTATION: message or None,
        }
        if server is not None:
            annotations[tenants.SERVER_ANNOTATION] = server
        if config_version is not None:
            annotations[tenants.CONFIG_ANNOTATION] = config_version
        current = workload["metadata"].get("annotations") or {}
        if all(current.get(k) == v for k, v in annotations.items()):
            return
        apps = client.AppsV1Api(self.emu.host)
        patch = {"metadata": {"annotations": annotations}}
        name, ns = workload["metadata"]["name"], workload["metadata"]["namespace"]
        if workload["kind"] == "StatefulSet":
            apps.patch_namespaced_stateful_set(name, ns, patch)
        else:
            apps.patch_namespaced_deployment(name, ns, patch)
        current.update({k: v for k, v in annotations.items() if v is not None})
        for k in [k for k, v in annotations.items() if v is None]:
            current.pop(k, None)
        workload["metadata"]["annotations"] = current

    def import_gateways(self) -> None:
        """Emulate sync.fromHost for GatewayClasses and Gateways: mirror the host's objects."""
        assert self.api is not None
        host = client.CustomObjectsApi(self.emu.host)
        host_classes = host.list_cluster_custom_object(GW_GROUP, GW_VERSION, "gatewayclasses")["items"]
        host_gateways = host.list_cluster_custom_object(GW_GROUP, GW_VERSION, "gateways")["items"]
        classes, gateways = tenants.imported_gateway_objects(
            self.config, host_classes, host_gateways, self.tenant.namespace
        )
        mine = client.CustomObjectsApi(self.api)
        core = client.CoreV1Api(self.api)
        for obj in classes:
            self._mirror(mine, "gatewayclasses", None, obj)
        for obj in gateways:
            ns = obj["metadata"]["namespace"]
            try:
                core.read_namespace(ns)
            except ApiException as exc:
                if not _not_found(exc):
                    raise
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            self._mirror(mine, "gateways", ns, obj)
        # What the host no longer offers (or the config no longer asks for) leaves the tenant too.
        wanted = {("", o["metadata"]["name"]) for o in classes} | {
            (o["metadata"]["namespace"], o["metadata"]["name"]) for o in gateways
        }
        for plural in ("gatewayclasses", "gateways"):
            for obj in mine.list_cluster_custom_object(GW_GROUP, GW_VERSION, plural)["items"]:
                meta = obj["metadata"]
                if tenants.IMPORTED_FROM_ANNOTATION not in (meta.get("annotations") or {}):
                    continue
                if (meta.get("namespace", ""), meta["name"]) in wanted:
                    continue
                with contextlib.suppress(ApiException):
                    if plural == "gatewayclasses":
                        mine.delete_cluster_custom_object(GW_GROUP, GW_VERSION, plural, meta["name"])
                    else:
                        mine.delete_namespaced_custom_object(
                            GW_GROUP, GW_VERSION, meta["namespace"], plural, meta["name"]
                        )

    @staticmethod
    def _mirror(api: client.CustomObjectsApi, plural: str, namespace: str | None, obj: dict) -> None:
        name = obj["metadata"]["name"]
        try:
            if namespace is None:
                current = api.get_cluster_custom_object(GW_GROUP, GW_VERSION, plural, name)
            else:
                current = api.get_namespaced_custom_object(GW_GROUP, GW_VERSION, namespace, plural, name)
        except ApiException as exc:
            if not _not_found(exc):
                raise
            if namespace is None:
                api.create_cluster_custom_object(GW_GROUP, GW_VERSION, plural, obj)
            else:
                api.create_namespaced_custom_object(GW_GROUP, GW_VERSION, namespace, plural, obj)
            return
        meta = current["metadata"]
        same = (
            current.get("spec") == obj["spec"]
            and all((meta.get("labels") or {}).get(k) == v for k, v in obj["metadata"]["labels"].items())
            and all(
                (meta.get("annotations") or {}).get(k) == v for k, v in obj["metadata"]["annotations"].items()
            )
        )
        if same:
            return
        patch = {"metadata": {k: obj["metadata"][k] for k in ("labels", "annotations")}, "spec": obj["spec"]}
        if namespace is None:
            api.patch_cluster_custom_object(GW_GROUP, GW_VERSION, plural, name, patch)
        else:
            api.patch_namespaced_custom_object(GW_GROUP, GW_VERSION, namespace, plural, name, patch)

    def secret_targets(self) -> list[tuple[str, str, str]]:
        """(namespace, name, context) of each kubeconfig Secret the config asks for; vc-<name> first."""
        t = self.tenant
        export = self.config.get("exportKubeConfig") or {}
        context = export.get("context") or f"vcluster_{t.name}_{t.namespace}"
        targets = [(t.namespace, t.secret_name, context)]
        extra = export.get("secret") or {}
        if extra.get("name"):
            targets.append((extra.get("namespace") or t.namespace, extra["name"], context))
        for more in export.get("additionalSecrets") or []:
            if more.get("name"):
                targets.append(
                    (more.get("namespace") or t.namespace, more["name"], more.get("context") or context)
                )
        return list(dict.fromkeys(targets))

    def write_kubeconfig_secrets(self, plane: cluster.ControlPlane) -> None:
        t = self.tenant
        core = client.CoreV1Api(self.emu.host)
        targets = self.secret_targets()
        # Remember them: after an uninstall the config that named them is gone.
        record = t.state_dir(self.cfg) / "secrets.json"
        names = [[ns, name] for ns, name, _ in targets]
        if not record.exists() or json.loads(record.read_text()) != names:
            record.write_text(json.dumps(names))
        try:
            service = core.read_namespaced_service(t.name, t.namespace)
            # As vCluster does (experimental.syncSettings.setOwner): the Secret goes with the Service.
            owners = [
                client.V1OwnerReference(
                    api_version="v1", kind="Service", name=t.name, uid=service.metadata.uid
                )
            ]
        except ApiException as exc:
            if not _not_found(exc):
                raise
            owners = None
        for ns, name, context in targets:
            data = tenants.kubeconfig_secret_data(plane, context)
            labels = {"app": "vcluster", "vcluster-name": t.name}
            body = client.V1Secret(
                metadata=client.V1ObjectMeta(
                    name=name,
                    namespace=ns,
                    labels=labels,
                    owner_references=owners if ns == t.namespace else None,
                ),
                type="Opaque",
                data=data,
            )
            try:
                current = core.read_namespaced_secret(name, ns)
            except ApiException as exc:
                if not _not_found(exc):
                    raise
                core.create_namespaced_secret(ns, body)
                log.info("tenant cluster %s: wrote Secret %s/%s", t.key, ns, name)
                continue
            if current.data != data or any(
                (current.metadata.labels or {}).get(k) != v for k, v in labels.items()
            ):
                core.patch_namespaced_secret(name, ns, {"metadata": {"labels": labels}, "data": data})

    def release_pods(self) -> None:
        """The control-plane pod may turn Ready now: lift the annotation that holds KWOK back."""
        t = self.tenant
        core = client.CoreV1Api(self.emu.host)
        for pod in core.list_namespaced_pod(
            t.namespace, label_selector=f"app=vcluster,release={t.name}"
        ).items:
            if tenants.HOLD_UNREADY_ANNOTATION in (pod.metadata.annotations or {}):
                with contextlib.suppress(ApiException):
                    core.patch_namespaced_pod(
                        pod.metadata.name,
                        t.namespace,
                        {"metadata": {"annotations": {tenants.HOLD_UNREADY_ANNOTATION: None}}},
                    )

    # -- uninstall -----------------------------------------------------------------------------

    def teardown(self) -> None:
        t, procs = self.tenant, self.emu.procs
        self.ready = False
        plane = tenants.plane(self.cfg, t, tenants.recorded_port(self.cfg, t) or 0)
        stopped = tenants.stop_control_plane(procs, plane)
        deleted = tenants.delete_etcd_prefix(self.cfg, t.etcd_prefix)
        returned = self.emu.pool.release_all(t.key)
        core = client.CoreV1Api(self.emu.host)
        record = t.state_dir(self.cfg) / "secrets.json"
        targets = json.loads(record.read_text()) if record.exists() else [[t.namespace, t.secret_name]]
        for ns, name in targets:
            try:
                core.delete_namespaced_secret(name, ns)
            except ApiException as exc:
                if not _not_found(exc):
                    raise
        tenants.remove_state(self.cfg, procs, t, plane)
        log.info(
            "tenant cluster %s: uninstalled (stopped %d processes, deleted %d etcd keys, returned nodes %s)",
            t.key,
            len(stopped),
            deleted,
            returned or "none",
        )


class Emulator:
    def __init__(self, cfg: Config, consolidate_after: float, interval: float) -> None:
        self.cfg = cfg
        self.interval = interval
        self.procs = Procs(cfg.run, cfg.logs)
        self.host = config.new_client_from_config(config_file=str(cluster.host_plane(cfg).admin_kubeconfig))
        self.crds = cluster.gateway_api_crds(cfg)
        tier_file = tiers_mod.load(cfg.tiers_file)
        self.pool = autonodes.Pool(tenants.tenants_dir(cfg) / "autonodes.json", tier_file)
        self.autonodes = autonodes.AutoNodes(self.pool, tier_file, consolidate_after)
        self.consolidate_after = consolidate_after
        self.workers: dict[str, TenantWorker] = {}
        self.workloads: dict[str, dict] = {}
        self.stopping = threading.Event()

    def discover(self) -> dict[str, dict] | None:
        """Installed vClusters by "namespace/name": the chart's workload; None if the host did not answer."""
        apps = client.AppsV1Api(self.host)
        found: dict[str, dict] = {}
        try:
            listings = [
                (
                    "Deployment",
                    apps.list_deployment_for_all_namespaces(label_selector=tenants.WORKLOAD_SELECTOR),
                ),
                (
                    "StatefulSet",
                    apps.list_stateful_set_for_all_namespaces(label_selector=tenants.WORKLOAD_SELECTOR),
                ),
            ]
        except Exception as exc:  # noqa: BLE001 - the host API may be restarting
            log.warning("cannot list vClusters in the host: %s", exc)
            return None
        for kind, listing in listings:
            for item in listing.items:
                meta = item.metadata
                release = (meta.labels or {}).get("release")
                if not release or meta.deletion_timestamp:
                    continue
                obj = self.host.sanitize_for_serialization(item)
                obj["kind"] = kind
                found[f"{meta.namespace}/{release}"] = obj
        return found

    def run(self) -> None:
        first = True
        while not self.stopping.is_set():
            found = self.discover()
            if found is not None:
                self.workloads = found
                recorded = {t.key: t for t in tenants.known_tenants(self.cfg)}
                wanted = {k: tenants.Tenant(*k.split("/", 1)) for k in found}
                for key, tenant in {**recorded, **wanted}.items():
                    worker = self.workers.get(key)
                    if worker is not None and worker.done.is_set():
                        del self.workers[key]
                        worker = None
                    if worker is None and (key in wanted or key in recorded):
                        if key not in wanted and not tenant.state_dir(self.cfg).exists():
                            continue
                        worker = TenantWorker(self, tenant)
                        if key not in wanted:
                            worker.uninstall.set()
                        self.workers[key] = worker
                        worker.start()
                    elif worker is not None and key not in wanted and not worker.uninstall.is_set():
                        log.info("tenant cluster %s: its vCluster was uninstalled", key)
                        worker.uninstall.set()
                        worker.wake.set()
                    if worker is not None and key in found:
                        # helm upgrade changed the workload (its config hash): look again now.
                        generation = found[key]["metadata"].get("generation")
                        if worker.generation != generation:
                            worker.generation = generation
                            worker.wake.set()
                # `platformctl up` returns once the tenant clusters found at start have had a pass.
                if first and all(w.attempted.is_set() or w.done.is_set() for w in self.workers.values()):
                    marker = tenants.emulator_marker(self.cfg)
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text(str(os.getpid()))
                    first = False
            views = [
                autonodes.TenantView(
                    w.tenant.key, w.api, autonodes.node_pools(w.config, self.consolidate_after)
                )
                for w in list(self.workers.values())
                if w.ready and w.api is not None and not w.uninstall.is_set()
            ]
            self.autonodes.tick(views, set(found) if found is not None else None)
            self.stopping.wait(self.interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--consolidate-after",
        default=os.environ.get("PORTAL_AUTONODES_CONSOLIDATE_AFTER", "60s"),
        help="how long an auto node stays empty before it returns to the pool, when the tenant's "
        "vcluster.yaml does not say (privateNodes.autoNodes[].dynamic[].disruption.consolidateAfter)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between passes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    try:
        consolidate_after = autonodes.parse_duration(args.consolidate_after, 60.0)
    except ValueError as exc:
        parser.error(f"--consolidate-after / PORTAL_AUTONODES_CONSOLIDATE_AFTER: {exc}")
    emulator = Emulator(Config.from_env(), consolidate_after, args.interval)
    # Stopping leaves the tenant clusters running: their processes have pid files of their own, and
    # `platformctl down` stops them; the next emulator adopts them.
    signal.signal(signal.SIGTERM, lambda *_: emulator.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: emulator.stopping.set())
    log.info("vCluster emulator started (auto nodes consolidate after %.0fs by default)", consolidate_after)
    emulator.run()
    log.info("vCluster emulator stopped")


if __name__ == "__main__":
    main()
