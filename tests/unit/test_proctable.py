"""The /proc parsers and the process-tree helpers, on hand-made tables."""

from services.common.proctable import (PAGE_BYTES, ProcInfo, descendants, group_members, parse_stat, session_members,
                                        still_running)


def proc(pid, ppid, pgid=None, state="S", start=100, comm="p", sid=None):
    pgid = pgid if pgid is not None else pid
    return ProcInfo(pid=pid, comm=comm, state=state, ppid=ppid, pgid=pgid, sid=sid if sid is not None else pgid,
                    start_ticks=start)


def stat_line(pid, comm, state, ppid, pgrp, session, start):
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    # cutime cstime priority nice threads itrealvalue starttime vsize ...
    return (f"{pid} ({comm}) {state} {ppid} {pgrp} {session} 0 -1 4194560 10 0 0 0 5 3 0 0 20 0 1 0 "
            f"{start} 1000 200 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")


def test_parse_stat_reads_the_fields_after_the_name():
    info = parse_stat(stat_line(4242, "python3", "S", 17, 4200, 4100, 987654))
    # rss: 200 pages in stat_line's field 24
    assert info == ProcInfo(pid=4242, comm="python3", state="S", ppid=17, pgid=4200, sid=4100, start_ticks=987654,
                            rss_bytes=200 * PAGE_BYTES)


def test_parse_stat_survives_spaces_and_parentheses_in_the_name():
    info = parse_stat(stat_line(7, "VLLM::Worker (x) y", "R", 6, 5, 4, 42))
    assert (info.comm, info.state, info.ppid, info.pgid, info.sid, info.start_ticks) == (
        "VLLM::Worker (x) y", "R", 6, 5, 4, 42)


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


def test_session_members_follow_re_parented_descendants_of_a_dead_leader():
    # Worker 10 (session 10) died; its engine core 11 (re-parented to 1) and the core's worker 12
    # (which moved to a group of its own) are still in the session.
    table = {p.pid: p for p in [proc(11, 1, 10, sid=10), proc(12, 11, 12, sid=10), proc(13, 1, 13)]}
    assert [p.pid for p in session_members(table, 10, leader_start_ticks=500)] == [11, 12]


def test_session_members_are_none_when_the_id_names_another_leader_now():
    table = {p.pid: p for p in [proc(10, 1, 10, start=900), proc(14, 10, 10, sid=10)]}
    assert session_members(table, 10, leader_start_ticks=500) == []          # started later: a reused id
    assert [p.pid for p in session_members(table, 10, leader_start_ticks=900)] == [10, 14]
    assert [p.pid for p in session_members(table, 10, leader_start_ticks=None)] == [10, 14]
