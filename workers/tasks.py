"""Celery tasks. Each takes ids, loads what it needs, does only what is missing, and is safe to
run twice. Failures split three ways (kopf's habit): transient errors retry with capped backoff,
permanent ones mark the endpoint Failed with the reason, unexpected ones retry a bounded number
of times and then fail the endpoint with the error's name."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from endpoints import actions
from endpoints.choices import EndpointPhase
from endpoints.models import Endpoint

from . import provision
from .kube import KubeError, PermanentKubeError, TransientKubeError
from .manifests import ManifestError
from .tenant_clusters import TenantClusterBusy
from .tenant_clusters import delete_tenant_cluster as _delete_tenant_cluster
from .tenant_clusters import ensure_tenant_cluster as _ensure_tenant_cluster

log = logging.getLogger(__name__)
P = EndpointPhase

MAX_TRANSIENT_RETRIES = 40  # ~20 minutes at the 30 s cap: long enough to ride out an API server restart
MAX_UNEXPECTED_RETRIES = 3
BACKOFF_CAP = 30


def backoff(retries: int) -> int:
    return min(BACKOFF_CAP, 2 ** min(retries, 5))


def _run(task, verb: str, endpoint_id: int, fn: Callable[[int], str]) -> str:
    retries = task.request.retries
    try:
        result = fn(endpoint_id)
    except Endpoint.DoesNotExist:
        return "gone"
    except TenantClusterBusy as exc:
        raise task.retry(countdown=2, exc=exc, max_retries=MAX_TRANSIENT_RETRIES * 10) from None
    except TransientKubeError as exc:
        if retries >= MAX_TRANSIENT_RETRIES:
            _fail(verb, endpoint_id, "GaveUp", f"Still failing after {retries} tries: {exc.reason}")
            return "failed"
        log.warning("%s endpoint %s: transient failure, retrying: %s", verb, endpoint_id, exc.reason)
        raise task.retry(countdown=backoff(retries), exc=exc, max_retries=MAX_TRANSIENT_RETRIES) from None
    except (PermanentKubeError, ManifestError) as exc:
        reason = getattr(exc, "reason", str(exc))
        _fail(verb, endpoint_id, "Forbidden" if getattr(exc, "status", None) == 403 else "Invalid", reason)
        return "failed"
    except KubeError as exc:
        return _unexpected(task, verb, endpoint_id, exc, retries)
    except Exception as exc:  # noqa: BLE001 - the traceback is recorded, the retries bounded
        return _unexpected(task, verb, endpoint_id, exc, retries)
    if result == "pending":
        raise task.retry(countdown=2, max_retries=MAX_TRANSIENT_RETRIES * 15)
    return result


def _unexpected(task, verb: str, endpoint_id: int, exc: Exception, retries: int) -> str:
    log.exception("%s endpoint %s: unexpected %s", verb, endpoint_id, type(exc).__name__)
    if retries >= MAX_UNEXPECTED_RETRIES:
        _fail(
            verb,
            endpoint_id,
            "InternalError",
            f"The portal hit an internal error ({type(exc).__name__}) and stopped retrying; support has the details.",
        )
        return "failed"
    raise task.retry(countdown=backoff(retries + 2), exc=exc, max_retries=MAX_UNEXPECTED_RETRIES) from None


def _fail(verb: str, endpoint_id: int, reason: str, message: str) -> None:
    if verb == "delete":
        # Deleting may not fall back to Failed; say why on the endpoint and let reconcile retry.
        actions.set_endpoint_condition(endpoint_id, "Ready", "False", f"Delete{reason}", message[:500])
        return
    provision.mark_failed(endpoint_id, reason, message[:500])


@shared_task(bind=True, acks_late=True, name="workers.tasks.deploy_endpoint")
def deploy_endpoint(self, endpoint_id: int) -> str:
    return _run(self, "deploy", endpoint_id, provision.deploy)


@shared_task(bind=True, acks_late=True, name="workers.tasks.scale_endpoint")
def scale_endpoint(self, endpoint_id: int) -> str:
    # Scaling re-applies the same objects with the new replica range; one code path for both.
    return _run(self, "scale", endpoint_id, provision.deploy)


@shared_task(bind=True, acks_late=True, name="workers.tasks.delete_endpoint")
def delete_endpoint(self, endpoint_id: int) -> str:
    return _run(self, "delete", endpoint_id, provision.delete)


def _tenant_task(task, fn: Callable[[int], object], tenant_id: int, done: str) -> str:
    """Tenant-cluster work: transient failures retry with backoff; the rest propagate to Celery."""
    try:
        fn(tenant_id)
    except TransientKubeError as exc:
        raise task.retry(
            countdown=backoff(task.request.retries), exc=exc, max_retries=MAX_TRANSIENT_RETRIES
        ) from None
    return done


@shared_task(bind=True, acks_late=True, name="workers.tasks.ensure_tenant_cluster")
def ensure_tenant_cluster(self, tenant_id: int) -> str:
    return _tenant_task(self, _ensure_tenant_cluster, tenant_id, "ready")


@shared_task(bind=True, acks_late=True, name="workers.tasks.delete_tenant_cluster")
def delete_tenant_cluster(self, tenant_id: int) -> str:
    return _tenant_task(self, _delete_tenant_cluster, tenant_id, "deleted")


@shared_task(name="workers.tasks.reconcile")
def reconcile() -> dict:
    """Compare the database with the clusters (Celery beat).

    - Lost work: an endpoint whose latest change no worker has acted on for a while (the broker
      lost the message, a worker died before acking) gets its task again.
    - Drift: an object deleted or edited by hand is applied again. When nothing has drifted,
      nothing is written to any API server."""
    stale = timezone.now() - timedelta(seconds=settings.PORTAL_LOST_WORK_SECONDS)
    lost = list(
        Endpoint.objects.filter(phase__in=provision.CONVERGE_PHASES, updated__lt=stale)
        .filter(observed_generation__lt=F("generation"))
        .values_list("pk", flat=True)
    )
    for pk in lost:
        deploy_endpoint.delay(pk)
    stuck_deleting = list(
        Endpoint.objects.filter(phase=P.DELETING, updated__lt=stale).values_list("pk", flat=True)
    )
    for pk in stuck_deleting:
        delete_endpoint.delay(pk)
    repaired = provision.repair_drift()
    return {"lost": len(lost), "deleting": len(stuck_deleting), **repaired}
