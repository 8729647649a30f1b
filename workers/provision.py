"""Converge one endpoint's objects in its tenant cluster to what the database says.

Every function here is safe to run again at any point: it works out what is missing and does only
that. Nothing holds a database transaction or lock across a Kubernetes call.
"""

from __future__ import annotations

import base64
import copy
import logging
import math
import secrets
from dataclasses import dataclass
from itertools import groupby

from django.conf import settings

from endpoints import actions, naming
from endpoints.choices import EndpointPhase
from endpoints.models import Endpoint, EndpointKey

from . import failpoints, manifests
from .kube import Cluster, KubeError, PermanentKubeError
from .tenant_clusters import ensure_tenant_cluster

log = logging.getLogger(__name__)
P = EndpointPhase

# Phases in which the workers keep the endpoint's objects in place.
CONVERGE_PHASES = frozenset(
    {
        P.REQUESTED,
        P.PROVISIONING_TENANT,
        P.SCHEDULING,
        P.PULLING,
        P.DOWNLOADING_WEIGHTS,
        P.LOADING_MODEL,
        P.VERIFYING,
        P.READY,
        P.DEGRADED,
    }
)
GIB = 1024**3


def load(endpoint_id: int) -> Endpoint:
    return Endpoint.objects.select_related(
        "tenant",
        "tenant__quota",
        "tenant__cluster",
        "template",
        "template__model",
        "template__tier",
        "template__image",
    ).get(pk=endpoint_id)


def url_for(endpoint: Endpoint) -> str:
    host = naming.hostname(endpoint, settings.PORTAL_GATEWAY_DOMAIN)
    return settings.PORTAL_ENDPOINT_URL_TEMPLATE.format(host=host)


def expected_load_seconds(weights_bytes: int) -> int:
    """A cold start's load time: download at ~500 MB/s from a nearby store, load at ~2 GB/s,
    plus a minute of engine start-up (CUDA graphs, KV cache). Used for probes and the estimate."""
    return int(60 + weights_bytes / 500e6 + weights_bytes / 2e9)


# The kinds of an endpoint's objects, all labelled managed-by=inference-portal.
MANAGED_KINDS = [("apps/v1", "Deployment"), *manifests.COMPANION_KINDS]
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={manifests.MANAGED_BY}"


class LiveObjects:
    """What the portal manages in one namespace of a tenant cluster, read with one LIST per kind,
    so checking N endpoints costs a handful of requests instead of about ten per endpoint. A kind
    not listed (a ScaledObject, say) is read with a GET when asked for."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.kinds = set(MANAGED_KINDS)
        for api_version, kind in MANAGED_KINDS:
            listed = cluster.list(api_version, kind, namespace, label_selector=MANAGED_SELECTOR)
            for obj in listed.get("items") or []:
                # Items of a LIST carry no apiVersion and kind of their own.
                obj.setdefault("apiVersion", api_version)
                obj.setdefault("kind", kind)
                self.objects[(api_version, kind, obj["metadata"]["name"])] = obj

    def get(self, api_version: str, kind: str, name: str) -> dict | None:
        if (api_version, kind) not in self.kinds:
            return self.cluster.get(api_version, kind, name, self.namespace)
        return self.objects.get((api_version, kind, name))


@dataclass(frozen=True)
class Keys:
    internal: str  # the key the gateway forwards with (vLLM's --api-key)
    probe: str  # the key the first-request gate calls through the gateway with


def existing_keys(
    cluster: Cluster, endpoint: Endpoint, live: LiveObjects | None = None, *, first_apply: bool = False
) -> Keys:
    """Reuse the keys already in the endpoint's auth Secret; make new ones the first time.

    FIRST_APPLY (nothing was ever applied for it: observed_generation 0) skips the read: there is
    no Secret yet. Should an earlier attempt have applied one and stopped before recording, the new
    keys replace it together with the Deployment's key hashes, and nothing has served with them."""
    name = f"{naming.object_name(endpoint)}-auth"
    if first_apply:
        return Keys(internal=secrets.token_urlsafe(32), probe=secrets.token_urlsafe(32))
    if live is not None:
        secret = live.get("v1", "Secret", name)
    else:
        secret = cluster.get("v1", "Secret", name, naming.namespace_for(endpoint.tenant))
    data = (secret or {}).get("data") or {}

    def read(key: str) -> str:
        raw = data.get(key)
        return base64.b64decode(raw).decode() if raw else ""

    return Keys(
        internal=read("api-key") or secrets.token_urlsafe(32),
        probe=read("probe-key") or secrets.token_urlsafe(32),
    )


