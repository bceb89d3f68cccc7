"""Child processes: each in its own session so that stopping it stops its children too
(vLLM's engine core runs in a child of the worker); optionally tied to their parent's life
(services/common/lifeline.py); leftovers of a group found and killed by its id."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from services.common import lifeline, proctable


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
PICK_FROM = 20000   # ports we hand out lie in [PICK_FROM, start of the ephemeral range)


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's default where it cannot be read)."""
    try:
        low, high = map(int, EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port(host: str = "127.0.0.1", avoid: frozenset[int] = frozenset()) -> int:
    """A port free now, never one of `avoid` (ports promised to a process that has not bound yet).

    Chosen below the ephemeral range: a port the kernel handed out by bind(0) can be taken, before
    the process it is meant for binds it, as the source port of any outgoing connection on the
    machine (a Redis client, a trace exporter); that made a whole test module fail in CI with
    "Failed to bind". Below the range only a listener choosing that very port can take it."""
    low, _ = ephemeral_range()
    if low - PICK_FROM >= 1000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(PICK_FROM, low)
            if port not in avoid and port_free(port, host):
                return port
    while True:   # a machine whose ephemeral range leaves no room below it: the kernel's choice
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


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
          die_with_parent: bool = False) -> subprocess.Popen:
    """Starts `cmd` in a new session (its pid is its process group id), output to `log_path`.
    die_with_parent: it is SIGKILLed when this process dies, however that happens; call from the
    main thread then (the kernel ties it to the starting thread)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if die_with_parent:
        lifeline.check_tie_thread()
        cmd = lifeline.tied_command(cmd, os.getpid())
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


def stop_group(pgid: int, timeout_s: float = 15.0) -> list[proctable.ProcInfo]:
    """SIGTERM the process group, wait, then SIGKILL whatever is left. Never leaves orphans.
    Returns the processes it had to SIGKILL (empty when the group stopped on SIGTERM)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pgid)
        if not group_alive(pgid):
            return []
        time.sleep(0.1)
    killed = kill_group(pgid)
    _reap(pgid)
    return killed


def kill_group(pgid: int, wait_s: float = 5.0) -> list[proctable.ProcInfo]:
    """SIGKILLs what is left of process group `pgid` (its leader may be gone already) and waits
    up to `wait_s` until none of it runs. Returns the live processes it found in the group.
    It does not reap the leader (a child of the caller): the caller decides when, and reads its
    exit status."""
    found = proctable.group_members(proctable.snapshot(), pgid)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return found
    deadline = time.monotonic() + wait_s
    while True:
        if not proctable.still_running(proctable.snapshot(), found) or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def append_group_record(path: Path, pid: int) -> None:
    """Records child `pid` (leader of its own session and group) as a line `PID START_TICKS`, so
    another process can later find what is left of it, and never mistake a reused id for it."""
    ticks = proctable.start_ticks_of(pid)
    with open(path, "a") as f:
        f.write(f"{pid} {ticks if ticks is not None else ''}".rstrip() + "\n")


def read_group_records(path: Path) -> list[tuple[int, int | None]]:
    """The (pid, start ticks or None) lines of `path`; a line it cannot read is skipped."""
    records: list[tuple[int, int | None]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        parts = line.split()
        try:
            records.append((int(parts[0]), int(parts[1]) if len(parts) > 1 else None))
        except (ValueError, IndexError):
            continue
    return records


def exited(pid: int) -> bool:
    """Whether child `pid` has exited, WITHOUT reaping it: until it is reaped its pid, and so its
    process group id, cannot be reused, so its group can still be killed safely by that id."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class Adopted:
    """A worker this process did not start (a scaler adopting what its predecessor left running):
    it is not our child, so it is watched through /proc by pid AND start time (a reused pid is not
    it), and its exit status is unknown (-1)."""

    def __init__(self, pid: int, start_ticks: int) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        self.returncode: int | None = None

    def running(self) -> bool:
        info = proctable.snapshot_of(self.pid)
        return info is not None and info.start_ticks == self.start_ticks and info.alive

    def poll(self) -> int | None:
        if self.returncode is None and not self.running():
            self.returncode = -1
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def kill_rest(self) -> list[proctable.ProcInfo]:
        """`kill_group` for a worker that is not our child: its leader was reaped by someone else,
        so its id is checked against the recorded start time before anything is killed (a
        session id that names another program's session kills nothing)."""
        found = proctable.session_members(proctable.snapshot(), self.pid, self.start_ticks)
        kill_processes(found)
        return found


def has_exited(proc: "subprocess.Popen | Adopted") -> bool:
    """`exited` for a child, /proc for an adopted worker."""
    if isinstance(proc, Adopted):
        return not proc.running()
    return exited(proc.pid)


def kill_processes(known: list[proctable.ProcInfo], wait_s: float = 5.0) -> list[proctable.ProcInfo]:
    """SIGKILLs those of `known` that still run as the same processes (pid and start time);
    returns the ones still running after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        left = proctable.still_running(proctable.snapshot(), known)
        if not left or time.monotonic() >= deadline:
            return left
        for info in left:
            try:
                os.kill(info.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
