"""A real Celery worker and the cluster watcher, as separate processes, against the local platform
and the test database. Tests talk to them only through the database, Redis and the clusters.

These fixtures are registered once, in tests/conftest.py: a conftest that imported them again
would make pytest start a second session worker and watcher beside the first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        handle = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        return (
            "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
        )


@pytest.fixture(scope="session")
def stack_env(platform, django_db_setup, django_db_blocker, tmp_path_factory) -> dict[str, str]:
    """Environment for the worker and the watcher: the platform's, pointed at the test database
    and at a Redis database of their own (so the demo's queue is untouched)."""
    from django.conf import settings
    from django.db import connection

    from portal.celery import app

    db = connection.settings_dict
    database_url = f"postgresql://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    broker = settings.CELERY_BROKER_URL  # the test settings' own Redis database
    app.control.purge()
    return {
        **os.environ,
        **platform.env,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_LOST_WORK_SECONDS": "5",
        "PORTAL_TENANT_CLUSTER_TIMEOUT": "120",
        "PYTHONUNBUFFERED": "1",
        "PORTAL_LOG_DIR": str(tmp_path_factory.mktemp("stack")),
    }


@pytest.fixture(scope="session")
def worker(stack_env):
    proc = Proc(
        "worker",
        [
            str(ROOT / ".venv/bin/celery"),
            "-A",
            "portal",
            "worker",
            "-P",
            "threads",
            "-c",
            "6",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"it-{uuid.uuid4().hex[:6]}@%h",
        ],
        stack_env,
        Path(stack_env["PORTAL_LOG_DIR"]),
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def watcher(stack_env):
    proc = Proc(
        "watcher",
        [sys.executable, "manage.py", "watch_clusters", "--tick", "0.5"],
        stack_env,
        Path(stack_env["PORTAL_LOG_DIR"]),
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def catalog(db):
    """A tier named as one of the platform's GPU node pools, an approved 7B model and a template."""
    from endpoints import actions
    from tests.factories import make_image, make_model

    tier = actions.create_gpu_tier(
        None,
        name="l40s-48gb",
        product="NVIDIA-L40S",
        gpu_memory_gib=Decimal("44.99"),
        resource_name="nvidia.com/gpu",
        gpus_per_node=4,
        node_labels={},
        taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        price_per_gpu_hour=Decimal("1.20"),
    )
    model = make_model(
        name="Qwen2.5-7B-Instruct",
        source="hf://Qwen/Qwen2.5-7B-Instruct",
        parameters=7_615_616_512,
        num_layers=28,
        num_kv_heads=4,
        head_dim=128,
        max_context=32768,
    )
    template = actions.create_template(
        None,
        name="qwen-7b-l40s",
        model=model,
        tier=tier,
        image=make_image(tag="v0.11.0"),
        max_model_len=8192,
        min_replicas=1,
        max_replicas=2,
    )
    return {"tier": tier, "model": model, "template": template}


def _helm(platform, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [platform.env["PORTAL_HELM_BIN"], *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "KUBECONFIG": platform.kubeconfig},
        timeout=180,
    )


@pytest.fixture(scope="session")
def tenant_slugs(platform):
    """Tenant clusters the integration tests used; uninstalled at the end of the session so their
    processes stop and their GPU nodes go back to the pool."""
    used: set[str] = set()
    yield used
    for slug in sorted(used):
        _helm(platform, "uninstall", slug, "--namespace", f"t-{slug}", "--wait", "--timeout", "120s")


@pytest.fixture
def make_tenant(request, catalog, tenant_slugs, platform):
    """A tenant whose slug is fixed per test module, so its vCluster is reused from test to test
    (the database is emptied between transactional tests; the clusters are not). After the test,
    its endpoints' Deployments are removed so their GPU nodes are free for the next test."""
    from endpoints import actions, naming

    made = []
    own = []

    def make(suffix: str = "", gpus: int = 16, tiers: dict | None = None, own_cluster: bool = False):
        slug = (
            "it"
            + request.module.__name__.rsplit(".", 1)[-1].replace("test_", "").replace("_", "")[:10]
            + suffix
        )[:20]
        tenant = actions.create_tenant(None, slug=slug, name=slug)
        actions.set_quota(
            None,
            tenant,
            gpus_total=gpus,
            tier_gpus=tiers or {catalog["tier"].name: gpus},
            max_endpoints=10,
            max_replicas=10,
        )
        (own if own_cluster else made).append(tenant)
        if not own_cluster:
            tenant_slugs.add(slug)
        return tenant

    yield make
    from workers.kube import KubeError, tenant_cluster

    for tenant in made:
        ns = naming.namespace_for(tenant)
        try:
            cluster = tenant_cluster(ns, tenant.slug)
            for d in cluster.list("apps/v1", "Deployment", ns)["items"]:
                cluster.delete(
                    "apps/v1",
                    "Deployment",
                    d["metadata"]["name"],
                    ns,
                    propagation="Foreground",
                    grace_seconds=0,
                )
        except KubeError:
            pass
    for tenant in own:
        _helm(
            platform,
            "uninstall",
            tenant.slug,
            "--namespace",
            f"t-{tenant.slug}",
            "--wait",
            "--timeout",
            "120s",
        )
