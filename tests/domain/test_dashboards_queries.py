"""The dashboards' PromQL for an endpoint and a tenant over each window, and how a dashboard reads
Prometheus' answers. Real Prometheus after real traffic is in tests/integration/test_dashboards.py;
here a small HTTP server on loopback plays Prometheus' API (the one seam), so every status can be
made on demand."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from django.test import override_settings
from django.utils import timezone

from endpoints import dashboards
from endpoints.exceptions import ValidationFailed
from tests.factories import make_endpoint, make_template, make_tenant, make_tier, roomy_quota

EP = 'namespace="t-acme",service="ep-chat"'


def by_key(sel: str, window: str, lookback: int | None = None) -> dict[str, dashboards.Query]:
    return {q.key: q for q in dashboards.queries(sel, window, lookback)}


# -- the PromQL ------------------------------------------------------------------------------


@pytest.fixture
def chat(db):
    tier = make_tier(name="h100")
    tenant = make_tenant("acme", quota=roomy_quota(tier))
    return make_endpoint(tenant, make_template(tier=tier), "chat")


def test_an_endpoint_is_selected_by_its_namespace_and_service(chat):
    assert dashboards.endpoint_selector(chat) == EP
    assert dashboards.tenant_selector(chat.tenant) == 'namespace="t-acme"'


def test_ttft_quantiles_are_taken_over_the_window_summed_by_bucket(chat):
    q = by_key(dashboards.endpoint_selector(chat), "1h")
    assert q["ttft_p95"].current == (
        f"histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{EP}}}[1h])))"
    )
    # The chart's points each take the rate over two steps (at least a minute).
    assert q["ttft_p95"].series == (
        f"histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{EP}}}[1m])))"
    )
    assert "histogram_quantile(0.5," in q["ttft_p50"].current
    assert "histogram_quantile(0.99," in q["ttft_p99"].current


def test_token_latency_falls_back_to_the_pre_0_10_metric_name():
    q = by_key(EP, "15m")
    assert q["tpot_p50"].current == (
        f"(histogram_quantile(0.5, sum by (le) (rate(vllm:inter_token_latency_seconds_bucket{{{EP}}}[15m])))) "
        f"or (histogram_quantile(0.5, sum by (le) (rate(vllm:time_per_output_token_seconds_bucket{{{EP}}}[15m]))))"
    )
    assert "histogram_quantile(0.95," in q["tpot_p95"].current


def test_kv_cache_usage_is_the_fullest_replica_with_the_old_name_as_fallback():
    q = by_key(EP, "6h")
    assert q["kv_cache_usage"].current == (
        f"(max(vllm:kv_cache_usage_perc{{{EP}}})) or (max(vllm:gpu_cache_usage_perc{{{EP}}}))"
    )
    assert q["kv_cache_usage"].series == (
        f"(max(max_over_time(vllm:kv_cache_usage_perc{{{EP}}}[6m]))) "
        f"or (max(max_over_time(vllm:gpu_cache_usage_perc{{{EP}}}[6m])))"
    )


def test_rates_queue_and_running_requests_come_from_vllms_counters_and_gauges():
    q = by_key(EP, "24h")
    assert q["request_rate"].current == f"sum(rate(vllm:request_success_total{{{EP}}}[24h]))"
    assert q["prompt_tokens_per_second"].current == f"sum(rate(vllm:prompt_tokens_total{{{EP}}}[24h]))"
    assert q["generation_tokens_per_second"].series == (
        f"sum(rate(vllm:generation_tokens_total{{{EP}}}[20m]))"
    )
    assert q["queue_depth"].current == f"sum(vllm:num_requests_waiting{{{EP}}})"
    assert q["running_requests"].current == f"sum(vllm:num_requests_running{{{EP}}})"
    assert q["queue_depth"].series == f"sum(max_over_time(vllm:num_requests_waiting{{{EP}}}[20m]))"


def test_errors_are_aborted_requests_plus_server_5xx_out_of_all_requests():
    expr = by_key(EP, "7d")["error_rate"].current
    five_xx = f'(sum(rate(http_requests_total{{{EP},handler=~"/v1/.+",status="5xx"}}[7d])) or vector(0))'
    aborted = f'(sum(rate(vllm:request_success_total{{{EP},finished_reason="abort"}}[7d])) or vector(0))'
    assert (
        expr == f"({aborted} + {five_xx}) / (sum(rate(vllm:request_success_total{{{EP}}}[7d])) + {five_xx})"
    )


def test_every_window_has_a_step_that_gives_a_chart_of_modest_size():
    assert list(dashboards.WINDOWS) == ["15m", "1h", "6h", "24h", "7d"]
    for w in dashboards.WINDOWS.values():
        assert 50 <= w.seconds / w.step_seconds <= 200, w
        assert w.rate_seconds >= max(60, w.step_seconds)


def test_a_young_subject_is_looked_at_only_since_it_was_created():
    now = timezone.now()
    w = dashboards.WINDOWS["24h"]
    assert dashboards.lookback_seconds(w, now - timedelta(seconds=300), now) == 300
    assert dashboards.lookback_seconds(w, now - timedelta(seconds=5), now) == 60
    assert dashboards.lookback_seconds(w, now - timedelta(days=3), now) == 86400
    assert "[5m]" in by_key(EP, "24h", lookback=300)["request_rate"].current


@pytest.mark.parametrize("bad", ["2h", "", "1h)) or vector(1", "15M"])
def test_a_window_outside_the_choices_names_the_field_and_the_allowed_values(bad):
    with pytest.raises(ValidationFailed) as caught:
        dashboards.get_window(bad)
    assert caught.value.fields == {"window": [f'must be one of 15m, 1h, 6h, 24h, 7d (got "{bad}")']}
    assert caught.value.message.startswith("window must be one of")


@pytest.mark.parametrize("value", ['acme"} or vector(1) #', "Acme", "a" * 64, ""])
def test_a_selector_refuses_anything_but_a_dns_label(value):
    with pytest.raises(ValueError, match="not a DNS label"):
        dashboards.selector(namespace=value)


# -- reading Prometheus' answers -------------------------------------------------------------


class FakePrometheus(ThreadingHTTPServer):
    """Prometheus' query API on loopback, answering from ANSWERS: (substring of the query, value).
    The first matching substring wins; no match is an empty result."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: list[tuple[str, str]] = []
        self.error: tuple[int, dict] | None = None
        self.delay = 0.0
        self.queries: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakePrometheus

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        query = form["query"][0]
        self.server.queries.append(query)
        time.sleep(self.server.delay)
        if self.server.error:
            status, body = self.server.error
        else:
            value = next((v for part, v in self.server.answers if part in query), None)
            if self.path.startswith("/api/v1/query_range"):
                start, step = float(form["start"][0]), float(form["step"][0])
                values = [[start, value], [start + step, value]]
                result = [{"metric": {}, "values": values}] if value is not None else []
                body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
            else:
                result = [{"metric": {}, "value": [time.time(), value]}] if value is not None else []
                body = {"status": "success", "data": {"resultType": "vector", "result": result}}
            status = 200
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def prometheus():
    server = FakePrometheus()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with override_settings(PROMETHEUS_URL=server.url):
        yield server
    server.shutdown()
    server.server_close()


