"""How an endpoint (or a whole tenant) serves, from Prometheus: the PromQL of seeds 003 and 004 over
a window the user picks, as plain dataclasses the pages and the API render.

What is shown (``Figures`` has one field per line; each is None when Prometheus has no value):

- TTFT p50 / p95 / p99: ``histogram_quantile`` over the rate of
  ``vllm:time_to_first_token_seconds_bucket``, summed by ``le`` across replicas;
- TPOT p50 / p95: the same over ``vllm:inter_token_latency_seconds_bucket``, or, for vLLM before
  0.10 (V0 engine), ``vllm:time_per_output_token_seconds_bucket`` (PromQL ``or``: the new name wins
  when a pod exposes both);
- request rate: finished requests per second, ``vllm:request_success_total`` over every
  ``finished_reason``;
- error rate: the share of requests that failed. vLLM counts a finished request as ``stop``,
  ``length`` or ``abort``; ``length`` is a normal end (max_tokens reached) and only ``abort`` (the
  engine or the client gave up mid-request) is an error. A request the server answers with a 5xx
  never finishes, so it is not in that counter at all: the 5xx of vLLM's own HTTP metrics
  (``http_requests_total{status="5xx"}`` on ``/v1/*``, from prometheus-fastapi-instrumentator) are
  added to both sides when the pods expose them. The local vLLM emulator does not expose
  ``http_requests_total`` and the local gateway exports no metrics, so locally the error rate
  counts aborted requests only; 5xx answered by the gateway itself (no ready replica: 503) are
  not counted anywhere yet;
- tokens/s in and out: the rate of ``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total``;
- queue depth and running requests: ``vllm:num_requests_waiting`` / ``vllm:num_requests_running``,
  summed over replicas (the series take the highest value in each step, so short spikes show);
- KV cache usage: ``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc`` before vLLM 0.10), of
  the fullest replica, 0 to 1.

Current values of the latencies and rates are over the whole window ("p95 over the last hour");
gauges are the latest sample. Series come from ``query_range`` with a step that gives about 60 to
170 points per window. A dashboard never looks before its subject existed (the endpoint's or the
tenant's ``created``), so a re-used name never shows the figures of the one before it.

Selectors are built only from validated names (``endpoints.naming``): an endpoint is
``{namespace="t-<tenant>", service="ep-<endpoint>"}``, the labels a ServiceMonitor gives and the
ones the endpoint's own autoscaler query uses (workers/manifests.py); a tenant is
``{namespace="t-<tenant>"}``. Nothing a user types reaches PromQL; the window is one of
``WINDOWS``.

When Prometheus is not configured, does not answer (3 s per query, 10 s in all), answers with an
error, or has no series yet, the dashboard says so in ``message`` and ``available`` is False; the
functions here never raise for those. A window outside ``WINDOWS`` raises ValidationFailed naming
the field ``window``.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
from django.conf import settings
from django.utils import timezone

from . import naming
from .exceptions import ValidationFailed

if TYPE_CHECKING:  # pragma: no cover
    from .models import Endpoint, Tenant

log = logging.getLogger(__name__)

QUERY_TIMEOUT_SECONDS = 3.0
TOTAL_BUDGET_SECONDS = 10.0
# The shortest look-back, even for a subject created seconds ago: rate() needs two samples.
MIN_LOOKBACK_SECONDS = 60


@dataclass(frozen=True)
class Window:
    """A choice of time span: the look-back, the series' step and the range each step's rate uses."""

    key: str
    seconds: int
    step_seconds: int
    label: str  # "the last hour", to follow "No traffic yet in"

    @property
    def rate_seconds(self) -> int:
        # Two steps, and at least a minute: four scrapes at the 15 s interval of seed 003's monitor.
        return max(2 * self.step_seconds, 60)


WINDOWS: dict[str, Window] = {
    w.key: w
    for w in (
        Window("15m", 15 * 60, 15, "the last 15 minutes"),
        Window("1h", 3600, 30, "the last hour"),
        Window("6h", 6 * 3600, 180, "the last 6 hours"),
        Window("24h", 24 * 3600, 600, "the last 24 hours"),
        Window("7d", 7 * 24 * 3600, 3600, "the last 7 days"),
    )
}
DEFAULT_WINDOW = "1h"


def get_window(value: str | Window | None) -> Window:
    """The Window for VALUE ("15m", "1h", ...; None gives the default); ValidationFailed otherwise."""
    if isinstance(value, Window):
        return value
    key = DEFAULT_WINDOW if value is None else value
    if key not in WINDOWS:
        shown = str(key)[:20]
        raise ValidationFailed.for_field("window", f'must be one of {", ".join(WINDOWS)} (got "{shown}")')
    return WINDOWS[key]


# -- PromQL ------------------------------------------------------------------------------------

TTFT = "vllm:time_to_first_token_seconds_bucket"
ITL = "vllm:inter_token_latency_seconds_bucket"
TPOT_LEGACY = "vllm:time_per_output_token_seconds_bucket"  # vLLM < 0.10
FINISHED = "vllm:request_success_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = "vllm:kv_cache_usage_perc"
KV_CACHE_LEGACY = "vllm:gpu_cache_usage_perc"  # vLLM < 0.10
HTTP_REQUESTS = "http_requests_total"

# What a label value in a selector may be: the DNS labels endpoints.naming builds, nothing else.
_LABEL_VALUE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def selector(**labels: str) -> str:
    """The inside of a PromQL selector, e.g. ``namespace="t-acme",service="ep-chat"``.

    Values must be DNS labels (validated names); anything else raises ValueError, so no text
    that could close the quote ever reaches a query."""
    parts = []
    for name, value in labels.items():
        if not _LABEL_VALUE.match(value) or len(value) > naming.MAX_DNS_LABEL_LENGTH:
            raise ValueError(f"label {name}={value!r} is not a DNS label; refusing to put it in PromQL")
        parts.append(f'{name}="{value}"')
    return ",".join(parts)


def endpoint_selector(endpoint: Endpoint) -> str:
    return selector(namespace=naming.namespace_for(endpoint.tenant), service=naming.object_name(endpoint))


def tenant_selector(tenant: Tenant) -> str:
    return selector(namespace=naming.namespace_for(tenant))


def duration(seconds: int) -> str:
    """A PromQL duration: 900 -> 15m, 3600 -> 1h, 604800 -> 7d, 134 -> 134s."""
    if seconds >= 2 * 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Query:
    """One figure: the PromQL of its current value (instant query) and of its series (range query)."""

    key: str
    label: str
    unit: str
    current: str
    series: str


@dataclass(frozen=True)
class _Metric:
    key: str
    label: str
    unit: str
    # Rates and quantiles: (selector, range) -> PromQL; the current value takes the look-back as
    # the range, the series the window's rate range.
    over: Callable[[str, str], str] | None
    # Gauges instead: (selector) -> the latest value, (selector, range) -> the highest in each step.
    gauge: tuple[Callable[[str], str], Callable[[str, str], str]] | None = None


def _quantile(q: float, bucket: str, fallback: str | None = None) -> Callable[[str, str], str]:
    def build(sel: str, rng: str) -> str:
        expr = f"histogram_quantile({q}, sum by (le) (rate({bucket}{{{sel}}}[{rng}])))"
        if fallback:
            expr = f"({expr}) or (histogram_quantile({q}, sum by (le) (rate({fallback}{{{sel}}}[{rng}]))))"
        return expr

    return build


def _per_second(counter: str) -> Callable[[str, str], str]:
    return lambda sel, rng: f"sum(rate({counter}{{{sel}}}[{rng}]))"


def _error_rate(sel: str, rng: str) -> str:
    # 5xx never reach vLLM's finished counter: add them to both sides, when the pods expose them.
    server_errors = (
        f'(sum(rate({HTTP_REQUESTS}{{{sel},handler=~"/v1/.+",status="5xx"}}[{rng}])) or vector(0))'
    )
    aborted = f'(sum(rate({FINISHED}{{{sel},finished_reason="abort"}}[{rng}])) or vector(0))'
    finished = f"sum(rate({FINISHED}{{{sel}}}[{rng}]))"
    return f"({aborted} + {server_errors}) / ({finished} + {server_errors})"


def _gauge(
    agg: str, metric: str, fallback: str | None = None
) -> tuple[Callable[[str], str], Callable[[str, str], str]]:
    def now(sel: str) -> str:
        expr = f"{agg}({metric}{{{sel}}})"
        return f"({expr}) or ({agg}({fallback}{{{sel}}}))" if fallback else expr

    def series(sel: str, rng: str) -> str:
        expr = f"{agg}(max_over_time({metric}{{{sel}}}[{rng}]))"
        return f"({expr}) or ({agg}(max_over_time({fallback}{{{sel}}}[{rng}])))" if fallback else expr

    return now, series


_METRICS: tuple[_Metric, ...] = (
    _Metric("ttft_p50", "Time to first token, p50", "s", _quantile(0.5, TTFT)),
    _Metric("ttft_p95", "Time to first token, p95", "s", _quantile(0.95, TTFT)),
    _Metric("ttft_p99", "Time to first token, p99", "s", _quantile(0.99, TTFT)),
    _Metric("tpot_p50", "Time per output token, p50", "s", _quantile(0.5, ITL, TPOT_LEGACY)),
    _Metric("tpot_p95", "Time per output token, p95", "s", _quantile(0.95, ITL, TPOT_LEGACY)),
    _Metric("request_rate", "Requests", "req/s", _per_second(FINISHED)),
    _Metric("error_rate", "Errors (share of requests)", "fraction", _error_rate),
    _Metric("prompt_tokens_per_second", "Tokens in (prompt)", "tokens/s", _per_second(PROMPT_TOKENS)),
    _Metric(
        "generation_tokens_per_second", "Tokens out (generated)", "tokens/s", _per_second(GENERATION_TOKENS)
    ),
    _Metric("queue_depth", "Queue depth (waiting)", "requests", None, _gauge("sum", WAITING)),
    _Metric("running_requests", "Running requests", "requests", None, _gauge("sum", RUNNING)),
    _Metric(
        "kv_cache_usage",
        "KV cache usage (fullest replica)",
        "fraction",
        None,
        _gauge("max", KV_CACHE, KV_CACHE_LEGACY),
    ),
)
METRIC_KEYS = tuple(m.key for m in _METRICS)


def queries(sel: str, window: str | Window, lookback: int | None = None) -> list[Query]:
    """The PromQL of every figure for selector SEL (see `selector`) and WINDOW.

    LOOKBACK (seconds) shortens the current values' look-back (a subject younger than the window);
    the default is the whole window."""
    w = get_window(window)
    current_range = duration(lookback or w.seconds)
    rate_range = duration(w.rate_seconds)
    out = []
    for m in _METRICS:
        if m.gauge is not None:
            now, series = m.gauge
            current, over_time = now(sel), series(sel, rate_range)
        else:
            assert m.over is not None
            current, over_time = m.over(sel, current_range), m.over(sel, rate_range)
        out.append(Query(m.key, m.label, m.unit, current, over_time))
    return out


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """The current figures. Latencies in seconds; rates per second; ratios from 0 to 1.
    None: Prometheus has no value (no series, or no requests to take a quantile of)."""

    ttft_p50: float | None = None
    ttft_p95: float | None = None
    ttft_p99: float | None = None
    tpot_p50: float | None = None  # time per output token (inter-token latency)
    tpot_p95: float | None = None
    request_rate: float | None = None  # finished requests per second, over the window
    error_rate: float | None = None  # share of requests that failed (aborted, or 5xx where exposed)
    prompt_tokens_per_second: float | None = None  # tokens in
    generation_tokens_per_second: float | None = None  # tokens out
    queue_depth: float | None = None  # requests waiting now, all replicas
    running_requests: float | None = None  # requests running now, all replicas
    kv_cache_usage: float | None = None  # fullest replica's KV cache now, 0 to 1


@dataclass(frozen=True)
class Point:
    time: datetime
    value: float | None  # None where Prometheus gave NaN (e.g. a quantile of no requests)


@dataclass(frozen=True)
class Series:
    """One figure over the window: KEY as in Figures, a LABEL and UNIT to show, the CURRENT value
    (the same as in Figures) and the POINTS of the chart, oldest first."""

    key: str
    label: str
    unit: str  # "s", "req/s", "fraction", "tokens/s", "requests"
    current: float | None
    points: list[Point] = field(default_factory=list)


@dataclass(frozen=True)
class Dashboard:
    """Everything a dashboard page or API answer shows.

    ``status`` is one of: ``ok``; ``no_traffic`` (series exist, no request finished and none
    running or waiting in the window: gauges are still shown); ``no_data`` (no series at all:
    never scraped in the window); ``unreachable`` (Prometheus did not answer, or too slowly);
    ``error`` (Prometheus answered with an error); ``unconfigured`` (no PROMETHEUS_URL).
    ``available`` is True for ok and no_traffic. ``message`` is one plain sentence, empty for ok.
    """

    scope: str  # "endpoint" or "tenant"
    subject: str  # the endpoint's or the tenant's name
    window: str  # a key of WINDOWS
    window_label: str  # "the last hour"
    status: str
    available: bool
    message: str
    start: datetime
    end: datetime
    step_seconds: int
    current: Figures
    series: list[Series]

    def get(self, key: str) -> Series | None:
        return next((s for s in self.series if s.key == key), None)


# Dashboard.status values; the first two have figures to show.
STATUSES = ("ok", "no_traffic", "no_data", "unreachable", "error", "unconfigured")


class _Unavailable(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _number(raw: str) -> float | None:
    value = float(raw)
    return None if math.isnan(value) or math.isinf(value) else value


class _Prometheus:
    """Prometheus' HTTP API, with a timeout per query and a budget for the whole dashboard."""

    def __init__(self, base_url: str) -> None:
        # Prometheus is an internal service: never route its queries through an egress proxy.
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=QUERY_TIMEOUT_SECONDS, trust_env=False
        )
        self.deadline = time.monotonic() + TOTAL_BUDGET_SECONDS

    def close(self) -> None:
        self.http.close()

    def _call(self, path: str, params: dict) -> list[dict]:
        if time.monotonic() > self.deadline:
            raise _Unavailable("unreachable", "Metrics are unavailable: Prometheus answered too slowly.")
        try:
            response = self.http.post(path, data=params)
        except httpx.TimeoutException as exc:
            raise _Unavailable(
                "unreachable", "Metrics are unavailable: Prometheus did not answer in time."
            ) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _Unavailable("unreachable", "Metrics are unavailable: Prometheus did not answer.") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or body.get("status") != "success":
            detail = body.get("error") or f"HTTP {response.status_code}"
            log.warning("Prometheus query failed (%s): %s", detail, params.get("query", "")[:300])
            raise _Unavailable(
                "error", f"Metrics are unavailable: Prometheus answered with an error ({str(detail)[:160]})."
            )
        return (body.get("data") or {}).get("result") or []

    def instant(self, promql: str, at: datetime) -> float | None:
        result = self._call("/api/v1/query", {"query": promql, "time": f"{at.timestamp():.3f}"})
        with _parsing():
            return _number(result[0]["value"][1]) if result else None

    def range(self, promql: str, start: datetime, end: datetime, step: int) -> list[Point]:
        result = self._call(
            "/api/v1/query_range",
            {
                "query": promql,
                "start": f"{start.timestamp():.3f}",
                "end": f"{end.timestamp():.3f}",
                "step": step,
            },
        )
        if not result:
            return []
        with _parsing():
            return [
                Point(datetime.fromtimestamp(float(t), tz=UTC), _number(v)) for t, v in result[0]["values"]
            ]


