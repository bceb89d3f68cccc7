"""The /proc parsers and the process-tree helpers, on hand-made tables."""

from services.common.proctable import ProcInfo, descendants, group_members, parse_stat, still_running


def proc(pid, ppid, pgid=None, state="S", start=100, comm="p"):
    return ProcInfo(pid=pid, comm=comm, state=state, ppid=ppid, pgid=pgid if pgid is not None else pid,
                    start_ticks=start)


def stat_line(pid, comm, state, ppid, pgrp, start):
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    # cutime cstime priority nice threads itrealvalue starttime vsize ...
    return (f"{pid} ({comm}) {state} {ppid} {pgrp} {pgrp} 0 -1 4194560 10 0 0 0 5 3 0 0 20 0 1 0 "
            f"{start} 1000 200 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")


def test_parse_stat_reads_the_fields_after_the_name():
    info = parse_stat(stat_line(4242, "python3", "S", 17, 4200, 987654))
    assert info == ProcInfo(pid=4242, comm="python3", state="S", ppid=17, pgid=4200, start_ticks=987654)


def test_parse_stat_survives_spaces_and_parentheses_in_the_name():
    info = parse_stat(stat_line(7, "VLLM::Worker (x) y", "R", 6, 5, 42))
    assert (info.comm, info.state, info.ppid, info.pgid, info.start_ticks) == ("VLLM::Worker (x) y", "R", 6, 5, 42)


def test_descendants_walks_the_whole_tree_parents_first():
    table = {p.pid: p for p in [proc(1, 0), proc(10, 1), proc(11, 10), proc(12, 11), proc(13, 10), proc(20, 1)]}
    assert [p.pid for p in descendants(table, 10)] == [11, 13, 12]
    assert descendants(table, 12) == []


def test_group_members_leave_out_zombies_unless_asked():
    table = {p.pid: p for p in [proc(10, 1, 10, "Z"), proc(11, 1, 10), proc(12, 11, 10), proc(13, 1, 13)]}
    assert [p.pid for p in group_members(table, 10)] == [11, 12]
    assert [p.pid for p in group_members(table, 10, alive_only=False)] == [10, 11, 12]


def test_still_running_does_not_take_a_reused_pid_for_the_same_process():
    before = [proc(11, 10, start=500), proc(12, 11, start=510), proc(13, 11, start=520)]
    table = {11: proc(11, 1, start=500), 12: proc(12, 1, start=900), 13: proc(13, 1, state="Z", start=520)}
    assert [p.pid for p in still_running(table, before)] == [11]
