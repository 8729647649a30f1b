"""A worker keeps its database connection from one task to the next, as a web process does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery.fixups.django import DjangoWorkerFixup
from celery.signals import task_postrun, task_prerun
from django.db import connection

from portal.celery import app


class _Task:
    request = SimpleNamespace(is_eager=False)


def _run_a_task(fixup: DjangoWorkerFixup) -> None:
    """What the worker does around a task: Celery's Django fixup, then our signal receivers."""
    task = _Task()
    fixup.on_task_prerun(sender=task)
    task_prerun.send(sender=task, task_id="t", task=task, args=(), kwargs={})
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    fixup.on_task_postrun(sender=task)
    task_postrun.send(sender=task, task_id="t", task=task, args=(), kwargs={}, retval=None, state="SUCCESS")


@pytest.mark.django_db(transaction=True)
def test_tasks_reuse_the_connection_and_drop_a_broken_one() -> None:
    fixup = DjangoWorkerFixup(app)
    connection.ensure_connection()
    first = connection.connection
    for _ in range(3):
        _run_a_task(fixup)
    assert connection.connection is first  # the fixup's default would have closed it each time

    connection.errors_occurred = True  # as after a failed query on a dead connection
    connection.connection.close()
    _run_a_task(fixup)
    assert connection.connection is not first
