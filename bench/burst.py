#!/usr/bin/env python3
"""Burst: 500 endpoint requests across 5 tenants at once; how fast they are all applied.

    .venv/bin/python bench/burst.py --endpoints 500 --tenants 5

The tenants' vClusters are installed first (not timed: this measures the apply path under load,
not tenant cluster installs). Then POST /api/v1/endpoints/ for every endpoint at once from
--posters processes of 2 threads each, as web workers would take them (Django's test client, token
auth, quota admission under the tenant's row lock), with the real worker (one Celery process, threads pool) and watcher running. The clock stops when
every endpoint's observed_generation has caught up with its generation (the worker writes it after
its objects were applied); then the objects are counted in each tenant cluster with one LIST per
kind, to prove they are there.

The endpoints use a GPU tier no platform node has: their pods stay Pending, no pool node is taken
and the serving emulator starts no vLLM emulators. Target: at least 10 endpoints applied per second.

Then, side by side (skip with --no-kubectl), the same burst by hand: the same endpoints' rendered
objects applied with `kubectl apply --server-side -f`, one file per endpoint, from as many kubectl
processes at once as there were posting threads, into fresh tenant clusters of their own. Its rate
and the ratio are printed, not held to a target.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

from workers import manifests  # noqa: E402

# Every kind an endpoint has, but the autoscaler: these endpoints run a fixed single replica.
KINDS = [
    (v, k)
    for v, k in [("apps/v1", "Deployment"), *manifests.COMPANION_KINDS]
    if k != "HorizontalPodAutoscaler"
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=500)
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--posters", type=int, default=5, help="processes posting at once (2 threads each)")
    parser.add_argument("--pool", default="threads", choices=["threads", "prefork"], help="the worker's pool")
    parser.add_argument("--concurrency", type=int, default=8, help="the worker's threads or processes")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--no-kubectl",
        dest="kubectl",
        action="store_false",
        help="skip the side-by-side burst of kubectl apply --server-side",
    )
    parser.add_argument("--keep-clusters", action="store_true", help="leave the bench vClusters installed")
    parser.add_argument(
        "--rest", type=float, default=15, help="seconds to measure the processes at rest after"
    )
    args = parser.parse_args()

    env = h.setup("portal_bench_burst", redis_db=13)
    from django.db import connection
    from django.db.models import F

    from endpoints import naming
    from endpoints.models import Endpoint
    from workers.kube import tenant_cluster

    report = h.Report("burst")
    slugs = [f"bnchburst{i}" for i in range(1, args.tenants + 1)]
    h.uninstall_clusters(slugs, env)  # what an interrupted run left: every run starts from empty clusters
    stack = h.Stack(env, concurrency=args.concurrency, pool=args.pool).start()
    try:
        _, templates = h.make_catalog(max_replicas=1)
        template = templates[h.VOID_TIER]
        per_tenant = -(-args.endpoints // args.tenants)
        tenants = [
            h.make_tenant(slug, gpus={h.VOID_TIER: 4 * per_tenant}, max_endpoints=per_tenant)
            for slug in slugs
        ]
        started = time.monotonic()
        h.ensure_clusters([t for t, _, _ in tenants], timeout=600)
        report.line(
            f"{len(slugs)} tenant clusters installed beforehand in {time.monotonic() - started:.1f} s (not timed)"
        )

        work = [(tenants[i % len(tenants)], f"b{i:04d}") for i in range(args.endpoints)]
        names = {name for _, name in work}

        def poster(k: int, go, failures) -> None:
            """One poster process (a web worker's share): its slice of the requests, in 2 threads."""
            connection.close()  # the parent's connection is not this process's to use

            def post(part) -> None:
                clients = {t.slug: h.api_client(secret) for t, _, secret in tenants}
                go.wait()
                for (tenant, _, _), name in part:
                    resp = clients[tenant.slug].post(
                        "/api/v1/endpoints/",
                        {"tenant": tenant.slug, "template": template.name, "name": name},
                        content_type="application/json",
                    )
                    if resp.status_code != 201:
                        failures.put(f"{name}: {resp.status_code} {resp.content[:200]!r}")
                connection.close()

            # A contiguous share: every poster (a web worker) takes requests for every tenant, as
            # a load balancer hands them out (a stride of the tenant count would give each one
            # tenant's requests only).
            share = -(-len(work) // args.posters)
            mine = work[k * share : (k + 1) * share]
            threads = [threading.Thread(target=post, args=(mine[j::2],)) for j in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        # Poster processes, as web workers would be (one Python process would be bound by its GIL).
        ctx = multiprocessing.get_context("fork")
        go, failures = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=poster, args=(k, go, failures)) for k in range(args.posters)]
        connection.close()
        for p in procs:
            p.start()
        time.sleep(2)  # let them set up their clients
        clusters = {t.slug: tenant_cluster(naming.namespace_for(t), t.slug) for t, _, _ in tenants}
        asked_before = sum((h.server_requests(c) for c in clusters.values()), Counter())
        cpu_before = {**stack.cpu(), "bench (POSTs)": h.children_cpu_seconds()}
        machine_before = h.cpu_by_process()
        t0 = time.monotonic()
        go.set()
        for p in procs:
            p.join()
        posted = time.monotonic() - t0
        errors = []
        while not failures.empty():
            errors.append(failures.get())
        if errors or any(p.exitcode for p in procs):
            raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[:3]}")

        ids = [t.pk for t, _, _ in tenants]
        deadline = t0 + args.timeout
        marks: dict[int, float] = {}
        while True:
            rows = Endpoint.objects.filter(tenant_id__in=ids)
            done = rows.filter(observed_generation__gte=F("generation")).count()
            now = time.monotonic()
            for share in (50, 90, 100):
                if share not in marks and done >= args.endpoints * share / 100:
                    marks[share] = now - t0
            if done >= args.endpoints:
                break
            failed = rows.filter(phase="failed").count()
            if failed or now > deadline:
                raise SystemExit(
                    f"{done} of {args.endpoints} applied after {now - t0:.0f} s ({failed} failed)"
                )
            time.sleep(0.1)
        total = marks[100]
        cpu_after = {**stack.cpu(), "bench (POSTs)": h.children_cpu_seconds()}
        machine = h.cpu_used_since(machine_before)
        asked = sum((h.server_requests(c) for c in clusters.values()), Counter()) - asked_before
        stack.check()

        # The objects are there: one LIST per kind per tenant cluster.
        counts = {kind: 0 for _, kind in KINDS}
        for tenant, _, _ in tenants:
            ns = naming.namespace_for(tenant)
            cluster = tenant_cluster(ns, tenant.slug)
            for api_version, kind in KINDS:
                items = cluster.list(
                    api_version, kind, ns, label_selector="app.kubernetes.io/managed-by=inference-portal"
                )
                counts[kind] += sum(
                    1
                    for o in items["items"]
                    if o["metadata"]["labels"].get("inference-portal.io/endpoint") in names
                )
        short = {k: v for k, v in counts.items() if v < args.endpoints}
        if short:
            raise SystemExit(f"objects missing in the tenant clusters: {short}")

        report.line(
            f"{args.endpoints} POSTs from {args.posters} processes x 2 threads took {posted:.1f} s "
            f"({args.endpoints / posted:.1f}/s); worker pool {args.pool} x {args.concurrency}"
        )
        report.line(
            f"applied (observed_generation caught up): 50% at {marks[50]:.1f} s, 90% at {marks[90]:.1f} s, "
            f"100% at {total:.1f} s; objects counted per kind in the tenant clusters: {counts}"
        )
        used = {k: cpu_after[k] - cpu_before[k] for k in cpu_before}
        report.line(
            "CPU seconds until all were applied: "
            + ", ".join(
                f"{k} {v:.1f} s ({v / args.endpoints * 1000:.0f} ms per endpoint)" for k, v in used.items()
            )
            + f"; wall {total:.1f} s on {os.cpu_count()} cores"
        )
        report.line(f"the whole machine meanwhile (every process, others' too): {machine}")
        top = ", ".join(f"{what} {n / args.endpoints:.1f}" for what, n in asked.most_common(14))
        report.line(
            f"the tenant API servers were asked {sum(asked.values()) / args.endpoints:.1f} requests per endpoint "
            f"meanwhile, by everyone (portal, controllers, scheduler, KWOK, emulators); the most: {top}"
        )
        # At rest afterwards: what the portal's processes cost with the endpoints pending.
        rest_before, rest_started, machine_before = stack.cpu(), time.monotonic(), h.cpu_by_process()
        time.sleep(args.rest)
        rest = {k: (v - rest_before[k]) / (time.monotonic() - rest_started) for k, v in stack.cpu().items()}
        report.line(
            f"at rest for {args.rest:.0f} s afterwards, {args.endpoints} endpoints pending: "
            + ", ".join(f"{k} {v * 100:.0f}% of a core" for k, v in rest.items())
            + f"; the whole machine: {h.cpu_used_since(machine_before, top=6)}"
        )
        report.target("endpoints applied per second", args.endpoints / total, ">=", 10, "/s")
    finally:
        stack.stop()
        if not args.keep_clusters:
            h.uninstall_clusters(slugs, env)
    if args.kubectl:
        rate = kubectl_burst(args, env, report, template)
        report.line(
            f"ratio portal/kubectl (endpoints applied per second) {args.endpoints / total / rate:.3f}"
        )
    return report.finish()


