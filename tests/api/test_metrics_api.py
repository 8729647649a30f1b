"""The metrics actions of endpoints and tenants, and the cold start on an endpoint's detail.
Figures from a real Prometheus after real traffic: tests/integration/test_dashboards.py."""

from __future__ import annotations

import socket

import pytest
from django.test import override_settings

from tests.api.conftest import error

ENDPOINTS = "/api/v1/endpoints/"
TENANTS = "/api/v1/tenants/"


@pytest.fixture(autouse=True)
def prometheus_down():
    """A Prometheus URL where nothing listens: these tests are about the API, not the figures."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with override_settings(PROMETHEUS_URL=f"http://127.0.0.1:{port}"):
        yield


def test_another_tenants_metrics_answer_404(world, as_user):
    bob = as_user(world.bob)
    for response in (
        bob.get(f"{ENDPOINTS}{world.globex_endpoint.pk}/metrics/"),
        bob.get(f"{TENANTS}globex/metrics/"),
        bob.get(f"{ENDPOINTS}{world.globex_endpoint.pk}/metrics/", {"window": "nonsense"}),
    ):
        assert response.status_code == 404
        assert error(response)["code"] == "not_found"


def test_a_viewer_reads_metrics_and_is_told_when_prometheus_does_not_answer(world, as_user):
    carol = as_user(world.carol)
    for url in (f"{ENDPOINTS}{world.acme_endpoint.pk}/metrics/", f"{TENANTS}acme/metrics/"):
        response = carol.get(url, {"window": "6h"})
        assert response.status_code == 200
        body = response.json()
        assert (body["available"], body["status"], body["window"]) == (False, "unreachable", "6h")
        assert body["message"] == "Metrics are unavailable: Prometheus did not answer."
        assert set(body["current"]) >= {
            "ttft_p95",
            "tpot_p50",
            "request_rate",
            "error_rate",
            "kv_cache_usage",
        }
    assert carol.get(f"{ENDPOINTS}{world.acme_endpoint.pk}/metrics/").json()["window"] == "1h"


def test_a_window_outside_the_choices_names_the_field_and_the_allowed_values(world, as_user):
    response = as_user(world.bob).get(f"{ENDPOINTS}{world.acme_endpoint.pk}/metrics/", {"window": "2h"})

    assert response.status_code == 400
    body = error(response)
    assert body["code"] == "invalid"
    assert body["fields"] == {"window": ['must be one of 15m, 1h, 6h, 24h, 7d (got "2h")']}
    assert body["message"] == 'window must be one of 15m, 1h, 6h, 24h, 7d (got "2h")'


def test_the_endpoint_detail_shows_its_cold_start_and_the_list_does_not(world, as_user):
    bob = as_user(world.bob)

    detail = bob.get(f"{ENDPOINTS}{world.acme_endpoint.pk}/").json()
    listed = bob.get(ENDPOINTS).json()["results"][0]

    stages = detail["cold_start"]["stages"]
    assert [s["key"] for s in stages] == [
        "tenant_cluster",
        "scheduling",
        "image_pull",
        "weight_download",
        "model_load",
        "route",
        "first_token",
    ]
    assert stages[0]["state"] == "in_progress"  # just requested: nothing has picked it up yet
    assert detail["cold_start"]["complete"] is False
    assert "cold_start" not in listed
