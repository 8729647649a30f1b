from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PlatformError

LOCAL_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = LOCAL_DIR.parent.parent


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise PlatformError(f"{name}={raw!r}: expected a port number") from None
    if not 1024 <= port <= 65535:
        raise PlatformError(f"{name}={port}: choose a port between 1024 and 65535")
    return port


def read_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for line in (LOCAL_DIR / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key] = value
    return versions


@dataclass
class Config:
    state_dir: Path
    cache_dir: Path
    versions: dict[str, str]
    tiers_file: Path
    ports: dict[str, int] = field(default_factory=dict)
    gateway_domain: str = "inference.localhost"

    @classmethod
    def from_env(cls) -> Config:
        uid = os.getuid()
        # /var/tmp, not $HOME: PostgreSQL runs as its own user and must reach its data directory.
        state = Path(os.environ.get("PORTAL_STATE_DIR") or f"/var/tmp/infer-portal-{uid}")  # noqa: S108
        cache = Path(os.environ.get("PORTAL_CACHE_DIR") or Path.home() / ".cache" / "infer-portal")
        tiers = Path(os.environ.get("PORTAL_GPU_TIERS_FILE") or LOCAL_DIR / "gpu-tiers.yaml")
        ports = {
            "postgres": _port("PORTAL_PG_PORT", 55432),
            "redis": _port("PORTAL_REDIS_PORT", 56379),
            "etcd": _port("PORTAL_ETCD_PORT", 52379),
            "etcd-peer": _port("PORTAL_ETCD_PEER_PORT", 52380),
            "apiserver": _port("PORTAL_APISERVER_PORT", 56443),
            "prometheus": _port("PORTAL_PROMETHEUS_PORT", 59090),
            # The host KWOK's server: its nodes advertise it as their kubelet port (pod logs).
            "kwok": _port("PORTAL_KWOK_PORT", 50250),
            # The gateway's data plane: endpoints' hostnames, routed to their emulators.
            "gateway": _port("PORTAL_GATEWAY_PORT", 58080),
        }
        if len(set(ports.values())) != len(ports):
            raise PlatformError(f"two components were given the same port: {ports}")
        domain = os.environ.get("PORTAL_GATEWAY_DOMAIN") or "inference.localhost"
        return cls(state, cache, read_versions(), tiers, ports, domain)

    # Layout of the state directory.
    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run(self) -> Path:
        return self.state_dir / "run"

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfigs(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "platform.env"

    @property
    def k8s_bin(self) -> Path:
        return self.cache_dir / f"k8s-{self.versions['K8S_VERSION']}" / "bin"

    @property
    def kwok_bin(self) -> Path:
        return self.cache_dir / f"kwok-{self.versions['KWOK_VERSION']}" / "bin" / "kwok"

    @property
    def helm_bin(self) -> Path:
        return self.cache_dir / f"helm-{self.versions['HELM_VERSION']}" / "bin" / "helm"

    def binary(self, name: str) -> Path:
        path = self.k8s_bin / name
        if not path.exists():
            raise PlatformError(
                f"{path} is missing; build it with `bash deploy/local/build-binaries.sh` (or `make binaries`)"
            )
        return path

    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"
