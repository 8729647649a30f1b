"""Helpers for the vLLM emulator's tests: each emulator is a real subprocess on a free loopback
port, talked to over HTTP, and stopped by whoever started it."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
EMULATOR = ROOT / "deploy" / "local" / "vllm_emulator.py"
LOADGEN = ROOT / "bench" / "loadgen.py"
API_KEY = "sk-emulator-test-key"
MODEL = "llama-test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Short load and small latencies keep the run quick; later flags on a command line win.
FAST = (
    "--load-seconds", "0.5",
    "--ttft-ms-mean", "20", "--ttft-ms-p95", "40",
    "--tpot-ms-mean", "5", "--tpot-ms-p95", "10",
)  # fmt: skip

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (fails if there are none)."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert found, f"no sample {name} {labels} in /metrics"
    return sum(found)


@dataclasses.dataclass
class RunningEmulator:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kwargs)

    def health(self) -> int | None:
        """The /health status, or None while nothing listens yet."""
        try:
            return self.get("/health").status_code
        except httpx.TransportError:
            assert self.proc.poll() is None, f"the emulator exited: {self.stderr_path.read_text()}"
            return None

    def wait_healthy(self) -> None:
        wait_for(lambda: self.health() == 200, "/health to answer 200")

    def metrics(self) -> str:
        response = self.get("/metrics")
        assert response.status_code == 200
        return response.text

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)


class Launcher:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[RunningEmulator] = []
        self.key_file = directory / "api-key"
        self.key_file.write_text(API_KEY + "\n")

    def __call__(self, *extra: str) -> RunningEmulator:
        port = free_port()
        log_path = self.directory / f"vllm-{port}.log"
        stderr_path = self.directory / f"vllm-{port}.stderr"
        command = [
            sys.executable, str(EMULATOR),
            "--port", str(port),
            "--served-model-name", MODEL,
            "--model", "meta-llama/Llama-3.1-8B-Instruct",
            "--api-key-file", str(self.key_file),
            "--log-file", str(log_path),
            *FAST,
            *extra,
        ]  # fmt: skip
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        emulator = RunningEmulator(proc=proc, port=port, log_path=log_path, stderr_path=stderr_path)
        self.started.append(emulator)
        return emulator

    def stop_all(self) -> None:
        for emulator in self.started:
            if emulator.proc.poll() is None:
                emulator.proc.terminate()
                try:
                    emulator.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    emulator.proc.kill()
                    emulator.proc.wait(timeout=15)
