#!/usr/bin/env python3
"""Scale: the API and the pages with 1,000 tenants and 10,000 endpoints in PostgreSQL.

    .venv/bin/python bench/scale.py --requests 200

A database of its own (portal_bench_scale). First a small one: the measured tenant with 10
endpoints and nothing else; each request's SQL queries are counted (CaptureQueriesContext).
Then rows are bulk-created up to 1,000 tenants (each with an owner, a quota and a token) and
10,000 endpoints (the measured tenant holds 200 of them; every endpoint has its six conditions,
five timeline events, a usage interval and a key), the queries are counted again, and each
request is timed --requests times, warm, through Django's test client in this process (URLconf,
middleware, authentication, DRF or templates, PostgreSQL; no HTTP server):

- list API: GET /api/v1/endpoints/?tenant=<slug>&phase=ready&phase=scheduling&tier=<tier>&limit=50
  as the tenant's owner (API token), and the same filters as staff across all tenants;
- detail API: GET /api/v1/endpoints/<id>/;
- endpoint page: GET /endpoints/<id>/ (signed in);
- tenant home: GET / (signed in).

Targets: the same query count for 10 and for 10,000 rows, at most 10 queries per request, and a
list API p95 of at most 50 ms.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

SCALE_DB = "portal_bench_scale"
TENANTS = 1000
ENDPOINTS = 10_000
MEASURED_ENDPOINTS = 200
PHASES = [  # (phase, share)
    ("ready", 50),
    ("scheduling", 15),
    ("loading_model", 10),
    ("degraded", 5),
    ("failed", 5),
    ("deleted", 15),
]


def conditions(phase: str, now) -> list[dict]:
    ok = phase in ("ready", "degraded")
    out = []
    for ctype in ("TenantReady", "Scheduled", "ModelLoaded", "RouteAccepted", "RouteResolvedRefs", "Ready"):
        status = "True" if ok or ctype in ("TenantReady", "RouteAccepted") else "False"
        out.append(
            {
                "type": ctype,
                "status": status,
                "reason": ctype if status == "True" else "Pending",
                "message": "" if status == "True" else "Waiting for a GPU node.",
                "last_transition_time": now.isoformat(),
            }
        )
    return out


def bulk_endpoints(tenants, templates, owners, counts: dict[int, int], start_index: int = 0) -> None:
    """COUNTS[tenant_id] endpoints for each tenant, with conditions, events, usage and a key."""
    import hashlib

    from django.utils import timezone

    from endpoints.models import Endpoint, EndpointEvent, EndpointKey, EndpointUsage

    now = timezone.now()
    weighted = [phase for phase, share in PHASES for _ in range(share)]
    rng = random.Random(start_index)
    rows = []
    for tenant in tenants:
        for i in range(counts.get(tenant.pk, 0)):
            phase = rng.choice(weighted)
            template = templates[(start_index + i) % len(templates)]
            rows.append(
                Endpoint(
                    tenant=tenant,
                    template=template,
                    name=f"ep{start_index + i:05d}",
                    min_replicas=1,
                    max_replicas=2,
                    desired_replicas=1,
                    phase=phase,
                    phase_reason={"scheduling": "InsufficientGpu", "failed": "CrashLoop"}.get(phase, ""),
                    phase_message="Waiting for a GPU node." if phase == "scheduling" else "",
                    conditions=conditions(phase, now),
                    url=f"http://ep{start_index + i:05d}-{tenant.slug}.inference.localhost"
                    if phase == "ready"
                    else "",
                    load_progress=100 if phase == "ready" else None,
                    generation=1,
                    observed_generation=1,
                    created_by=owners[tenant.pk],
                    deleted_at=now if phase == "deleted" else None,
                )
            )
    Endpoint.objects.bulk_create(rows, batch_size=2000)
    events, usage, keys = [], [], []
    for n, ep in enumerate(rows):
        for k, reason in enumerate(("Requested", "Applied", "Scheduled", "LoadingModel", "Ready")):
            events.append(
                EndpointEvent(
                    endpoint=ep, reason=reason, message=f"{reason}.", created=now - timedelta(minutes=10 - k)
                )
            )
        usage.append(
            EndpointUsage(
                endpoint=ep,
                tier=ep.template.tier,
                started_at=now - timedelta(hours=3),
                ended_at=None if ep.phase in ("ready", "degraded") else now - timedelta(hours=1),
                replicas=1,
                gpus_per_replica=ep.template.gpus_per_replica,
                price_per_gpu_hour=ep.template.tier.price_per_gpu_hour,
            )
        )
        digest = hashlib.sha256(f"{start_index}-{n}".encode()).hexdigest()
        keys.append(EndpointKey(endpoint=ep, name="default", prefix=digest[:12], key_hash=digest))
    EndpointEvent.objects.bulk_create(events, batch_size=5000)
    EndpointUsage.objects.bulk_create(usage, batch_size=5000)
    EndpointKey.objects.bulk_create(keys, batch_size=5000)


def bulk_tenants(first: int, count: int):
    """COUNT tenants from number FIRST, each with an owner, a quota and a membership."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from endpoints.models import Membership, Quota, Tenant

    User = get_user_model()
    password = make_password(None)
    tenants = Tenant.objects.bulk_create(
        [Tenant(slug=f"scale{i:04d}", name=f"Scale tenant {i}") for i in range(first, first + count)]
    )
    users = User.objects.bulk_create(
        [User(username=f"scale{i:04d}-owner", password=password) for i in range(first, first + count)]
    )
    Quota.objects.bulk_create(
        [
            Quota(
                tenant=t,
                gpus_total=400,
                tier_gpus={"l40s-48gb": 200, "h100-80gb": 200},
                max_endpoints=300,
                max_replicas=600,
            )
            for t in tenants
        ]
    )
    Membership.objects.bulk_create(
        [Membership(user=u, tenant=t, role="owner") for u, t in zip(users, tenants, strict=True)]
    )
    return tenants, {t.pk: u for t, u in zip(tenants, users, strict=True)}


