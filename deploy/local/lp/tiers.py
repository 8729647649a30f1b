"""GPU tiers of the local platform, read from a YAML file and checked before any node is made."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import PlatformError

TIER_LABEL = "inference-portal.io/gpu-tier"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_RESOURCE = re.compile(r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")


@dataclass(frozen=True)
class Tier:
    name: str
    product: str
    memory_mib: int
    resource: str
    gpus_per_node: int
    nodes: int
    cpu: str
    memory: str
    auto_nodes: int = 0

    def node_names(self) -> list[str]:
        return [f"gpu-{self.name}-{i}" for i in range(self.nodes)]

    def auto_node_names(self) -> list[str]:
        """The tier's Auto Nodes pool for tenant clusters: not in the host, each in one tenant at a time."""
        return [f"auto-{self.name}-{i}" for i in range(self.auto_nodes)]


@dataclass(frozen=True)
class TierFile:
    system_nodes: int
    tiers: list[Tier]


def _fail(path: Path, where: str, message: str) -> PlatformError:
    return PlatformError(f"{path}: {where}: {message}")


def _int(path: Path, where: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, where, f"{value!r} is not a whole number")
    if not low <= value <= high:
        raise _fail(path, where, f"{value} is out of range ({low} to {high})")
    return value


def _quantity(path: Path, where: str, value) -> str:
    text = str(value)
    if not _QUANTITY.match(text):
        raise _fail(path, where, f"{text!r} is not a Kubernetes quantity (examples: 64, 500m, 512Gi)")
    return text


def load(path: Path) -> TierFile:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PlatformError(f"{path}: cannot read the GPU tier file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise PlatformError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("tiers"), list) or not data["tiers"]:
        raise PlatformError(f"{path}: expected a mapping with a non-empty list `tiers`")
    system = _int(path, "systemNodes", data.get("systemNodes", 1), 0, 50)
    tiers: list[Tier] = []
    for i, raw in enumerate(data["tiers"]):
        where = f"tiers[{i}]"
        if not isinstance(raw, dict):
            raise _fail(path, where, "expected a mapping")
        name = str(raw.get("name", ""))
        if not _NAME.match(name) or len(name) > 40:
            raise _fail(path, f"{where}.name", f"{name!r} must be a DNS label of at most 40 characters")
        resource = str(raw.get("resource", "nvidia.com/gpu"))
        if not _RESOURCE.match(resource):
            raise _fail(path, f"{where}.resource", f"{resource!r} is not a resource name")
        product = str(raw.get("product", ""))
        if not product or len(product) > 63:
            raise _fail(path, f"{where}.product", "give the GPU product label (at most 63 characters)")
        tiers.append(
            Tier(
                name=name,
                product=product,
                memory_mib=_int(path, f"{where}.memoryMiB", raw.get("memoryMiB"), 1024, 1 << 22),
                resource=resource,
                gpus_per_node=_int(path, f"{where}.gpusPerNode", raw.get("gpusPerNode"), 1, 64),
                nodes=_int(path, f"{where}.nodes", raw.get("nodes", 1), 0, 100),
                cpu=_quantity(path, f"{where}.cpu", raw.get("cpu", "64")),
                memory=_quantity(path, f"{where}.memory", raw.get("memory", "512Gi")),
                auto_nodes=_int(path, f"{where}.autoNodes", raw.get("autoNodes", 0), 0, 100),
            )
        )
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise PlatformError(f"{path}: tier names must be unique, got {names}")
    return TierFile(system, tiers)


def node_manifests(tier_file: TierFile, extra_labels: dict[str, str] | None = None) -> list[dict]:
    """Node objects for KWOK to manage, with the labels and taint NVIDIA's GPU operator sets."""
    nodes: list[dict] = []
    common_annotations = {"kwok.x-k8s.io/node": "fake"}
    system_resources = {"cpu": "32", "memory": "128Gi", "pods": "250", "ephemeral-storage": "200Gi"}
    for i in range(tier_file.system_nodes):
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"system-{i}",
                    "annotations": common_annotations,
                    "labels": {
                        "type": "kwok",
                        "kubernetes.io/hostname": f"system-{i}",
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "inference-portal.io/pool": "system",
                        **(extra_labels or {}),
                    },
                },
                # No taints: the API server's TaintNodesByCondition adds node.kubernetes.io/not-ready on
                # create, and with the node lifecycle controller off nothing would ever remove it.
                "spec": {"taints": []},
                # A real kubelet reports ephemeral-storage; pods that request it (vCluster's does) need it.
                "status": {"capacity": system_resources, "allocatable": system_resources},
            }
        )
    for tier in tier_file.tiers:
        for name in tier.node_names():
            nodes.append(gpu_node_manifest(tier, name, extra_labels))
    return nodes


def gpu_node_manifest(tier: Tier, name: str, extra_labels: dict[str, str] | None = None) -> dict:
    """One GPU node of TIER for KWOK to manage, in the host cluster or joined to a tenant cluster."""
    resources = {
        "cpu": tier.cpu,
        "memory": tier.memory,
        "pods": "110",
        "ephemeral-storage": "1Ti",
        tier.resource: str(tier.gpus_per_node),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                TIER_LABEL: tier.name,
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": tier.product,
                "nvidia.com/gpu.memory": str(tier.memory_mib),
                "nvidia.com/gpu.count": str(tier.gpus_per_node),
                **(extra_labels or {}),
            },
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"capacity": resources, "allocatable": resources},
    }
