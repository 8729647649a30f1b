"""Serving signals end to end: a ready endpoint takes real traffic through the gateway with a key
the portal issued, real Prometheus scrapes its emulated vLLM, and the dashboards (functions and
API) show TTFT, TPOT, rates, tokens/s, queue and KV cache for the endpoint and its tenant. The
first-request gate keeps an endpoint that cannot answer out of Ready; revoked keys stop working."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from endpoints import actions, dashboards, naming
from endpoints.choices import EndpointPhase
from endpoints.models import Endpoint
from tests.factories import make_user
from tests.integration.test_provisioning import cluster_for, reaches
from tests.waiting import wait_for

pytestmark = [pytest.mark.platform, pytest.mark.django_db(transaction=True)]
P = EndpointPhase
LOADGEN = Path(__file__).resolve().parents[2] / "bench" / "loadgen.py"
FAIL_ANNOTATION = "inference-portal.io/emulate-fail"


@pytest.fixture
def stack(worker, watcher):
    return worker, watcher


def ready_endpoint(catalog, tenant, prefix: str) -> Endpoint:
    # A name of its own per run: Prometheus keeps earlier runs' series for days.
    endpoint = actions.request_endpoint(
        None,
        tenant=tenant,
        template=catalog["template"],
        name=f"{prefix}{uuid.uuid4().hex[:6]}",
        min_replicas=1,
        max_replicas=1,
    )
    return reaches(endpoint.pk, P.READY, timeout=240)


def call(platform, endpoint: Endpoint, key: str | None, path: str = "/v1/models") -> httpx.Response:
    """A request through the gateway's data plane, to ENDPOINT's hostname."""
    headers = {"Host": naming.hostname(endpoint, platform.env["PORTAL_GATEWAY_DOMAIN"])}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.get(
        f"{platform.env['PORTAL_GATEWAY_URL']}{path}", headers=headers, timeout=10, trust_env=False
    )


def usable_key(platform, endpoint: Endpoint, name: str) -> str:
    """A key from the portal's own flow, once the redeploy has put its digest where the gateway looks."""
    raw = actions.create_endpoint_key(None, endpoint, name=name).raw
    wait_for(
        lambda: call(platform, endpoint, raw).status_code == 200,
        timeout=90,
        interval=0.5,
        what="the gateway to accept the new key",
    )
    return raw


