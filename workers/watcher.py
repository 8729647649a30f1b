"""The cluster watcher: turns what tenant clusters say into endpoint phases, conditions, progress
and plain-language problems.

One thread per (tenant cluster, kind) keeps a cache by list-then-watch, resuming from the last
resourceVersion and re-listing on 410 Gone; it only notes which endpoints changed. One loop reads
those endpoints (workers/status.py) and writes what changed, by compare-and-set. The database is
touched only from that loop's thread.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from endpoints import actions, naming
from endpoints.choices import EndpointPhase, TenantClusterPhase
from endpoints.models import Endpoint, EndpointUsage, TenantCluster

from . import status as st
from .kube import Cluster, KubeError, tenant_cluster
from .verify import Verifier

log = logging.getLogger(__name__)
P = EndpointPhase
MANAGED = "app.kubernetes.io/managed-by=inference-portal"
ENDPOINT_LABEL = "inference-portal.io/endpoint"
# Failures the workers decided (bad objects, forbidden): the watcher must not paper over them.
WORKER_FAILURES = frozenset({"Invalid", "Forbidden", "GaveUp", "InternalError"})
WATCHED_PHASES = frozenset(
    {
        P.SCHEDULING,
        P.PULLING,
        P.DOWNLOADING_WEIGHTS,
        P.LOADING_MODEL,
        P.VERIFYING,
        P.READY,
        P.DEGRADED,
        P.FAILED,
    }
)
# Scheduling reasons read on every tick (see loading_endpoints): the worker's, and a full tier's.
TICKED_SCHEDULING_REASONS = ("Applied", "InsufficientGpu")
LOADING = frozenset({st.SCHEDULING, st.PULLING, st.DOWNLOADING_WEIGHTS, st.LOADING_MODEL, st.FAILED})


@dataclass
class Informer:
    """A cache of one kind in one cluster, fed by list-then-watch."""

    cluster: Cluster
    api_version: str
    kind: str
    on_change: callable
    label_selector: str | None = None
    items: dict[tuple[str, str], dict] = field(default_factory=dict)
    synced: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = 0  # goes up on every change to items
    indexes: dict[str, tuple[int, dict]] = field(default_factory=dict)

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.items.values())

    def get(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            return self.items.get((namespace, name))

    def index(self, name: str, key) -> dict:
        """The items grouped by KEY(item), kept until the items change: a tick reads hundreds of
        endpoints from the same cache, and scanning it whole for each one made the watcher's
        load grow with the square of the endpoints."""
        with self.lock:
            cached = self.indexes.get(name)
            if cached is not None and cached[0] == self.version:
                return cached[1]
            grouped: dict = {}
            for obj in self.items.values():
                grouped.setdefault(key(obj), []).append(obj)
            self.indexes[name] = (self.version, grouped)
            return grouped

    def run(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            try:
                items, rv = self.cluster.list_with_version(
                    self.api_version, self.kind, label_selector=self.label_selector
                )
                with self.lock:
                    self.items = {self._key(o): o for o in items}
                    self.version += 1
                self.synced.set()
                for obj in items:
                    self.on_change(obj)
                delay = 0.5
                while not self.stop.is_set():
                    for event in self.cluster.watch(
                        self.api_version,
                        self.kind,
                        resource_version=rv,
                        timeout_seconds=60,
                        label_selector=self.label_selector,
                    ):
                        obj = event["object"]
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if event["type"] == "BOOKMARK":
                            continue
                        with self.lock:
                            if event["type"] == "DELETED":
                                self.items.pop(self._key(obj), None)
                            else:
                                self.items[self._key(obj)] = obj
                            self.version += 1
                        self.on_change(obj)
                        if self.stop.is_set():
                            return
            except KubeError as exc:
                if exc.status == 410:
                    log.info("%s %s: resourceVersion too old; re-listing", self.cluster.name, self.kind)
                    continue
                log.warning("%s %s: %s; re-listing in %.1fs", self.cluster.name, self.kind, exc.reason, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 10)
            except Exception:  # noqa: BLE001 - keep watching; the traceback goes to the log
                log.exception("%s %s: watch failed", self.cluster.name, self.kind)
                self.stop.wait(delay)
                delay = min(delay * 2, 10)

    @staticmethod
    def _key(obj: dict) -> tuple[str, str]:
        return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


class TenantWatch:
    """The informers of one tenant cluster."""

    def __init__(self, tenant_id: int, slug: str, cluster: Cluster, notify) -> None:
        self.tenant_id, self.slug, self.cluster = tenant_id, slug, cluster
        self.namespace = naming.namespace_for(slug)

        def by_label(obj: dict) -> None:
            name = (obj["metadata"].get("labels") or {}).get(ENDPOINT_LABEL)
            if name:
                notify(tenant_id, name)

        def by_event(obj: dict) -> None:
            involved = obj.get("involvedObject") or {}
            name = involved.get("name", "")
            if name.startswith(naming.OBJECT_PREFIX):
                # ep-<endpoint>[-<replicaset hash>[-<pod suffix>]]: endpoints are matched in the loop
                notify(tenant_id, None, hint=name)

        self.pods = Informer(cluster, "v1", "Pod", by_label, label_selector=MANAGED)
        self.deployments = Informer(cluster, "apps/v1", "Deployment", by_label, label_selector=MANAGED)
        self.routes = Informer(
            cluster, "gateway.networking.k8s.io/v1", "HTTPRoute", by_label, label_selector=MANAGED
        )
        self.events = Informer(cluster, "v1", "Event", by_event)
        self.informers = [self.pods, self.deployments, self.routes, self.events]
        for inf in self.informers:
            threading.Thread(target=inf.run, daemon=True, name=f"watch-{slug}-{inf.kind}").start()

    def stop(self) -> None:
        for inf in self.informers:
            inf.stop.set()

    def synced(self) -> bool:
        return all(inf.synced.is_set() for inf in self.informers)


class Watcher:
    def __init__(self, *, tick: float = 1.0) -> None:
        self.tick = tick
        self.watches: dict[int, TenantWatch] = {}
        self.dirty: queue.Queue = queue.Queue()
        self.last_log_fetch: dict[int, float] = {}
        self.logs: dict[int, list[str]] = {}
        self.verifier = Verifier()
        self.seen_replicas: dict[int, int] = {}
        self.recent_events: dict[str, deque] = defaultdict(lambda: deque(maxlen=20))

    # -- change notifications (informer threads) -------------------------------------------

    def notify(self, tenant_id: int, endpoint_name: str | None, hint: str | None = None) -> None:
        self.dirty.put((tenant_id, endpoint_name, hint))

    # -- tenant clusters -------------------------------------------------------------------

    def sync_clusters(self) -> None:
        ready = dict(
            TenantCluster.objects.filter(phase=TenantClusterPhase.READY).values_list(
                "tenant_id", "tenant__slug"
            )
        )
        for tenant_id in list(self.watches):
            if tenant_id not in ready:
                self.watches.pop(tenant_id).stop()
        for tenant_id, slug in ready.items():
            if tenant_id in self.watches:
                continue
            try:
                cluster = tenant_cluster(naming.namespace_for(slug), slug)
            except KubeError as exc:
                log.warning("tenant cluster %s: %s", slug, exc.reason)
                continue
            self.watches[tenant_id] = TenantWatch(tenant_id, slug, cluster, self.notify)
            log.info("watching tenant cluster %s", slug)

    # -- reading one endpoint --------------------------------------------------------------

    def snapshot(self, endpoint: Endpoint, watch: TenantWatch) -> st.Snapshot:
        ns, name = naming.namespace_for(endpoint.tenant), naming.object_name(endpoint)
        pods = list(watch.pods.index("endpoint", _pod_endpoint).get((ns, endpoint.name), ()))
        deployment = watch.deployments.get(ns, name)
        route = watch.routes.get(ns, name)
        events_by_object = watch.events.index("involved", _involved_name)
        events = [
            e for n in {p["metadata"]["name"] for p in pods} | {name} for e in events_by_object.get(n, ())
        ]
        events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        template, tier = endpoint.template, endpoint.template.tier
        desired = (
            endpoint.max_replicas
            if endpoint.max_replicas == endpoint.min_replicas
            else max(1, (deployment or {}).get("spec", {}).get("replicas") or endpoint.min_replicas)
        )
        return st.Snapshot(
            tenant_ready=True,
            deployment=deployment,
            pods=pods,
            events=events,
            route=route,
            log_lines=self.logs.get(endpoint.pk, []),
            desired_replicas=desired,
            tier=tier.name,
            resource_name=tier.resource_name,
            image=template.image.reference,
            namespace=ns,
            expected_load_seconds=settings.PORTAL_EMULATED_LOAD_SECONDS if settings.PORTAL_EMULATE else 120,
            queue_position=None,
            verified=self.verifier.verified(endpoint.pk, recorded=endpoint.verified_at is not None),
            verify_error=self.verifier.error(endpoint.pk),
            gateway_controller=settings.PORTAL_GATEWAY_CONTROLLER,
        )

    def queue_position(self, endpoint: Endpoint) -> int:
        """1 + how many endpoints of the same tier have waited for GPUs longer than this one."""
        return (
            Endpoint.objects.filter(
                template__tier=endpoint.template.tier,
                phase=P.SCHEDULING,
                phase_reason="InsufficientGpu",
                created__lt=endpoint.created,
            ).count()
            + 1
        )

    def fetch_logs(self, endpoint: Endpoint, watch: TenantWatch, reading: st.Reading | None) -> bool:
        """The lead pod's recent log lines, while the model loads or a pod crashes (throttled).
        True when new lines were read."""
        now = time.monotonic()
        if now - self.last_log_fetch.get(endpoint.pk, 0) < 1.5:
            return False
        self.last_log_fetch[endpoint.pk] = now
        ns = naming.namespace_for(endpoint.tenant)
        pods = [
            p
            for p in watch.pods.index("endpoint", _pod_endpoint).get((ns, endpoint.name), ())
            if (p.get("spec") or {}).get("nodeName")
        ]
        if not pods:
            return False
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
        try:
            self.logs[endpoint.pk] = watch.cluster.pod_log(ns, pods[0]["metadata"]["name"], "vllm")
        except KubeError:
            return (
                False  # no logs yet (container starting) or no log endpoint; status alone still tells a lot
            )
        return True

    def process(self, endpoint: Endpoint) -> None:
        watch = self.watches.get(endpoint.tenant_id)
        if watch is None or not watch.synced():
            return
        if endpoint.phase not in WATCHED_PHASES or (
            endpoint.phase == P.FAILED and endpoint.phase_reason in WORKER_FAILURES
        ):
            return
        snap = self.snapshot(endpoint, watch)
        reading = st.read(snap)
        if (reading.phase in LOADING or reading.phase == st.DEGRADED) and self.fetch_logs(
            endpoint, watch, reading
        ):
            snap = self.snapshot(endpoint, watch)
            reading = st.read(snap)
        if any(p.code == "insufficient_gpu" for p in reading.problems):
            snap.queue_position = self.queue_position(endpoint)
            reading = st.read(snap)
        if reading.phase == st.VERIFYING and reading.conditions["ModelLoaded"].status == "True":
            self.verifier.request(endpoint, reading)
        self.write(endpoint, reading)

    def write(self, endpoint: Endpoint, reading: st.Reading) -> None:
        """Write only what changed: phase by compare-and-set, then conditions, progress, replicas."""
        if reading.phase == st.REQUESTED:
            return  # the Deployment is gone or not yet applied: the workers' business, not ours
        if _backwards(endpoint.phase, reading.phase):
            # Log lines can arrive after an estimate moved the phase on; never show a step back
            # between download and load (a real restart goes through Scheduling instead).
            reading.phase = endpoint.phase
        if reading.phase != endpoint.phase:
            problem = reading.problems[0] if reading.problems else None
            reason = _camel(problem.code) if problem else _camel(reading.phase)
            message = f"{problem.message} {problem.fix}" if problem else PHASE_MESSAGES.get(reading.phase, "")
            try:
                actions.transition_endpoint(
                    endpoint.pk, expected=endpoint.phase, new=reading.phase, reason=reason, message=message
                )
            except Exception as exc:  # noqa: BLE001 - an illegal step is logged, not fatal to the loop
                log.warning("endpoint %s: %s", endpoint.pk, exc)
        # Without a change of phase, what changed is written in one UPDATE, while the phase holds.
        fields: dict = {}
        if reading.phase == endpoint.phase and reading.problems:
            problem = reading.problems[0]
            reason, message = _camel(problem.code), f"{problem.message} {problem.fix}"[:500]
            if (endpoint.phase_reason, endpoint.phase_message) != (reason, message):
                fields.update(phase_reason=reason, phase_message=message)
        current = {c["type"]: c for c in endpoint.conditions or []}
        changed = []
        for ctype, cond in reading.conditions.items():
            old = current.get(ctype)
            if old is None or (old.get("status"), old.get("reason"), old.get("message")) != (
                cond.status,
                cond.reason,
                cond.message[:500],
            ):
                changed.append((ctype, cond.status, cond.reason or ctype, cond.message[:500]))
        progress = reading.progress if reading.phase != st.READY else 100
        if reading.phase == endpoint.phase and reading.phase in STARTUP_ORDER and endpoint.load_progress:
            # Within one stage the bar only moves forward: a late log line or an estimate from an
            # earlier stage must not pull it back (a restart goes through Scheduling and resets it).
            progress = max(progress, endpoint.load_progress)
        if reading.phase == st.SCHEDULING:
            progress = min(progress, STAGE_FLOOR_SCHEDULING)
        moved = reading.phase != endpoint.phase
        if endpoint.load_progress != progress:
            if moved:
                actions.record_observation(endpoint.pk, load_progress=progress)
            else:
                fields["load_progress"] = progress
        if changed:
            actions.set_endpoint_conditions(
                endpoint.pk, changed, read=endpoint.conditions, also=fields, phase=endpoint.phase
            )
        elif fields:
            Endpoint.objects.filter(pk=endpoint.pk, phase=endpoint.phase).update(**fields)
        # What the usage rows say runs now (read with the endpoint, see _endpoints) until this
        # process has recorded a count itself: a new endpoint's first "0 ready" costs no write.
        seen = self.seen_replicas.get(endpoint.pk, getattr(endpoint, "recorded_replicas", None))
        if (seen or 0) != reading.ready_replicas:
            actions.record_running_replicas(endpoint.pk, reading.ready_replicas)
            self.seen_replicas[endpoint.pk] = reading.ready_replicas

    # -- the loop --------------------------------------------------------------------------

    def endpoints_for(self, keys: set[tuple[int, str | None, str | None]]) -> list[Endpoint]:
        named: dict[int, set[str]] = defaultdict(set)
        hinted: dict[int, set[str]] = defaultdict(set)
        for tenant_id, name, hint in keys:
            if name:
                named[tenant_id].add(name)
            elif hint:
                hinted[tenant_id].add(hint)
        # One query for the batch. A hint is ep-<endpoint>[-<replicaset hash>[-<pod suffix>]]: the
        # endpoint's name is the hint without "ep-" and without none, one or two trailing parts,
        # so only those rows are read (not every endpoint of the tenant for each batch of events).
        wanted = Q()
        for tenant_id in named.keys() | hinted.keys():
            candidates = set(named[tenant_id])
            for hint in hinted[tenant_id]:
                parts = hint.removeprefix(naming.OBJECT_PREFIX).split("-")
                candidates.update("-".join(parts[:n]) for n in range(max(1, len(parts) - 2), len(parts) + 1))
            wanted |= Q(tenant_id=tenant_id, name__in=candidates)
        if not wanted:
            return []
        found = []
        for ep in _endpoints().filter(wanted, phase__in=WATCHED_PHASES):
            obj = naming.object_name(ep)
            if ep.name in named[ep.tenant_id] or any(
                h == obj or h.startswith(obj + "-") for h in hinted[ep.tenant_id]
            ):
                found.append(ep)
        return found

    def loading_endpoints(self) -> list[Endpoint]:
        """Endpoints whose progress moves without cluster events (logs, elapsed time, the gate).

        Of those waiting to be scheduled, only the ones whose place in a full tier's queue moves
        as others leave it, and the ones the worker has just applied (their first cluster events
        may have come before the worker recorded the phase, and so were skipped). Any other wait
        changes only with the cluster, and the informers' events bring it here: reading every
        waiting endpoint every tick cost the watcher a share of a core per few hundred of them."""
        return list(
            _endpoints()
            .filter(tenant_id__in=list(self.watches))
            .filter(
                Q(
                    phase__in=[
                        P.PULLING,
                        P.DOWNLOADING_WEIGHTS,
                        P.LOADING_MODEL,
                        P.VERIFYING,
                        P.DEGRADED,
                        P.FAILED,
                    ]
                )
                | Q(phase=P.SCHEDULING, phase_reason__in=TICKED_SCHEDULING_REASONS)
            )
        )

    def run_once(self, timeout: float) -> int:
        keys: set = set()
        try:
            keys.add(self.dirty.get(timeout=timeout))
            while True:
                keys.add(self.dirty.get_nowait())
        except queue.Empty:
            pass
        endpoints = self.endpoints_for(keys) if keys else []
        for endpoint in endpoints:
            self.process(endpoint)
        return len(endpoints)

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        next_sync = next_tick = 0.0
        while not stop.is_set():
            close_old_connections()
            now = time.monotonic()
            if now >= next_sync:
                self.sync_clusters()
                next_sync = now + 5
            if now >= next_tick:
                for endpoint in self.loading_endpoints():
                    self.process(endpoint)
                next_tick = now + self.tick
            try:
                self.run_once(timeout=min(0.5, self.tick))
            except Exception:  # noqa: BLE001 - one bad endpoint must not stop the watcher
                log.exception("watcher loop failed; continuing")
                time.sleep(1)
        for watch in self.watches.values():
            watch.stop()


PHASE_MESSAGES = {
    st.SCHEDULING: "Waiting for a GPU node.",
    st.PULLING: "Pulling the runtime image.",
    st.DOWNLOADING_WEIGHTS: "Downloading the model weights.",
    st.LOADING_MODEL: "Loading the model into GPU memory.",
    st.VERIFYING: "Sending a first request through the gateway.",
    st.READY: "Serving.",
    st.DEGRADED: "Serving, but not every replica is healthy.",
    st.FAILED: "The endpoint failed.",
}


def _endpoints():
    """Endpoints as the watcher reads them: with what process() needs, in one query, and the
    replicas their open usage interval records (None when none is open)."""
    open_usage = EndpointUsage.objects.filter(endpoint=OuterRef("pk"), ended_at__isnull=True)
    return Endpoint.objects.select_related(
        "tenant", "template", "template__tier", "template__image"
    ).annotate(recorded_replicas=Subquery(open_usage.values("replicas")[:1]))


def _pod_endpoint(pod: dict) -> tuple[str, str | None]:
    meta = pod["metadata"]
    return meta.get("namespace", ""), (meta.get("labels") or {}).get(ENDPOINT_LABEL)


def _involved_name(event: dict) -> str:
    return (event.get("involvedObject") or {}).get("name", "")


STARTUP_ORDER = [st.PULLING, st.DOWNLOADING_WEIGHTS, st.LOADING_MODEL, st.VERIFYING]
STAGE_FLOOR_SCHEDULING = st.STAGE_SPANS[st.SCHEDULING][1]


def _backwards(current: str, new: str) -> bool:
    return (
        current in STARTUP_ORDER
        and new in STARTUP_ORDER
        and STARTUP_ORDER.index(new) < STARTUP_ORDER.index(current)
    )


def _camel(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_")).replace("Gpu", "Gpu")


def now() -> dt.datetime:
    return timezone.now()
