"""Child processes: each in its own session so that stopping it stops its children too
(vLLM's engine core runs in a child of the worker)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1", avoid: frozenset[int] = frozenset()) -> int:
    """A port free now, never one of `avoid` (ports promised to a process that has not bound yet)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind `port` now, i.e. nothing listens on it.

    Binds as our servers do (grpc, uvicorn and asyncio set SO_REUSEADDR), so connections left in
    TIME_WAIT by an earlier cluster (up to a minute after `hfx down`) do not count as use; a
    listening socket, or one bound without SO_REUSEADDR, does. SO_REUSEPORT is deliberately not
    set: grpc sets it, and with it a second cluster would silently share the first one's port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def hfx_command(*args: str) -> list[str]:
    """The `hfx` CLI as a child command, using this interpreter (works inside any venv)."""
    return [sys.executable, "-m", "services.cli", *args]


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab", buffering=0)
    try:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
    finally:
        log.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(pgid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever is left. Never leaves orphans."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pgid)
        if not group_alive(pgid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pgid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