def spec_for(endpoint: Endpoint, keys: Keys) -> manifests.EndpointSpec:
    template = endpoint.template
    model, tier = template.model, template.tier
    fit = template.fit()
    key_hashes = sorted(
        EndpointKey.objects.filter(endpoint=endpoint).active().values_list("key_hash", flat=True)
    )
    key_hashes.append(EndpointKey.hash(keys.probe))
    autoscaled = endpoint.max_replicas > endpoint.min_replicas
    annotations: dict[str, str] = {}
    if settings.PORTAL_EMULATE:
        annotations = {
            "inference-portal.io/emulate": "vllm",
            "inference-portal.io/load-delay": f"{settings.PORTAL_EMULATED_LOAD_SECONDS}s",
        }
    return manifests.EndpointSpec(
        tenant=endpoint.tenant.slug,
        endpoint=endpoint.name,
        namespace=naming.namespace_for(endpoint.tenant),
        name=naming.object_name(endpoint),
        hostname=naming.hostname(endpoint, settings.PORTAL_GATEWAY_DOMAIN),
        model_source=model.source,
        model_revision=model.revision,
        served_model_name=endpoint.name,
        model_label=model.name,
        image=template.image.reference,
        resource_name=tier.resource_name,
        gpus_per_replica=template.gpus_per_replica,
        node_selector={"inference-portal.io/gpu-tier": tier.name, **(tier.node_labels or {})},
        tolerations=[
            {"key": t.get("key"), "operator": "Exists", "effect": t.get("effect", "NoSchedule")}
            for t in (tier.taints or [])
        ]
        or [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        max_model_len=template.max_model_len,
        gpu_memory_utilization=float(template.gpu_memory_utilization),
        max_num_seqs=template.max_num_seqs,
        min_replicas=endpoint.min_replicas,
        max_replicas=endpoint.max_replicas,
        replicas=None if (autoscaled or template.scale_to_zero) else endpoint.max_replicas,
        tier=tier.name,
        workload_class=template.workload_class,
        quantization=model.dtype if model.dtype in ("awq", "gptq", "fp8") else None,
        dtype={"bf16": "bfloat16", "fp16": "float16"}.get(model.dtype, "auto"),
        target_queue_depth=template.target_queue_depth,
        scale_to_zero=template.scale_to_zero,
        expected_load_seconds=expected_load_seconds(fit.weights_bytes),
        weights_gib=math.ceil(fit.weights_bytes / GIB),
        gateway_name=settings.PORTAL_GATEWAY_NAME,
        gateway_namespace=settings.PORTAL_GATEWAY_NAMESPACE,
        prometheus_url=settings.PROMETHEUS_URL or "http://prometheus.monitoring:9090",
        tenant_key_hashes=tuple(key_hashes),
        internal_api_key=keys.internal,
        extra_pod_annotations=annotations,
    )


def desired_objects(
    cluster: Cluster, endpoint: Endpoint, live: LiveObjects | None = None, *, first_apply: bool = False
) -> list[dict]:
    keys = existing_keys(cluster, endpoint, live, first_apply=first_apply)
    docs = manifests.render_endpoint(spec_for(endpoint, keys))
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["stringData"]["probe-key"] = keys.probe
    return docs


def owned_by(doc: dict, deployment: dict) -> dict:
    doc["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
            "uid": deployment["metadata"]["uid"],
            "blockOwnerDeletion": True,
        }
    ]
    return doc


def ensure_namespace(cluster: Cluster, doc: dict) -> bool:
    """Apply the tenant's namespace unless this client has applied the same document already: a
    burst of deploys into one tenant cluster applies it once, not once per endpoint. Returns
    whether it was applied. Should it be deleted behind our back, apply_endpoint forgets it and
    applies it again."""
    key = f"Namespace/{doc['metadata']['name']}"
    if cluster.applied_docs.get(key) == doc:
        return False
    cluster.apply(doc)
    cluster.applied_docs[key] = copy.deepcopy(doc)
    return True


def apply_endpoint(cluster: Cluster, endpoint: Endpoint) -> int:
    """Apply the namespace and the endpoint's objects: what the others need first, then the
    Deployment, then the rest owned by it. Returns how many were applied."""
    namespace = naming.namespace_for(endpoint.tenant)
    doc = manifests.render_namespace(endpoint.tenant.slug, namespace)
    fresh = ensure_namespace(cluster, doc)
    try:
        return _apply_objects(cluster, endpoint, namespace) + 1
    except KubeError as exc:
        if fresh or exc.status != 404:
            raise
        # "namespaces ... not found": someone deleted it since this client applied it.
        log.warning("namespace %s is gone from %s; applying it again", namespace, cluster.name)
        cluster.applied_docs.pop(f"Namespace/{namespace}", None)
        ensure_namespace(cluster, doc)
        return _apply_objects(cluster, endpoint, namespace) + 1


