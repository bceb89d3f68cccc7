"""The peer harness's per-process CPU and run-queue wait, over a fake /proc."""

from pathlib import Path

from benchmarks.peer import cputime


def _task(proc: Path, pid: int, tid: int, run_ns: int, wait_ns: int) -> None:
    task = proc / str(pid) / "task" / str(tid)
    task.mkdir(parents=True)
    (task / "schedstat").write_text(f"{run_ns} {wait_ns} 7\n")


def test_wait_sums_every_thread_of_the_root_and_of_its_descendants_apart(tmp_path):
    _task(tmp_path, 10, 10, 5_000_000, 1_500_000_000)   # the router's main thread
    _task(tmp_path, 10, 11, 1_000_000, 250_000_000)     # one of its gRPC threads
    _task(tmp_path, 20, 20, 9_000_000, 2_000_000_000)   # a child (an engine core)
    _task(tmp_path, 30, 30, 9_000_000, 4_000_000_000)   # the child's child
    _task(tmp_path, 99, 99, 1, 8_000_000_000)           # not in any tree
    snap = {10: (1, 3.0), 20: (10, 7.0), 30: (20, 2.0), 99: (1, 1.0)}

    assert cputime.tree_wait_s({"router": 10}, snap, proc=tmp_path) == {"router": 1.75, "router/children": 6.0}
    assert cputime.tree_cpu_s({"router": 10}, snap) == {"router": 3.0, "router/children": 9.0}


def test_a_thread_that_exits_or_a_kernel_without_schedstat_counts_nothing(tmp_path):
    _task(tmp_path, 10, 10, 1, 500_000_000)
    (tmp_path / "10" / "task" / "12").mkdir()            # exited between the listing and the read
    (tmp_path / "20").mkdir()                             # gone entirely
    snap = {10: (1, 1.0), 20: (10, 1.0)}

    assert cputime.tree_wait_s({"w": 10, "gone": 77}, snap, proc=tmp_path) == {"w": 0.5, "w/children": 0.0}