IDLE = [
    ("histogram_quantile", "NaN"),
    ("/ (sum(rate(vllm:request_success_total", "NaN"),
    ("vllm:request_success_total", "0"),
    ("tokens_total", "0"),
    ("num_requests", "0"),
    ("kv_cache_usage_perc", "0"),
]


def test_serving_figures_come_back_with_their_series(chat, prometheus):
    prometheus.answers = [
        ("histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first", "0.05"),
        ("histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first", "0.2"),
        ("histogram_quantile(0.99, sum by (le) (rate(vllm:time_to_first", "0.4"),
        ("inter_token_latency", "0.02"),
        ("/ (sum(rate(vllm:request_success_total", "0.25"),
        ("vllm:request_success_total", "4"),
        ("prompt_tokens_total", "120"),
        ("generation_tokens_total", "64"),
        ("num_requests_waiting", "3"),
        ("num_requests_running", "8"),
        ("kv_cache_usage_perc", "0.5"),
    ]

    board = dashboards.endpoint_dashboard(chat, "1h")

    assert (board.status, board.available, board.message) == ("ok", True, "")
    assert board.current == dashboards.Figures(
        ttft_p50=0.05,
        ttft_p95=0.2,
        ttft_p99=0.4,
        tpot_p50=0.02,
        tpot_p95=0.02,
        request_rate=4.0,
        error_rate=0.25,
        prompt_tokens_per_second=120.0,
        generation_tokens_per_second=64.0,
        queue_depth=3.0,
        running_requests=8.0,
        kv_cache_usage=0.5,
    )
    assert [s.key for s in board.series] == list(dashboards.METRIC_KEYS)
    ttft = board.get("ttft_p95")
    assert ttft.current == 0.2 and [p.value for p in ttft.points] == [0.2, 0.2]
    assert (board.scope, board.subject, board.window, board.step_seconds) == ("endpoint", "chat", "1h", 30)
    # Every query names the endpoint's selector.
    assert all(EP in q for q in prometheus.queries)


