"""Bad configuration fails with a message that says what and where, not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CTL = ROOT / "deploy" / "local" / "platformctl.py"


def run_ctl(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CTL), *args],
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PORTAL_STATE_DIR": str(tmp_path / "state"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_tier_file_with_a_bad_quantity_names_the_file_and_the_field(tmp_path):
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(
        "tiers:\n  - name: h100\n    product: NVIDIA-H100\n    memoryMiB: 81559\n"
        "    gpusPerNode: 8\n    cpu: 12 cores\n"
    )
    result = run_ctl(tmp_path, "up", PORTAL_GPU_TIERS_FILE=str(tiers))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{tiers}: tiers[0].cpu: '12 cores' is not a Kubernetes quantity" in result.stderr


def test_a_tier_file_with_a_bad_gpu_count_names_the_limit(tmp_path):
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(
        "tiers:\n  - name: h100\n    product: NVIDIA-H100\n    memoryMiB: 81559\n    gpusPerNode: 0\n"
    )
    result = run_ctl(tmp_path, "up", PORTAL_GPU_TIERS_FILE=str(tiers))
    assert result.returncode == 1
    assert "tiers[0].gpusPerNode: 0 is out of range (1 to 64)" in result.stderr


def test_a_port_out_of_range_is_refused_with_its_variable(tmp_path):
    result = run_ctl(tmp_path, "up", PORTAL_REDIS_PORT="80")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "PORTAL_REDIS_PORT=80: choose a port between 1024 and 65535" in result.stderr


def test_a_port_held_by_another_process_is_reported(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = run_ctl(tmp_path, "up", PORTAL_PG_PORT=str(port))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"port {port} on 127.0.0.1, wanted by PostgreSQL, is in use by another process" in result.stderr
    assert "PORTAL_PG_PORT" in result.stderr


@pytest.mark.platform
def test_a_second_up_leaves_running_components_alone(platform):
    from lp.procs import Procs

    procs = Procs(platform.cfg.run, platform.cfg.logs)
    before = {name: procs.pid(name) for name in ("etcd", "host-apiserver", "postgres")}
    assert all(before.values())
    result = subprocess.run(
        [sys.executable, str(CTL), "up"], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    after = {name: procs.pid(name) for name in before}
    assert after == before
