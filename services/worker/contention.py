"""How much CPU other processes use, so a worker profiles its engine on a quiet machine.

Linux only (/proc); elsewhere `cpu_sample` returns None and the checks are skipped. "Own" CPU is
this process and its descendants (vLLM's engine core is a child), so a worker's own profiling
load is not counted as contention. Work at a positive niceness (/proc/stat's "nice" column) is not
counted either while the worker itself runs at niceness <= 0 and the kernel groups no processes
by session: nice 19 then weighs 15 against the engine's 1024, so it barely moves its step times.
With session autogroups (/proc/sys/kernel/sched_autogroup_enabled = 1, common on desktops and
some VMs) nice orders processes only inside one session's group and groups share the CPU equally,
so another session's niced job competes with the engine as an equal and counts (seen on this
project's machines: issue 9, eighth session).
Parsing and arithmetic are pure, for tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuSample:
    system_busy_s: float   # all CPUs, busy time since boot
    own_busy_s: float      # this process tree's user + system time


def system_busy_ticks(proc_stat: str, count_nice: bool = True) -> int:
    """Busy ticks from /proc/stat's aggregate "cpu" line: everything but idle and iowait (guest
    time is already inside user/nice, so it is not added again); without niced processes' time
    when not `count_nice`."""
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            v += [0] * (10 - len(v))
            user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
            return user + (nice if count_nice else 0) + system + irq + softirq + steal
    raise ValueError("no aggregate cpu line in /proc/stat")


def pid_stat(text: str) -> tuple[int, int]:
    """(ppid, utime + stime ticks) from a /proc/PID/stat line (the comm field may hold spaces)."""
    rest = text[text.rfind(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def tree_ticks(stats: dict[int, tuple[int, int]], root: int) -> int:
    """Ticks of root and all its descendants, from {pid: (ppid, ticks)}."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += stats.get(pid, (0, 0))[1]
        todo.extend(children.get(pid, ()))
    return total


def others_cores(before: CpuSample, after: CpuSample, elapsed_s: float) -> float:
    """Mean cores busy with other processes' work between two samples."""
    if elapsed_s <= 0:
        return 0.0
    others = (after.system_busy_s - before.system_busy_s) - (after.own_busy_s - before.own_busy_s)
    return max(0.0, others / elapsed_s)


def counts_nice(worker_niceness: int, autogroups: bool) -> bool:
    """Whether niced processes' CPU time is contention for a worker at `worker_niceness`."""
    return worker_niceness > 0 or autogroups


def _autogroups() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def cpu_sample(root: int | None = None) -> CpuSample | None:
    try:
        tick = os.sysconf("SC_CLK_TCK")
        busy = system_busy_ticks(Path("/proc/stat").read_text(),
                                 count_nice=counts_nice(os.getpriority(os.PRIO_PROCESS, 0), _autogroups()))
        stats: dict[int, tuple[int, int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stats[int(d.name)] = pid_stat((d / "stat").read_text())
                except (OSError, ValueError, IndexError):
                    pass  # gone meanwhile, or unreadable
    except (OSError, ValueError):
        return None
    return CpuSample(busy / tick, tree_ticks(stats, root or os.getpid()) / tick)
