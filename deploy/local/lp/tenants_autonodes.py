"""Private nodes with Auto Nodes for tenant clusters: a pool of GPU nodes per tier, joined on demand.

The platform keeps `autoNodes` nodes per GPU tier (gpu-tiers.yaml) outside the host cluster. When a
pod in a tenant cluster is unschedulable and a node of some tier would take it, a free node of that
tier joins the tenant cluster: its Node object (the tier's labels, taint and allocatable, as the GPU
operator would report them) is created in the tenant's API server, the tenant's KWOK makes it Ready
and the tenant's scheduler binds the pod. A node that has stayed empty for the tenant pool's
`disruption.consolidateAfter` is cordoned, checked again, deleted from the tenant and returned to
the pool. With the pool empty nothing joins, and the pod keeps the scheduler's FailedScheduling.

Which tenant holds which node is recorded in a JSON file, written before a node joins and after it
leaves, and checked against the tenant clusters on every pass, so a crash between the two steps
heals itself. What a tenant may use comes from its vcluster.yaml: privateNodes.enabled and the
dynamic pools of privateNodes.autoNodes (nodeTypeSelector, nodeLabels, taints, limits, disruption).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from . import tiers as tiers_mod
from .serving import Informer

log = logging.getLogger("vcluster-emulator.autonodes")

POOL_LABEL = "inference-portal.io/auto-node-pool"
CORDONED_BY_US = "inference-portal.io/auto-node-draining"
# A node that joined this recently may not have been considered by the scheduler yet: pods waiting
# for it count against its free capacity instead of asking for another node.
FRESH_SECONDS = 30.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str | None, default: float) -> float:
    """A Go duration such as 30s, 1m30s or 500ms, in seconds; "Never" is infinity."""
    if text in (None, ""):
        return default
    if text == "Never":
        return float("inf")
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m or 1m30s")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def _utc(ts: str | None) -> dt.datetime:
    if not ts:
        return dt.datetime.now(dt.UTC)
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


# -- what a tenant may use ---------------------------------------------------------------------


@dataclass
class NodePool:
    """One dynamic pool of privateNodes.autoNodes in a tenant's vcluster.yaml."""

    name: str
    requirements: list[dict] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict] = field(default_factory=list)
    limits: dict[str, Decimal] = field(default_factory=dict)
    consolidate_after: float = 60.0
    weight: int = 0

    def matches(self, tier: tiers_mod.Tier) -> bool:
        labels = tier_labels(tier)
        for req in self.requirements:
            key, op = req.get("property", ""), req.get("operator") or "In"
            values = req.get("values") or ([req["value"]] if req.get("value") is not None else [])
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True

    def node_labels(self, tier: tiers_mod.Tier) -> dict[str, str]:
        return {**tier_labels(tier), **self.labels, POOL_LABEL: self.name}

    def node_taints(self, tier: tiers_mod.Tier) -> list[dict]:
        base = tiers_mod.gpu_node_manifest(tier, "x")["spec"]["taints"]
        extra = [{k: v for k, v in t.items() if k in ("key", "value", "effect")} for t in self.taints]
        return base + extra


def tier_labels(tier: tiers_mod.Tier) -> dict[str, str]:
    labels = dict(tiers_mod.gpu_node_manifest(tier, "x")["metadata"]["labels"])
    for per_node in ("kubernetes.io/hostname",):
        labels.pop(per_node, None)
    return labels