def make_catalog():
    from decimal import Decimal

    from endpoints import actions

    taints = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    l40s = actions.create_gpu_tier(
        None,
        name="l40s-48gb",
        product="NVIDIA-L40S",
        gpu_memory_gib=Decimal("44.99"),
        resource_name="nvidia.com/gpu",
        gpus_per_node=4,
        node_labels={},
        taints=taints,
        price_per_gpu_hour=Decimal("1.20"),
    )
    h100 = actions.create_gpu_tier(
        None,
        name="h100-80gb",
        product="NVIDIA-H100-80GB-HBM3",
        gpu_memory_gib=Decimal("79.65"),
        resource_name="nvidia.com/gpu",
        gpus_per_node=8,
        node_labels={},
        taints=taints,
        price_per_gpu_hour=Decimal("4.00"),
    )
    image = actions.create_runtime_image(None, repository="vllm/vllm-openai", tag="v0.11.0")
    templates = []
    for n, (name, params, layers, kv) in enumerate(
        [("Qwen2.5-7B-Instruct", 7_615_616_512, 28, 4), ("Llama-3.1-8B-Instruct", 8_030_000_000, 32, 8)]
    ):
        model = actions.register_model(
            None,
            name=name,
            source=f"hf://org/{name}",
            revision="a09a35458c702b33eeacc393d103063234e8bc28",
            licence="apache-2.0",
            parameters=params,
            dtype="bf16",
            num_layers=layers,
            num_kv_heads=kv,
            head_dim=128,
            max_context=32768,
        )
        model = actions.approve_model(None, model)
        for tier in (l40s, h100):
            templates.append(
                actions.create_template(
                    None,
                    name=f"t{n}-{tier.name}",
                    model=model,
                    tier=tier,
                    image=image,
                    max_model_len=8192,
                    min_replicas=1,
                    max_replicas=4,
                )
            )
    return templates