@contextmanager
def _parsing() -> Iterator[None]:
    """An answer that is not shaped like a query result is an error, not an exception for the page."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise _Unavailable(
            "error", "Metrics are unavailable: Prometheus answered with something other than query results."
        ) from exc


def lookback_seconds(w: Window, since: datetime | None, now: datetime) -> int:
    """How far back the current values look: the window, or less when the subject is younger
    (SINCE: when it was created), never under a minute."""
    if since is None:
        return w.seconds
    age = math.ceil((now - since).total_seconds())
    return max(MIN_LOOKBACK_SECONDS, min(w.seconds, age))


def _dashboard(
    scope: str,
    subject: str,
    noun: str,
    sel: str,
    window: str | Window,
    since: datetime | None,
    now: datetime | None,
) -> Dashboard:
    w = get_window(window)
    now = now or timezone.now()
    lookback = lookback_seconds(w, since, now)
    start = now - timedelta(seconds=lookback)
    qs = queries(sel, w, lookback)

    def answer(status: str, message: str, current: Figures, series: list[Series]) -> Dashboard:
        return Dashboard(
            scope=scope,
            subject=subject,
            window=w.key,
            window_label=w.label,
            status=status,
            available=status in STATUSES[:2],
            message=message,
            start=start,
            end=now,
            step_seconds=w.step_seconds,
            current=current,
            series=series,
        )

    empty = [Series(q.key, q.label, q.unit, None) for q in qs]
    if not settings.PROMETHEUS_URL:
        return answer(
            "unconfigured",
            "Metrics are unavailable: no Prometheus is configured (PROMETHEUS_URL).",
            Figures(),
            empty,
        )
    try:
        prometheus = _Prometheus(settings.PROMETHEUS_URL)
    except httpx.InvalidURL:
        return answer(
            "unconfigured", "Metrics are unavailable: PROMETHEUS_URL is not a URL.", Figures(), empty
        )
    try:
        values = {q.key: prometheus.instant(q.current, now) for q in qs}
        points = {q.key: prometheus.range(q.series, start, now, w.step_seconds) for q in qs}
    except _Unavailable as exc:
        log.warning("%s dashboard for %s: %s", scope, subject, exc.message)
        return answer(exc.status, exc.message, Figures(), empty)
    finally:
        prometheus.close()

    current = Figures(**values)
    series = [Series(q.key, q.label, q.unit, values[q.key], points[q.key]) for q in qs]
    if not any(v is not None for v in values.values()) and not any(points.values()):
        return answer("no_data", f"No metrics yet for {noun} in {w.label}.", current, series)
    busy = any((values[k] or 0) > 0 for k in ("request_rate", "running_requests", "queue_depth"))
    if not busy:
        return answer("no_traffic", f"No traffic yet in {w.label}.", current, series)
    return answer("ok", "", current, series)


def endpoint_dashboard(
    endpoint: Endpoint, window: str | Window = DEFAULT_WINDOW, *, now: datetime | None = None
) -> Dashboard:
    """How ENDPOINT served over WINDOW (a key of WINDOWS), summed over its replicas."""
    return _dashboard(
        "endpoint", endpoint.name, "this endpoint", endpoint_selector(endpoint), window, endpoint.created, now
    )


def tenant_dashboard(
    tenant: Tenant, window: str | Window = DEFAULT_WINDOW, *, now: datetime | None = None
) -> Dashboard:
    """How all of TENANT's endpoints served over WINDOW, together."""
    return _dashboard(
        "tenant", tenant.slug, "this tenant's endpoints", tenant_selector(tenant), window, tenant.created, now
    )