def node_pools(config: dict, default_consolidate_after: float) -> list[NodePool]:
    """The dynamic pools a tenant's vcluster.yaml declares; none unless privateNodes.enabled."""
    private = config.get("privateNodes") or {}
    if not private.get("enabled"):
        return []
    pools = []
    for auto in private.get("autoNodes") or []:
        for dyn in auto.get("dynamic") or []:
            disruption = dyn.get("disruption") or {}
            pools.append(
                NodePool(
                    name=str(dyn.get("name") or "default"),
                    requirements=list(dyn.get("nodeTypeSelector") or []),
                    labels={str(k): str(v) for k, v in (dyn.get("nodeLabels") or {}).items()},
                    taints=list(dyn.get("taints") or []),
                    limits={str(k): parse_quantity(str(v)) for k, v in (dyn.get("limits") or {}).items()},
                    consolidate_after=parse_duration(
                        disruption.get("consolidateAfter"), default_consolidate_after
                    ),
                    weight=int(dyn.get("weight") or 0),
                )
            )
    pools.sort(key=lambda p: -p.weight)
    return pools


# -- the pool and who holds what ---------------------------------------------------------------


class Pool:
    """The GPU nodes per tier for tenant clusters, and which tenant holds each; persisted as JSON."""

    def __init__(self, path: Path, tier_file: tiers_mod.TierFile) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.tiers = {t.name: t for t in tier_file.tiers}
        self.node_tier = {n: t.name for t in tier_file.tiers for n in t.auto_node_names()}
        self.holder: dict[str, str] = {}
        if path.exists():
            recorded = json.loads(path.read_text()).get("holders", {})
            # A node dropped from gpu-tiers.yaml is no longer the pool's to give.
            self.holder = {n: t for n, t in recorded.items() if n in self.node_tier}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"holders": self.holder}, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def claim(self, tier: str, tenant: str) -> str | None:
        with self.lock:
            for node, node_tier in self.node_tier.items():
                if node_tier == tier and node not in self.holder:
                    self.holder[node] = tenant
                    self._save()
                    return node
        return None

    def adopt(self, node: str, tenant: str) -> bool:
        """Record NODE as TENANT's if it is free (a join whose record was lost); True if it is now."""
        with self.lock:
            if node not in self.node_tier:
                return False
            if self.holder.get(node, tenant) != tenant:
                return False
            if node not in self.holder:
                self.holder[node] = tenant
                self._save()
            return True

    def release(self, node: str, tenant: str) -> None:
        with self.lock:
            if self.holder.get(node) == tenant:
                del self.holder[node]
                self._save()

    def release_all(self, tenant: str) -> list[str]:
        with self.lock:
            nodes = [n for n, t in self.holder.items() if t == tenant]
            for node in nodes:
                del self.holder[node]
            if nodes:
                self._save()
            return nodes

    def held_by(self, tenant: str) -> set[str]:
        with self.lock:
            return {n for n, t in self.holder.items() if t == tenant}

    def holders(self) -> set[str]:
        with self.lock:
            return set(self.holder.values())

    def free(self, tier: str) -> list[str]:
        with self.lock:
            return [n for n, t in self.node_tier.items() if t == tier and n not in self.holder]


def read_holders(path: Path) -> dict[str, str]:
    """Node name to tenant key ("namespace/name"), as last recorded."""
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("holders", {})


# -- reading pods ------------------------------------------------------------------------------


def pod_requests(pod: dict) -> dict[str, Decimal]:
    """What the scheduler counts: the containers' sum, or the largest init container if bigger."""

    def of(container: dict) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {k: parse_quantity(str(v)) for k, v in merged.items()}

    total: dict[str, Decimal] = {}
    for container in pod["spec"].get("containers") or []:
        for k, v in of(container).items():
            total[k] = total.get(k, Decimal(0)) + v
    for container in pod["spec"].get("initContainers") or []:
        for k, v in of(container).items():
            total[k] = max(total.get(k, Decimal(0)), v)
    return total


