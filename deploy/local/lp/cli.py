"""`platformctl up | down | status`: the local platform's one entry point."""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from . import cluster, monitoring, services, serving, tenants
from . import tiers as tiers_mod
from .config import Config
from .errors import PlatformError
from .procs import Procs

HOST_COMPONENTS = [
    "etcd",
    "host-apiserver",
    "host-controller-manager",
    "host-scheduler",
    "host-kwok",
    "host-gateway",
]


def write_env(cfg: Config, plane: cluster.ControlPlane) -> None:
    lines = {
        "KUBECONFIG": str(plane.admin_kubeconfig),
        "DATABASE_URL": services.database_url(cfg),
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{cfg.ports['redis']}/0",
        "PROMETHEUS_URL": monitoring.url(cfg),
        "PORTAL_STATE_DIR": str(cfg.state_dir),
        "PORTAL_K8S_BIN": str(cfg.k8s_bin),
        "PORTAL_KWOK_BIN": str(cfg.kwok_bin),
        "PORTAL_HELM_BIN": str(cfg.helm_bin),
        "PORTAL_VCLUSTER_CHART": str(tenants.chart_dir(cfg)),
        "PORTAL_GATEWAY_DOMAIN": cfg.gateway_domain,
        "PORTAL_GATEWAY_URL": cfg.gateway_url(),
        # *.localhost resolves to loopback, so an endpoint's URL works from a browser or curl here.
        "PORTAL_ENDPOINT_URL_TEMPLATE": "http://{host}:" + str(cfg.ports["gateway"]),
        # GPU pods are played by KWOK and the vLLM emulator; the workers annotate pods for them.
        "PORTAL_EMULATE": "true",
        "PORTAL_EMULATED_LOAD_SECONDS": "3",
        "PORTAL_SECRET_KEY": services.local_secret(cfg, "portal-secret-key"),
    }
    cfg.env_file.write_text("".join(f"export {k}='{v}'\n" for k, v in lines.items()))
    cfg.env_file.chmod(0o600)


def up(cfg: Config) -> None:
    started = time.monotonic()
    tier_file = tiers_mod.load(cfg.tiers_file)  # a bad tier file fails before anything starts
    for d in (cfg.state_dir, cfg.logs, cfg.run):
        d.mkdir(parents=True, exist_ok=True)
    cfg.state_dir.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data dir
    procs = Procs(cfg.run, cfg.logs)
    plane = cluster.host_plane(cfg)

    step("PostgreSQL", lambda: services.ensure_postgres(cfg, procs))
    step("Redis", lambda: services.ensure_redis(cfg, procs))
    step("Prometheus", lambda: monitoring.ensure_prometheus(cfg, procs))
    step("certificates", lambda: cluster.ensure_pki(plane))
    step("etcd", lambda: cluster.ensure_etcd(cfg, procs))
    step("kube-apiserver", lambda: cluster.ensure_apiserver(cfg, procs, plane, "PORTAL_APISERVER_PORT"))
    step("controller-manager, scheduler", lambda: cluster.ensure_controllers(cfg, procs, plane))
    step("KWOK", lambda: cluster.ensure_kwok(cfg, procs, plane))
    step("GPU nodes", lambda: cluster.ensure_nodes(cfg, plane, tier_file))
    step("nodes Ready", lambda: cluster.wait_nodes_ready(cfg, procs, plane))
    crds = cluster.gateway_api_crds(cfg)
    step("Gateway API", lambda: cluster.ensure_gateway(cfg, procs, plane, crds))
    step("tenant clusters (vCluster)", lambda: tenants.ensure_emulator(cfg, procs))
    step("serving emulator (vLLM pods)", lambda: serving.ensure_supervisor(cfg, procs))
    step("gateway data plane", lambda: serving.ensure_gateway(cfg, procs))
    write_env(cfg, plane)
    print(f"platform up in {time.monotonic() - started:.1f}s")
    print(f"environment: {cfg.env_file}")


def step(what: str, fn) -> None:
    t0 = time.monotonic()
    fn()
    print(f"  {what:<32} ok ({time.monotonic() - t0:.1f}s)", flush=True)


def down(cfg: Config, purge: bool) -> None:
    procs = Procs(cfg.run, cfg.logs)
    # Tenant-cluster processes and anything else with a pid file stop first, the host last.
    names = sorted(p.stem for p in cfg.run.glob("*.pid")) if cfg.run.exists() else []
    order = [n for n in names if n not in HOST_COMPONENTS + ["redis", "postgres", "prometheus"]]
    order += [n for n in reversed(HOST_COMPONENTS) if n in names]
    for name in tenants.stop_tenant_clusters(procs):
        print(f"  stopped {name}")
    for name in order:
        if procs.stop(name):
            print(f"  stopped {name}")
    if "prometheus" in names and procs.stop("prometheus"):
        print("  stopped prometheus")
    if "redis" in names and procs.stop("redis"):
        print("  stopped redis")
    if "postgres" in names:
        services.stop_postgres(procs)
        print("  stopped postgres")
    if purge and cfg.state_dir.exists():
        shutil.rmtree(cfg.state_dir)
        print(f"  removed {cfg.state_dir}")
    print("platform down")


def status(cfg: Config) -> int:
    procs = Procs(cfg.run, cfg.logs)
    names = sorted(p.stem for p in cfg.run.glob("*.pid")) if cfg.run.exists() else []
    if not names:
        print("platform is not running")
        return 1
    for name in names:
        pid = procs.pid(name)
        print(f"  {name:<28} {'running, pid ' + str(pid) if pid else 'stopped'}")
    print(f"environment: {cfg.env_file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="platformctl", description="The portal's local platform")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start everything (idempotent)")
    down_p = sub.add_parser("down", help="stop everything")
    down_p.add_argument("--purge", action="store_true", help="also delete the state directory")
    sub.add_parser("status", help="list the components")
    sub.add_parser("env", help="print the environment file's path")
    args = parser.parse_args(argv)
    try:
        cfg = Config.from_env()
        if args.command == "up":
            up(cfg)
        elif args.command == "down":
            down(cfg, args.purge)
        elif args.command == "status":
            return status(cfg)
        elif args.command == "env":
            print(cfg.env_file)
    except PlatformError as exc:
        print(f"platform: error: {exc}", file=sys.stderr)
        return 1
    return 0
