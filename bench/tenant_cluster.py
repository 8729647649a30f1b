#!/usr/bin/env python3
"""How long a tenant cluster takes from `helm install` to a usable kubeconfig, and what it weighs.

    set -a && . /var/tmp/infer-portal-0/platform.env && set +a
    .venv/bin/python bench/tenant_cluster.py --runs 3

Against the running local platform, each run installs the pinned vcluster chart with the real helm
into a fresh namespace and times two moments from the start of `helm install`: Secret vc-<name>
exists, and the kubeconfig in it reaches an API server that answers (GET /version and a namespace
list). Then it reads the memory of the tenant cluster's own processes (kube-apiserver,
controller-manager, scheduler, KWOK, Gateway API status controller): RSS, and PSS, which splits
shared pages fairly. The vCluster emulator is one process for all tenant clusters and is reported
apart. Each run uninstalls its vCluster and waits for it to be taken down.
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy" / "local"))

from lp import cluster, tenants  # noqa: E402
from lp.config import Config  # noqa: E402
from lp.procs import Procs  # noqa: E402


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def poll(check, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception:  # noqa: BLE001 - not there yet
            result = None
        if result:
            return result
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


class Server:
    """An API server reached with a client certificate; plain HTTPS, as the bench needs no more."""

    def __init__(self, url: str, ca: Path, cert: Path, key: Path) -> None:
        self.url = url
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.load_cert_chain(str(cert), str(key))

    def get(self, path: str) -> dict | None:
        """The object at PATH, or None if it does not exist."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", context=self.ctx, timeout=5) as resp:  # noqa: S310
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def delete(self, path: str) -> None:
        request = urllib.request.Request(f"{self.url}{path}", method="DELETE")  # noqa: S310
        with urllib.request.urlopen(request, context=self.ctx, timeout=10):  # noqa: S310
            pass


def one_run(cfg: Config, host: Server, workdir: Path, settle: float) -> dict:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    namespace = f"tenant-{name}"
    started = time.monotonic()
    tenants.install(cfg, name, namespace)
    helm_done = time.monotonic() - started

    found = poll(
        lambda: host.get(f"/api/v1/namespaces/{namespace}/secrets/vc-{name}"), 300, f"Secret vc-{name}"
    )
    secret_at = time.monotonic() - started
    files = {}
    for key in ("certificate-authority", "client-certificate", "client-key"):
        files[key] = workdir / f"{name}.{key}"
        files[key].write_bytes(base64.b64decode(found["data"][key]))
    kubeconfig = yaml.safe_load(base64.b64decode(found["data"]["config"]))
    tenant_api = Server(
        kubeconfig["clusters"][0]["cluster"]["server"],
        files["certificate-authority"],
        files["client-certificate"],
        files["client-key"],
    )
    poll(
        lambda: tenant_api.get("/version") and tenant_api.get("/api/v1/namespaces")["items"],
        60,
        "the tenant API server to answer",
    )
    usable_at = time.monotonic() - started

    time.sleep(settle)  # not synchronisation: let the new processes reach their steady footprint
    procs = Procs(cfg.run, cfg.logs)
    tenant = tenants.Tenant(namespace, name)
    per_component = {}
    for component in tenants.COMPONENTS:
        pid = procs.pid(f"{tenant.proc_prefix}-{component}")
        if pid is None:
            raise SystemExit(f"{tenant.proc_prefix}-{component} is not running")
        per_component[component] = memory_kib(pid)
    emulator_pid = procs.pid(tenants.EMULATOR)
    emulator = memory_kib(emulator_pid) if emulator_pid else (0, 0)

    tenants.uninstall(cfg, name, namespace)
    poll(lambda: not tenant.state_dir(cfg).exists(), 120, f"tenant cluster {name} to be taken down", 0.2)
    host.delete(f"/api/v1/namespaces/{namespace}")
    return {
        "helm": helm_done,
        "secret": secret_at,
        "usable": usable_at,
        "components": per_component,
        "emulator": emulator,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds to let a new tenant cluster idle before measuring memory",
    )
    args = parser.parse_args()
    cfg = Config.from_env()
    pki = cluster.host_plane(cfg).pki
    host = Server(cfg.apiserver_url(), pki.path("ca.crt"), pki.path("admin.crt"), pki.path("admin.key"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            r = one_run(cfg, host, Path(tmp), args.settle)
            rss = sum(v[0] for v in r["components"].values()) / 1024
            pss = sum(v[1] for v in r["components"].values()) / 1024
            print(
                f"run {i + 1}: helm install {r['helm']:.1f}s, Secret {r['secret']:.1f}s, "
                f"usable kubeconfig {r['usable']:.1f}s; memory RSS {rss:.0f} MiB, PSS {pss:.0f} MiB",
                flush=True,
            )
            results.append((r, rss, pss))
    print()
    print(
        f"install to usable kubeconfig (median of {len(results)}): "
        f"{statistics.median(r['usable'] for r, _, _ in results):.1f}s"
    )
    print(
        f"one tenant cluster's processes (median): RSS {statistics.median(x for _, x, _ in results):.0f} MiB, "
        f"PSS {statistics.median(x for _, _, x in results):.0f} MiB"
    )
    last = results[-1][0]
    for component, (rss, pss) in last["components"].items():
        print(f"  {component:<20} RSS {rss / 1024:6.0f} MiB  PSS {pss / 1024:6.0f} MiB")
    print(f"  (vcluster-emulator, shared by all tenant clusters: RSS {last['emulator'][0] / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
