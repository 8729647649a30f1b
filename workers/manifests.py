"""Render an endpoint's Kubernetes objects from validated values.

Values are checked here, before rendering; the Jinja2 templates in templates/manifests/ emit every
value through `tojson`; the output is parsed with yaml.safe_load and checked again. Names and
labels are built in Python from validated parts, never pasted from user text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

MANIFEST_DIR = Path(__file__).resolve().parent.parent / "templates" / "manifests"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
HOSTNAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
IMAGE = re.compile(
    r"^[a-z0-9]+([._/-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[\w][\w.-]{0,127}|@sha256:[a-f0-9]{64})$"
)
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESOURCE = re.compile(r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
MODEL_SOURCE = re.compile(
    r"^(hf://[A-Za-z0-9][\w.-]*/[\w.-]+|s3://[a-z0-9][a-z0-9.-]+(/[\w.\-/]+)?|pvc://[a-z0-9][-a-z0-9]*(/[\w.\-/]+)?)$"
)

MANAGED_BY = "inference-portal"
# Applied before the Deployment, because what comes after needs them at creation: a pod naming a
# ServiceAccount that does not exist yet is refused ("error looking up service account"), and the
# ReplicaSet controller backs off before trying again; an HTTPRoute whose Service does not exist yet
# is reported BackendNotFound by the gateway (a warning on the tenant's timeline for a moment). They
# carry no ownerReference (their owner does not exist yet); deleting an endpoint removes them by name.
PREREQUISITE_KINDS = {"ServiceAccount", "Secret", "Service"}

# What an endpoint has besides its Deployment, for removal of leftovers.
COMPANION_KINDS = [
    ("v1", "Service"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
]


class ManifestError(ValueError):
    """A value that must not reach a manifest. Permanent: retrying cannot fix it."""


@dataclass(frozen=True)
class EndpointSpec:
    """Everything an endpoint's manifests depend on; built by the workers from the database."""

    tenant: str
    endpoint: str
    namespace: str
    name: str
    hostname: str
    model_source: str
    model_revision: str
    served_model_name: str
    image: str
    resource_name: str
    gpus_per_replica: int
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]
    max_model_len: int
    gpu_memory_utilization: float
    max_num_seqs: int
    min_replicas: int
    max_replicas: int
    replicas: int | None = None
    model_label: str = ""
    tier: str = ""
    workload_class: str = "interactive"
    quantization: str | None = None
    dtype: str = "auto"
    target_queue_depth: int = 5
    scale_to_zero: bool = False
    scale_down_window_seconds: int = 300
    expected_load_seconds: int = 120
    weights_gib: float = 16.0
    cpu_per_gpu: int = 4
    memory_gib_per_gpu: int = 16
    gateway_name: str = "shared-inference"
    gateway_namespace: str = "shared-gateways"
    prometheus_url: str = "http://prometheus.monitoring:9090"
    hf_token_secret: str = "hf-token"  # noqa: S105 - the Secret's name, not its value
    tenant_key_hashes: tuple[str, ...] = ()
    # The key the platform itself calls vLLM with (--api-key); kept out of repr so it never logs.
    internal_api_key: str = field(default="", repr=False)
    extra_pod_annotations: dict[str, str] = field(default_factory=dict)


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ManifestError(what)


def validate(s: EndpointSpec) -> None:
    for label, value in (
        ("tenant", s.tenant),
        ("endpoint", s.endpoint),
        ("namespace", s.namespace),
        ("name", s.name),
    ):
        _check(
            bool(DNS_LABEL.match(value)) and len(value) <= 63, f"{label} {value!r} is not a DNS-1123 label"
        )
    # Pod names add "-<hash>-<suffix>" (17 characters) to the Deployment's name.
    _check(len(s.name) <= 46, f"object name {s.name!r} is longer than 46 characters")
    _check(
        bool(HOSTNAME.match(s.hostname)) and len(s.hostname) <= 253, f"hostname {s.hostname!r} is not valid"
    )
    _check(
        bool(MODEL_SOURCE.match(s.model_source)),
        f"model source {s.model_source!r} is not hf://, s3:// or pvc://",
    )
    _check(
        bool(REVISION.match(s.model_revision)),
        f"model revision {s.model_revision!r} is not a pinned revision",
    )
    _check(bool(IMAGE.match(s.image)) and not s.image.endswith(":latest"), f"image {s.image!r} is not pinned")
    _check(bool(RESOURCE.match(s.resource_name)), f"GPU resource {s.resource_name!r} is not a resource name")
    _check(1 <= s.gpus_per_replica <= 64, "gpus_per_replica must be between 1 and 64")
    _check(256 <= s.max_model_len <= 10_000_000, "max_model_len must be between 256 and 10,000,000")
    _check(0.1 <= s.gpu_memory_utilization <= 0.99, "gpu_memory_utilization must be between 0.1 and 0.99")
    _check(1 <= s.max_num_seqs <= 4096, "max_num_seqs must be between 1 and 4096")
    _check(0 <= s.min_replicas <= s.max_replicas <= 64, "need 0 <= min_replicas <= max_replicas <= 64")
    _check(s.min_replicas >= 1 or s.scale_to_zero, "min_replicas 0 needs a scale-to-zero template")
    _check(s.replicas is None or 0 <= s.replicas <= s.max_replicas, "replicas out of range")
    _check(s.workload_class in ("interactive", "batch"), "workload_class must be interactive or batch")
    _check(
        len(s.served_model_name) <= 128 and bool(s.served_model_name.strip()),
        "served_model_name is empty or too long",
    )
    for key, value in {**s.node_selector, **s.extra_pod_annotations}.items():
        _check(len(key) <= 253 and len(value) <= 4096, f"label or annotation {key!r} is too long")
    for value in s.node_selector.values():
        _check(
            bool(LABEL_VALUE.match(value)) and len(value) <= 63,
            f"node selector value {value!r} is not a label value",
        )
    _check(len(s.internal_api_key) >= 32, "internal_api_key must be at least 32 characters")
    for digest in s.tenant_key_hashes:
        _check(bool(re.fullmatch(r"[a-f0-9]{64}", digest)), "tenant key hashes must be SHA-256 hex digests")


