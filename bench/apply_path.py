#!/usr/bin/env python3
"""Apply path: one endpoint's objects into an existing tenant cluster, the portal against kubectl.

    .venv/bin/python bench/apply_path.py --runs 30

Portal: from the start of POST /api/v1/endpoints/ (Django's test client in this process: the real
URLconf, DRF, authentication by API token, request_endpoint's quota admission in PostgreSQL) to the
moment the last of the endpoint's objects is seen in the tenant cluster. Between the two: the task
goes through Redis to a real Celery worker (threads pool), which reads the endpoint, checks the
tenant cluster, renders the manifests and server-side applies the namespace and the objects
(Deployment first, then its companions with ownerReferences), then records the generation.

kubectl: `kubectl apply --server-side -f <file>` of the same rendered objects (namespace included,
from workers.provision.desired_objects, without the ownerReferences the portal adds after the
Deployment exists), with the kubectl built from the control plane's own modules. Its discovery
cache under ~/.kube/cache is warm after the warm-up run, as it is for anyone using kubectl daily;
its requests are counted once with -v=6 and printed.

Both are timed by the same watches (one per kind, labelled objects) on the tenant cluster, so watch
delivery is in both alike; kubectl's own exit time is printed too. Runs alternate portal, kubectl.
The endpoints use a GPU tier no node has, so their pods stay Pending and no pool node is taken.
Each run's objects are removed (and seen gone) before the next run. Target: portal median at most
0.5 x kubectl's median.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

from workers import manifests  # noqa: E402

# Every kind an endpoint has (an autoscaled one, as this bench requests).
KINDS = [("apps/v1", "Deployment"), *manifests.COMPANION_KINDS]
SLUG = "bnchapply"


def keys_for(namespace: str, name: str) -> list[tuple[str, str, str]]:
    obj = f"ep-{name}"
    return [(kind, namespace, f"{obj}-auth" if kind == "Secret" else obj) for _, kind in KINDS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keep-cluster", action="store_true", help="leave the bench vCluster installed")
    parser.add_argument("--json", help="write every sample to this file")
    args = parser.parse_args()

    env = h.setup("portal_bench_apply", redis_db=11)
    from endpoints import actions, dispatch, naming
    from endpoints.models import Endpoint
    from workers import provision
    from workers.kube import tenant_cluster

    report = h.Report("apply_path")
    stack = h.Stack(env).start()
    seen = None
    try:
        _, templates = h.make_catalog()
        template = templates[h.VOID_TIER]
        tenant, _, secret = h.make_tenant(SLUG, gpus={h.VOID_TIER: 10_000})
        h.ensure_clusters([tenant])
        namespace = naming.namespace_for(tenant)
        cluster = tenant_cluster(namespace, SLUG)
        seen = h.Seen(cluster, KINDS, "app.kubernetes.io/managed-by=inference-portal")
        client = h.api_client(secret)
        kubectl = str(Path(env["PORTAL_K8S_BIN"]) / "kubectl")
        kubeconfig = h.kubeconfig_file(SLUG)
        workdir = Path(tempfile.mkdtemp(prefix="bench-apply-"))

        def portal_run(name: str) -> float:
            started = time.monotonic()
            resp = client.post(
                "/api/v1/endpoints/",
                {
                    "tenant": SLUG,
                    "template": template.name,
                    "name": name,
                    "min_replicas": 1,
                    "max_replicas": 2,
                },
                content_type="application/json",
            )
            if resp.status_code != 201:
                raise SystemExit(f"POST answered {resp.status_code}: {resp.content[:500]!r}")
            posted = time.monotonic() - started
            keys = keys_for(namespace, name)
            last = seen.wait_all(keys)
            elapsed = last - started
            if os.environ.get("BENCH_DEBUG"):
                first = min(seen.added[k] for k in keys) - started
                print(f"    post {posted * 1000:.0f} ms, first object {first * 1000:.0f} ms", flush=True)
            pk = resp.json()["id"]
            client.delete(f"/api/v1/endpoints/{pk}/")
            seen.wait_gone(keys)
            deadline = time.monotonic() + 60
            while Endpoint.objects.get(pk=pk).phase != "deleted" and time.monotonic() < deadline:
                time.sleep(0.05)
            return elapsed

        def kubectl_run(name: str, verbose: bool = False) -> tuple[float, float, int]:
            # The same rendered objects, from an endpoint row whose deploy task is never sent.
            real_send, dispatch.send_task = dispatch.send_task, lambda *a: None
            try:
                endpoint = actions.request_endpoint(
                    None, tenant=tenant, template=template, name=name, min_replicas=1, max_replicas=2
                )
            finally:
                dispatch.send_task = real_send
            endpoint = provision.load(endpoint.pk)
            from workers import manifests

            docs = [
                manifests.render_namespace(SLUG, namespace),
                *provision.desired_objects(cluster, endpoint),
            ]
            path = workdir / f"{name}.yaml"
            import yaml

            path.write_text(yaml.safe_dump_all(docs))
            argv = [
                kubectl,
                "--kubeconfig",
                kubeconfig,
                "apply",
                "--server-side",
                "--field-manager=bench-kubectl",
            ]
            argv += ["-f", str(path)] + (["-v=6"] if verbose else [])
            started = time.monotonic()
            done = subprocess.run(argv, capture_output=True, text=True, check=False, env=os.environ)
            exited = time.monotonic() - started
            if done.returncode != 0:
                raise SystemExit(f"kubectl apply failed: {done.stderr[-2000:]}")
            keys = keys_for(namespace, name)
            last = seen.wait_all(keys) - started
            requests = len(re.findall(r'"Response" verb="[A-Z]+"', done.stderr)) if verbose else 0
            for api_version, kind in KINDS:
                obj = f"ep-{name}-auth" if kind == "Secret" else f"ep-{name}"
                cluster.delete(api_version, kind, obj, namespace, propagation="Background", grace_seconds=0)
            seen.wait_gone(keys)
            Endpoint.objects.filter(pk=endpoint.pk).update(phase="deleted")  # bookkeeping only
            return last, exited, requests

        # Warm-up, not counted: the worker's first task imports and connects; kubectl fills its
        # discovery cache (and is counted with -v=6).
        portal_run("pwarm")
        _, _, kubectl_requests = kubectl_run("kwarm", verbose=True)

        portal, kube, kube_exit = [], [], []
        for i in range(args.runs):
            stack.check()
            portal.append(portal_run(f"p{i:02d}"))
            last, exited, _ = kubectl_run(f"k{i:02d}")
            kube.append(last)
            kube_exit.append(exited)
            print(
                f"  run {i + 1:2d}: portal {portal[-1] * 1000:6.0f} ms  kubectl {kube[-1] * 1000:6.0f} ms "
                f"(exit {exited * 1000:.0f} ms)",
                flush=True,
            )

        ms = 1000
        report.line(
            f"portal POST to all objects present: median {h.median(portal) * ms:.0f} ms, "
            f"p95 {h.percentile(portal, 95) * ms:.0f} ms (n={len(portal)})"
        )
        report.line(
            f"kubectl apply --server-side to all objects present: median {h.median(kube) * ms:.0f} ms, "
            f"p95 {h.percentile(kube, 95) * ms:.0f} ms (n={len(kube)}); process exit median "
            f"{h.median(kube_exit) * ms:.0f} ms; {kubectl_requests} HTTP requests per apply with a warm "
            f"discovery cache"
        )
        report.target("ratio portal/kubectl (medians)", h.median(portal) / h.median(kube), "<=", 0.5)
        report.line(f"ratio portal/kubectl (p95) {h.percentile(portal, 95) / h.percentile(kube, 95):.3f}")
        h.dump(args.json, {"portal": portal, "kubectl": kube, "kubectl_exit": kube_exit})
    finally:
        if seen is not None:
            seen.stop.set()  # its watches end quietly as the cluster goes
        stack.stop()
        if not args.keep_cluster:
            h.uninstall_clusters([SLUG], env)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
