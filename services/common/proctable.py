"""What /proc says about processes: parents, process groups, start times, environment markers.

Used to find what is left of a worker or a cluster by the ids HFX recorded (pids, process
groups, the cluster id in the environment), never by matching process names. The parsers are
pure; `snapshot()` and `environ_has()` read /proc (Linux only: elsewhere they see nothing).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    comm: str          # the kernel's short name: for messages only, never to decide anything
    state: str         # "R", "S", "D", "Z" (zombie: dead, waiting for its parent to reap it), ...
    ppid: int
    pgid: int
    start_ticks: int   # start time in clock ticks since boot: with the pid, one process's identity

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def parse_stat(text: str) -> ProcInfo:
    """One /proc/PID/stat line. The name sits in parentheses and may itself contain spaces and
    parentheses, so the fields are counted from the last ')'."""
    head, _, tail = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = tail.split()
    # After the name: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice num_threads itrealvalue starttime ...
    return ProcInfo(pid=int(pid_text), comm=comm, state=fields[0], ppid=int(fields[1]), pgid=int(fields[2]),
                    start_ticks=int(fields[19]))


def snapshot(proc: Path = PROC) -> dict[int, ProcInfo]:
    """Every process visible now, by pid (processes that vanish while being read are skipped)."""
    table: dict[int, ProcInfo] = {}
    try:
        entries = list(proc.iterdir())
    except OSError:
        return table
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            info = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        table[info.pid] = info
    return table


def descendants(table: Mapping[int, ProcInfo], pid: int) -> list[ProcInfo]:
    """Children, grandchildren, ... of `pid` in `table`, parents before their children."""
    children: dict[int, list[ProcInfo]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info)
    out: list[ProcInfo] = []
    seen, frontier = {pid}, [pid]
    while frontier:
        for child in sorted(children.get(frontier.pop(0), []), key=lambda p: p.pid):
            if child.pid not in seen:
                seen.add(child.pid)
                out.append(child)
                frontier.append(child.pid)
    return out


def group_members(table: Mapping[int, ProcInfo], pgid: int, alive_only: bool = True) -> list[ProcInfo]:
    """The processes of process group `pgid` (by default without zombies, which are already dead)."""
    return sorted((p for p in table.values() if p.pgid == pgid and (p.alive or not alive_only)), key=lambda p: p.pid)


def still_running(table: Mapping[int, ProcInfo], known: Iterable[ProcInfo]) -> list[ProcInfo]:
    """Those of `known` that still run as the same process (same pid AND start time, so a reused
    pid does not count)."""
    out = []
    for info in known:
        now = table.get(info.pid)
        if now is not None and now.start_ticks == info.start_ticks and now.alive:
            out.append(now)
    return out


def environ_has(pid: int, key: str, value: str, proc: Path = PROC) -> bool:
    """Whether process `pid` was started with `key=value` in its environment. Another user's
    process (unreadable) or one that is gone counts as not having it."""
    try:
        data = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    return f"{key}={value}".encode() in data.split(b"\0")


def marked(table: Mapping[int, ProcInfo], key: str, value: str, proc: Path = PROC) -> list[ProcInfo]:
    """The live processes of `table` started with `key=value` in their environment (descendants
    inherit it, so this finds a cluster's processes wherever they were re-parented)."""
    me = os.getpid()
    return [p for p in sorted(table.values(), key=lambda p: p.pid)
            if p.alive and p.pid != me and environ_has(p.pid, key, value, proc)]
