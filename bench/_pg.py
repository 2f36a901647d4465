"""A throwaway PostgreSQL for the benchmarks: ``initdb`` and ``pg_ctl`` on loopback (as the postgres user
when run as root), durable defaults (``fsync`` and ``synchronous_commit`` on), ``shared_buffers=512MB``.
Shared by bench/ingest.py and bench/rollup.py so both measure the same server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

SETTINGS = "-c listen_addresses=127.0.0.1 -c max_connections=100 -c shared_buffers=512MB"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], **kw: object) -> None:
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise SystemExit(f"{name} not found: PostgreSQL server binaries are needed")
    return str(candidates[-1])


def pg_start(pg_dir: Path, port: int, database: str, extra: str = "") -> str:
    """initdb in ``pg_dir`` (created, owned by postgres when root), start with SETTINGS and ``extra`` server
    options, create ``database``; returns its URL. Call ``pg_stop(pg_dir)`` in a ``finally`` whatever happens."""
    pg_dir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(pg_dir, "postgres", "postgres")
    run(as_postgres([pg_bin("initdb"), "-D", str(pg_dir / "data"), "-U", "postgres", "-A", "trust"]),
        stdout=subprocess.DEVNULL)
    run(as_postgres([pg_bin("pg_ctl"), "-D", str(pg_dir / "data"), "-l", str(pg_dir / "log"), "-w", "-o",
                     f"-p {port} -k {pg_dir} {SETTINGS} {extra}", "start"]), stdout=subprocess.DEVNULL)
    run(as_postgres([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database]))
    return f"postgres://postgres@127.0.0.1:{port}/{database}"


def pg_stop(pg_dir: Path) -> None:
    """Stop the server started by ``pg_start`` (fast mode); quiet and harmless when it is not running."""
    if (pg_dir / "data").exists():
        subprocess.run(as_postgres([pg_bin("pg_ctl"), "-D", str(pg_dir / "data"), "-m", "fast", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