def test_an_idle_endpoint_says_there_was_no_traffic_and_still_shows_its_gauges(chat, prometheus):
    prometheus.answers = IDLE

    board = dashboards.endpoint_dashboard(chat, "15m")

    assert (board.status, board.available) == ("no_traffic", True)
    assert board.message == "No traffic yet in the last 15 minutes."
    assert board.current.ttft_p95 is None  # a quantile of no requests is NaN: no value
    assert board.current.error_rate is None
    assert (board.current.request_rate, board.current.kv_cache_usage) == (0.0, 0.0)
    assert [p.value for p in board.get("ttft_p50").points] == [None, None]


def test_a_tenant_without_series_has_no_metrics_yet(chat, prometheus):
    board = dashboards.tenant_dashboard(chat.tenant, "6h")

    assert (board.status, board.available, board.scope, board.subject) == ("no_data", False, "tenant", "acme")
    assert board.message == "No metrics yet for this tenant's endpoints in the last 6 hours."
    assert all('namespace="t-acme"' in q for q in prometheus.queries)


def test_an_error_from_prometheus_is_said_plainly(chat, prometheus):
    prometheus.error = (400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"})

    board = dashboards.endpoint_dashboard(chat, "1h")

    assert (board.status, board.available) == ("error", False)
    assert (
        board.message == "Metrics are unavailable: Prometheus answered with an error (parse error at char 3)."
    )
    assert board.current == dashboards.Figures()
    assert len(prometheus.queries) == 1  # it stops at the first failure


def test_an_answer_not_shaped_like_query_results_is_an_error_too(chat, prometheus):
    prometheus.error = (200, {"status": "success", "data": {"result": [{"metric": {}, "value": "garbage"}]}})

    board = dashboards.endpoint_dashboard(chat, "1h")

    assert (board.status, board.available) == ("error", False)
    assert board.message == (
        "Metrics are unavailable: Prometheus answered with something other than query results."
    )


def test_a_prometheus_that_answers_too_slowly_counts_as_not_answering(chat, prometheus, monkeypatch):
    monkeypatch.setattr(dashboards, "QUERY_TIMEOUT_SECONDS", 0.2)
    prometheus.answers, prometheus.delay = IDLE, 1.0

    board = dashboards.endpoint_dashboard(chat, "1h")

    assert (board.status, board.available) == ("unreachable", False)
    assert board.message == "Metrics are unavailable: Prometheus did not answer in time."


def test_a_closed_port_means_prometheus_did_not_answer(chat):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    with override_settings(PROMETHEUS_URL=f"http://127.0.0.1:{port}"):
        board = dashboards.endpoint_dashboard(chat, "1h")
    assert (board.status, board.available) == ("unreachable", False)
    assert board.message == "Metrics are unavailable: Prometheus did not answer."
    assert [s.points for s in board.series] == [[]] * len(dashboards.METRIC_KEYS)


def test_without_a_prometheus_url_the_dashboard_says_metrics_are_not_configured(chat):
    with override_settings(PROMETHEUS_URL=""):
        board = dashboards.endpoint_dashboard(chat, "1h")
    assert (board.status, board.available) == ("unconfigured", False)
    assert "PROMETHEUS_URL" in board.message