def kubectl_burst(args, env: dict[str, str], report: h.Report, template) -> float:
    """The same burst by hand: every endpoint's rendered objects (namespace included, as
    apply_path renders them) applied with `kubectl apply --server-side -f`, from as many kubectl
    processes at once as there were posting threads, into fresh tenant clusters of their own.
    The clock runs from the first kubectl start until the last one exits."""
    import subprocess
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    import yaml

    from endpoints import actions, dispatch, naming
    from workers import manifests, provision
    from workers.kube import tenant_cluster

    slugs = [f"bnchkube{i}" for i in range(1, args.tenants + 1)]
    h.uninstall_clusters(slugs, env)
    stack = h.Stack(env, concurrency=args.concurrency, pool=args.pool, watcher=False).start()
    try:
        per_tenant = -(-args.endpoints // args.tenants)
        tenants = [
            h.make_tenant(slug, gpus={h.VOID_TIER: 4 * per_tenant}, max_endpoints=per_tenant)[0]
            for slug in slugs
        ]
        h.ensure_clusters(tenants, timeout=600)
    finally:
        stack.stop()  # the portal installed the clusters; from here on only kubectl talks to them
    kubectl = str(Path(env["PORTAL_K8S_BIN"]) / "kubectl")
    workdir = Path(tempfile.mkdtemp(prefix="bench-burst-kubectl-"))
    jobs = []
    real_send, dispatch.send_task = dispatch.send_task, lambda *a: None  # rows only, no deploy task
    try:
        for tenant in tenants:
            namespace = naming.namespace_for(tenant)
            cluster = tenant_cluster(namespace, tenant.slug)
            kubeconfig = h.kubeconfig_file(tenant.slug)
            for i in range(per_tenant):
                row = actions.request_endpoint(None, tenant=tenant, template=template, name=f"k{i:04d}")
                docs = [
                    manifests.render_namespace(tenant.slug, namespace),
                    *provision.desired_objects(cluster, provision.load(row.pk)),
                ]
                path = workdir / f"{tenant.slug}-{i:04d}.yaml"
                path.write_text(yaml.safe_dump_all(docs))
                jobs.append((kubeconfig, path))
    finally:
        dispatch.send_task = real_send
    jobs = jobs[: args.endpoints]

    def apply(job) -> None:
        kubeconfig, path = job
        argv = [
            kubectl,
            "--kubeconfig",
            kubeconfig,
            "apply",
            "--server-side",
            "--field-manager=bench-kubectl",
        ]
        done = subprocess.run([*argv, "-f", str(path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"kubectl apply failed: {done.stderr[-1000:]}")

    processes = args.posters * 2
    machine_before = h.cpu_by_process()
    started = time.monotonic()
    with ThreadPoolExecutor(processes) as pool:
        list(pool.map(apply, jobs))
    took = time.monotonic() - started
    machine = h.cpu_used_since(machine_before)
    try:
        report.line(
            f"kubectl apply --server-side of the same {len(jobs)} endpoints' objects, {processes} kubectl "
            f"processes at once: {took:.1f} s ({len(jobs) / took:.1f}/s)"
        )
        report.line(
            f"the whole machine meanwhile (kubectl; its own processes had exited, so are not counted): {machine}"
        )
    finally:
        if not args.keep_clusters:
            h.uninstall_clusters(slugs, env)
    return len(jobs) / took


if __name__ == "__main__":
    sys.exit(main())
