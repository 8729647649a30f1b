#!/usr/bin/env python3
"""A small Gateway API status controller for the local platform.

No data plane runs here, so this process does only what a real controller does to status:
  - GatewayClasses naming our controller get Accepted=True;
  - their Gateways get Accepted and Programmed, and per-listener status with attached routes;
  - each HTTPRoute gets one `parents` entry per parentRef that names one of our Gateways:
      Accepted=True, or False with NotAllowedByListeners (the route's namespace is not allowed by
      any listener) or NoMatchingListenerHostname (no hostname intersects the listener's);
      ResolvedRefs=True, or False with BackendNotFound (a Service is missing), InvalidKind, or
      RefNotPermitted (a cross-namespace reference without a ReferenceGrant).
It writes only when the computed status differs from what is stored.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import queue
import threading
import time
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

GROUP, VERSION = "gateway.networking.k8s.io", "v1"
# A route's status is written at once; its Gateway's attachedRoutes at most this often, so a burst
# of routes costs a few Gateway writes rather than one each.
GATEWAY_STATUS_INTERVAL = 0.5
log = logging.getLogger("gateway-emulator")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cache:
    """A list-then-watch mirror of one resource; resumes from resourceVersion, re-lists on 410."""

    def __init__(self, name: str, list_fn, key_fn, on_change) -> None:
        self.name, self.list_fn, self.key_fn, self.on_change = name, list_fn, key_fn, on_change
        self.items: dict[tuple[str, str], dict] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.items.values())

    def get(self, key: tuple[str, str]) -> dict | None:
        with self.lock:
            return self.items.get(key)

    def run(self) -> None:
        while True:
            try:
                listing = self.list_fn()
                items = (
                    listing["items"]
                    if isinstance(listing, dict)
                    else [client.ApiClient().sanitize_for_serialization(i) for i in listing.items]
                )
                rv = (
                    listing["metadata"]["resourceVersion"]
                    if isinstance(listing, dict)
                    else listing.metadata.resource_version
                )
                with self.lock:
                    self.items = {self.key_fn(o): o for o in items}
                self.synced.set()
                self.on_change(None)
                while True:
                    w = watch.Watch()
                    for event in w.stream(
                        self.list_fn, resource_version=rv, timeout_seconds=300, allow_watch_bookmarks=True
                    ):
                        obj = event["raw_object"]
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if event["type"] == "BOOKMARK":
                            continue
                        if event["type"] == "ERROR":
                            raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
                        key = self.key_fn(obj)
                        with self.lock:
                            if event["type"] == "DELETED":
                                self.items.pop(key, None)
                            else:
                                self.items[key] = obj
                        self.on_change(obj)
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("%s watch failed (%s); re-listing", self.name, exc.status)
                    time.sleep(1)
            except Exception as exc:  # noqa: BLE001 - API server restarts; keep going
                log.warning("%s watch broke (%s); re-listing", self.name, exc)
                time.sleep(1)


def _ns_key(o: dict) -> tuple[str, str]:
    return (o["metadata"].get("namespace", ""), o["metadata"]["name"])


def condition(ctype: str, ok: bool, reason: str, message: str, generation: int, old: list[dict]) -> dict:
    status = "True" if ok else "False"
    prior = next((c for c in old if c.get("type") == ctype), None)
    ltt = prior["lastTransitionTime"] if prior and prior.get("status") == status else now()
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": ltt,
    }


def _strip_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_times(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_strip_times(v) for v in value]
    return value


def hostname_matches(route_host: str, listener_host: str | None) -> bool:
    if not listener_host:
        return True
    if listener_host.startswith("*."):
        suffix = listener_host[1:]
        if route_host.startswith("*."):
            return route_host[1:].endswith(suffix)
        return route_host.endswith(suffix) and route_host.count(".") >= listener_host.count(".")
    if route_host.startswith("*."):
        return listener_host.endswith(route_host[1:])
    return route_host == listener_host


def label_selector_matches(selector: dict, labels: dict) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class Controller:
    def __init__(self, controller_name: str) -> None:
        self.controller_name = controller_name
        self.custom = client.CustomObjectsApi()
        core = client.CoreV1Api()
        self.work: queue.Queue = queue.Queue()
        self.classes = Cache(
            "gatewayclasses",
            lambda **kw: self.custom.list_cluster_custom_object(GROUP, VERSION, "gatewayclasses", **kw),
            lambda o: ("", o["metadata"]["name"]),
            self._all,
        )
        self.gateways = Cache(
            "gateways",
            lambda **kw: self.custom.list_cluster_custom_object(GROUP, VERSION, "gateways", **kw),
            _ns_key,
            self._gateway,
        )
        self.gateway_generations: dict[tuple[str, str], int] = {}
        self.routes = Cache(
            "httproutes",
            lambda **kw: self.custom.list_cluster_custom_object(GROUP, VERSION, "httproutes", **kw),
            _ns_key,
            self._route,
        )
        self.grants = Cache(
            "referencegrants",
            lambda **kw: self.custom.list_cluster_custom_object(
                "gateway.networking.k8s.io", "v1beta1", "referencegrants", **kw
            ),
            _ns_key,
            self._all,
        )
        self.services = Cache("services", core.list_service_for_all_namespaces, _ns_key, self._service)
        self.namespaces = Cache(
            "namespaces", core.list_namespace, lambda o: ("", o["metadata"]["name"]), self._all
        )
        self.caches = [self.classes, self.gateways, self.routes, self.grants, self.services, self.namespaces]

    # Change handlers only queue keys; one worker thread computes and writes status.
    def _all(self, _obj: dict | None) -> None:
        self.work.put(("all", None))

    def _gateway(self, obj: dict | None) -> None:
        """A Gateway's spec changed, or it came or went: everything again. Not for a change of its
        status alone, which is mostly this emulator's own write (attachedRoutes, once per route):
        re-checking every route after each of those made a burst of N routes cost N² checks."""
        if obj is not None:
            key = _ns_key(obj)
            present = self.gateways.get(key) is not None
            generation = obj["metadata"].get("generation")
            if present and self.gateway_generations.get(key) == generation:
                return
            if present:
                self.gateway_generations[key] = generation
            else:
                self.gateway_generations.pop(key, None)
        self._all(obj)

    def _route(self, obj: dict | None) -> None:
        self.work.put(("route", _ns_key(obj)) if obj else ("all", None))
        self.work.put(("gateways", None))

    def _service(self, obj: dict | None) -> None:
        if obj is None:
            self.work.put(("all", None))
            return
        namespace = obj["metadata"]["namespace"]
        for route in self.routes.snapshot():
            refs = [r for rule in route["spec"].get("rules") or [] for r in rule.get("backendRefs") or []]
            if any((r.get("namespace") or route["metadata"]["namespace"]) == namespace for r in refs):
                self.work.put(("route", _ns_key(route)))

    def run(self) -> None:
        for cache in self.caches:
            threading.Thread(target=cache.run, daemon=True, name=cache.name).start()
        for cache in self.caches:
            cache.synced.wait()
        gateways_due: float | None = None  # when the Gateways' status (attachedRoutes) is written next
        while True:
            wait = None if gateways_due is None else max(0.0, gateways_due - time.monotonic())
            try:
                pending = {self.work.get(timeout=wait)}
            except queue.Empty:
                pending = set()
            while True:  # coalesce a burst of events into one pass
                try:
                    pending.add(self.work.get(timeout=0.02))
                except queue.Empty:
                    break
            try:
                if ("all", None) in pending:
                    self.sync_classes()
                    for route in self.routes.snapshot():
                        self.sync_route(route)
                    self.sync_gateways()
                    gateways_due = None
                    continue
                for k, v in pending:
                    if k == "route":
                        route = self.routes.get(v)
                        if route:
                            self.sync_route(route)
                # Routes' own status at once; the Gateways' route counts at most every
                # GATEWAY_STATUS_INTERVAL, as controllers batch status writes.
                if ("gateways", None) in pending and gateways_due is None:
                    gateways_due = time.monotonic() + GATEWAY_STATUS_INTERVAL
                if gateways_due is not None and time.monotonic() >= gateways_due:
                    gateways_due = None
                    self.sync_gateways()
            except Exception:  # noqa: BLE001
                log.exception("sync failed; retrying on the next event")
                time.sleep(0.5)
                self.work.put(("all", None))

    # -- GatewayClass and Gateway --------------------------------------------------------------

    def our_classes(self) -> set[str]:
        return {
            c["metadata"]["name"]
            for c in self.classes.snapshot()
            if c["spec"].get("controllerName") == self.controller_name
        }

    def sync_classes(self) -> None:
        for gc in self.classes.snapshot():
            if gc["spec"].get("controllerName") != self.controller_name:
                continue
            old = (gc.get("status") or {}).get("conditions") or []
            conds = [
                condition(
                    "Accepted",
                    True,
                    "Accepted",
                    "handled by the local gateway emulator",
                    gc["metadata"].get("generation", 1),
                    old,
                )
            ]
            if _strip_times(conds) != _strip_times(old):
                self.custom.patch_cluster_custom_object_status(
                    GROUP,
                    VERSION,
                    "gatewayclasses",
                    gc["metadata"]["name"],
                    {"status": {"conditions": conds}},
                )

    def sync_gateways(self) -> None:
        classes = self.our_classes()
        for gw in self.gateways.snapshot():
            if gw["spec"].get("gatewayClassName") not in classes:
                continue
            gen = gw["metadata"].get("generation", 1)
            old = gw.get("status") or {}
            old_conds = old.get("conditions") or []
            listeners = []
            old_listeners = {item["name"]: item for item in old.get("listeners") or []}
            for listener in gw["spec"].get("listeners") or []:
                attached = self.attached_routes(gw, listener)
                lold = (old_listeners.get(listener["name"]) or {}).get("conditions") or []
                listeners.append(
                    {
                        "name": listener["name"],
                        "attachedRoutes": attached,
                        "supportedKinds": [{"group": GROUP, "kind": "HTTPRoute"}],
                        "conditions": [
                            condition("Accepted", True, "Accepted", "", gen, lold),
                            condition("Programmed", True, "Programmed", "", gen, lold),
                            condition("ResolvedRefs", True, "ResolvedRefs", "", gen, lold),
                            condition("Conflicted", False, "NoConflicts", "", gen, lold),
                        ],
                    }
                )
            status = {
                "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                "conditions": [
                    condition("Accepted", True, "Accepted", "", gen, old_conds),
                    condition(
                        "Programmed",
                        True,
                        "Programmed",
                        "served on loopback by the local platform",
                        gen,
                        old_conds,
                    ),
                ],
                "listeners": listeners,
            }
            if _strip_times(status) != _strip_times({k: old.get(k) for k in status}):
                self.custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    gw["metadata"]["namespace"],
                    "gateways",
                    gw["metadata"]["name"],
                    {"status": status},
                )

    def attached_routes(self, gw: dict, listener: dict) -> int:
        count = 0
        for route in self.routes.snapshot():
            for parent in (route.get("status") or {}).get("parents") or []:
                ref = parent.get("parentRef") or {}
                if (
                    ref.get("name") == gw["metadata"]["name"]
                    and (ref.get("namespace") or route["metadata"]["namespace"])
                    == gw["metadata"]["namespace"]
                    and ref.get("sectionName") in (None, listener["name"])
                    and any(
                        c.get("type") == "Accepted" and c.get("status") == "True"
                        for c in parent.get("conditions") or []
                    )
                ):
                    count += 1
        return count

    # -- HTTPRoute -----------------------------------------------------------------------------

    def namespace_allowed(self, gw: dict, listener: dict, route_ns: str) -> bool:
        allowed = (listener.get("allowedRoutes") or {}).get("namespaces") or {}
        source = allowed.get("from", "Same")
        if source == "All":
            return True
        if source == "Same":
            return route_ns == gw["metadata"]["namespace"]
        if source == "Selector":
            ns = self.namespaces.get(("", route_ns))
            labels = (ns or {}).get("metadata", {}).get("labels") or {}
            return label_selector_matches(allowed.get("selector") or {}, labels)
        return False

    def check_parent(self, route: dict, gw: dict, section: str | None) -> tuple[bool, str, str]:
        route_ns = route["metadata"]["namespace"]
        listeners = [
            li
            for li in gw["spec"].get("listeners") or []
            if section in (None, li["name"]) and li.get("protocol") in ("HTTP", "HTTPS")
        ]
        if not listeners:
            return False, "NoMatchingParent", f"gateway has no HTTP listener named {section!r}"
        by_namespace = [li for li in listeners if self.namespace_allowed(gw, li, route_ns)]
        if not by_namespace:
            return (
                False,
                "NotAllowedByListeners",
                f"no listener of gateway {gw['metadata']['namespace']}/{gw['metadata']['name']} "
                f"allows routes from namespace {route_ns}",
            )
        hostnames = route["spec"].get("hostnames") or []
        if hostnames and not any(
            hostname_matches(h, li.get("hostname")) for h in hostnames for li in by_namespace
        ):
            wanted = ", ".join(li.get("hostname") or "*" for li in by_namespace)
            return (
                False,
                "NoMatchingListenerHostname",
                f"route hostnames {', '.join(hostnames)} do not match listener hostnames {wanted}",
            )
        return True, "Accepted", "Route is accepted"

    def check_refs(self, route: dict) -> tuple[bool, str, str]:
        route_ns = route["metadata"]["namespace"]
        for rule in route["spec"].get("rules") or []:
            for ref in rule.get("backendRefs") or []:
                group, kind = ref.get("group", ""), ref.get("kind", "Service")
                if group not in ("", "core") or kind != "Service":
                    return False, "InvalidKind", f"backend kind {group or 'core'}/{kind} is not supported"
                ns = ref.get("namespace") or route_ns
                if ns != route_ns and not self.grant_allows(route_ns, ns, ref["name"]):
                    return (
                        False,
                        "RefNotPermitted",
                        f"backend {ns}/{ref['name']} is in another namespace and no ReferenceGrant allows it",
                    )
                svc = self.services.get((ns, ref["name"]))
                if svc is None:
                    return False, "BackendNotFound", f"Service {ns}/{ref['name']} not found"
                port = ref.get("port")
                if port is not None and port not in [p.get("port") for p in svc["spec"].get("ports") or []]:
                    return False, "BackendNotFound", f"Service {ns}/{ref['name']} has no port {port}"
        return True, "ResolvedRefs", "All references resolved"

    def grant_allows(self, from_ns: str, to_ns: str, name: str) -> bool:
        for grant in self.grants.snapshot():
            if grant["metadata"]["namespace"] != to_ns:
                continue
            froms = grant["spec"].get("from") or []
            tos = grant["spec"].get("to") or []
            if any(f.get("kind") == "HTTPRoute" and f.get("namespace") == from_ns for f in froms) and any(
                t.get("kind") == "Service" and t.get("name") in (None, name) for t in tos
            ):
                return True
        return False

    def sync_route(self, route: dict) -> None:
        classes = self.our_classes()
        route_ns = route["metadata"]["namespace"]
        gen = route["metadata"].get("generation", 1)
        old_parents = (route.get("status") or {}).get("parents") or []
        ours_old = {
            self._ref_key(p["parentRef"], route_ns): p
            for p in old_parents
            if p.get("controllerName") == self.controller_name
        }
        others = [p for p in old_parents if p.get("controllerName") != self.controller_name]
        parents = []
        refs_ok, refs_reason, refs_msg = self.check_refs(route)
        for ref in route["spec"].get("parentRefs") or []:
            if ref.get("kind", "Gateway") != "Gateway":
                continue
            gw = self.gateways.get((ref.get("namespace") or route_ns, ref["name"]))
            if gw is None or gw["spec"].get("gatewayClassName") not in classes:
                continue
            ok, reason, msg = self.check_parent(route, gw, ref.get("sectionName"))
            old = (ours_old.get(self._ref_key(ref, route_ns)) or {}).get("conditions") or []
            parents.append(
                {
                    "parentRef": {k: v for k, v in ref.items() if v is not None},
                    "controllerName": self.controller_name,
                    "conditions": [
                        condition("Accepted", ok, reason, msg, gen, old),
                        condition("ResolvedRefs", refs_ok, refs_reason, refs_msg, gen, old),
                    ],
                }
            )
        new = others + parents
        if _strip_times(new) == _strip_times(old_parents):
            return
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                route_ns,
                "httproutes",
                route["metadata"]["name"],
                {"status": {"parents": new}},
            )
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report
                raise

    @staticmethod
    def _ref_key(ref: dict, route_ns: str) -> tuple:
        return (ref.get("namespace") or route_ns, ref["name"], ref.get("sectionName"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--controller-name", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config.load_kube_config(config_file=args.kubeconfig)
    log.info("gateway emulator started for controller %s", args.controller_name)
    Controller(args.controller_name).run()


if __name__ == "__main__":
    main()
