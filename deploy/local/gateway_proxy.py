#!/usr/bin/env python3
"""The shared Gateway's data plane on loopback: what Envoy would do for the portal's HTTPRoutes.

gateway_emulator.py writes route status; this process carries the traffic. It listens on
127.0.0.1:PORTAL_GATEWAY_PORT and, for each request:
  1. finds the HTTPRoute whose hostnames match the Host header, in the host cluster or any tenant
     cluster (Secrets vc-<name>), among routes our controller has Accepted; the oldest route wins a
     hostname two routes claim, as the Gateway API says; no route -> 404; no rule matching the path,
     method and headers -> 404;
  2. checks `Authorization: Bearer <key>`: sha256(key) must be one of the digests in key
     tenant-key-sha256 of Secret <service>-auth next to the backend Service -> else 401 (tenant
     keys are never stored raw; the gateway compares digests in constant time);
  3. picks a backendRef (by weight) whose Service exists (else 500, as the spec asks for an
     unresolvable backend) and has Ready, not terminating pods behind its selector; none -> 503 with
     Retry-After: a cold start or a scale to zero is not a missing endpoint (KServe answers 404);
  4. sends the request to the least busy of those pods' emulators (the port comes from the serving
     emulator's record), with the endpoint's internal key from the same Secret's `api-key`, and
     streams the answer back as it arrives (SSE included), within the rule's request timeout.
A connection refused by one pod (it just died) is retried once on another. GET /-/ready on the
listener's own address (Host 127.0.0.1 or localhost) says whether the caches have synced.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import ipaddress
import itertools
import logging
import random
import re
import signal
import sys
import threading
import uuid
from collections import defaultdict
from pathlib import Path

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lp import serving  # noqa: E402
from lp.cluster import GATEWAY_CONTROLLER  # noqa: E402
from lp.config import Config  # noqa: E402

log = logging.getLogger("gateway-proxy")

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
RETRY_AFTER_STARTING = 5  # a replica exists and is loading
RETRY_AFTER_NO_REPLICA = 10  # scaled to zero, or the first replica is not scheduled yet
DEFAULT_TIMEOUT = 600.0
# Objects a vCluster syncer copies into the host carry this; the tenant cluster's original is what we route.
SYNCED_ANNOTATION = "vcluster.loft.sh/object-name"


def error(status: int, message: str, err_type: str, headers: dict[str, str] | None = None) -> web.Response:
    """An OpenAI-shaped error, so clients' SDKs show the message."""
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return web.json_response(body, status=status, headers=headers)


def hostname_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host.count(".") >= pattern.count(".")
    return pattern == host


def accepted(route: dict) -> bool:
    """Whether our controller accepted the route on one of its parents."""
    for parent in (route.get("status") or {}).get("parents") or []:
        if parent.get("controllerName") != GATEWAY_CONTROLLER:
            continue
        for cond in parent.get("conditions") or []:
            if cond.get("type") == "Accepted" and cond.get("status") == "True":
                return True
    return False


def rule_matches(rule: dict, request: web.Request) -> bool:
    matches = rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]
    return any(_match(m, request) for m in matches)


def _match(match: dict, request: web.Request) -> bool:
    path = match.get("path") or {"type": "PathPrefix", "value": "/"}
    value, kind = path.get("value", "/"), path.get("type", "PathPrefix")
    if kind == "Exact" and request.path != value:
        return False
    if kind == "PathPrefix":
        prefix = value.rstrip("/")
        if prefix and not (request.path == prefix or request.path.startswith(prefix + "/")):
            return False
    if kind == "RegularExpression" and not re.fullmatch(value, request.path):
        return False
    if match.get("method") and match["method"] != request.method:
        return False
    for header in match.get("headers") or []:
        got = request.headers.get(header["name"])
        if header.get("type", "Exact") == "Exact" and got != header["value"]:
            return False
        if header.get("type") == "RegularExpression" and (
            got is None or not re.fullmatch(header["value"], got)
        ):
            return False
    for param in match.get("queryParams") or []:
        if request.query.get(param["name"]) != param["value"]:
            return False
    return True


