"""CPU seconds per process tree, read from /proc (utime + stime of every live descendant), and
the seconds its threads spent runnable but waiting for a core (the run-queue wait).

`ps` time columns under-report on these machines; /proc/PID/stat does not. Process names are
used only to label rows, never to choose what to signal."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Iterator

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, cpu seconds) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) * _TICK_S


def snapshot() -> dict[int, tuple[int, float]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            out[int(entry)] = st
    return out


def _trees(roots: dict[str, int], snap: dict[int, tuple[int, float]]) -> Iterator[tuple[str, int, list[int]]]:
    """(label, root, its live descendants) for each labelled root alive in `snap`."""
    children = defaultdict(list)
    for pid, (ppid, _) in snap.items():
        children[ppid].append(pid)
    for label, root in roots.items():
        if root not in snap:
            continue
        stack, descendants = list(children[root]), []
        while stack:
            pid = stack.pop()
            descendants.append(pid)
            stack.extend(children[pid])
        yield label, root, descendants


def tree_cpu_s(roots: dict[str, int], snap: dict[int, tuple[int, float]]) -> dict[str, float]:
    """CPU seconds of each labelled root and, under "LABEL/children", of all its descendants."""
    out: dict[str, float] = {}
    for label, root, descendants in _trees(roots, snap):
        out[label] = snap[root][1]
        out[f"{label}/children"] = sum(snap[pid][1] for pid in descendants)
    return out


def tree_wait_s(roots: dict[str, int], snap: dict[int, tuple[int, float]],
                proc: Path = Path("/proc")) -> dict[str, float]:
    """Run-queue wait in seconds of each labelled root's threads and, under "LABEL/children", of
    all its descendants' threads: the second field of /proc/PID/task/TID/schedstat, the time a
    thread was runnable and not running. On a saturated machine it says which process waited
    for a core, which CPU seconds cannot. Threads gone by the time of the call are not counted."""
    out: dict[str, float] = {}
    for label, root, descendants in _trees(roots, snap):
        out[label] = _threads_wait_s(proc / str(root))
        out[f"{label}/children"] = sum(_threads_wait_s(proc / str(pid)) for pid in descendants)
    return out


def _threads_wait_s(pid_dir: Path) -> float:
    total_ns = 0
    try:
        tasks = list((pid_dir / "task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total_ns += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):  # a thread that just exited, or no schedstat
            continue
    return total_ns / 1e9


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in after}
