"""Processes that die with the process that started them, however that one dies (SIGKILL too).

Two mechanisms, both Linux's parent-death signal (prctl PR_SET_PDEATHSIG), both set inside the
child itself (no `preexec_fn`, which is unsafe in a process with threads):

- `tied_command(cmd)`: runs `cmd` through a tiny exec wrapper that asks for SIGKILL when its
  parent dies, checks the parent is still the one that started it (closing the race where the
  parent died before the request), then execs `cmd`. The request survives exec, so the command
  itself (a service, a worker, redis-server) carries it. For what HFX spawns directly.
- `start_group_reaper()`: for processes HFX does not spawn itself: vLLM starts its engine core
  (and the engine core its workers) with multiprocessing, in the worker's process group. The
  reaper is a small child of the worker in the same group that ignores SIGTERM/SIGINT (so a
  graceful stop of the group still drains) and, once the worker has died, SIGKILLs the whole
  group: whatever vLLM started, by whatever start method, goes with it.
- `anchored_command(cmd, ...)`: for workers that must outlive the process starting them (a
  scaler that adopts running workers when it is restarted): the wrapper records its own pid and
  start time in the worker's pid file BEFORE it execs (so no worker ever runs unrecorded, even if
  its starter dies in between), and, given an anchor process (`hfx up`'s caller), forks a watcher
  into the worker's group that SIGKILLs the group once the anchor is gone.

The parent-death signal fires when the *thread* that started the child ends, not the process:
spawn tied children only from the main thread (`spawn` refuses otherwise), and the reaper also
re-checks its parent every second, so an early signal cannot make it miss the real death.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

log = logging.getLogger("hfx.lifeline")

PR_SET_PDEATHSIG = 1

# Runs as `python -I -S -c ... PARENT_PID CMD ARGS...`: stdlib only, no site-packages, so it
# does not depend on the environment it passes on. It adds one interpreter start to a spawn
# (44-82 ms measured on a loaded 2-core machine), small beside a service's own start.
_TIE = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(%d, signal.SIGKILL)
if os.getppid() != int(sys.argv[1]):
    sys.exit("hfx: the parent died before this process started; not starting " + sys.argv[2])
os.execvp(sys.argv[2], sys.argv[2:])
""" % PR_SET_PDEATHSIG

# Runs as `python -I -S -c ... LEADER_PID`, in the leader's process group.
_REAPER = """\
import ctypes, os, signal, sys
leader, group = int(sys.argv[1]), os.getpgrp()
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
ctypes.CDLL(None, use_errno=True).prctl(%d, signal.SIGUSR1)
while os.getppid() == leader:
    signal.sigtimedwait({signal.SIGUSR1}, 1.0)
os.killpg(group, signal.SIGKILL)
""" % PR_SET_PDEATHSIG


# Runs as `python -I -S -c ... RECORD_PATH ANCHOR_PID ANCHOR_TICKS CMD ARGS...` (anchor 0: none).
# The watcher ignores SIGTERM/SIGINT/SIGHUP (a graceful stop of the group still drains) and ends
# with the worker (its parent); the worker's own stop kills the group as before.
_ANCHORED = """\
import os, signal, sys, time
def ticks(pid):
    try:
        text = open("/proc/%d/stat" % pid).read()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])
record, anchor, anchor_ticks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(record, "a") as f:
    f.write("%d %d\\n" % (os.getpid(), ticks(os.getpid())))
if anchor and os.fork() == 0:
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    leader = os.getppid()
    while os.getppid() == leader and ticks(anchor) == anchor_ticks:
        time.sleep(1.0)
    if os.getppid() == leader:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(0)
os.execvp(sys.argv[4], sys.argv[4:])
"""


def supported() -> bool:
    return sys.platform.startswith("linux")


def tied_command(cmd: list[str], parent_pid: int) -> list[str]:
    """`cmd` wrapped so that it is SIGKILLed when `parent_pid` (the caller) dies."""
    if not supported():
        return cmd
    return [sys.executable, "-I", "-S", "-c", _TIE, str(parent_pid), *cmd]


def anchored_command(cmd: list[str], record_path: str, anchor_pid: int = 0, anchor_ticks: int = 0) -> list[str]:
    """`cmd` wrapped so that it records itself in `record_path` (a `PID START_TICKS` line, as
    procs.append_group_record writes) before it runs, and is SIGKILLed with its group once
    `anchor_pid` (started at `anchor_ticks`) is gone; anchor 0: it is tied to nothing."""
    if not supported():
        return cmd
    return [sys.executable, "-I", "-S", "-c", _ANCHORED, record_path, str(anchor_pid), str(anchor_ticks), *cmd]


def check_tie_thread() -> None:
    """Raises unless called on the main thread (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("a child tied to its parent must be started from the main thread: "
                           "the parent-death signal fires when the starting thread ends")


def start_group_reaper() -> subprocess.Popen | None:
    """Starts the reaper of this process's group (see the module docstring). Only a session
    leader gets one (as the scaler and `hfx up` start every process, and a container's first
    process is): in a shell's job the group also holds the rest of the pipeline (`... | tee`),
    which must not be killed. None then, or where there is no parent-death signal; in a
    container the engine goes with the container anyway."""
    if not supported():
        return None
    if os.getsid(0) != os.getpid():
        log.warning("not reaping the engine's processes if this process dies: it is not a session leader "
                    "(the scaler and `hfx up` start workers in their own sessions)")
        return None
    check_tie_thread()
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", _REAPER, str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
