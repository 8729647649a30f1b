"""Shared fixtures. The local platform is one session-scoped fixture: tests that need PostgreSQL,
Redis or the Kubernetes API ask for `platform` and get the running one (started if it is not)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

LOCAL = Path(__file__).resolve().parent.parent / "deploy" / "local"
sys.path.insert(0, str(LOCAL))

from lp import cli as platform_cli  # noqa: E402
from lp.config import Config  # noqa: E402

from tests.stack import (  # noqa: E402, F401  (the one registration of the shared stack fixtures)
    catalog,
    make_tenant,
    stack_env,
    tenant_slugs,
    watcher,
    worker,
)


class Platform:
    """What a test needs to reach the running local platform."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.env: dict[str, str] = {}
        for line in cfg.env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            self.env[key] = value.strip("'")

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    @property
    def kubectl(self) -> str:
        return str(Path(self.env["PORTAL_K8S_BIN"]) / "kubectl")


@pytest.fixture(scope="session")
def platform() -> Platform:
    cfg = Config.from_env()
    if platform_cli.main(["up"]) != 0:
        pytest.fail("the local platform did not start; see the message above")
    return Platform(cfg)
