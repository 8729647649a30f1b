"""What the serving emulator and the gateway's data plane share: the clusters they watch and the
record of which emulator plays which pod.

Both processes see the clusters the way the portal's workers do: the host cluster (the platform's
admin kubeconfig) plus one tenant cluster per Secret vc-<name> in the host, built from its `config`
kubeconfig. Each cluster gets list-then-watch caches of the kinds a process needs, started and
stopped as tenant clusters come and go.

The serving emulator writes one record per emulated pod (serving/pods/<uid>/record.json, keyed by
the pod's uid so equal names in two tenant clusters cannot collide); the gateway reads the port
from it, as a real data plane would read a pod's IP from its EndpointSlice.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

from . import cluster
from .config import LOCAL_DIR, Config
from .procs import Procs, require_port

log = logging.getLogger("serving")

SUPERVISOR = "serving-emulator"
GATEWAY = "gateway-proxy"

EMULATE_ANNOTATION = "inference-portal.io/emulate"
LOAD_DELAY_ANNOTATION = "inference-portal.io/load-delay"
FAIL_ANNOTATION = "inference-portal.io/emulate-fail"

# Paths of the kinds the two processes watch, across all namespaces.
PATHS = {
    "nodes": "/api/v1/nodes",
    "pods": "/api/v1/pods",
    "secrets": "/api/v1/secrets",
    "services": "/api/v1/services",
    "httproutes": "/apis/gateway.networking.k8s.io/v1/httproutes",
}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str | None, default: float) -> float:
    """A Go (or Gateway API) duration such as 45s, 1m30s or 500ms, in seconds; DEFAULT if unset or bad."""
    text = (text or "").strip()
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        return default
    return sum(float(n) * _UNITS[u] for n, u in parts)


def key_of(obj: dict) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def selector_matches(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """A Service's selector: every pair present. An empty selector selects nothing (no Endpoints)."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def pod_ready(pod: dict) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# -- raw REST on a kubernetes ApiClient ---------------------------------------------------------


def api_client(config_file: str | None = None, data: dict | None = None) -> client.ApiClient:
    """A client that does not retry by itself: the informers retry, with backoff, and say so once."""
    configuration = client.Configuration()
    if data is not None:
        config.load_kube_config_from_dict(data, client_configuration=configuration)
    else:
        config.load_kube_config(config_file=config_file, client_configuration=configuration)
    configuration.retries = 0
    configuration.connection_pool_maxsize = 8
    return client.ApiClient(configuration)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def request(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
    timeout: float = 15,
) -> dict:
    """One JSON call; ApiError with the status on failure (0 when the server did not answer)."""
    try:
        resp = api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )[0]
    except client.ApiException as exc:
        message = exc.reason or ""
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            message = json.loads(exc.body).get("message") or message
        raise ApiError(exc.status or 0, message) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ApiError(0, f"unreachable: {exc}") from exc
    return json.loads(resp.data or b"{}")


def apply(api: client.ApiClient, path: str, obj: dict, manager: str) -> dict:
    """Server-side apply OBJ at PATH (the object's own URL) as field manager MANAGER."""
    return request(
        api,
        "PATCH",
        path,
        body=obj,
        query=[("fieldManager", manager), ("force", "true")],
        content_type="application/apply-patch+yaml",
    )