def _apply_objects(cluster: Cluster, endpoint: Endpoint, namespace: str) -> int:
    if settings.PORTAL_HF_TOKEN:
        cluster.apply(
            manifests.render_hf_token_secret(endpoint.tenant.slug, namespace, settings.PORTAL_HF_TOKEN)
        )
    docs = desired_objects(cluster, endpoint, first_apply=endpoint.observed_generation == 0)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    # What the pods need at creation first (concurrently), then the Deployment, then the
    # companions it owns (concurrently: about one round trip each stage instead of one per object).
    for _ in cluster.apply_all(d for d in docs if d["kind"] in manifests.PREREQUISITE_KINDS):
        pass
    failpoints.hit("before-deployment")
    stored = cluster.apply(deployment)
    failpoints.hit("after-deployment")
    companions = [owned_by(doc, stored) for doc in owned(docs)]
    for i, _ in enumerate(cluster.apply_all(companions)):
        if i == 2:
            failpoints.hit("mid-companions")
    if endpoint.observed_generation and not any(d["kind"] == "HorizontalPodAutoscaler" for d in docs):
        # A replica range that became fixed: its autoscaler would go on moving the replicas, up to
        # the old maximum and past what the quota admitted. (A first apply has none to remove.)
        cluster.delete(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            stored["metadata"]["name"],
            namespace,
            propagation="Background",
        )
    return len(docs)


def owned(docs: list[dict]) -> list[dict]:
    """The documents the Deployment owns: all but itself and its prerequisites."""
    return [d for d in docs if d["kind"] != "Deployment" and d["kind"] not in manifests.PREREQUISITE_KINDS]


def deploy(endpoint_id: int) -> str:
    """Bring the endpoint's objects to its desired state (used for create and scale alike)."""
    endpoint = load(endpoint_id)
    if endpoint.phase not in CONVERGE_PHASES:
        return f"skipped: endpoint is {endpoint.phase}"
    tc = getattr(endpoint.tenant, "cluster", None)
    cluster_was_ready = tc is not None and tc.is_ready
    if endpoint.phase == P.REQUESTED and not cluster_was_ready:
        actions.transition_endpoint(
            endpoint.pk,
            expected=P.REQUESTED,
            new=P.PROVISIONING_TENANT,
            reason="ProvisioningTenant",
            message="Creating the tenant cluster.",
        )
    cluster = ensure_tenant_cluster(endpoint.tenant_id)
    if not cluster_was_ready:
        endpoint = load(endpoint_id)  # the phase may have moved while the tenant cluster came up
        if endpoint.phase not in CONVERGE_PHASES:
            return f"skipped: endpoint is {endpoint.phase}"
    count = apply_endpoint(cluster, endpoint)
    failpoints.hit("before-record")
    # What was applied, with the move to Scheduling when this was the first apply (one UPDATE).
    observed = {"observed_generation": endpoint.generation, "url": url_for(endpoint)}
    for start in (P.REQUESTED, P.PROVISIONING_TENANT):
        if endpoint.phase == start and actions.transition_endpoint(
            endpoint.pk,
            expected=start,
            new=P.SCHEDULING,
            reason="Applied",
            message=f"Applied {count} objects to the tenant cluster.",
            observed=observed,
        ):
            break
    else:
        actions.record_observation(endpoint.pk, **observed)
    failpoints.hit("after-record")
    return f"applied {count} objects"


