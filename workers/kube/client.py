"""Talk to an API server: server-side apply, get, list, delete, watch, with errors sorted into
transient (retry with backoff) and permanent (stop and say why), as kopf does.

Calls go straight to the REST paths of a fixed table of the kinds we manage, so no discovery
round-trips are paid per client; unknown kinds fall back to discovery once per cluster.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import urllib3
import yaml
from django.conf import settings
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

FIELD_MANAGER = "inference-portal"


class KubeError(Exception):
    """A Kubernetes call failed; `reason` is fit to show a tenant."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class TransientKubeError(KubeError):
    """Unreachable, conflict, throttled, server error: the same call may succeed later."""


class PermanentKubeError(KubeError):
    """Invalid object, forbidden, not found where it must exist: retrying cannot help."""


def classify(exc: Exception, what: str) -> KubeError:
    if isinstance(exc, ApiException):
        status = exc.status or 0
        message = _api_message(exc)
        if status in (409, 429) or status >= 500 or status == 0:
            return TransientKubeError(f"{what}: the API server answered {status}: {message}", status)
        if status == 403:
            return PermanentKubeError(f"{what}: forbidden: {message}", status)
        if status == 422:
            return PermanentKubeError(f"{what}: the API server rejected it as invalid: {message}", status)
        return PermanentKubeError(f"{what}: {status} {message}", status)
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError | OSError):
        return TransientKubeError(f"{what}: the API server is unreachable ({type(exc).__name__})")
    return KubeError(f"{what}: unexpected {type(exc).__name__}: {exc}")


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body).get("message") or exc.reason or ""
    except (TypeError, ValueError, AttributeError):
        return exc.reason or ""


@dataclass(frozen=True)
class Kind:
    group_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


