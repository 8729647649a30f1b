"""PostgreSQL and Redis from Debian's packages, on loopback, with data under the state directory."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from .config import Config
from .errors import PlatformError
from .procs import Procs, require_port


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise PlatformError(
            "PostgreSQL is not installed: `apt-get install postgresql` (the CI script does this)"
        )
    return Path(found[-1]).parent


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root; as root we run it as Debian's `postgres` user."""
    if os.getuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PlatformError(
            "running as root needs the `postgres` user from Debian's postgresql package"
        ) from None
    return "postgres"


def local_secret(cfg: Config, name: str) -> str:
    """A random secret made once per state directory and kept there (mode 600)."""
    path = cfg.state_dir / f"{name}.secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def pg_password(cfg: Config) -> str:
    return local_secret(cfg, "postgres-password")


def database_url(cfg: Config) -> str:
    return f"postgresql://portal:{pg_password(cfg)}@127.0.0.1:{cfg.ports['postgres']}/portal"


def _pg_ready(cfg: Config) -> bool:
    bindir = _pg_bin()
    result = subprocess.run(
        [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(cfg.ports["postgres"]), "-q"],
        check=False,
    )
    return result.returncode == 0


def ensure_postgres(cfg: Config, procs: Procs) -> None:
    if procs.pid("postgres") is not None:
        return
    require_port(cfg.ports["postgres"], "PostgreSQL", "PORTAL_PG_PORT")
    bindir = _pg_bin()
    user = _pg_user()
    data = cfg.state_dir / "postgres"
    sockets = cfg.state_dir / "postgres-run"
    sockets.mkdir(parents=True, exist_ok=True)
    password = pg_password(cfg)
    if user:
        shutil.chown(sockets, user, user)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        pwfile = cfg.state_dir / "postgres-init.pw"
        pwfile.write_text(password + "\n")
        if user:
            shutil.chown(data, user, user)
            shutil.chown(pwfile, user, user)
        result = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "portal",
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            user=user,
            capture_output=True,
            text=True,
            check=False,
        )
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise PlatformError(f"initdb failed:\n{result.stderr.strip()}")
    procs.start(
        "postgres",
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={cfg.ports['postgres']}",
            "-c",
            f"unix_socket_directories={sockets}",
            "-c",
            "max_connections=300",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=256MB",
        ],
        user=user,
    )
    procs.wait("postgres", lambda: _pg_ready(cfg), 60, "accepting connections")
    _ensure_database(cfg, bindir, password)


def _ensure_database(cfg: Config, bindir: Path, password: str) -> None:
    env = {**os.environ, "PGPASSWORD": password}
    base = [
        str(bindir / "psql"),
        "-h",
        "127.0.0.1",
        "-p",
        str(cfg.ports["postgres"]),
        "-U",
        "portal",
        "-d",
        "postgres",
        "-tAc",
    ]
    exists = subprocess.run(
        [*base, "SELECT 1 FROM pg_database WHERE datname='portal'"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if exists.returncode != 0:
        raise PlatformError(f"cannot query PostgreSQL: {exists.stderr.strip()}")
    if exists.stdout.strip() != "1":
        created = subprocess.run(
            [*base, "CREATE DATABASE portal"], env=env, capture_output=True, text=True, check=False
        )
        if created.returncode != 0:
            raise PlatformError(f"cannot create database portal: {created.stderr.strip()}")


def _redis_ready(cfg: Config) -> bool:
    with socket.create_connection(("127.0.0.1", cfg.ports["redis"]), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def ensure_redis(cfg: Config, procs: Procs) -> None:
    if procs.pid("redis") is not None:
        return
    binary = shutil.which("redis-server")
    if not binary:
        raise PlatformError("redis-server is not installed: `apt-get install redis-server`")
    require_port(cfg.ports["redis"], "Redis", "PORTAL_REDIS_PORT")
    data = cfg.state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    procs.start(
        "redis",
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(cfg.ports["redis"]),
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ],
    )
    procs.wait("redis", lambda: _redis_ready(cfg), 30, "answering PING")


def stop_postgres(procs: Procs) -> None:
    # SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to disconnect.
    procs.stop("postgres", signal.SIGINT, timeout=30)
