"""What the portal benchmarks share: a database and a Redis database of their own, a real Celery
worker and cluster watcher as subprocesses, a catalog, tenants with API tokens, and the figures.

Every bench script calls `setup()` before it imports Django models. The platform's env file
(/var/tmp/infer-portal-<uid>/platform.env, or $PORTAL_STATE_DIR/platform.env) gives the clusters,
PostgreSQL and Redis; the bench then points DATABASE_URL at its own database (created and migrated
here) and CELERY_BROKER_URL at its own Redis database, so nobody else's work is touched.
"""

from __future__ import annotations

import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOID_TIER = "bench-void"  # a tier no platform node has: pods stay Pending, no pool node is taken
GPU_TIER = "l40s-48gb"  # one of the platform's pools (3 nodes of 4 GPUs, shared by every session)


def platform_env() -> dict[str, str]:
    state = os.environ.get("PORTAL_STATE_DIR") or f"/var/tmp/infer-portal-{os.getuid()}"  # noqa: S108
    env = {}
    for line in (Path(state) / "platform.env").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        if key:
            env[key] = value.strip("'")
    return env


def _ensure_database(url: str) -> None:
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup(db: str, *, redis_db: int, flush: bool = True) -> dict[str, str]:
    """Environment for this process and its worker and watcher; Django set up and migrated.

    Each bench script has a database DB and a Redis database REDIS_DB of its own (the demo uses
    Redis database 0, the tests 7), so two scripts never take each other's tasks. FLUSH empties the
    database first, so every run starts from the same rows."""
    env = platform_env()
    env["DATABASE_URL"] = env["DATABASE_URL"].rsplit("/", 1)[0] + f"/{db}"
    env["CELERY_BROKER_URL"] = env["CELERY_BROKER_URL"].rsplit("/", 1)[0] + f"/{redis_db}"
    env["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    env["PYTHONUNBUFFERED"] = "1"
    os.environ.update(env)
    _ensure_database(env["DATABASE_URL"])
    import logging
    import warnings

    import django

    django.setup()
    # The bench's own process prints figures only; the worker and watcher log to their files.
    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="No directory at")
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    if flush:
        call_command("flush", verbosity=0, interactive=False)
    from portal.celery import app

    app.control.purge()
    return {**os.environ, **env}


# -- processes -------------------------------------------------------------------------------


class Stack:
    """The portal's worker (Celery; a threads pool as the demo runs it, or prefork as the Helm chart
    does) and the cluster watcher."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        concurrency: int = 8,
        pool: str = "threads",
        watcher: bool = True,
        tick: float = 1.0,
    ):
        try:
            from tests.stack import Proc  # the integration tests' process helper
        except ImportError:  # an older checkout, for side-by-side runs of the code before a change
            from tests.integration.conftest import Proc

        self.log_dir = Path(tempfile.mkdtemp(prefix="portal-bench-"))
        env = {**env, "PORTAL_LOG_DIR": str(self.log_dir)}
        self.procs = [
            Proc(
                "worker",
                [
                    str(ROOT / ".venv/bin/celery"),
                    "-A",
                    "portal",
                    "worker",
                    "-P",
                    pool,
                    "-c",
                    str(concurrency),
                    "--loglevel=INFO",
                    "--without-mingle",
                    "--without-gossip",
                    "-n",
                    f"bench-{uuid.uuid4().hex[:6]}@%h",
                ],
                env,
                self.log_dir,
            )
        ]
        if watcher:
            self.procs.append(
                Proc(
                    "watcher",
                    [sys.executable, "manage.py", "watch_clusters", "--tick", str(tick)],
                    env,
                    self.log_dir,
                )
            )

    def start(self) -> Stack:
        for proc in self.procs:
            proc.start()
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) each process, with its children (a prefork pool), has used."""
        return {proc.name: group_cpu_seconds(proc.proc.pid) for proc in self.procs if proc.proc}

    def check(self) -> None:
        for proc in self.procs:
            if proc.proc and proc.proc.poll() is not None:
                raise SystemExit(f"the bench {proc.name} exited; its log:\n{proc.tail()}")


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) of process PID, or of this process."""
    if pid is None:
        usage = os.times()
        return usage.user + usage.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have ended and been waited for."""
    usage = os.times()
    return usage.children_user + usage.children_system


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process in process group PGID (each Proc starts a session)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every process's (name, CPU seconds so far): diff two of these to see who used the machine."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("python") or name in ("celery", "pytest"):
            script = next((Path(a.decode()).name for a in cmdline[1:] if a.endswith(b".py")), "")
            name = f"{name} {script}".strip()
        elif name.startswith(("kube-", "kwok")):
            raw = b" ".join(cmdline)
            name += (
                " [bench]"
                if b"/t-bnch" in raw
                else " [tenant]"
                if b"vcluster/" in raw or b"/tenants/" in raw
                else " [host]"
            )
        out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def cpu_used_since(before: dict[int, tuple[str, float]], top: int = 12) -> str:
    """Who used the CPU since BEFORE, by process name, the biggest first."""
    totals: dict[str, float] = {}
    for pid, (name, seconds) in cpu_by_process().items():
        used = seconds - before.get(pid, (name, 0.0))[1]
        if used > 0:
            totals[name] = totals.get(name, 0.0) + used
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    head = ", ".join(f"{name} {sec:.1f}" for name, sec in ranked[:top])
    return f"{sum(totals.values()):.1f} CPU s in all: {head}"


