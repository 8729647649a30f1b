"""Fixtures for tests that install tenant clusters (vClusters) on the running local platform."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from lp import tenants

from tests.waiting import wait_for

# Tests return nodes to the pool after 3 s empty instead of the platform's default minute.
TEST_VALUES = {
    "privateNodes": {
        "enabled": True,
        "autoNodes": [
            {
                "provider": "local-kwok-pool",
                "dynamic": [
                    {
                        "name": "gpu",
                        "nodeTypeSelector": [
                            {"property": "inference-portal.io/gpu-tier", "operator": "Exists"}
                        ],
                        "disruption": {"consolidateAfter": "3s"},
                    }
                ],
            }
        ],
    }
}


@dataclass
class TenantCluster:
    """One installed vCluster: where it lives in the host, and a client for its own API server."""

    name: str
    namespace: str
    kubeconfig: Path
    api: client.ApiClient

    @property
    def tenant(self) -> tenants.Tenant:
        return tenants.Tenant(self.namespace, self.name)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


class TenantClusters:
    """Installs vClusters with the pinned chart (the real helm), and uninstalls whatever is left."""

    def __init__(self, platform, host: client.ApiClient, workdir: Path) -> None:
        self.platform = platform
        self.cfg = platform.cfg
        self.host = host
        self.workdir = workdir
        self.installed: list[tuple[str, str]] = []
        self.values = workdir / "test-values.yaml"
        self.values.write_text(yaml.safe_dump(TEST_VALUES))

    def install(self, prefix: str = "t") -> tuple[str, str]:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        namespace = f"tenant-{name}"
        tenants.install(self.cfg, name, namespace, [self.values])
        self.installed.append((name, namespace))
        return name, namespace

    def wait_ready(self, name: str, namespace: str, timeout: float = 180) -> TenantCluster:
        core = client.CoreV1Api(self.host)

        def kubeconfig() -> bytes | None:
            try:
                secret = core.read_namespaced_secret(f"vc-{name}", namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return base64.b64decode(secret.data["config"])

        raw = wait_for(kubeconfig, timeout=timeout, interval=0.5, what=f"Secret vc-{name} in {namespace}")
        path = self.workdir / f"{namespace}-{name}.kubeconfig"
        path.write_bytes(raw)
        api = config.new_client_from_config(config_file=str(path))
        wait_for(
            lambda: client.VersionApi(api).get_code().git_version,
            timeout=30,
            what=f"the API server of tenant cluster {name}",
        )
        return TenantCluster(name, namespace, path, api)

    def uninstall(self, tc: TenantCluster | tuple[str, str], timeout: float = 120) -> None:
        """helm uninstall, then wait until the emulator has taken the tenant cluster down."""
        name, namespace = (tc.name, tc.namespace) if isinstance(tc, TenantCluster) else tc
        tenants.uninstall(self.cfg, name, namespace)
        state = tenants.Tenant(namespace, name).state_dir(self.cfg)
        wait_for(lambda: not state.exists(), timeout=timeout, what=f"tenant cluster {name} to be taken down")
        if (name, namespace) in self.installed:
            self.installed.remove((name, namespace))
        client.CoreV1Api(self.host).delete_namespace(namespace)

    def cleanup(self) -> None:
        for name, namespace in list(self.installed):
            try:
                self.uninstall((name, namespace))
            except Exception as exc:  # noqa: BLE001 - clean up the rest, then report
                print(f"could not uninstall tenant cluster {namespace}/{name}: {exc}")


@pytest.fixture(scope="module")
def host_api(platform) -> client.ApiClient:
    return config.new_client_from_config(config_file=platform.kubeconfig)


@pytest.fixture(scope="module")
def tenant_clusters(platform, host_api, tmp_path_factory):
    clusters = TenantClusters(platform, host_api, tmp_path_factory.mktemp("tenant-clusters"))
    yield clusters
    clusters.cleanup()