KINDS: dict[tuple[str, str], Kind] = {
    ("v1", "Namespace"): Kind("v1", "namespaces", namespaced=False),
    ("v1", "Node"): Kind("v1", "nodes", namespaced=False),
    ("v1", "Pod"): Kind("v1", "pods"),
    ("v1", "Service"): Kind("v1", "services"),
    ("v1", "Secret"): Kind("v1", "secrets"),
    ("v1", "ConfigMap"): Kind("v1", "configmaps"),
    ("v1", "ServiceAccount"): Kind("v1", "serviceaccounts"),
    ("v1", "Event"): Kind("v1", "events"),
    ("apps/v1", "Deployment"): Kind("apps/v1", "deployments"),
    ("apps/v1", "ReplicaSet"): Kind("apps/v1", "replicasets"),
    ("apps/v1", "StatefulSet"): Kind("apps/v1", "statefulsets"),
    ("policy/v1", "PodDisruptionBudget"): Kind("policy/v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "NetworkPolicy"): Kind("networking.k8s.io/v1", "networkpolicies"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): Kind("autoscaling/v2", "horizontalpodautoscalers"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): Kind("gateway.networking.k8s.io/v1", "httproutes"),
    ("gateway.networking.k8s.io/v1", "Gateway"): Kind("gateway.networking.k8s.io/v1", "gateways"),
    ("keda.sh/v1alpha1", "ScaledObject"): Kind("keda.sh/v1alpha1", "scaledobjects"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): Kind("rbac.authorization.k8s.io/v1", "rolebindings"),
}


class Cluster:
    """One API server. Thread-safe; reuses its HTTP connections."""

    def __init__(self, api_client: client.ApiClient, name: str = "cluster") -> None:
        self.api = api_client
        self.name = name
        self._discovered: dict[tuple[str, str], Kind] = {}
        self._lock = threading.Lock()
        self.answered_at = 0.0  # monotonic time of the last call that succeeded; 0 after a failure
        # Documents applied through this client that callers need not apply again (see
        # provision.ensure_namespace), as name -> the document; a new client starts empty.
        self.applied_docs: dict[str, dict] = {}

    def answered_within(self, seconds: float) -> bool:
        """Whether the last call succeeded, less than SECONDS ago."""
        return self.answered_at > 0 and time.monotonic() - self.answered_at < seconds

    @classmethod
    def from_kubeconfig(
        cls, path: str | None = None, name: str = "host", data: dict | None = None
    ) -> Cluster:
        cfg = client.Configuration()
        if data is not None:
            config.load_kube_config_from_dict(data, client_configuration=cfg)
        elif path:
            config.load_kube_config(config_file=path, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
        # Workers apply many small objects in parallel; the default pool of 4 serialises them.
        cfg.connection_pool_maxsize = 16
        cfg.retries = 0  # retries are ours: classified, capped, with backoff
        return cls(client.ApiClient(configuration=cfg), name=name)

    # -- resource table --------------------------------------------------------------------

    def kind(self, api_version: str, kind: str) -> Kind:
        known = KINDS.get((api_version, kind)) or self._discovered.get((api_version, kind))
        if known:
            return known
        with self._lock:
            from kubernetes.dynamic import DynamicClient

            res = DynamicClient(self.api).resources.get(api_version=api_version, kind=kind)
            found = Kind(api_version, res.name, res.namespaced)
            self._discovered[(api_version, kind)] = found
            return found

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: Any = None,
        query: list | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        try:
            data = self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                response_type="object",
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=True,
                _request_timeout=timeout,
            )
        except Exception as exc:  # noqa: BLE001 - sorted into our three kinds right here
            error = classify(exc, what)
            if isinstance(error, TransientKubeError):
                self.answered_at = 0.0
            raise error from exc
        self.answered_at = time.monotonic()
        return data

    # -- verbs -----------------------------------------------------------------------------

    def apply(
        self, obj: dict, *, dry_run: bool = False, field_manager: str = FIELD_MANAGER, force: bool = True
    ) -> dict:
        """Server-side apply one object; returns what the server stored (or would store)."""
        meta = obj["metadata"]
        k = self.kind(obj["apiVersion"], obj["kind"])
        query = [("fieldManager", field_manager)]
        if force:
            # We own these fields: a hand edit must not block convergence back to the DB's truth.
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        what = f"apply {obj['kind']} {meta.get('namespace', '')}/{meta['name']}".replace(" /", " ")
        return self._call(
            "PATCH",
            k.path(meta.get("namespace"), meta["name"]),
            what,
            body=obj,
            query=query,
            content_type="application/apply-patch+yaml",
        )

    def apply_all(self, objs: Iterable[dict]) -> Iterator[dict]:
        """Server-side apply independent objects concurrently; yields what the server stored, in
        the order the applies finish. The first failure is raised once every apply has ended, so
        no apply is left running behind the caller's back."""
        futures = [_apply_pool().submit(self.apply, obj) for obj in objs]
        failure: Exception | None = None
        for future in as_completed(futures):
            try:
                stored = future.result()
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the rest have ended
                failure = failure or exc
                continue
            if failure is None:
                yield stored
        if failure is not None:
            raise failure

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        k = self.kind(api_version, kind)
        try:
            return self._call("GET", k.path(namespace, name), f"get {kind} {name}")
        except PermanentKubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> dict:
        k = self.kind(api_version, kind)
        query = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        return self._call("GET", k.path(namespace), f"list {kind}", query=query)

    def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None = None,
        *,
        propagation: str = "Foreground",
        grace_seconds: int | None = None,
    ) -> bool:
        """Delete; True if it existed. Foreground: owned objects go before the owner does."""
        k = self.kind(api_version, kind)
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            self._call("DELETE", k.path(namespace, name), f"delete {kind} {name}", body=body)
        except PermanentKubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def watch(
        self,
        api_version: str,
        kind: str,
        *,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
    ) -> Iterator[dict]:
        """Raw watch events across all namespaces. A 410 surfaces as PermanentKubeError(status=410):
        the caller re-lists and resumes from the new resourceVersion."""
        k = self.kind(api_version, kind)
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_seconds))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if label_selector:
            query.append(("labelSelector", label_selector))
        try:
            resp = self.api.call_api(
                k.path(None),
                "GET",
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout_seconds + 10,
            )[0]
        except Exception as exc:  # noqa: BLE001
            raise classify(exc, f"watch {kind}") from exc
        try:
            for line in iter_resp_lines(resp):
                event = json.loads(line) if line else None
                if not event:
                    continue
                if event.get("type") == "ERROR":
                    obj = event.get("object") or {}
                    raise PermanentKubeError(f"watch {kind}: {obj.get('message', 'error')}", obj.get("code"))
                yield event
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise classify(exc, f"watch {kind}") from exc
        finally:
            resp.release_conn()

    def pod_log(self, namespace: str, pod: str, container: str, tail_lines: int = 300) -> list[str]:
        """The last lines of a container's log (through the kubelet, or KWOK standing in for it)."""
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        query = [("container", container), ("tailLines", str(tail_lines))]
        try:
            resp = self.api.call_api(
                path,
                "GET",
                query_params=query,
                header_params={"Accept": "*/*"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=5,
            )[0]
        except Exception as exc:  # noqa: BLE001
            raise classify(exc, f"logs of {pod}") from exc
        try:
            return resp.data.decode(errors="replace").splitlines()
        finally:
            resp.release_conn()

    def list_with_version(
        self, api_version: str, kind: str, *, label_selector: str | None = None
    ) -> tuple[list[dict], str]:
        """All objects of a kind (every namespace) and the list's resourceVersion to watch from."""
        data = self.list(api_version, kind, label_selector=label_selector)
        return data.get("items") or [], data["metadata"]["resourceVersion"]

    def version(self) -> str:
        return self._call("GET", "/version", "get version")["gitVersion"]


_pool: ThreadPoolExecutor | None = None


def _apply_pool() -> ThreadPoolExecutor:
    """Threads for concurrent applies, shared by every cluster: the companions of a few endpoints
    at once, no more than the connection pools (16 per cluster) can carry."""
    global _pool
    with _clients_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kube-apply")
        return _pool


_clients: dict[str, tuple[str, Cluster, float]] = {}  # key -> (Secret resourceVersion, client, checked at)
_clients_lock = threading.Lock()


def host_cluster() -> Cluster:
    """The cluster the portal's workers talk to first (KUBECONFIG, or in-cluster)."""
    with _clients_lock:
        cached = _clients.get("host")
        if cached:
            return cached[1]
        cluster = Cluster.from_kubeconfig(settings.KUBECONFIG or None, name="host")
        _clients["host"] = ("", cluster, 0.0)
        return cluster


def tenant_cluster(host_namespace: str, name: str, *, max_age: float = 0.0) -> Cluster:
    """The tenant cluster whose kubeconfig vCluster wrote to Secret vc-<name> in the host.

    Clients are cached by the Secret's resourceVersion, so a rotated kubeconfig is picked up.
    With MAX_AGE, a client whose Secret was read less than MAX_AGE seconds ago, and whose last call
    in that time succeeded, is returned without reading the Secret again (a burst of deploys to
    one tenant asks the host once, not once per deploy); any failed call ends that at once."""
    key = f"{host_namespace}/{name}"
    if max_age > 0:
        with _clients_lock:
            cached = _clients.get(key)
        if cached and time.monotonic() - cached[2] < max_age and cached[1].answered_within(max_age):
            return cached[1]
    secret = host_cluster().get("v1", "Secret", f"vc-{name}", host_namespace)
    if secret is None:
        raise TransientKubeError(f"tenant cluster {name} has no kubeconfig yet (Secret vc-{name} is missing)")
    version = secret["metadata"]["resourceVersion"]
    checked = time.monotonic()
    with _clients_lock:
        cached = _clients.get(key)
        if cached and cached[0] == version:
            _clients[key] = (version, cached[1], checked)
            return cached[1]
    raw = (secret.get("data") or {}).get("config")
    if not raw:
        raise PermanentKubeError(f"Secret vc-{name} in {host_namespace} has no 'config' key")
    data = yaml.safe_load(base64.b64decode(raw))
    cluster = Cluster.from_kubeconfig(data=data, name=key)
    with _clients_lock:
        _clients[key] = (version, cluster, checked)
    return cluster