def prometheus_count(platform, promql: str) -> float:
    """A number straight from Prometheus (the test's own ground truth, not the dashboard's)."""
    resp = httpx.get(f"{platform.env['PROMETHEUS_URL']}/api/v1/query", params={"query": promql}, timeout=5)
    result = resp.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboards_show_real_traffic_for_the_endpoint_and_its_tenant(stack, catalog, make_tenant, platform):
    tenant = make_tenant()
    endpoint = ready_endpoint(catalog, tenant, "dash")
    key = usable_key(platform, endpoint, "load test")
    selector = dashboards.endpoint_selector(endpoint)
    finished = f"sum(vllm:request_success_total{{{selector}}})"
    # Prometheus finds a new pod some seconds after it starts, and a rate needs a sample from
    # before the traffic: wait for the first scrape.
    wait_for(
        lambda: prometheus_count(platform, f"count(vllm:time_to_first_token_seconds_count{{{selector}}})"),
        timeout=60,
        interval=0.5,
        what="Prometheus to scrape the new pod",
    )

    sent = 24
    run = subprocess.run(
        [
            sys.executable, str(LOADGEN), platform.env["PORTAL_GATEWAY_URL"],
            "--host-header", naming.hostname(endpoint, platform.env["PORTAL_GATEWAY_DOMAIN"]),
            "--api-key", key,
            "--model", endpoint.name,
            "--requests", str(sent),
            "--concurrency", "4",
            "--stream",
            "--max-tokens", "16",
            "--json",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["ok"] == sent

    # Wait until Prometheus has scraped every one of those requests (and the gate's first one).
    wait_for(
        lambda: prometheus_count(platform, finished) >= sent + 1,
        timeout=60,
        interval=1,
        what="Prometheus to scrape the traffic",
    )
    board = dashboards.endpoint_dashboard(endpoint, "15m")

    assert (board.status, board.available, board.message) == ("ok", True, "")
    now = board.current
    assert 0 < now.ttft_p50 <= now.ttft_p95 <= now.ttft_p99
    assert 0 < now.tpot_p50 <= now.tpot_p95
    assert now.request_rate > 0
    assert now.error_rate == 0  # every request finished (stop or length)
    assert now.prompt_tokens_per_second > 0
    assert now.generation_tokens_per_second > 0
    assert now.queue_depth >= 0 and now.running_requests >= 0
    assert 0 <= now.kv_cache_usage <= 1
    assert any((p.value or 0) > 0 for p in board.get("request_rate").points)
    assert any(p.value is not None for p in board.get("ttft_p95").points)

    whole = dashboards.tenant_dashboard(tenant, "15m")
    assert (whole.status, whole.scope, whole.subject) == ("ok", "tenant", tenant.slug)
    assert whole.current.ttft_p95 > 0
    assert whole.current.request_rate > 0
    assert whole.current.generation_tokens_per_second > 0

    # The API answers the same for a member of the tenant.
    viewer = make_user()
    actions.add_member(None, tenant, viewer, "viewer")
    api = APIClient()
    api.force_authenticate(viewer)
    body = api.get(f"/api/v1/endpoints/{endpoint.pk}/metrics/", {"window": "15m"}).json()
    assert (body["status"], body["window"]) == ("ok", "15m"), body
    assert body["current"]["ttft_p95"] > 0 and body["current"]["request_rate"] > 0
    assert [s["key"] for s in body["series"]] == list(dashboards.METRIC_KEYS)
    body = api.get(f"/api/v1/tenants/{tenant.slug}/metrics/", {"window": "15m"}).json()
    assert body["status"] == "ok" and body["current"]["generation_tokens_per_second"] > 0

    # The endpoint's detail carries its measured cold start, ending at the gate's first token.
    detail = api.get(f"/api/v1/endpoints/{endpoint.pk}/").json()
    cold = detail["cold_start"]
    assert cold["complete"] and cold["first_token_seconds"] > 0
    assert [s["state"] for s in cold["stages"]] == ["done"] * 7
    assert sum(s["seconds"] for s in cold["stages"]) == pytest.approx(cold["total_seconds"])


def test_a_tenant_whose_endpoints_were_never_scraped_has_no_metrics_yet(catalog, make_tenant, platform):
    tenant = make_tenant(suffix="idle")  # a namespace no pod has ever served from

    board = dashboards.tenant_dashboard(tenant, "1h")

    assert (board.status, board.available) == ("no_data", False)
    assert board.message == "No metrics yet for this tenant's endpoints in the last hour."


def test_without_prometheus_the_dashboards_say_so_instead_of_failing(catalog, make_tenant, platform):
    tenant = make_tenant(suffix="idle")
    # Not saved: a saved one would be deployed, and this test runs no worker.
    endpoint = Endpoint(tenant=tenant, template=catalog["template"], name="quiet", created=timezone.now())
    staff = APIClient()
    staff.force_authenticate(make_user(staff=True))

    with override_settings(PROMETHEUS_URL=f"http://127.0.0.1:{closed_port()}"):
        for board in (
            dashboards.endpoint_dashboard(endpoint, "1h"),
            dashboards.tenant_dashboard(tenant, "7d"),
        ):
            assert (board.status, board.available) == ("unreachable", False)
            assert board.message == "Metrics are unavailable: Prometheus did not answer."
            assert board.current == dashboards.Figures()
        response = staff.get(f"/api/v1/tenants/{tenant.slug}/metrics/")
        assert response.status_code == 200
        body = response.json()
        assert (body["available"], body["status"], body["window"]) == (False, "unreachable", "1h")
        assert body["message"] == "Metrics are unavailable: Prometheus did not answer."

    # A Prometheus that answers, but not with query results (a wrong path), is an error, said plainly.
    with override_settings(PROMETHEUS_URL=platform.env["PROMETHEUS_URL"] + "/not-prometheus"):
        board = dashboards.endpoint_dashboard(endpoint, "1h")
    assert (board.status, board.available) == ("error", False)
    assert board.message == "Metrics are unavailable: Prometheus answered with an error (HTTP 404)."


def set_fail_mode(cluster, pod: dict, mode: str) -> None:
    """Tell the pod's emulated vLLM how to fail (the serving emulator reads the annotation)."""
    meta = pod["metadata"]
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "annotations": {FAIL_ANNOTATION: mode},
            },
        },
        field_manager="test-dashboards",
    )