def _label(value: str) -> str:
    """A label value from free-ish text: lowercase, invalid characters to '-', at most 63."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")[:63].strip("-_.")
    return cleaned or "unknown"


def model_args(s: EndpointSpec) -> tuple[list[str], str | None]:
    """vLLM's --model and --revision for a source, and the PVC to mount for pvc:// sources."""
    scheme, rest = s.model_source.split("://", 1)
    if scheme == "hf":
        return ["--model", rest, "--revision", s.model_revision], None
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        return ["--model", f"/models/source/{path}".rstrip("/")], claim
    return ["--model", s.model_source, "--load-format", "runai_streamer"], None


def context(s: EndpointSpec) -> dict[str, Any]:
    model, pvc_claim = model_args(s)
    args = [
        *model,
        "--served-model-name",
        s.served_model_name,
        # Seed 003: tensor parallel size must equal the pod's GPU count or the pod hangs at start.
        "--tensor-parallel-size",
        str(s.gpus_per_replica),
        "--max-model-len",
        str(s.max_model_len),
        "--gpu-memory-utilization",
        f"{s.gpu_memory_utilization:.2f}",
        "--max-num-seqs",
        str(s.max_num_seqs),
        "--host",
        "0.0.0.0",  # noqa: S104 - inside the pod; the NetworkPolicy limits who connects
        "--port",
        "8000",
    ]
    if s.quantization:
        args += ["--quantization", s.quantization]
    elif s.dtype != "auto":
        args += ["--dtype", s.dtype]
    labels = {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": s.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "inference-portal.io/tenant": s.tenant,
        "inference-portal.io/endpoint": s.endpoint,
        "inference-portal.io/model": _label(s.model_label or s.served_model_name),
        "inference-portal.io/tier": _label(s.tier),
        "inference-portal.io/workload-class": s.workload_class,
    }
    gpus = str(s.gpus_per_replica)
    # Startup: allow three times the expected load (downloads vary), at least five minutes.
    startup_threshold = max(30, math.ceil(s.expected_load_seconds * 3 / 10))
    prestop = 15 if s.workload_class == "interactive" else 30
    return {
        **s.__dict__,
        "labels": labels,
        "selector": {"app.kubernetes.io/instance": s.name, "app.kubernetes.io/name": "vllm"},
        "auth_secret": f"{s.name}-auth",
        "args": args,
        "pvc_claim": pvc_claim,
        "pod_annotations": {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "8000",
            "prometheus.io/path": "/metrics",
            **s.extra_pod_annotations,
        },
        "startup_failure_threshold": startup_threshold,
        "prestop_seconds": prestop,
        # Interactive streams finish in seconds to minutes; batch generations take longer.
        "termination_grace_seconds": 300 if s.workload_class == "interactive" else 900,
        "route_timeout": "600s" if s.workload_class == "interactive" else "3600s",
        "requests": {
            "cpu": str(s.cpu_per_gpu * s.gpus_per_replica),
            "memory": f"{s.memory_gib_per_gpu * s.gpus_per_replica}Gi",
            s.resource_name: gpus,
        },
        "limits": {"memory": f"{s.memory_gib_per_gpu * s.gpus_per_replica * 2}Gi", s.resource_name: gpus},
        "shm_size": f"{min(64, 8 * s.gpus_per_replica)}Gi" if s.gpus_per_replica > 1 else None,
        "cache_size": f"{math.ceil(s.weights_gib * 1.25) + 5}Gi",
        "request_rate_query": (
            f'sum(rate(vllm:request_success_total{{namespace="{s.namespace}",service="{s.name}"}}[2m]))'
        ),
    }


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(MANIFEST_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - YAML, not HTML; values are emitted with tojson
        keep_trailing_newline=True,
    )