class Requests:
    """The measured requests, as the measured tenant's owner (token for the API, session for
    pages) and as staff."""

    def __init__(self, tenant, owner, staff) -> None:
        from django.test import Client

        from endpoints import actions
        from endpoints.models import Endpoint

        self.tenant = tenant
        self.api = h.api_client(actions.issue_api_token(None, owner, name="scale").secret)
        self.staff_api = h.api_client(actions.issue_api_token(None, staff, name="scale").secret)
        self.pages = Client(HTTP_HOST="localhost")
        self.pages.force_login(owner)
        self.ids = list(
            Endpoint.objects.filter(tenant=tenant).exclude(phase="deleted").values_list("pk", flat=True)
        )
        self.rng = random.Random(7)

    def all(self) -> dict[str, callable]:
        list_query = f"?tenant={self.tenant.slug}&phase=ready&phase=scheduling&tier=l40s-48gb&limit=50"
        return {
            "list API (owner, filters, page of 50)": lambda: self.api.get(f"/api/v1/endpoints/{list_query}"),
            "list API (staff, all tenants, filters)": lambda: self.staff_api.get(
                "/api/v1/endpoints/?phase=ready&phase=scheduling&tier=l40s-48gb&limit=50"
            ),
            "detail API": lambda: self.api.get(f"/api/v1/endpoints/{self.rng.choice(self.ids)}/"),
            "endpoint page": lambda: self.pages.get(f"/endpoints/{self.rng.choice(self.ids)}/"),
            "tenant home": lambda: self.pages.get("/"),
        }


def count_queries(requests: Requests) -> dict[str, tuple[int, int]]:
    """Queries per request: (count, rows in the response's list if any)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    out = {}
    for name, call in requests.all().items():
        call()  # warm: sessions, caches, the token's once-a-minute last-used write
        with CaptureQueriesContext(connection) as captured:
            resp = call()
        if resp.status_code != 200:
            raise SystemExit(f"{name}: {resp.status_code} {resp.content[:300]!r}")
        out[name] = (len(captured.captured_queries), captured.captured_queries)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests of each kind")
    parser.add_argument("--show-queries", action="store_true", help="print the SQL of each request")
    args = parser.parse_args()

    h.setup(SCALE_DB, redis_db=15)
    from django.contrib.auth import get_user_model

    report = h.Report("scale")
    templates = make_catalog()
    staff = get_user_model().objects.create_user(username="scale-staff", is_staff=True)

    # Small: the measured tenant with 10 endpoints, nothing else.
    tenants, owners = bulk_tenants(0, 1)
    measured = tenants[0]
    bulk_endpoints(tenants, templates, owners, {measured.pk: 10})
    requests = Requests(measured, owners[measured.pk], staff)
    small = count_queries(requests)

    # Large: 1,000 tenants, 10,000 endpoints (200 of them the measured tenant's).
    started = time.monotonic()
    more, more_owners = bulk_tenants(1, TENANTS - 1)
    owners.update(more_owners)
    bulk_endpoints([measured], templates, owners, {measured.pk: MEASURED_ENDPOINTS}, start_index=10)
    from django.db import connection

    from endpoints.models import Endpoint

    per_other = ENDPOINTS - MEASURED_ENDPOINTS - 10
    counts = {
        t.pk: per_other // len(more) + (1 if k < per_other % len(more) else 0) for k, t in enumerate(more)
    }
    bulk_endpoints(more, templates, owners, counts, start_index=1000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    total = Endpoint.objects.count()
    report.line(
        f"bulk-created {TENANTS} tenants and {total} endpoints (with conditions, {total * 5} events, usage, "
        f"keys) in {time.monotonic() - started:.1f} s"
    )
    requests = Requests(measured, owners[measured.pk], staff)
    large = count_queries(requests)

    for name in small:
        queries = large[name][0]
        report.line(f"{name}: {small[name][0]} queries with 10 endpoints, {queries} with {total}")
        if args.show_queries:
            for q in large[name][1]:
                print(f"    {q['time']}s {q['sql'][:200]}")
        constant = small[name][0] == queries
        if not constant:
            report.missed.append(f"{name} query count constant")
        report.line(
            f"{name}: query count {'constant' if constant else 'NOT constant'} "
            f"({'PASS' if constant else 'MISS'})"
        )
        report.target(f"{name} queries per request", queries, "<=", 10)

    for name, call in requests.all().items():
        for _ in range(5):
            call()
        times = []
        for _ in range(args.requests):
            t = time.perf_counter()
            resp = call()
            times.append((time.perf_counter() - t) * 1000)
            assert resp.status_code == 200, resp.status_code
        report.line(
            f"{name}: p50 {h.percentile(times, 50):.1f} ms, p95 {h.percentile(times, 95):.1f} ms "
            f"(n={len(times)})"
        )
        if name.startswith("list API (owner"):
            report.target("list API p95", h.percentile(times, 95), "<=", 50, " ms")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