class Gateway:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.clusters = serving.ClusterSet(cfg, ("httproutes", "services", "pods", "secrets"), lambda: None)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.turn = itertools.count()
        self.session: ClientSession | None = None

    # -- the caches ----------------------------------------------------------------------------

    def refresh_forever(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            try:
                self.clusters.refresh()
            except Exception:  # noqa: BLE001 - keep routing with what we have
                log.exception("refreshing the tenant clusters failed")

    def synced(self) -> bool:
        return self.clusters.discovered and all(
            c.synced(kind) for c in self.clusters.all() if not c.is_tenant for kind in c.informers
        )

    def find_route(self, host: str, request: web.Request) -> tuple[serving.KubeCluster, dict, dict] | None:
        candidates = []
        for kube in self.clusters.all():
            for route in kube.items("httproutes"):
                meta = route["metadata"]
                if SYNCED_ANNOTATION in (meta.get("annotations") or {}) or meta.get("deletionTimestamp"):
                    continue
                hosts = (route.get("spec") or {}).get("hostnames") or []
                if any(hostname_matches(h, host) for h in hosts) and accepted(route):
                    exact = host in hosts
                    candidates.append(
                        (not exact, meta.get("creationTimestamp", ""), kube.key, meta["name"], kube, route)
                    )
        for *_, kube, route in sorted(candidates, key=lambda c: c[:4]):
            for rule in route["spec"].get("rules") or []:
                if rule_matches(rule, request):
                    return kube, route, rule
        return None

    @staticmethod
    def secret_field(secret: dict | None, key: str) -> str:
        raw = ((secret or {}).get("data") or {}).get(key)
        return base64.b64decode(raw).decode() if raw else ""

    def authorized(self, kube: serving.KubeCluster, services: list[tuple[str, str]], header: str) -> bool:
        """Whether the bearer key's digest is one of the backends' tenant-key-sha256 digests."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        ok = False
        for namespace, service in services:
            secret = kube.get("secrets", namespace, f"{service}-auth")
            for known in self.secret_field(secret, "tenant-key-sha256").split():
                ok |= hmac.compare_digest(known.strip().lower(), digest)  # no early exit: constant time
        return ok

    def ready_pods(self, kube: serving.KubeCluster, namespace: str, service: dict) -> tuple[list[dict], int]:
        """The Service's Ready pods with an emulator port, and how many pods it has at all."""
        selector = (service.get("spec") or {}).get("selector")
        pods = [
            p
            for p in kube.items("pods")
            if p["metadata"]["namespace"] == namespace
            and serving.selector_matches(selector, p["metadata"].get("labels"))
            and not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        ready = []
        for pod in pods:
            if not serving.pod_ready(pod):
                continue
            record = serving.read_record(self.cfg, pod["metadata"]["uid"])
            if record and record.get("port"):
                ready.append({**record, "podName": pod["metadata"]["name"]})
        return ready, len(pods)

    # -- the request path ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].strip("[]").lower().rstrip(".")
        if self.is_own_address(host):
            if request.path == "/-/ready":
                return web.Response(
                    text="ready\n" if self.synced() else "syncing\n", status=200 if self.synced() else 503
                )
            return error(
                404,
                f"No endpoint answers at {host or 'this address'}; send the endpoint's hostname in the Host header.",
                "NotFoundError",
            )

        found = self.find_route(host, request)
        if found is None:
            return error(404, f"No endpoint serves {request.path} at {host}.", "NotFoundError")
        kube, route, rule = found
        namespace = route["metadata"]["namespace"]
        refs = [
            r
            for r in rule.get("backendRefs") or []
            if r.get("kind", "Service") == "Service" and r.get("group", "") == "" and r.get("weight", 1) > 0
        ]
        backends = [(r.get("namespace") or namespace, r["name"]) for r in refs]
        if not self.authorized(kube, backends, request.headers.get("Authorization", "")):
            return error(
                401,
                "Missing or invalid API key. Send `Authorization: Bearer <key>` with a key issued for this endpoint.",
                "AuthenticationError",
                {"WWW-Authenticate": 'Bearer realm="inference-portal"'},
            )

        # Weighted choice of a backend with ready pods; one whose Service is missing is a 500.
        order = sorted(refs, key=lambda r: random.random() ** (1 / r.get("weight", 1)), reverse=True)  # noqa: S311
        missing, pods_seen, candidates = [], 0, []
        for ref in order:
            ns = ref.get("namespace") or namespace
            service = kube.get("services", ns, ref["name"])
            if service is None:
                missing.append(ref["name"])
                continue
            ready, total = self.ready_pods(kube, ns, service)
            pods_seen += total
            if ready:
                candidates = [(ns, ref["name"], r) for r in ready]
                break
        if not candidates:
            if order and len(missing) == len(order):
                return error(
                    500,
                    f"The endpoint's backend Service {', '.join(missing)} does not exist.",
                    "InternalServerError",
                )
            wait = RETRY_AFTER_STARTING if pods_seen else RETRY_AFTER_NO_REPLICA
            why = (
                "is starting (the model is loading)"
                if pods_seen
                else "has no running replica (scaled to zero or not scheduled yet)"
            )
            return error(
                503,
                f"The endpoint {why}; retry in {wait} seconds.",
                "ServiceUnavailableError",
                {"Retry-After": str(wait)},
            )
        ns, service_name = candidates[0][0], candidates[0][1]
        api_key = self.secret_field(kube.get("secrets", ns, f"{service_name}-auth"), "api-key")
        timeout = serving.go_duration(((rule.get("timeouts") or {}).get("request")), DEFAULT_TIMEOUT)
        return await self.forward(request, [c[2] for c in candidates], api_key, timeout)

    def is_own_address(self, host: str) -> bool:
        if host in ("", "localhost"):
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    def pick(self, pods: list[dict], exclude: set[str]) -> dict | None:
        """Least outstanding requests; ties broken round-robin."""
        choices = [p for p in pods if p["uid"] not in exclude]
        if not choices:
            return None
        turn = next(self.turn)
        return min(
            choices, key=lambda p: (self.in_flight[p["uid"]], (choices.index(p) - turn) % len(choices))
        )

    async def forward(
        self, request: web.Request, pods: list[dict], api_key: str, timeout: float
    ) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"authorization"}
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        peer = request.remote or ""
        headers["X-Forwarded-For"] = ", ".join(filter(None, [request.headers.get("X-Forwarded-For"), peer]))
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-Proto"] = request.scheme
        headers.setdefault("X-Request-Id", str(uuid.uuid4()))
        tried: set[str] = set()
        while True:
            pod = self.pick(pods, tried)
            if pod is None:
                return error(
                    503,
                    "No replica of the endpoint accepted the connection; retry shortly.",
                    "ServiceUnavailableError",
                    {"Retry-After": str(RETRY_AFTER_STARTING)},
                )
            tried.add(pod["uid"])
            url = f"http://127.0.0.1:{pod['port']}{request.path_qs}"
            self.in_flight[pod["uid"]] += 1
            try:
                try:
                    upstream = await self.session.request(
                        request.method,
                        url,
                        headers=headers,
                        data=body or None,
                        timeout=ClientTimeout(total=timeout, sock_connect=2),
                        allow_redirects=False,
                    )
                except (ClientError, OSError) as exc:
                    log.info(
                        "%s/%s refused the connection (%s); trying another",
                        pod["namespace"],
                        pod["podName"],
                        exc,
                    )
                    continue
                async with upstream:
                    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                    for key, value in upstream.headers.items():
                        if key.lower() not in HOP_BY_HOP:
                            response.headers.add(key, value)
                    if upstream.content_length is not None:
                        response.content_length = upstream.content_length
                    await response.prepare(request)
                    try:
                        # Each chunk as it arrives: streamed tokens must not wait in a buffer.
                        async for chunk in upstream.content.iter_any():
                            await response.write(chunk)
                        await response.write_eof()
                    except (TimeoutError, ClientError, ConnectionResetError) as exc:
                        log.info("stream to %s ended early: %s", pod["podName"], exc)
                    return response
            finally:
                self.in_flight[pod["uid"]] -= 1


async def serve(gateway: Gateway, port: int) -> None:
    gateway.session = ClientSession(connector=TCPConnector(limit=0, force_close=False), auto_decompress=False)
    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    log.info("gateway data plane on http://127.0.0.1:%d", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await gateway.session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="loopback port (default: PORTAL_GATEWAY_PORT)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    cfg = Config.from_env()
    gateway = Gateway(cfg)
    stop = threading.Event()
    threading.Thread(
        target=gateway.refresh_forever, args=(stop,), daemon=True, name="tenant clusters"
    ).start()
    asyncio.run(serve(gateway, args.port or cfg.ports["gateway"]))
    stop.set()


if __name__ == "__main__":
    main()