def unschedulable(pod: dict) -> bool:
    if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
        return False
    if (pod.get("status") or {}).get("phase", "Pending") != "Pending":
        return False
    return any(
        c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def terminated(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _expression_matches(expr: dict, labels: dict[str, str]) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        try:
            have, want = int(labels[key]), int(values[0])
        except (KeyError, ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    return False


def fits_node(pod: dict, labels: dict[str, str], taints: list[dict]) -> bool:
    """Would the scheduler's NodeAffinity and TaintToleration filters accept a node like this?"""
    spec = pod["spec"]
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions") or []) for term in terms
    ):
        return False
    tolerations = spec.get("tolerations") or []
    for taint in taints:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


def _tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and (toleration.get("value") or "") == (
        taint.get("value") or ""
    )


# -- planning one tenant -----------------------------------------------------------------------


@dataclass
class Demand:
    """Some of a tenant's unschedulable pods that one new node would take."""

    tenant: str
    candidates: list[tuple[NodePool, tiers_mod.Tier]]
    since: dt.datetime
    pods: list[dict]


def plan(
    tenant: str,
    tier_file: tiers_mod.TierFile,
    pools: list[NodePool],
    nodes: list[dict],
    pods: list[dict],
    now: dt.datetime,
) -> list[Demand]:
    """The new nodes TENANT's unschedulable pods need, after what fresh joined nodes will take."""
    by_name = {t.name: t for t in tier_file.tiers}
    live = [p for p in pods if not terminated(p)]
    used: dict[str, dict[str, Decimal]] = {}
    for pod in live:
        node = pod["spec"].get("nodeName")
        if node:
            for k, v in pod_requests(pod).items():
                used.setdefault(node, {})[k] = used.get(node, {}).get(k, Decimal(0)) + v
    # Capacity on nodes that joined moments ago, which the scheduler may not have tried yet.
    fresh: list[tuple[str, tiers_mod.Tier, dict[str, Decimal]]] = []
    for node in nodes:
        labels = node["metadata"].get("labels") or {}
        tier = by_name.get(labels.get(tiers_mod.TIER_LABEL, ""))
        if POOL_LABEL not in labels or tier is None:
            continue
        age = (now - _utc(node["metadata"].get("creationTimestamp"))).total_seconds()
        if age > FRESH_SECONDS or node["spec"].get("unschedulable"):
            continue
        allocatable = {tier.resource: Decimal(tier.gpus_per_node)}
        for k, v in used.get(node["metadata"]["name"], {}).items():
            if k in allocatable:
                allocatable[k] -= v
        fresh.append((node["metadata"]["name"], tier, allocatable))

    demands: list[Demand] = []
    planned: list[tuple[Demand, dict[str, Decimal]]] = []
    waiting = sorted(
        (p for p in live if unschedulable(p)), key=lambda p: p["metadata"].get("creationTimestamp") or ""
    )
    for pod in waiting:
        wants = pod_requests(pod)
        candidates = [
            (pool, tier)
            for pool in pools
            for tier in tier_file.tiers
            if pool.matches(tier)
            and wants.get(tier.resource, 0) > 0
            and wants[tier.resource] <= tier.gpus_per_node
            and fits_node(pod, pool.node_labels(tier), pool.node_taints(tier))
        ]
        if not candidates:
            continue
        # The smallest node that takes the pod first: the least GPUs left idle beside it.
        candidates.sort(key=lambda c: c[1].gpus_per_node)
        tiers_ok = {t.name for _, t in candidates}
        absorbed = False
        for _name, tier, free in fresh:
            if tier.name in tiers_ok and free[tier.resource] >= wants[tier.resource]:
                free[tier.resource] -= wants[tier.resource]
                absorbed = True
                break
        if absorbed:
            continue
        for demand, free in planned:
            shared = [
                (p, t)
                for p, t in demand.candidates
                if t.name in tiers_ok and free[t.name] >= wants[t.resource]
            ]
            if shared:
                demand.candidates = shared
                for _, t in shared:
                    free[t.name] -= wants[t.resource]
                demand.pods.append(pod)
                absorbed = True
                break
        if absorbed:
            continue
        demand = Demand(tenant, candidates, _utc(pod["metadata"].get("creationTimestamp")), [pod])
        free = {t.name: Decimal(t.gpus_per_node) - wants[t.resource] for _, t in candidates}
        planned.append((demand, free))
        demands.append(demand)
    return demands


# -- the controller ----------------------------------------------------------------------------


@dataclass
class TenantView:
    """What the auto-nodes pass needs of one ready tenant cluster."""

    key: str
    api: client.ApiClient
    pools: list[NodePool]


class AutoNodes:
    """Joins pool nodes to tenant clusters on demand and takes idle ones back. One pass per `tick`."""

    def __init__(self, pool: Pool, tier_file: tiers_mod.TierFile, default_consolidate_after: float) -> None:
        self.pool = pool
        self.tier_file = tier_file
        self.default_consolidate_after = default_consolidate_after
        self.empty_since: dict[tuple[str, str], dt.datetime] = {}
        self.reported: dict[str, str] = {}  # pod uid -> the last event reason we gave it
        self.held: dict[str, dict[tuple[str, str], Decimal]] = {}  # tenant -> (pool, resource) -> GPUs
        # tenant -> (its API client, the event that stops its informers, nodes, pods)
        self.mirrors: dict[str, tuple[client.ApiClient, threading.Event, Informer, Informer]] = {}

    def _mirrored(self, view: TenantView) -> tuple[list[dict], list[dict]] | None:
        """The tenant cluster's nodes and pods, kept by list-then-watch as an informer keeps them;
        None until both have listed once. A pass every second used to LIST every pod and node of
        every tenant cluster: with a few hundred pending pods, most of this process's time and a
        share of each API server's, for a view that changes a few times a second at most."""
        held = self.mirrors.get(view.key)
        if held is None or held[0] is not view.api:  # new, or the tenant's API server was restarted
            if held is not None:
                held[1].set()
            stop = threading.Event()
            nodes, pods = (
                Informer(view.api, kind, view.key, lambda: None, stop) for kind in ("nodes", "pods")
            )
            nodes.start()
            pods.start()
            held = self.mirrors[view.key] = (view.api, stop, nodes, pods)
        _, _, nodes, pods = held
        if not (nodes.synced.is_set() and pods.synced.is_set()):
            return None
        return nodes.snapshot(), pods.snapshot()

    def tick(self, tenants: list[TenantView], live_keys: set[str] | None) -> None:
        for key in set(self.mirrors) - {view.key for view in tenants}:
            self.mirrors.pop(key)[1].set()
        if live_keys is not None:
            for holder in self.pool.holders() - live_keys:
                released = self.pool.release_all(holder)
                log.info("returned %s to the pool: tenant cluster %s is gone", released, holder)
        now = dt.datetime.now(dt.UTC)
        self.held = {}
        demands: list[tuple[Demand, TenantView]] = []
        seen_pods: set[str] = set()
        seen_nodes: set[tuple[str, str]] = set()
        for view in tenants:
            try:
                mirrored = self._mirrored(view)
                if mirrored is None:
                    seen_pods |= {uid for uid in self.reported}  # not listed yet: forget nothing
                    seen_nodes |= {k for k in self.empty_since if k[0] == view.key}
                    continue
                nodes, pods = mirrored
                seen_pods |= {p["metadata"]["uid"] for p in pods}
                seen_nodes |= {(view.key, n["metadata"]["name"]) for n in nodes}
                self._reconcile_records(view, nodes)
                self._reclaim(view, nodes, pods, now)
                demands += [(d, view) for d in plan(view.key, self.tier_file, view.pools, nodes, pods, now)]
                self.held[view.key] = self._held(nodes)
            except Exception as exc:  # noqa: BLE001 - one tenant's trouble must not stop the others
                log.warning("auto nodes: tenant cluster %s skipped this pass: %s", view.key, exc)
        self.reported = {uid: r for uid, r in self.reported.items() if uid in seen_pods}
        self.empty_since = {k: v for k, v in self.empty_since.items() if k in seen_nodes}
        # First come, first served across tenants: the oldest waiting pod gets the next free node.
        for demand, view in sorted(demands, key=lambda d: d[0].since):
            try:
                self._satisfy(demand, view)
            except Exception as exc:  # noqa: BLE001
                log.warning("auto nodes: joining a node to %s failed: %s", view.key, exc)

    def _reconcile_records(self, view: TenantView, nodes: list[dict]) -> None:
        present = {n["metadata"]["name"] for n in nodes if POOL_LABEL in (n["metadata"].get("labels") or {})}
        for node in self.pool.held_by(view.key) - present:
            self.pool.release(node, view.key)  # recorded, but never joined or since deleted
            log.info("returned %s to the pool: it is not in tenant cluster %s", node, view.key)
        for node in present - self.pool.held_by(view.key):
            if not self.pool.adopt(node, view.key):
                log.warning("node %s in tenant cluster %s is not its to hold", node, view.key)

    def _reclaim(self, view: TenantView, nodes: list[dict], pods: list[dict], now: dt.datetime) -> None:
        core = client.CoreV1Api(view.api)
        busy = {p["spec"].get("nodeName") for p in pods if not terminated(p)}
        waiting = [p for p in pods if unschedulable(p)]
        pools = {p.name: p for p in view.pools}
        for node in nodes:
            labels = node["metadata"].get("labels") or {}
            if POOL_LABEL not in labels:
                continue
            name = node["metadata"]["name"]
            key = (view.key, name)
            if name in busy or self._awaited(node, waiting, now):
                self.empty_since.pop(key, None)
                continue
            since = self.empty_since.setdefault(key, now)
            pool = pools.get(labels[POOL_LABEL])
            after = pool.consolidate_after if pool else self.default_consolidate_after
            if (now - since).total_seconds() < after:
                continue
            # Cordon, then look again: the scheduler may have bound a pod since the listing.
            core.patch_node(
                name, {"metadata": {"annotations": {CORDONED_BY_US: "true"}}, "spec": {"unschedulable": True}}
            )
            still = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items
            if any(p.status.phase not in ("Succeeded", "Failed") for p in still):
                core.patch_node(
                    name,
                    {"metadata": {"annotations": {CORDONED_BY_US: None}}, "spec": {"unschedulable": None}},
                )
                self.empty_since.pop(key, None)
                continue
            with contextlib.suppress(ApiException):
                core.delete_node(name)
            self.pool.release(name, view.key)
            self.empty_since.pop(key, None)
            log.info("took %s back from tenant cluster %s after %.0fs empty", name, view.key, after)

    @staticmethod
    def _awaited(node: dict, waiting: list[dict], now: dt.datetime) -> bool:
        """Did NODE join moments ago for a pod the scheduler has not placed yet?

        A pod that failed to schedule a few times sits in the scheduler's backoff (up to 10 s) before
        it is tried on a new node; taking the node back meanwhile would starve it (Karpenter, too,
        leaves nodes nominated for pending pods alone).
        """
        age = (now - _utc(node["metadata"].get("creationTimestamp"))).total_seconds()
        if age > FRESH_SECONDS or not waiting:
            return False
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        labels = node["metadata"].get("labels") or {}
        taints = (node.get("spec") or {}).get("taints") or []
        for pod in waiting:
            wants = pod_requests(pod)
            gpus = [r for r in allocatable if r in wants and wants[r] > 0 and "/" in r]
            if gpus and all(wants[r] <= parse_quantity(str(allocatable[r])) for r in gpus):
                if fits_node(pod, labels, taints):
                    return True
        return False

    def _held(self, nodes: list[dict]) -> dict[tuple[str, str], Decimal]:
        """GPUs a tenant's joined nodes hold, per dynamic pool and resource."""
        by_name = self.pool.tiers
        held: dict[tuple[str, str], Decimal] = {}
        for node in nodes:
            labels = node["metadata"].get("labels") or {}
            tier = by_name.get(labels.get(tiers_mod.TIER_LABEL, ""))
            if POOL_LABEL in labels and tier is not None:
                key = (labels[POOL_LABEL], tier.resource)
                held[key] = held.get(key, Decimal(0)) + tier.gpus_per_node
        return held

    def _within_limit(self, view: TenantView, pool: NodePool, tier: tiers_mod.Tier) -> bool:
        """Would one more node of TIER keep the tenant within POOL's `limits` (Karpenter's sense)?"""
        limit = pool.limits.get(tier.resource)
        if limit is None:
            return True
        in_use = self.held.get(view.key, {}).get((pool.name, tier.resource), Decimal(0))
        return in_use + tier.gpus_per_node <= limit

    def _satisfy(self, demand: Demand, view: TenantView) -> None:
        allowed = [(p, t) for p, t in demand.candidates if self._within_limit(view, p, t)]
        if not allowed:
            limits = ", ".join(sorted({f"{p.limits[t.resource]} {t.resource}" for p, t in demand.candidates}))
            for pod in demand.pods:
                self._event(
                    view,
                    pod,
                    "Warning",
                    "NotTriggerScaleUp",
                    f"pod didn't trigger scale-up: another node would exceed the tenant's auto-node limit ({limits})",
                )
            return
        for pool, tier in allowed:
            node = self.pool.claim(tier.name, view.key)
            if node is None:
                continue
            try:
                self._join(view, pool, tier, node)
            except Exception:
                self.pool.release(node, view.key)
                raise
            held = self.held.setdefault(view.key, {})
            held[(pool.name, tier.resource)] = (
                held.get((pool.name, tier.resource), Decimal(0)) + tier.gpus_per_node
            )
            log.info(
                "joined %s (tier %s) to tenant cluster %s for %s",
                node,
                tier.name,
                view.key,
                ", ".join(p["metadata"]["name"] for p in demand.pods),
            )
            for pod in demand.pods:
                self._event(
                    view,
                    pod,
                    "Normal",
                    "TriggeredScaleUp",
                    f"auto node {node} of GPU tier {tier.name} joined from the pool for this pod",
                )
            return
        tiers = ", ".join(sorted({t.name for _, t in allowed}))
        for pod in demand.pods:
            self._event(
                view,
                pod,
                "Warning",
                "NotTriggerScaleUp",
                f"pod didn't trigger scale-up: no free node of GPU tier {tiers} in the pool",
            )

    def _join(self, view: TenantView, pool: NodePool, tier: tiers_mod.Tier, node: str) -> None:
        core = client.CoreV1Api(view.api)
        manifest = tiers_mod.gpu_node_manifest(tier, node, {**pool.labels, POOL_LABEL: pool.name})
        manifest["spec"]["taints"] = pool.node_taints(tier)
        try:
            core.create_node(manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
        # Capacity is status; and TaintNodesByCondition put node.kubernetes.io/not-ready on the
        # create, which no node lifecycle controller will lift here.
        core.patch_node_status(node, {"status": manifest["status"]})
        core.patch_node(node, {"spec": {"taints": manifest["spec"]["taints"]}})

    def _event(self, view: TenantView, pod: dict, kind: str, reason: str, message: str) -> None:
        uid = pod["metadata"]["uid"]
        if self.reported.get(uid) == reason:
            return
        self.reported[uid] = reason
        now = dt.datetime.now(dt.UTC)
        meta = pod["metadata"]
        with contextlib.suppress(ApiException):
            client.CoreV1Api(view.api).create_namespaced_event(
                meta["namespace"],
                client.CoreV1Event(
                    metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}."),
                    involved_object=client.V1ObjectReference(
                        kind="Pod", namespace=meta["namespace"], name=meta["name"], uid=uid, api_version="v1"
                    ),
                    reason=reason,
                    message=message,
                    type=kind,
                    source=client.V1EventSource(component="vcluster-auto-nodes"),
                    first_timestamp=now,
                    last_timestamp=now,
                    count=1,
                ),
            )