# libyaml's safe loader when PyYAML was built with it: the same safe constructor, parsed in C. The
# pure-Python parser took about 40 ms of every deploy for one endpoint's objects.
_SAFE_LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


def _render(template: str, **values: Any) -> list[dict]:
    text = _environment().get_template(template).render(**values)
    try:
        docs = [d for d in yaml.load_all(text, Loader=_SAFE_LOADER) if d]
    except yaml.YAMLError as exc:  # a template bug, not bad input: values cannot produce this
        raise ManifestError(f"{template} rendered invalid YAML: {exc}") from exc
    for doc in docs:
        _check(
            isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= doc.keys(),
            f"{template} rendered an object without apiVersion/kind/metadata",
        )
    return docs


def render_namespace(tenant: str, namespace: str, *, host: bool = False) -> dict:
    """The tenant's namespace: in its tenant cluster (holding endpoints) or in the host (holding
    the vCluster, and the HTTPRoutes vCluster syncs out, hence route access in both)."""
    _check(
        bool(DNS_LABEL.match(namespace)) and len(namespace) <= 63,
        f"namespace {namespace!r} is not a DNS label",
    )
    _check(bool(DNS_LABEL.match(tenant)), f"tenant {tenant!r} is not a DNS label")
    (doc,) = _render("namespace.yaml.j2", namespace=namespace, tenant=tenant, host=host)
    return doc


def render_hf_token_secret(tenant: str, namespace: str, token: str) -> dict:
    """The Secret the vLLM pods read HUGGING_FACE_HUB_TOKEN from (built here, not templated, so the
    token never passes through a text template)."""
    _check(bool(DNS_LABEL.match(namespace)), f"namespace {namespace!r} is not a DNS label")
    _check(0 < len(token) <= 512 and token.isprintable() and " " not in token, "the HF token is malformed")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": "hf-token",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "inference-portal.io/tenant": tenant},
        },
        "stringData": {"token": token},
    }


def render_role_binding(namespace: str, cluster_role: str, service_account: str, sa_namespace: str) -> dict:
    """Bind the worker's tenant-namespace ClusterRole to itself inside a tenant's host namespace."""
    for value in (namespace, service_account, sa_namespace):
        _check(bool(DNS_LABEL.match(value)), f"{value!r} is not a DNS label")
    _check(
        bool(re.fullmatch(r"[a-z0-9]([-a-z0-9.:]*[a-z0-9])?", cluster_role)),
        f"{cluster_role!r} is not a role name",
    )
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": "inference-portal-worker",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": sa_namespace}],
    }


def render_vcluster_values(**values: Any) -> dict:
    """The vCluster chart's values (a mapping, not Kubernetes objects)."""
    for pool in values["pools"]:
        _check(bool(DNS_LABEL.match(pool["name"])), f"pool name {pool['name']!r} is not a DNS label")
    text = _environment().get_template("vcluster-values.yaml.j2").render(**values)
    data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - CSafeLoader or SafeLoader, both safe
    _check(isinstance(data, dict) and "controlPlane" in data, "vcluster values did not render to a mapping")
    return data


def render_endpoint(spec: EndpointSpec) -> list[dict]:
    """The endpoint's objects, in apply order (ServiceAccount and Secret before the Deployment)."""
    validate(spec)
    docs = _render("endpoint.yaml.j2", s=context(spec))
    for doc in docs:
        _check(doc["metadata"]["namespace"] == spec.namespace, "an object escaped the endpoint's namespace")
        _check(
            doc["metadata"]["labels"]["inference-portal.io/endpoint"] == spec.endpoint,
            "an object lost its labels",
        )
    return docs


def subset(desired: Any, live: Any, ignore: tuple[str, ...] = ()) -> bool:
    """Whether every field we set in DESIRED has the same value in LIVE (which has more: defaults,
    status, other managers' fields). Secrets are compared on `data` (the API server turns
    `stringData` into base64 `data`)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        for key, value in desired.items():
            if key in ignore:
                continue
            if key == "stringData":
                import base64

                data = live.get("data") or {}
                if any(base64.b64decode(data.get(k, "")).decode() != v for k, v in value.items()):
                    return False
                continue
            if key not in live or not subset(value, live[key], ignore):
                return False
        return True
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(subset(d, li, ignore) for d, li in zip(desired, live, strict=True))
        )
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired == live
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return desired == live
    return str(desired) == str(live)
