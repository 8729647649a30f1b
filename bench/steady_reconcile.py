#!/usr/bin/env python3
"""Steady reconcile: a full reconcile over 200 live endpoints with nothing drifted.

    .venv/bin/python bench/steady_reconcile.py --endpoints 200 --tenants 2

The endpoints are requested through the API and applied by a real worker into --tenants tenant
clusters (a GPU tier no node has: pods stay Pending). Then the worker and the watcher are stopped,
so nothing else of the portal talks to the clusters, and workers.tasks.reconcile runs --runs times
in this process, as Celery beat would have it run (lost work, stuck deletes, drift repair).

Every request the reconcile makes goes through workers.kube.client.Cluster._call, which the bench
wraps to count requests by verb and cluster. As a cross-check from the servers' side, the tenant
API servers' apiserver_request_total (from /metrics) is read before and after each reconcile: the
bench prints the writes (POST, PUT, PATCH, DELETE, APPLY) to the endpoints' kinds outside status
subresources, which only the portal makes. Target: 0 writes; the duration and the API calls per
endpoint are reported.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

WRITES = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE", "DELETECOLLECTION"}
OUR_RESOURCES = {
    "deployments",
    "services",
    "secrets",
    "serviceaccounts",
    "httproutes",
    "poddisruptionbudgets",
    "networkpolicies",
    "horizontalpodautoscalers",
    "namespaces",
}


def server_writes(cluster) -> Counter:
    """Writes to the endpoints' kinds (not their status) the API server has counted so far."""
    out: Counter = Counter()
    for what, n in h.server_requests(cluster).items():
        verb, _, resource = what.partition(" ")
        if verb in WRITES and resource in OUR_RESOURCES:  # a subresource reads "kind/sub"
            out[what] += n
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--tenants", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    env = h.setup("portal_bench_reconcile", redis_db=14)
    from django.db.models import F

    from endpoints import naming
    from endpoints.models import Endpoint
    from workers import tasks
    from workers.kube import client as kube_client
    from workers.kube import tenant_cluster

    report = h.Report("steady_reconcile")
    slugs = [f"bnchrecon{i}" for i in range(1, args.tenants + 1)]
    h.uninstall_clusters(slugs, env)  # what an interrupted run left: start from empty clusters
    stack = h.Stack(env).start()
    try:
        _, templates = h.make_catalog(max_replicas=2)
        template = templates[h.VOID_TIER]
        per_tenant = -(-args.endpoints // args.tenants)
        tenants = [
            h.make_tenant(s, gpus={h.VOID_TIER: 8 * per_tenant}, max_endpoints=per_tenant) for s in slugs
        ]
        h.ensure_clusters([t for t, _, _ in tenants], timeout=600)
        for i in range(args.endpoints):
            tenant, _, secret = tenants[i % len(tenants)]
            resp = h.api_client(secret).post(
                "/api/v1/endpoints/",
                # min < max: the HPA is among the objects, so all eight kinds are checked
                {
                    "tenant": tenant.slug,
                    "template": template.name,
                    "name": f"r{i:04d}",
                    "min_replicas": 1,
                    "max_replicas": 2,
                },
                content_type="application/json",
            )
            if resp.status_code != 201:
                raise SystemExit(f"POST answered {resp.status_code}: {resp.content[:300]!r}")
        deadline = time.monotonic() + 600
        rows = Endpoint.objects.filter(tenant__slug__in=slugs)
        while rows.filter(observed_generation__lt=F("generation")).exists():
            if time.monotonic() > deadline:
                raise SystemExit("the endpoints were not applied within 10 minutes")
            time.sleep(0.5)
        time.sleep(5)  # let the watcher write the phases it sees, so the rows are at rest
        stack.stop()  # from here on, nothing of the portal's but the reconcile talks to the clusters
        live = rows.exclude(phase="deleted").count()
        clusters = {s: tenant_cluster(f"t-{s}", s) for s in slugs}

        counts: Counter = Counter()
        lock = threading.Lock()
        real_call = kube_client.Cluster._call

        def counted(self, method, path, what, **kwargs):
            with lock:
                counts[(method, "host" if self.name == "host" else "tenant")] += 1
            return real_call(self, method, path, what, **kwargs)

        kube_client.Cluster._call = counted
        durations, per_run, server = [], [], Counter()
        try:
            for run in range(args.runs):
                before = {s: server_writes(c) for s, c in clusters.items()}
                counts.clear()
                started = time.perf_counter()
                result = tasks.reconcile()
                durations.append(time.perf_counter() - started)
                calls = Counter(counts)
                after = {s: server_writes(c) for s, c in clusters.items()}
                for s in slugs:
                    server.update(after[s] - before[s])
                per_run.append(calls)
                writes = sum(n for (verb, _), n in calls.items() if verb in WRITES)
                print(
                    f"  run {run + 1}: {durations[-1] * 1000:.0f} ms, {sum(calls.values())} calls "
                    f"({dict((f'{v} {w}', n) for (v, w), n in sorted(calls.items()))}), {writes} writes; {result}",
                    flush=True,
                )
            # Control: the same counting sees a write when there is one to make.
            victim = rows.exclude(phase="deleted").select_related("tenant").first()
            ns, name = naming.namespace_for(victim.tenant), naming.object_name(victim)
            cluster = clusters[victim.tenant.slug]
            cluster.delete("v1", "Service", name, ns, propagation="Background")
            while cluster.get("v1", "Service", name, ns) is not None:
                time.sleep(0.1)
            before = server_writes(cluster)
            counts.clear()
            tasks.reconcile()
            control_client = sum(n for (verb, _), n in counts.items() if verb in WRITES)
            control_server = sum((server_writes(cluster) - before).values())
        finally:
            kube_client.Cluster._call = real_call

        client_writes = sum(n for calls in per_run for (verb, _), n in calls.items() if verb in WRITES)
        total_calls = [sum(c.values()) for c in per_run]
        report.line(
            f"reconcile over {live} live endpoints in {len(slugs)} tenant clusters, nothing drifted: "
            f"median {h.median(durations) * 1000:.0f} ms, max {max(durations) * 1000:.0f} ms (n={len(durations)})"
        )
        report.line(
            f"API calls per reconcile: median {h.median(total_calls):.0f} "
            f"({h.median(total_calls) / live:.2f} per endpoint); by verb and cluster {dict(per_run[-1])}"
        )
        report.line(
            "writes to the endpoints' kinds counted by the tenant API servers during the reconciles "
            f"(apiserver_request_total, status excluded): {sum(server.values())} {dict(server) or ''}"
        )
        report.line(
            f"control: with one Service deleted by hand, the reconcile made {control_client} write(s); "
            f"the API server counted {control_server}"
        )
        report.target("writes by the reconcile (client side, all runs)", client_writes, "<=", 0)
        report.target("writes counted by the API servers", sum(server.values()), "<=", 0)
    finally:
        stack.stop()
        h.uninstall_clusters(slugs, env)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