class Informer(threading.Thread):
    """A list-then-watch cache of one kind in one cluster; resumes from resourceVersion, re-lists
    on 410 or on any error (with a capped backoff), and stops when asked."""

    WATCH_SECONDS = 30

    def __init__(
        self,
        api: client.ApiClient,
        kind: str,
        where: str,
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True, name=f"watch {kind} in {where}")
        self.api, self.kind, self.path, self.where = api, kind, PATHS[kind], where
        self.on_change, self.stop = on_change, stop
        self.items: dict[tuple[str, str], dict] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()
        self.error = ""

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.items.values())

    def get(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            return self.items.get((namespace, name))

    def run(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                listing = request(self.api, "GET", self.path, timeout=30)
                rv = listing["metadata"]["resourceVersion"]
                with self.lock:
                    self.items = {key_of(o): o for o in listing.get("items") or []}
                self.synced.set()
                self.error = ""
                self.on_change()
                backoff = 1.0
                while not self.stop.is_set():
                    rv = self._watch(rv)
            except ApiError as exc:
                if exc.status == 410:
                    continue  # the resourceVersion is too old: list again
                self._failed(str(exc))
            except Exception as exc:  # noqa: BLE001 - API servers restart and go away; keep going
                self._failed(f"{type(exc).__name__}: {exc}")
            self.stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def _failed(self, why: str) -> None:
        if why != self.error:  # say it once, not on every retry
            log.warning("%s: %s", self.name, why)
        self.error = why

    def _watch(self, rv: str) -> str:
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", rv),
            ("timeoutSeconds", str(self.WATCH_SECONDS)),
        ]
        try:
            resp = self.api.call_api(
                self.path,
                "GET",
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self.WATCH_SECONDS + 10,
            )[0]
        except client.ApiException as exc:
            raise ApiError(exc.status or 0, exc.reason or "") from exc
        try:
            for line in iter_resp_lines(resp):
                if self.stop.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise ApiError(obj.get("code") or 500, obj.get("message") or "watch error")
                rv = obj.get("metadata", {}).get("resourceVersion") or rv
                if event.get("type") == "BOOKMARK":
                    continue
                with self.lock:
                    if event["type"] == "DELETED":
                        self.items.pop(key_of(obj), None)
                    else:
                        self.items[key_of(obj)] = obj
                self.on_change()
        finally:
            resp.close()  # a watch cut short must not go back to the pool half read
            resp.release_conn()
        return rv


class KubeCluster:
    """One API server with caches of some kinds. KEY is "host" or "<host namespace>/<vCluster name>"."""

    def __init__(
        self, key: str, api: client.ApiClient, kinds: tuple[str, ...], on_change: Callable[[], None]
    ) -> None:
        self.key = key
        self.api = api
        self.stop_event = threading.Event()
        self.informers = {k: Informer(api, k, key, on_change, self.stop_event) for k in kinds}
        for informer in self.informers.values():
            informer.start()

    @property
    def is_tenant(self) -> bool:
        return self.key != "host"

    def synced(self, kind: str) -> bool:
        return self.informers[kind].synced.is_set()

    def items(self, kind: str) -> list[dict]:
        return self.informers[kind].snapshot()

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        return self.informers[kind].get(namespace, name)

    def stop(self) -> None:
        self.stop_event.set()


class ClusterSet:
    """The host cluster and every tenant cluster whose kubeconfig Secret vc-<name> is in the host."""

    def __init__(self, cfg: Config, kinds: tuple[str, ...], on_change: Callable[[], None]) -> None:
        self.kinds = tuple(dict.fromkeys((*kinds, "secrets")))  # the host's Secrets name the tenants
        self.on_change = on_change
        host_api = api_client(config_file=str(cluster.host_plane(cfg).admin_kubeconfig))
        self.host = KubeCluster("host", host_api, self.kinds, on_change)
        self.tenants: dict[str, tuple[str, KubeCluster]] = {}  # key -> (kubeconfig digest, cluster)
        self.lock = threading.Lock()

    def all(self) -> list[KubeCluster]:
        with self.lock:
            return [self.host, *(c for _, c in self.tenants.values())]

    def get(self, key: str) -> KubeCluster | None:
        if key == "host":
            return self.host
        with self.lock:
            entry = self.tenants.get(key)
        return entry[1] if entry else None

    @property
    def discovered(self) -> bool:
        """Whether the tenant clusters are known (the host's Secrets have been listed)."""
        return self.host.synced("secrets")

    def refresh(self) -> None:
        """Start caches for new tenant clusters, restart them for a changed kubeconfig, stop gone ones."""
        if not self.discovered:
            return
        wanted: dict[str, bytes] = {}
        for secret in self.host.items("secrets"):
            meta = secret["metadata"]
            name = meta["name"]
            raw = (secret.get("data") or {}).get("config")
            if not name.startswith("vc-") or name.startswith("vc-config-") or not raw:
                continue
            wanted[f"{meta['namespace']}/{name.removeprefix('vc-')}"] = base64.b64decode(raw)
        with self.lock:
            for key in [k for k in self.tenants if k not in wanted]:
                log.info("tenant cluster %s: its kubeconfig Secret is gone; no longer watched", key)
                self.tenants.pop(key)[1].stop()
            for key, raw in wanted.items():
                digest = hashlib.sha256(raw).hexdigest()
                current = self.tenants.get(key)
                if current and current[0] == digest:
                    continue
                try:
                    api = api_client(data=yaml.safe_load(raw))
                except Exception as exc:  # noqa: BLE001 - a broken Secret must not stop the rest
                    log.warning("tenant cluster %s: unusable kubeconfig: %s", key, exc)
                    continue
                if current:
                    current[1].stop()
                log.info("tenant cluster %s: watching", key)
                self.tenants[key] = (digest, KubeCluster(key, api, self.kinds, self.on_change))


# -- the emulated pods' records -----------------------------------------------------------------


def serving_dir(cfg: Config) -> Path:
    return cfg.state_dir / "serving"


def pod_dir(cfg: Config, uid: str) -> Path:
    return serving_dir(cfg) / "pods" / uid


def read_record(cfg: Config, uid: str) -> dict | None:
    try:
        return json.loads((pod_dir(cfg, uid) / "record.json").read_text())
    except (OSError, ValueError):
        return None


def write_record(cfg: Config, uid: str, record: dict) -> None:
    path = pod_dir(cfg, uid) / "record.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def records(cfg: Config) -> Iterator[dict]:
    for path in sorted((serving_dir(cfg) / "pods").glob("*/record.json")):
        with contextlib.suppress(OSError, ValueError):
            yield json.loads(path.read_text())


# -- starting the two processes -----------------------------------------------------------------


def supervisor_marker(cfg: Config) -> Path:
    """Written by the serving emulator once it has reconciled every cluster once; holds its pid."""
    return serving_dir(cfg) / "supervisor.synced"


def ensure_supervisor(cfg: Config, procs: Procs) -> None:
    marker = supervisor_marker(cfg)
    if procs.pid(SUPERVISOR) is None:
        marker.unlink(missing_ok=True)
        procs.start(
            SUPERVISOR,
            [sys.executable, str(LOCAL_DIR / "serving_emulator.py")],
            env={"PYTHONUNBUFFERED": "1"},
        )

    def synced() -> bool:
        return marker.exists() and marker.read_text().strip() == str(procs.pid(SUPERVISOR))

    procs.wait(SUPERVISOR, synced, 60, "looking at the clusters for emulated pods")


def _gateway_ready(cfg: Config) -> bool:
    with urllib.request.urlopen(f"{cfg.gateway_url()}/-/ready", timeout=2) as resp:  # noqa: S310 - loopback
        return resp.status == 200


def ensure_gateway(cfg: Config, procs: Procs) -> None:
    if procs.pid(GATEWAY) is None:
        require_port(cfg.ports["gateway"], "the gateway's data plane", "PORTAL_GATEWAY_PORT")
        procs.start(
            GATEWAY,
            [sys.executable, str(LOCAL_DIR / "gateway_proxy.py"), f"--port={cfg.ports['gateway']}"],
            env={"PYTHONUNBUFFERED": "1"},
        )
    procs.wait(GATEWAY, lambda: _gateway_ready(cfg), 60, "ready (/-/ready)")
