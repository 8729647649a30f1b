"""Install, upgrade and uninstall the vCluster chart with the real helm.

helm speaks to the same API server as the rest of this package: the host kubeconfig from settings
(or in-cluster credentials when KUBECONFIG is empty). Values go through a file, never the command
line, and its output is kept out of logs beyond the first lines of an error.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import yaml
from django.conf import settings

from .client import PermanentKubeError, TransientKubeError

TRANSIENT_MARKERS = (
    "connection refused",
    "i/o timeout",
    "timed out",
    "too many requests",
    "the server is currently unable",
    "etcdserver",
    "another operation (install/upgrade/rollback) is in progress",
    "tls handshake timeout",
    "eof",
    "context deadline exceeded",
    "conflict",
)


def _run(args: list[str], what: str, timeout: float) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}  # noqa: S108
    if settings.KUBECONFIG:
        env["KUBECONFIG"] = settings.KUBECONFIG
    for name in (
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "HELM_CACHE_HOME",
        "HELM_CONFIG_HOME",
        "HELM_DATA_HOME",
    ):
        if name in os.environ:
            env[name] = os.environ[name]
    try:
        result = subprocess.run(
            [settings.PORTAL_HELM_BIN, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise PermanentKubeError(f"{what}: helm is not installed ({settings.PORTAL_HELM_BIN})") from None
    except subprocess.TimeoutExpired:
        raise TransientKubeError(f"{what}: helm did not finish within {timeout:.0f}s") from None
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        text = message[0][:500]
        if any(marker in text.lower() for marker in TRANSIENT_MARKERS):
            raise TransientKubeError(f"{what}: {text}")
        raise PermanentKubeError(f"{what}: {text}")
    return result.stdout


def upgrade_install(
    release: str, namespace: str, chart: str, values: dict, *, version: str = "", timeout: float = 120
) -> None:
    """helm upgrade --install: installs the first time, upgrades after, changes nothing when the
    values are the same (helm records a new revision, but the objects are untouched)."""
    if not chart:
        raise PermanentKubeError(
            "PORTAL_VCLUSTER_CHART is not set: the portal does not know which vCluster chart to install"
        )
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-") as handle:
        yaml.safe_dump(values, handle)
        handle.flush()
        args = [
            "upgrade",
            "--install",
            release,
            chart,
            "--namespace",
            namespace,
            "--values",
            handle.name,
            "--history-max",
            "3",
            "--timeout",
            f"{int(timeout)}s",
        ]
        if version:
            args += ["--version", version]
        _run(args, f"install tenant cluster {release}", timeout + 30)


def release_status(release: str, namespace: str) -> str | None:
    """The release's status (deployed, failed, pending-install, ...), or None when absent."""
    try:
        out = _run(
            ["status", release, "--namespace", namespace, "--output", "json"], f"status of {release}", 60
        )
    except PermanentKubeError as exc:
        if "not found" in str(exc).lower():
            return None
        raise
    return (yaml.safe_load(out).get("info") or {}).get("status")


def uninstall(release: str, namespace: str, timeout: float = 120) -> bool:
    """helm uninstall; False when there was nothing to uninstall."""
    try:
        _run(
            ["uninstall", release, "--namespace", namespace, "--wait", "--timeout", f"{int(timeout)}s"],
            f"uninstall tenant cluster {release}",
            timeout + 30,
        )
    except PermanentKubeError as exc:
        if "not found" in str(exc).lower():
            return False
        raise
    return True
