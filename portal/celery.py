from __future__ import annotations

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(task=None, **_kwargs) -> None:
    """Around every task what Django does around every request: close the connections that are
    broken or older than CONN_MAX_AGE, keep the rest. Opening a connection for each task (the
    fixup's default) was a tenth of the worker's time in a burst, and a new PostgreSQL backend.
    Not for an eager task, which runs inside its caller's transaction."""
    from django.db import close_old_connections

    if task is not None and getattr(task.request, "is_eager", False):
        return
    close_old_connections()