def delete(endpoint_id: int) -> str:
    """Drain and remove the endpoint's objects, then mark it Deleted.

    Foreground deletion of the Deployment: its pods get their preStop and grace period (streams
    finish), and the owned companions (Service, HTTPRoute, HPA, PDB, policy, Secret) go with it.
    Returns "pending" while pods are still draining; the task retries until they are gone."""
    endpoint = load(endpoint_id)
    if endpoint.phase == P.DELETED:
        return "already deleted"
    if endpoint.phase != P.DELETING:
        return f"skipped: endpoint is {endpoint.phase}"
    tc = getattr(endpoint.tenant, "cluster", None)
    if tc is not None and tc.phase not in ("deleted", "pending"):
        from .kube import tenant_cluster

        cluster = tenant_cluster(naming.namespace_for(endpoint.tenant), endpoint.tenant.slug)
        namespace, name = naming.namespace_for(endpoint.tenant), naming.object_name(endpoint)
        cluster.delete("apps/v1", "Deployment", name, namespace, propagation="Foreground")
        if cluster.get("apps/v1", "Deployment", name, namespace) is not None:
            return "pending"
        # Owned objects are garbage-collected; anything left from before owners were set goes too.
        for api_version, kind in manifests.COMPANION_KINDS:
            cluster.delete(
                api_version,
                kind,
                f"{name}-auth" if kind == "Secret" else name,
                namespace,
                propagation="Background",
            )
    actions.record_running_replicas(endpoint.pk, 0)
    actions.transition_endpoint(
        endpoint.pk,
        expected=P.DELETING,
        new=P.DELETED,
        reason="Deleted",
        message="All of the endpoint's objects were removed.",
    )
    return "deleted"


def mark_failed(endpoint_id: int, reason: str, message: str) -> None:
    """A permanent failure: say why on the endpoint, in words a tenant can act on."""
    endpoint = Endpoint.objects.get(pk=endpoint_id)
    if endpoint.phase in CONVERGE_PHASES:
        try:
            actions.transition_endpoint(
                endpoint_id, expected=endpoint.phase, new=P.FAILED, reason=reason, message=message
            )
        except Exception:  # noqa: BLE001 - the table may not allow it from here; log and move on
            log.exception("could not mark endpoint %s failed", endpoint_id)


def drifted(cluster: Cluster, endpoint: Endpoint, live: LiveObjects | None = None) -> list[dict]:
    """The endpoint's objects that are missing or differ from what we would apply (read-only).
    LIVE, when given, is the namespace as listed; otherwise each object is read with a GET."""
    out = []
    docs = desired_objects(cluster, endpoint, live)
    for doc in docs:
        meta = doc["metadata"]
        if live is not None:
            found = live.get(doc["apiVersion"], doc["kind"], meta["name"])
        else:
            found = cluster.get(doc["apiVersion"], doc["kind"], meta["name"], meta.get("namespace"))
        if found is None or not manifests.subset(doc, found, ignore=("ownerReferences",)):
            out.append(doc)
    return out


def repair_drift() -> dict:
    """Re-apply what drifted, for every applied endpoint in a ready tenant cluster."""
    from endpoints.choices import TenantClusterPhase

    from .kube import TransientKubeError, tenant_cluster

    checked = repaired = 0
    endpoints = (
        Endpoint.objects.filter(
            phase__in=CONVERGE_PHASES - {P.REQUESTED, P.PROVISIONING_TENANT},
            tenant__cluster__phase=TenantClusterPhase.READY,
        )
        .select_related(
            "tenant", "tenant__quota", "template", "template__model", "template__tier", "template__image"
        )
        .order_by("tenant_id", "pk")
    )
    # One tenant cluster at a time: its client and its namespace's objects are read once.
    for _, group in groupby(endpoints, key=lambda e: e.tenant_id):
        group = list(group)
        tenant = group[0].tenant
        try:
            cluster = tenant_cluster(naming.namespace_for(tenant), tenant.slug)
            live = LiveObjects(cluster, naming.namespace_for(tenant))
        except (TransientKubeError, PermanentKubeError) as exc:
            log.warning("reconcile: tenant cluster %s: %s", tenant.slug, exc.reason)
            continue
        for endpoint in group:
            try:
                checked += 1
                missing = drifted(cluster, endpoint, live)
                if not missing:
                    continue
                # In the order apply_endpoint uses: prerequisites, the Deployment, what it owns.
                for _ in cluster.apply_all(d for d in missing if d["kind"] in manifests.PREREQUISITE_KINDS):
                    pass
                deployment = next((d for d in missing if d["kind"] == "Deployment"), None)
                stored = (
                    cluster.apply(deployment)
                    if deployment
                    else live.get("apps/v1", "Deployment", naming.object_name(endpoint))
                )
                companions = [owned_by(d, stored) if stored else d for d in owned(missing)]
                for _ in cluster.apply_all(companions):
                    pass
                repaired += len(missing)
                log.info(
                    "reconcile: re-applied %s for endpoint %s", [d["kind"] for d in missing], endpoint.pk
                )
            except (TransientKubeError, PermanentKubeError) as exc:
                log.warning("reconcile: endpoint %s: %s", endpoint.pk, exc.reason)
    return {"checked": checked, "repaired": repaired}


__all__ = ["PermanentKubeError", "apply_endpoint", "delete", "deploy", "drifted", "mark_failed"]
