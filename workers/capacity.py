"""GPU capacity per tier as the clusters report it: GPUs allocatable on the tier's nodes and GPUs
requested by the pods placed on them, summed over the host cluster and the tenant clusters.

For the admin approval queue, so staff can see whether a quota request can be served at all.
Reads only; every cluster is read in its own thread with a deadline, and a cluster that does not
answer in time is named in ``problems`` instead of holding up the page.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from workers.kube import KubeError, host_cluster, tenant_cluster

log = logging.getLogger(__name__)

TIER_LABEL = "inference-portal.io/gpu-tier"
# Extended resources a GPU tier can hand out: whole GPUs and MIG slices.
GPU_RESOURCE_PREFIX = "nvidia.com/"


@dataclass
class TierCapacity:
    tier: str
    nodes: int = 0
    allocatable: int = 0
    requested: int = 0

    @property
    def free(self) -> int:
        return max(0, self.allocatable - self.requested)

    @property
    def percent_used(self) -> int:
        return round(100 * self.requested / self.allocatable) if self.allocatable else 0


@dataclass
class CapacityReport:
    tiers: list[TierCapacity] = field(default_factory=list)
    clusters_read: int = 0
    problems: list[str] = field(default_factory=list)


def _gpus(resources: dict | None) -> int:
    total = 0
    for name, quantity in (resources or {}).items():
        if name.startswith(GPU_RESOURCE_PREFIX):
            try:
                total += int(str(quantity))
            except ValueError:
                continue  # GPUs are whole numbers; anything else is not a GPU count
    return total


def _pod_gpus(pod: dict) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        # Extended resources default their request to the limit when only a limit is given.
        total += _gpus(resources.get("requests") or resources.get("limits"))
    return total


def read_cluster(cluster) -> dict[str, TierCapacity]:
    """Per tier label: nodes, allocatable GPUs and GPUs requested by running or pending pods on them."""
    nodes = cluster.list("v1", "Node", label_selector=TIER_LABEL)["items"]
    by_node: dict[str, str] = {}
    tiers: dict[str, TierCapacity] = {}
    for node in nodes:
        tier = node["metadata"].get("labels", {}).get(TIER_LABEL, "")
        by_node[node["metadata"]["name"]] = tier
        cap = tiers.setdefault(tier, TierCapacity(tier))
        cap.nodes += 1
        cap.allocatable += _gpus((node.get("status") or {}).get("allocatable"))
    if not by_node:
        return tiers
    pods = cluster.list(
        "v1", "Pod", field_selector="status.phase!=Succeeded,status.phase!=Failed,spec.nodeName!="
    )["items"]
    for pod in pods:
        tier = by_node.get((pod.get("spec") or {}).get("nodeName", ""))
        if tier is not None:
            tiers[tier].requested += _pod_gpus(pod)
    return tiers


def gpu_capacity(tenant_clusters: list[tuple[str, str]], *, timeout: float = 4.0) -> CapacityReport:
    """Capacity of the host cluster plus TENANT_CLUSTERS ((host namespace, release) pairs)."""
    jobs = {"host cluster": host_cluster}
    for namespace, name in tenant_clusters:
        jobs[f"tenant cluster {name}"] = lambda ns=namespace, n=name: tenant_cluster(ns, n)

    def read(get_cluster):
        return read_cluster(get_cluster())

    report = CapacityReport()
    totals: dict[str, TierCapacity] = defaultdict(lambda: TierCapacity(""))
    pool = ThreadPoolExecutor(max_workers=min(8, len(jobs)), thread_name_prefix="gpu-capacity")
    try:
        futures = {pool.submit(read, get): label for label, get in jobs.items()}
        done, pending = wait(futures, timeout=timeout)
        for future in pending:
            report.problems.append(f"{futures[future]}: no answer within {timeout:g} s")
        for future in done:
            label = futures[future]
            try:
                tiers = future.result()
            except KubeError as exc:
                report.problems.append(f"{label}: {exc.reason}")
                continue
            except Exception as exc:  # noqa: BLE001 - a broken kubeconfig must not break the page
                log.warning("reading GPU capacity of %s failed", label, exc_info=True)
                report.problems.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            report.clusters_read += 1
            for name, cap in tiers.items():
                total = totals[name]
                total.tier = name
                total.nodes += cap.nodes
                total.allocatable += cap.allocatable
                total.requested += cap.requested
    finally:
        # Do not wait for a cluster that is not answering: its thread ends at the client's timeout.
        pool.shutdown(wait=False, cancel_futures=True)
    report.tiers = sorted(totals.values(), key=lambda t: t.tier)
    report.problems.sort()
    return report
