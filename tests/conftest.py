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


def pytest_configure(config) -> None:
    """Transactional tests end with a flush (TRUNCATE of every table) while the session's worker
    and watcher processes may still be writing a row: PostgreSQL can then pick the flush as a
    deadlock's victim. The flush is retried; the other side's transaction has ended by then."""
    from django.core.management.base import CommandError
    from django.core.management.commands import flush

    real = flush.Command.handle

    def handle(self, **options):
        for attempt in range(5):
            try:
                return real(self, **options)
            except CommandError as exc:
                if "deadlock detected" not in str(exc.__cause__) or attempt == 4:
                    raise

    flush.Command.handle = handle
