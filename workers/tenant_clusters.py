"""Ensure a tenant's vCluster exists and is usable; remove it when the tenant goes.

A worker claims the tenant's TenantCluster row with a compare-and-set before installing, so two
deploys of one tenant's endpoints install it once; the claim is taken and released in short
transactions, never held across helm or Kubernetes calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from endpoints import naming
from endpoints.choices import TenantClusterPhase
from endpoints.models import Tenant, TenantCluster

from . import failpoints, manifests
from .kube import Cluster, PermanentKubeError, TransientKubeError, helm, host_cluster, tenant_cluster

log = logging.getLogger(__name__)
P = TenantClusterPhase


# A ready tenant cluster whose client answered this recently is usable without asking again: a
# burst of deploys to one tenant would otherwise cost two more requests each (the kubeconfig
# Secret in the host, /version in the tenant cluster). A failed call ends that at once.
RECENT_SECONDS = 5.0


class TenantClusterBusy(TransientKubeError):
    """Another worker is installing this tenant cluster right now; try again shortly."""


def values_for(tenant: Tenant) -> dict:
    """The vCluster chart's values for TENANT, rendered from templates/manifests/vcluster-values.yaml.j2."""
    from endpoints.models import GpuTier

    quota = getattr(tenant, "quota", None)
    tier_gpus = dict(getattr(quota, "tier_gpus", None) or {})
    total = getattr(quota, "gpus_total", 0) or 0
    pools = []
    for tier in GpuTier.objects.order_by("name"):
        cap = min(int(tier_gpus.get(tier.name, 0)), total)
        if cap > 0:
            # Pool limits count whole nodes' capacity (as Karpenter's do): round the tenant's
            # quota up to whole nodes, or a 2-GPU quota could never join a 4-GPU node. Quota
            # admission in the portal still holds the tenant to its GPU count.
            cap = -(-cap // tier.gpus_per_node) * tier.gpus_per_node
            pools.append(
                {"name": f"gpu-{tier.name}", "tier": tier.name, "limits": {tier.resource_name: str(cap)}}
            )
    return manifests.render_vcluster_values(
        syncer_tag=settings.PORTAL_VCLUSTER_CHART_VERSION.lstrip("v") or "0.30.0",
        persistent=not settings.PORTAL_EMULATE,
        emulate=settings.PORTAL_EMULATE,
        node_provider="local-kwok-pool" if settings.PORTAL_EMULATE else "inference-portal",
        pools=pools,
        consolidate_after="60s",
        gateway_ref=f"{settings.PORTAL_GATEWAY_NAMESPACE}/{settings.PORTAL_GATEWAY_NAME}",
        kubeconfig_server=f"https://{tenant.slug}.{naming.namespace_for(tenant)}.svc:443",
    )


def _hash(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _claim(tc: TenantCluster) -> bool:
    stale = timedelta(seconds=settings.PORTAL_CLAIM_STALE_SECONDS)
    now = timezone.now()
    return (
        TenantCluster.objects.claimable(stale)
        .filter(pk=tc.pk)
        .update(
            phase=P.INSTALLING,
            claimed_at=now,
            install_started_at=now,
            message="Installing the tenant cluster.",
        )
        == 1
    )


def _release(tc: TenantCluster, phase: str, message: str, **extra) -> None:
    TenantCluster.objects.filter(pk=tc.pk, phase=P.INSTALLING).update(
        phase=phase, message=message[:500], claimed_at=None, updated=timezone.now(), **extra
    )


def ensure_host_namespace(host: Cluster, tenant: Tenant) -> str:
    """The tenant's host namespace, labelled so the worker's admission policy lets it act there,
    and (in a real deployment) the worker's tenant-namespace role bound inside it."""
    namespace = naming.namespace_for(tenant)
    host.apply(manifests.render_namespace(tenant.slug, namespace, host=True))
    if settings.PORTAL_TENANT_CLUSTERROLE and settings.PORTAL_SERVICE_ACCOUNT and settings.PORTAL_NAMESPACE:
        host.apply(
            manifests.render_role_binding(
                namespace,
                settings.PORTAL_TENANT_CLUSTERROLE,
                settings.PORTAL_SERVICE_ACCOUNT,
                settings.PORTAL_NAMESPACE,
            )
        )
    return namespace


def _wait_usable(tenant: Tenant, deadline: float) -> Cluster:
    """Wait for Secret vc-<tenant> and for its API server to answer."""
    namespace = naming.namespace_for(tenant)
    last = "the kubeconfig Secret has not been written yet"
    while time.monotonic() < deadline:
        try:
            cluster = tenant_cluster(namespace, tenant.slug)
            cluster.version()
            return cluster
        except TransientKubeError as exc:
            last = exc.reason
        time.sleep(0.5)
    raise TransientKubeError(f"tenant cluster {tenant.slug} did not become usable in time: {last}")


def ensure_tenant_cluster(tenant_id: int) -> Cluster:
    """Install or upgrade the tenant's vCluster if needed and return a client for it.

    Idempotent: a ready cluster whose values have not changed costs one Secret read and one
    version call, or nothing when its client answered in the last few seconds (RECENT_SECONDS).
    Raises TenantClusterBusy while another worker installs it."""
    tenant = Tenant.objects.select_related("quota").get(pk=tenant_id)
    tc, _ = TenantCluster.objects.get_or_create(tenant=tenant)
    values = values_for(tenant)
    digest = _hash(values)
    if tc.phase == P.READY and tc.values_hash == digest:
        try:
            cluster = tenant_cluster(naming.namespace_for(tenant), tenant.slug, max_age=RECENT_SECONDS)
            if cluster.answered_within(RECENT_SECONDS):
                return cluster
            return _wait_usable(tenant, time.monotonic() + 10)
        except TransientKubeError:
            log.warning("tenant cluster %s was ready but is not answering; reinstalling", tenant.slug)
    if tc.phase == P.DELETING:
        raise PermanentKubeError(f"tenant {tenant.slug} is being deleted")
    if not _claim(tc):
        raise TenantClusterBusy(f"tenant cluster {tenant.slug} is being installed by another worker")
    failpoints.hit("after-claim")
    try:
        host = host_cluster()
        namespace = ensure_host_namespace(host, tenant)
        failpoints.hit("before-helm")
        helm.upgrade_install(
            tenant.slug,
            namespace,
            settings.PORTAL_VCLUSTER_CHART,
            values,
            version=settings.PORTAL_VCLUSTER_CHART_VERSION,
            timeout=settings.PORTAL_TENANT_CLUSTER_TIMEOUT,
        )
        failpoints.hit("after-helm")
        cluster = _wait_usable(tenant, time.monotonic() + settings.PORTAL_TENANT_CLUSTER_TIMEOUT)
    except PermanentKubeError as exc:
        _release(tc, P.FAILED, exc.reason)
        raise
    except Exception as exc:
        _release(tc, P.PENDING, getattr(exc, "reason", str(exc)))
        raise
    _release(
        tc,
        P.READY,
        "Tenant cluster ready.",
        values_hash=digest,
        ready_at=timezone.now(),
        chart_version=settings.PORTAL_VCLUSTER_CHART_VERSION,
    )
    log.info("tenant cluster %s ready", tenant.slug)
    return cluster


def delete_tenant_cluster(tenant_id: int) -> bool:
    """Uninstall the tenant's vCluster and remove its host namespace. True when nothing is left."""
    from endpoints.choices import EndpointPhase
    from endpoints.models import Endpoint

    tenant = Tenant.objects.get(pk=tenant_id)
    namespace = naming.namespace_for(tenant)
    remaining = Endpoint.objects.filter(tenant=tenant).exclude(phase=EndpointPhase.DELETED).count()
    if remaining:
        # Endpoints drain first (their pods finish their streams); then the cluster goes.
        raise TransientKubeError(f"waiting for {remaining} endpoint(s) of {tenant.slug} to be deleted")
    TenantCluster.objects.filter(tenant=tenant).update(
        phase=P.DELETING, message="Removing the tenant cluster."
    )
    helm.uninstall(tenant.slug, namespace, timeout=settings.PORTAL_TENANT_CLUSTER_TIMEOUT)
    host = host_cluster()
    host.delete("v1", "Namespace", namespace, propagation="Background")
    if host.get("v1", "Namespace", namespace) is not None:
        raise TransientKubeError(f"namespace {namespace} is still terminating")
    TenantCluster.objects.filter(tenant=tenant).update(phase=P.DELETED, message="Tenant cluster removed.")
    return True