def test_the_gate_keeps_an_endpoint_that_cannot_answer_out_of_ready(stack, catalog, make_tenant, platform):
    tenant = make_tenant()
    endpoint = actions.request_endpoint(
        None,
        tenant=tenant,
        template=catalog["template"],
        name=f"gate{uuid.uuid4().hex[:6]}",
        min_replicas=1,
        max_replicas=1,
    )
    wait_for(
        lambda: Endpoint.objects.get(pk=endpoint.pk).observed_generation >= 1,
        timeout=240,
        what="the endpoint's objects to be applied",
    )
    cluster = cluster_for(tenant)
    namespace = naming.namespace_for(tenant)

    def pods() -> list[dict]:
        selector = f"inference-portal.io/endpoint={endpoint.name}"
        return cluster.list("v1", "Pod", namespace, label_selector=selector)["items"]

    pod = wait_for(lambda: next(iter(pods()), None), timeout=60, interval=0.1, what="the endpoint's pod")
    # The model takes seconds to load, so the pod is not ready, let alone verified, when told to fail.
    set_fail_mode(cluster, pod, "500")
    assert Endpoint.objects.get(pk=endpoint.pk).verified_at is None, (
        "the gate ran before the fail mode was set"
    )

    def stuck():
        ep = Endpoint.objects.get(pk=endpoint.pk)
        assert ep.phase not in (P.READY, P.FAILED), f"{ep.phase}: {ep.phase_message}"
        ready = ep.condition("Ready") or {}
        return ep if ep.phase == P.VERIFYING and "HTTP 500" in ready.get("message", "") else None

    held = wait_for(stuck, timeout=180, interval=0.3, what="the gate to report the failing first request")
    assert held.verified_at is None
    assert held.condition("Ready")["status"] == "False"
    assert held.condition("ModelLoaded")["status"] == "True"  # the pod itself is ready
    # The gate tries again; between tries the endpoint stays out of Ready, with the error shown.
    name = pod["metadata"]["name"]
    wait_for(
        lambda: (
            sum(
                '"POST /v1/completions HTTP/1.1" 500' in line
                for line in cluster.pod_log(namespace, name, "vllm")
            )
            >= 2
        ),
        timeout=60,
        interval=0.5,
        what="a second try of the gate",
    )
    again = wait_for(stuck, timeout=30, what="the endpoint to stay in Verifying")
    assert again.phase_reason == "FirstRequestFailed"
    assert "did not answer a test request" in again.phase_message and "HTTP 500" in again.phase_message

    set_fail_mode(cluster, pod, "none")

    reaches(endpoint.pk, P.READY, timeout=90)
    # The watcher writes the phase, then the conditions: wait for both.
    ready = wait_for(
        lambda: (ep := Endpoint.objects.get(pk=endpoint.pk)).condition("Ready")["status"] == "True" and ep,
        timeout=30,
        what="the Ready condition",
    )
    assert ready.phase == P.READY
    assert ready.verified_at is not None and ready.first_token_seconds > 0


def test_a_revoked_endpoint_key_gets_401_after_the_redeploy(stack, catalog, make_tenant, platform):
    tenant = make_tenant()
    endpoint = ready_endpoint(catalog, tenant, "keys")
    kept = usable_key(platform, endpoint, "kept")
    revoked_key = actions.create_endpoint_key(None, endpoint, name="to revoke")
    wait_for(lambda: call(platform, endpoint, revoked_key.raw).status_code == 200, timeout=90, interval=0.5)

    assert call(platform, endpoint, None).status_code == 401
    assert call(platform, endpoint, "ipt_notakey_0000").status_code == 401

    actions.revoke_endpoint_key(None, revoked_key.key)

    wait_for(
        lambda: call(platform, endpoint, revoked_key.raw).status_code == 401,
        timeout=90,
        interval=0.5,
        what="the revoked key to be refused",
    )
    assert call(platform, endpoint, kept).status_code == 200
