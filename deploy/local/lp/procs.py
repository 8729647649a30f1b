"""Start, check and stop the platform's long-running processes by pid file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .errors import PlatformError


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def require_port(port: int, what: str, env_name: str) -> None:
    if not port_free(port):
        raise PlatformError(
            f"port {port} on 127.0.0.1, wanted by {what}, is in use by another process. "
            f"Stop that process (`ss -ltnp 'sport = :{port}'` shows it) or set {env_name} to a free port."
        )


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


class Procs:
    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def logfile(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        """The pid of a running component, or None. A stale pid file is removed."""
        path = self.pidfile(name)
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            path.unlink(missing_ok=True)
            return None
        if state == "Z":
            path.unlink(missing_ok=True)
            return None
        return pid

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.logfile(name), "ab")  # noqa: SIM115 - handed to the child
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                user=user,
                start_new_session=True,  # its own process group: `down` stops its children too
            )
        except OSError as exc:
            raise PlatformError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from exc
        finally:
            log.close()
        self.pidfile(name).write_text(str(proc.pid))
        return proc.pid

    def wait(self, name: str, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid(name) is None:
                raise PlatformError(
                    f"{name} exited while {what}. Last lines of {self.logfile(name)}:\n"
                    + log_tail(self.logfile(name))
                )
            try:
                if check():
                    return
            except Exception:  # noqa: BLE001, S110 - not up yet; try again
                pass
            time.sleep(0.2)
        raise PlatformError(
            f"{name} was not {what} after {timeout:.0f}s. Last lines of {self.logfile(name)}:\n"
            + log_tail(self.logfile(name))
        )

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid(name) is not None:
            time.sleep(0.1)
        if self.pid(name) is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while self.pid(name) is not None and time.monotonic() < deadline + 5:
                time.sleep(0.1)
        self.pidfile(name).unlink(missing_ok=True)
        return True