# -- rows ------------------------------------------------------------------------------------


def make_catalog(max_replicas: int = 2):
    """The real l40s-48gb tier, a tier no node has, a 7B model and one template per tier."""
    from endpoints import actions

    taints = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    tiers = {
        name: actions.create_gpu_tier(
            None,
            name=name,
            product="NVIDIA-L40S",
            gpu_memory_gib=Decimal("44.99"),
            resource_name="nvidia.com/gpu",
            gpus_per_node=4,
            node_labels={},
            taints=taints,
            price_per_gpu_hour=Decimal("1.20"),
        )
        for name in (GPU_TIER, VOID_TIER)
    }
    model = actions.register_model(
        None,
        name="Qwen2.5-7B-Instruct",
        source="hf://Qwen/Qwen2.5-7B-Instruct",
        revision="a09a35458c702b33eeacc393d103063234e8bc28",
        licence="apache-2.0",
        parameters=7_615_616_512,
        dtype="bf16",
        num_layers=28,
        num_kv_heads=4,
        head_dim=128,
        max_context=32768,
    )
    model = actions.approve_model(None, model)
    image = actions.create_runtime_image(None, repository="vllm/vllm-openai", tag="v0.11.0")
    templates = {
        name: actions.create_template(
            None,
            name=f"qwen-7b-{name}",
            model=model,
            tier=tier,
            image=image,
            max_model_len=8192,
            min_replicas=1,
            max_replicas=max_replicas,
        )
        for name, tier in tiers.items()
    }
    return tiers, templates


def make_tenant(slug: str, *, gpus: dict[str, int], max_endpoints: int = 1000):
    """A tenant with an owner and the owner's API token: (tenant, user, bearer secret)."""
    from django.contrib.auth import get_user_model

    from endpoints import actions

    tenant = actions.create_tenant(None, slug=slug, name=slug)
    total = sum(gpus.values())
    actions.set_quota(
        None,
        tenant,
        gpus_total=total,
        tier_gpus=gpus,
        max_endpoints=max_endpoints,
        max_replicas=min(10_000, max_endpoints * 4),
    )
    user = get_user_model().objects.create_user(username=f"{slug}-owner", password=uuid.uuid4().hex)
    actions.add_member(None, tenant, user, "owner")
    issued = actions.issue_api_token(None, user, name="bench")
    return tenant, user, issued.secret


def api_client(secret: str):
    """Django's test client with a bearer token: the real URLconf, middleware, DRF and database."""
    from django.test import Client

    return Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {secret}")


def ensure_clusters(tenants, timeout: float = 300) -> None:
    """Have the worker install the tenants' vClusters and wait until each is ready."""
    from endpoints.models import TenantCluster
    from portal.celery import app

    for tenant in tenants:
        app.send_task("workers.tasks.ensure_tenant_cluster", args=[tenant.pk])
    deadline = time.monotonic() + timeout
    ids = {t.pk for t in tenants}
    while time.monotonic() < deadline:
        ready = set(
            TenantCluster.objects.filter(tenant_id__in=ids, phase="ready").values_list("tenant_id", flat=True)
        )
        if ready == ids:
            return
        time.sleep(0.5)
    raise SystemExit(f"tenant clusters not ready after {timeout:.0f}s")


