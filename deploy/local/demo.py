#!/usr/bin/env python3
"""`make demo`: the portal and everything it needs on this machine, in the foreground.

It starts the local platform if it is not up (PostgreSQL, Redis, Prometheus, Kubernetes, KWOK GPU
nodes, Gateway API, vCluster and vLLM emulators), migrates, loads the demo data, then runs the web
app (gunicorn), a Celery worker, Celery beat and the cluster watcher, and prints where to open it
with an admin and a tenant login. Ctrl-C stops what this run started (the platform too, if this
run started it). Running it again while it runs says where the running one is and leaves it alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lp import cli as platform_cli  # noqa: E402
from lp.config import REPO_DIR, Config  # noqa: E402
from lp.errors import PlatformError  # noqa: E402
from lp.procs import Procs, port_free  # noqa: E402

VENV = REPO_DIR / ".venv" / "bin"
DEMO_PROCS = ["demo-web", "demo-worker", "demo-beat", "demo-watcher"]


def env_from(cfg: Config, port: int) -> dict[str, str]:
    env = dict(os.environ)
    for line in cfg.env_file.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "PORTAL_ALLOWED_HOSTS": "localhost,127.0.0.1",
            "PORTAL_CSRF_TRUSTED_ORIGINS": f"http://localhost:{port},http://127.0.0.1:{port}",
            "PORTAL_STATIC_ROOT": str(cfg.state_dir / "static"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(VENV / "python"), "manage.py", *args],
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise PlatformError(f"manage.py {' '.join(args)} failed:\n{result.stderr.strip()[-2000:]}")
    return result.stdout


def web_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:  # noqa: S310
            return resp.status == 200
    except OSError:
        return False


def print_logins(cfg: Config, port: int) -> None:
    creds = cfg.state_dir / "demo-logins.txt"
    logins = dict(line.split(":", 1) for line in creds.read_text().splitlines() if ":" in line)
    url = f"http://localhost:{port}/"
    print()
    print(f"  The portal is running at {url}")
    print(
        f"  Admin:  admin / {logins.get('admin', '?')}   (approval queue at {url}admin-queue/, Django admin at {url}admin/)"
    )
    print(f"  Tenant: alice / {logins.get('alice', '?')}   (owner of acme)")
    print(
        f"  Others: bob (acme and globex), carol (viewer of acme), grace (owner of globex); passwords in {creds}"
    )
    print(f"  API:    {url}api/docs/   (make a token: .venv/bin/python manage.py issue_token alice)")
    print()


def main() -> int:
    port = int(os.environ.get("PORTAL_DEMO_PORT", "8000"))
    cfg = Config.from_env()
    procs = Procs(cfg.run, cfg.logs)
    if procs.pid("demo-web") is not None and web_answers(port):
        print("The demo is already running (started by another `make demo`); leaving it alone.")
        print_logins(cfg, port)
        return 0
    if not port_free(port):
        print(
            f"demo: port {port} on 127.0.0.1 is in use by another process; set PORTAL_DEMO_PORT to a free port.",
            file=sys.stderr,
        )
        return 1

    platform_was_up = procs.pid("host-apiserver") is not None
    started: list[str] = []

    def stop_all(*_args) -> None:
        print("\nStopping the demo ...", flush=True)
        for name in reversed(started):
            procs.stop(name, timeout=15)
        if not platform_was_up:
            platform_cli.down(cfg, purge=False)
        print("Stopped.")
        sys.exit(0)

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    try:
        if platform_cli.main(["up"]) != 0:
            return 1
        env = env_from(cfg, port)
        print("  migrating the database ...", flush=True)
        manage(env, "migrate", "--noinput")
        manage(env, "collectstatic", "--noinput")
        print("  loading demo data ...", flush=True)
        manage(env, "seed_demo", "--credentials-file", str(cfg.state_dir / "demo-logins.txt"))
        commands = {
            "demo-web": [
                str(VENV / "gunicorn"),
                "portal.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "--access-logfile",
                "-",
            ],
            "demo-worker": [
                str(VENV / "celery"),
                "-A",
                "portal",
                "worker",
                "-P",
                "threads",
                "-c",
                "8",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
                "-n",
                "demo@%h",
            ],
            "demo-beat": [
                str(VENV / "celery"),
                "-A",
                "portal",
                "beat",
                "--loglevel=INFO",
                f"--schedule={cfg.state_dir / 'celerybeat-schedule'}",
            ],
            "demo-watcher": [str(VENV / "python"), "manage.py", "watch_clusters"],
        }
        for name, argv in commands.items():
            procs.stop(name)  # a leftover from a run that was killed without Ctrl-C
            procs.start(name, argv, env=env, cwd=REPO_DIR)
            started.append(name)
        procs.wait("demo-web", lambda: web_answers(port), 60, "answering /healthz")
    except PlatformError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        stop_all()
        return 1
    print_logins(cfg, port)
    print(f"  Logs: {cfg.logs}/demo-*.log    Press Ctrl-C to stop.", flush=True)
    while True:
        for name in started:
            if procs.pid(name) is None:
                print(f"demo: {name} exited; see {procs.logfile(name)}", file=sys.stderr)
                stop_all()
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
