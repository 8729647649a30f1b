"""bench/loadgen.py against a real emulator subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from .support import API_KEY, LOADGEN, MODEL, RunningEmulator, metric


def loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOADGEN), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_it_drives_the_endpoint_and_prints_a_summary(emulator: RunningEmulator) -> None:
    before = metric(
        emulator.metrics(), "vllm:request_success_total", model_name=MODEL, finished_reason="length"
    )

    run = loadgen(
        emulator.url + "/v1",
        "--api-key", API_KEY,
        "--requests", "6",
        "--concurrency", "3",
        "--rate", "50",
        "--stream",
        "--max-tokens", "4",
        "--json",
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    assert "requests: 6 ok, 0 failed" in run.stdout
    assert "TTFT ms (client-side): p50" in run.stdout
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["ok"] == 6
    assert summary["completion_tokens"] == 24
    assert summary["ttft_p50_seconds"] > 0
    after = metric(
        emulator.metrics(), "vllm:request_success_total", model_name=MODEL, finished_reason="length"
    )
    assert after - before == 6


def test_it_reports_failures_and_exits_non_zero_when_nothing_succeeds(emulator: RunningEmulator) -> None:
    run = loadgen(emulator.url, "--api-key", "sk-wrong", "--model", MODEL, "--requests", "2")

    assert run.returncode == 1
    assert "requests: 0 ok, 2 failed" in run.stdout
    assert "401 x2" in run.stdout


def test_it_refuses_a_target_that_is_not_loopback() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never routed, and an IP literal needs no DNS lookup.
    run = loadgen("http://192.0.2.10:8000", "--requests", "1")

    assert run.returncode == 2
    assert "refusing to drive" in run.stderr
    assert "--allow-remote" in run.stderr
