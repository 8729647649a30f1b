"""The seam between actions and the workers: enqueue a task by name, after the commit.

Tasks are sent by name so the domain never imports the workers. Each ``enqueue_*`` registers
the send with ``transaction.on_commit``: a worker never sees an id whose row is not committed,
and a rolled-back action sends nothing. Sending is ``robust``: if the broker is down after the
commit, the row is already the truth and the periodic reconcile picks the work up, so the
person's request still succeeds.
"""

from __future__ import annotations

import logging

from django.db import transaction

log = logging.getLogger(__name__)

DEPLOY = "workers.tasks.deploy_endpoint"
SCALE = "workers.tasks.scale_endpoint"
DELETE = "workers.tasks.delete_endpoint"
DELETE_TENANT_CLUSTER = "workers.tasks.delete_tenant_cluster"


def send_task(name: str, endpoint_id: int) -> None:
    """Hand one task to Celery. Tests replace this function (the one narrow seam)."""
    from portal.celery import app

    app.send_task(name, args=[endpoint_id])
    log.info("sent %s for endpoint %s", name, endpoint_id)


def _enqueue(name: str, endpoint_id: int) -> None:
    # Look send_task up at call time so a test's replacement is the one that runs.
    transaction.on_commit(lambda: send_task(name, endpoint_id), robust=True)


def enqueue_deploy(endpoint_id: int) -> None:
    """Bring the endpoint to its desired state: tenant cluster, manifests, apply."""
    _enqueue(DEPLOY, endpoint_id)


def enqueue_scale(endpoint_id: int) -> None:
    """Apply a new replica range."""
    _enqueue(SCALE, endpoint_id)


def enqueue_delete(endpoint_id: int) -> None:
    """Remove the endpoint's objects, then mark it deleted."""
    _enqueue(DELETE, endpoint_id)


def enqueue_delete_tenant_cluster(tenant_id: int) -> None:
    """Remove a deleted tenant's vCluster once its endpoints are gone (the task waits for them)."""
    _enqueue(DELETE_TENANT_CLUSTER, tenant_id)
