"""Prometheus from Debian's packages, scraping the vLLM emulators.

Targets are file-based service discovery: whoever starts an emulator writes a JSON file into
`prometheus/targets/` carrying the labels a ServiceMonitor would give (namespace, pod, service,
model_name); Prometheus re-reads the directory every few seconds.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from .config import Config
from .errors import PlatformError
from .procs import Procs, require_port

SCRAPE_INTERVAL = "5s"


def targets_dir(cfg: Config) -> Path:
    return cfg.state_dir / "prometheus" / "targets"


def url(cfg: Config) -> str:
    return f"http://127.0.0.1:{cfg.ports['prometheus']}"


def write_target(cfg: Config, key: str, address: str, labels: dict[str, str]) -> Path:
    """Register one scrape target (atomically: Prometheus must never read half a file)."""
    directory = targets_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": [address], "labels": labels}]))
    tmp.replace(path)
    return path


def remove_target(cfg: Config, key: str) -> None:
    (targets_dir(cfg) / f"{key}.json").unlink(missing_ok=True)


def _ready(cfg: Config) -> bool:
    with urllib.request.urlopen(f"{url(cfg)}/-/ready", timeout=2) as resp:  # noqa: S310 - loopback
        return resp.status == 200


def ensure_prometheus(cfg: Config, procs: Procs) -> None:
    if procs.pid("prometheus") is not None:
        return
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        raise PlatformError(
            "prometheus is not installed: `apt-get install prometheus` (the CI script does this)"
        )
    require_port(cfg.ports["prometheus"], "Prometheus", "PORTAL_PROMETHEUS_PORT")
    home = cfg.state_dir / "prometheus"
    targets_dir(cfg).mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "vllm",
                "metrics_path": "/metrics",
                # vLLM's own model_name label wins over the target's (same value), with no exported_ copy.
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(targets_dir(cfg) / "*.json")], "refresh_interval": "5s"}],
            }
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    procs.start(
        "prometheus",
        [
            binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{cfg.ports['prometheus']}",
            "--storage.tsdb.retention.time=7d",
            "--web.enable-lifecycle",
        ],
    )
    procs.wait("prometheus", lambda: _ready(cfg), 60, "ready (/-/ready)")


def query(cfg: Config, promql: str) -> list[dict]:
    params = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url(cfg)}/api/v1/query?{params}", timeout=5) as resp:  # noqa: S310
        return json.load(resp)["data"]["result"]
