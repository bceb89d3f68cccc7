"""What /proc says about processes: parents, process groups, sessions, start times.

Used to find what is left of a worker or a cluster by the ids HFX recorded (pids, process
groups and sessions, with the start time of their leader), never by matching process names.
The parsers are pure; `snapshot()` and `start_ticks_of()` read /proc (Linux only: elsewhere they
see nothing).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    comm: str          # the kernel's short name: for messages only, never to decide anything
    state: str         # "R", "S", "D", "Z" (zombie: dead, waiting for its parent to reap it), ...
    ppid: int
    pgid: int
    sid: int           # session id: inherited by every descendant that does not call setsid()
    start_ticks: int   # start time in clock ticks since boot: with the pid, one process's identity
    rss_bytes: int = 0  # resident memory now (shared pages counted in every process mapping them)

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
                    sid=int(fields[3]), start_ticks=int(fields[19]), rss_bytes=int(fields[21]) * PAGE_BYTES)


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


def snapshot_of(pid: int, proc: Path = PROC) -> ProcInfo | None:
    """What /proc says about process `pid` now, or None when it is gone."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def start_ticks_of(pid: int, proc: Path = PROC) -> int | None:
    """The start time of process `pid` (clock ticks since boot), or None when it is gone."""
    info = snapshot_of(pid, proc)
    return info.start_ticks if info is not None else None


def session_members(table: Mapping[int, ProcInfo], sid: int, leader_start_ticks: int | None) -> list[ProcInfo]:
    """The live processes of session `sid`, which HFX recorded with its leader's start time.

    Every process HFX spawns leads a new session, and its descendants stay in it (vLLM's engine
    processes included) even once re-parented, so this finds all of them. A session id is the
    leader's pid, which cannot be reused while any process of the session lives; if a process
    with that pid runs but started at another time, the session is gone and the id reused, so
    nothing is returned (another program's processes must not be taken for ours).
    """
    leader = table.get(sid)
    if leader is not None and leader_start_ticks is not None and leader.start_ticks != leader_start_ticks:
        return []
    return sorted((p for p in table.values() if p.sid == sid and p.alive), key=lambda p: p.pid)
