"""Fixtures for the vLLM emulator's tests; the helpers live in support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import Launcher, RunningEmulator


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """One ready emulator shared by a module's tests that do not change its mode."""
    launcher = Launcher(tmp_path_factory.mktemp("emulator"))
    running = launcher("--max-num-seqs", "4")
    try:
        running.wait_healthy()
        yield running
    finally:
        launcher.stop_all()
