"""The first-request gate: before an endpoint is called Ready, send a real short completion
through its public route with a key the gateway accepts, and record the time to first token.

Verification runs on a small thread pool so a slow endpoint never stalls the watcher's loop;
results come back through `verified()` / `error()` and are persisted on the endpoint row.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from endpoints import naming
from endpoints.models import Endpoint

from . import status as st
from .kube import KubeError, tenant_cluster

log = logging.getLogger(__name__)
RETRY_SECONDS = 3.0


class Verifier:
    def __init__(self, workers: int = 4) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify")
        self.lock = threading.Lock()
        self.in_flight: set[int] = set()
        self.last_try: dict[int, float] = {}
        self.errors: dict[int, str] = {}
        self.verified_at: dict[int, object] = {}

    def verified(self, endpoint_id: int, recorded: bool | None = None) -> bool:
        if not settings.PORTAL_VERIFY_FIRST_REQUEST:
            return True
        with self.lock:
            if endpoint_id in self.verified_at:
                return True
        # After a watcher restart: trust a verification recorded on the row. RECORDED is what the
        # row said when the caller just read it, which spares a query per endpoint per tick.
        if recorded is not None:
            return recorded
        return Endpoint.objects.filter(pk=endpoint_id, verified_at__isnull=False).exists()

    def error(self, endpoint_id: int) -> str:
        with self.lock:
            return self.errors.get(endpoint_id, "")

    def forget(self, endpoint_id: int) -> None:
        """Pods restarted from scratch: the next Ready must be verified again."""
        with self.lock:
            self.verified_at.pop(endpoint_id, None)
        Endpoint.objects.filter(pk=endpoint_id).update(verified_at=None)

    def request(self, endpoint: Endpoint, reading: st.Reading) -> None:
        with self.lock:
            if (
                endpoint.pk in self.in_flight
                or time.monotonic() - self.last_try.get(endpoint.pk, 0) < RETRY_SECONDS
            ):
                return
            self.in_flight.add(endpoint.pk)
            self.last_try[endpoint.pk] = time.monotonic()
        self.pool.submit(self._verify, endpoint.pk)

    def _verify(self, endpoint_id: int) -> None:
        close_old_connections()
        try:
            endpoint = Endpoint.objects.select_related("tenant").get(pk=endpoint_id)
            ttft = first_token(endpoint)
            now = timezone.now()
            Endpoint.objects.filter(pk=endpoint_id).update(verified_at=now, first_token_seconds=ttft)
            with self.lock:
                self.verified_at[endpoint_id] = now
                self.errors.pop(endpoint_id, None)
            log.info("endpoint %s answered its first request (TTFT %.3fs)", endpoint_id, ttft)
        except Exception as exc:  # noqa: BLE001 - every failure is a reason to show, and to try again
            with self.lock:
                self.errors[endpoint_id] = str(exc)[:300]
        finally:
            with self.lock:
                self.in_flight.discard(endpoint_id)
            close_old_connections()


def probe_key(endpoint: Endpoint) -> str:
    ns = naming.namespace_for(endpoint.tenant)
    cluster = tenant_cluster(ns, endpoint.tenant.slug)
    secret = cluster.get("v1", "Secret", f"{naming.object_name(endpoint)}-auth", ns)
    raw = ((secret or {}).get("data") or {}).get("probe-key")
    if not raw:
        raise KubeError("the endpoint's auth Secret has no probe key yet")
    return base64.b64decode(raw).decode()


def first_token(endpoint: Endpoint, timeout: float = 30) -> float:
    """Send one streamed completion through the gateway; seconds until the first token arrived."""
    host = naming.hostname(endpoint, settings.PORTAL_GATEWAY_DOMAIN)
    public = settings.PORTAL_ENDPOINT_URL_TEMPLATE.format(host=host)
    base = settings.PORTAL_GATEWAY_URL or public
    headers = {"Authorization": f"Bearer {probe_key(endpoint)}", "Host": urlsplit(public).netloc or host}
    body = {"model": endpoint.name, "prompt": "Say ok.", "max_tokens": 2, "stream": True, "temperature": 0}
    started = time.monotonic()
    with (
        httpx.Client(timeout=timeout) as http,
        http.stream("POST", f"{base.rstrip('/')}/v1/completions", json=body, headers=headers) as resp,
    ):
        if resp.status_code != 200:
            detail = resp.read().decode(errors="replace")[:200]
            raise RuntimeError(f"HTTP {resp.status_code} from /v1/completions: {detail}")
        for line in resp.iter_lines():
            if line.startswith("data:") and line.strip() != "data: [DONE]":
                return time.monotonic() - started
    raise RuntimeError("the stream ended without a token")