def uninstall_clusters(slugs, env: dict[str, str]) -> None:
    """helm uninstall the bench tenants' vClusters (their processes stop, pool nodes go back)."""
    procs = [
        subprocess.Popen(
            [
                env["PORTAL_HELM_BIN"],
                "uninstall",
                slug,
                "--namespace",
                f"t-{slug}",
                "--wait",
                "--timeout",
                "180s",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for slug in slugs
    ]
    for slug, proc in zip(slugs, procs, strict=True):
        _, err = proc.communicate(timeout=240)
        if proc.returncode != 0 and "not found" not in err:
            print(f"warning: helm uninstall {slug}: {err.strip()}", file=sys.stderr)
    from workers.kube import host_cluster

    host = host_cluster()
    for slug in slugs:
        host.delete("v1", "Namespace", f"t-{slug}", propagation="Background")
    deadline = time.monotonic() + 180
    while any(host.get("v1", "Namespace", f"t-{slug}") for slug in slugs) and time.monotonic() < deadline:
        time.sleep(0.5)


def kubeconfig_file(slug: str) -> str:
    """The tenant cluster's kubeconfig (from Secret vc-<slug>) in a file, for kubectl."""
    import base64

    from workers.kube import host_cluster

    secret = host_cluster().get("v1", "Secret", f"vc-{slug}", f"t-{slug}")
    path = Path(tempfile.mkdtemp(prefix="bench-kc-")) / f"{slug}.yaml"
    path.write_bytes(base64.b64decode(secret["data"]["config"]))
    return str(path)


# -- watching a tenant cluster ----------------------------------------------------------------


class Seen:
    """First-seen and deleted times of objects in a tenant cluster, from one watch per kind.

    Both sides of a comparison are timed by the same watches, so the watch delivery delay is in
    both figures alike."""

    def __init__(self, cluster, kinds: list[tuple[str, str]], label_selector: str) -> None:
        self.cluster, self.kinds, self.selector = cluster, kinds, label_selector
        self.added: dict[tuple[str, str, str], float] = {}
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.gone: dict[tuple[str, str, str], float] = {}
        self.probes: dict[str, callable] = {}
        self.hits: dict[str, tuple[float, dict]] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.ready = threading.Barrier(len(kinds) + 1)
        for api_version, kind in kinds:
            threading.Thread(target=self._run, args=(api_version, kind), daemon=True).start()
        self.ready.wait(timeout=30)

    def _run(self, api_version: str, kind: str) -> None:
        first = True
        while not self.stop.is_set():
            try:
                items, rv = self.cluster.list_with_version(api_version, kind, label_selector=self.selector)
                now = time.monotonic()
                with self.cond:
                    for obj in items:
                        key = (kind, obj["metadata"]["namespace"], obj["metadata"]["name"])
                        self.added.setdefault(key, now)
                        self.objects[key] = obj
                if first:
                    first = False
                    self.ready.wait(timeout=30)
                for event in self.cluster.watch(
                    api_version, kind, resource_version=rv, timeout_seconds=120, label_selector=self.selector
                ):
                    now = time.monotonic()
                    if event["type"] == "BOOKMARK":
                        continue
                    obj = event["object"]
                    key = (kind, obj["metadata"]["namespace"], obj["metadata"]["name"])
                    with self.cond:
                        if event["type"] == "DELETED":
                            self.gone[key] = now
                            self.added.pop(key, None)
                            self.objects.pop(key, None)
                        else:
                            self.added.setdefault(key, now)
                            self.objects[key] = obj
                            for probe, test in list(self.probes.items()):
                                if probe not in self.hits and test(obj):
                                    self.hits[probe] = (now, obj)
                        self.cond.notify_all()
                    if self.stop.is_set():
                        return
            except Exception as exc:  # noqa: BLE001 - re-list and go on, as an informer does
                if self.stop.is_set():
                    return  # the bench is done and its cluster going: nothing to report
                print(f"watch {kind}: {exc}", file=sys.stderr)
                time.sleep(0.2)

    def probe(self, name: str, test) -> None:
        """Note the arrival time of the first watch event whose object passes TEST."""
        with self.cond:
            self.probes[name] = test

    def wait_probe(self, name: str, timeout: float = 120) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while name not in self.hits:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{name}: not seen in {timeout:.0f}s")
                self.cond.wait(left)
            self.probes.pop(name, None)
            return self.hits.pop(name)

    def wait_all(self, keys: list[tuple[str, str, str]], timeout: float = 60) -> float:
        """The monotonic time at which the last of KEYS was first seen."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(k in self.added for k in keys):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [k for k in keys if k not in self.added]
                    raise TimeoutError(f"not seen in {timeout:.0f}s: {missing}")
                self.cond.wait(left)
            return max(self.added[k] for k in keys)

    def wait_gone(self, keys: list[tuple[str, str, str]], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while any(k in self.added for k in keys):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"still there after {timeout:.0f}s: {[k for k in keys if k in self.added]}"
                    )
                self.cond.wait(left)


# -- what an API server was asked ----------------------------------------------------------


def server_requests(cluster) -> Counter:
    """The API server's apiserver_request_total so far, as {"VERB resource[/subresource]": n}."""
    import re

    resp = cluster.api.call_api(
        "/metrics",
        "GET",
        header_params={"Accept": "text/plain"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=30,
    )[0]
    try:
        text = resp.data.decode()
    finally:
        resp.release_conn()
    out: Counter = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        head, _, value = line.rpartition(" ")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', head))
        what = labels.get("resource", "")
        if labels.get("subresource"):
            what += "/" + labels["subresource"]
        out[f"{labels.get('verb')} {what}"] += int(float(value))
    return out


# -- figures ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def median(values: list[float]) -> float:
    return statistics.median(values)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


class Report:
    """Summary lines and a verdict: the script exits 1 if any target was missed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.missed: list[str] = []
        self.started_load = load()

    def line(self, text: str) -> None:
        print(f"{self.name}: {text}", flush=True)

    def target(self, figure: str, value: float, op: str, limit: float, unit: str = "") -> None:
        ok = value <= limit if op == "<=" else value >= limit
        if not ok:
            self.missed.append(figure)
        shown = f"{value}" if isinstance(value, int) else f"{value:.3f}"
        self.line(f"{figure} {shown}{unit} (target {op} {limit:g}{unit}) {'PASS' if ok else 'MISS'}")

    def finish(self) -> int:
        self.line(f"load at start: {self.started_load}; at end: {load()}")
        self.line("all targets met" if not self.missed else f"missed: {', '.join(self.missed)}")
        return 1 if self.missed else 0


def dump(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))
