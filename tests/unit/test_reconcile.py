from services.scaler.reconcile import WorkerSlot, reconcile


def test_starts_missing_slots():
    assert reconcile(3, [WorkerSlot(0, True)], now_s=0).start == (1, 2)


def test_stops_highest_indices_above_desired():
    slots = [WorkerSlot(i, True) for i in range(4)]
    actions = reconcile(2, slots, now_s=0)
    assert actions.stop == (3, 2) and actions.start == ()
    assert "stop [3, 2]" in actions.reason


def test_restarts_crashed_slot_after_backoff_that_grows_with_restarts():
    crashed = WorkerSlot(0, False, exited_at_s=100.0, restarts=2)  # backoff 2 s * 2**2 = 8 s
    assert reconcile(1, [crashed], now_s=105).start == ()
    assert "backoff" in reconcile(1, [crashed], now_s=105).reason
    assert reconcile(1, [crashed], now_s=108).start == (0,)


def test_steady_state_does_nothing():
    actions = reconcile(2, [WorkerSlot(0, True), WorkerSlot(1, True)], now_s=0)
    assert actions.start == () and actions.stop == () and actions.reason == "at desired 2"


def test_cpu_share_gives_engines_disjoint_cores():
    from services.scaler.reconcile import cpu_share

    assert cpu_share(0, 1, [0, 1]) == "1"                   # core 0 is left to the control plane
    assert cpu_share(0, 1, [0, 1, 2, 3]) == "1,2,3"
    assert cpu_share(0, 1, [5]) == "5"                      # nothing to spare
    assert [cpu_share(i, 2, [1, 0]) for i in range(2)] == ["0", "1"]   # as many workers as cores
    assert [cpu_share(i, 3, list(range(8))) for i in range(3)] == ["1,2,3", "4,5", "6,7"]
    assert [cpu_share(i, 3, [0, 1]) for i in range(3)] == ["0", "1", "0"]  # more engines than cores
    assert cpu_share(0, 2, []) == ""


def test_reconcile_set_retires_any_slot_and_keeps_the_others():
    from services.scaler.reconcile import reconcile_set

    slots = [WorkerSlot(i, True) for i in range(3)]
    actions = reconcile_set({0, 2}, slots, now_s=0)          # slot 1 was drained: only it stops
    assert actions.stop == (1,) and actions.start == ()
    assert reconcile_set({0, 2, 3}, slots[:1] + slots[2:], now_s=0).start == (3,)
    crashed = WorkerSlot(2, False, exited_at_s=100.0, restarts=0)
    assert reconcile_set({2}, [crashed], now_s=101).start == ()
    assert reconcile_set({2}, [crashed], now_s=102).start == (2,)


def test_scale_beyond_the_autoscalers_max_is_refused_and_changes_nothing(tmp_path):
    import asyncio

    import pytest

    from services.common.errors import InvalidArgument
    from services.common.pb.hfx.v1 import scaler_pb2
    from services.scaler.autoscale import AutoscaleConfig
    from services.scaler.config import ScalerConfig
    from services.scaler.server import ScalerServicer

    config = ScalerConfig(model="m", scheduler_address="127.0.0.1:1", log_dir=tmp_path, replicas=9,
                          autoscale=AutoscaleConfig(min_replicas=1, max_replicas=4))
    servicer = ScalerServicer(config, cluster=None)
    assert servicer.desired == 4 and servicer.wanted == {0, 1, 2, 3}   # the start count is clamped
    with pytest.raises(InvalidArgument, match=r"outside the autoscaler's bounds \[1, 4\]"):
        asyncio.run(servicer.Scale(scaler_pb2.ScaleRequest(decision_id="d1", replicas=9), None))
    assert servicer.desired == 4 and servicer.wanted == {0, 1, 2, 3}


class _FakeProc:
    """A worker process stand-in: exits when SIGTERMed and the test says so."""

    _next_pid = 40000

    def __init__(self) -> None:
        _FakeProc._next_pid += 1
        self.pid = _FakeProc._next_pid
        self.signals: list[int] = []
        self.exited = False

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def poll(self) -> int | None:
        return 0 if self.exited else None


def _autoscaled_servicer(tmp_path, monkeypatch, launched: list[tuple[str, "_FakeProc"]]):
    """A scaler autoscaling 1-4 colocated sim workers, whose launches are fake processes
    recorded in `launched` as (instance id, process)."""
    from services.common import procs
    from services.scaler.autoscale import AutoscaleConfig
    from services.scaler.config import ScalerConfig
    from services.scaler.server import ScalerServicer

    def launch(instance_id, port, *extra):
        proc = _FakeProc()
        launched.append((instance_id, proc))
        return proc

    monkeypatch.setattr(procs, "has_exited", lambda proc: proc.exited)
    monkeypatch.setattr(procs, "kill_group", lambda pgid, wait_s=5.0: [])
    config = ScalerConfig(model="m", scheduler_address="127.0.0.1:1", log_dir=tmp_path, replicas=1, engine="sim",
                          autoscale=AutoscaleConfig(min_replicas=1, max_replicas=4))
    servicer = ScalerServicer(config, cluster=None)
    monkeypatch.setattr(servicer, "_launch", launch)
    return servicer


def test_a_retired_slot_wanted_again_starts_a_worker(tmp_path, monkeypatch):
    """Issue 13: after a drain retired slot 1 and its worker exited, the next start took slot 1
    (the lowest free one) but never launched it (its stopping mark stayed set), so the autoscaler
    saw no start and decided another one every tick."""
    launched: list[tuple[str, _FakeProc]] = []
    servicer = _autoscaled_servicer(tmp_path, monkeypatch, launched)
    servicer.step(0.0)
    assert servicer.add_slot(1.0) == "hfx-w1" and len(launched) == 2
    first = launched[1][1]
    servicer.retire_slot("hfx-w1", 10.0)                     # drained: SIGTERM, it finishes and exits
    assert first.signals and [w.instance_id for w in servicer.live_slots()] == ["hfx-w0"]
    assert servicer.add_slot(10.5) == "hfx-w2"               # slot 1 is still on its way out: not reused
    first.exited = True
    servicer.step(11.0)
    assert servicer.add_slot(11.5) == "hfx-w1"               # now it is, and a worker starts in it at once
    assert [i for i, _ in launched] == ["hfx-w0", "hfx-w1", "hfx-w2", "hfx-w1"]
    assert [w.instance_id for w in servicer.live_slots()] == ["hfx-w0", "hfx-w1", "hfx-w2"]
    assert servicer.workers[1].proc is launched[3][1] and not servicer.workers[1].stopping


def test_a_crashed_slot_waiting_to_restart_is_still_the_autoscalers(tmp_path, monkeypatch):
    """CI, sixteenth session: a decode worker failed to bind its port and exited; while its slot
    waited out the restart backoff, live_slots left it out, so the autoscaler saw no decode worker
    and started a second one, and the slot came back as well (one worker too many). The slot
    loop restarts a crashed slot that is still wanted; the autoscaler counts it meanwhile."""
    launched: list[tuple[str, _FakeProc]] = []
    servicer = _autoscaled_servicer(tmp_path, monkeypatch, launched)
    servicer.step(0.0)
    launched[0][1].exited = True                       # crashed (not stopped on purpose)
    servicer.step(1.0)                              # seen; restarted only after the backoff
    assert len(launched) == 1 and servicer.workers[0].exited_at_s == 1.0
    assert [w.instance_id for w in servicer.live_slots()] == ["hfx-w0"]
    servicer.step(3.5)                              # backoff over: the same slot starts again
    assert len(launched) == 2 and [w.instance_id for w in servicer.live_slots()] == ["hfx-w0"]
    servicer.retire_slot("hfx-w0", 4.0)             # retired on purpose: no longer the autoscaler's
    assert servicer.live_slots() == []


def test_workers_launched_together_are_never_promised_the_same_port(tmp_path, monkeypatch):
    """A promised port looks free until its worker binds it: picked again for the next worker
    (its gRPC or its /metrics port), one of the two fails "Address already in use"."""
    from services.common import procs
    from services.scaler.config import ScalerConfig
    from services.scaler.server import ScalerServicer

    ports: list[str] = []

    def launch(instance_id, port, *extra):   # as ScalerServicer._launch: the gRPC port, then /metrics's
        ports.append(str(port))
        ports.extend(servicer._metrics_flag(instance_id)[1:])
        return _FakeProc()

    # Nothing is bound yet (fake processes), so the lowest port not avoided is always "free".
    monkeypatch.setattr(procs, "free_port", lambda host="127.0.0.1", avoid=frozenset():
                        min(p for p in range(20000, 20100) if p not in avoid))
    config = ScalerConfig(model="m", scheduler_address="127.0.0.1:1", log_dir=tmp_path, replicas=3, engine="sim",
                          worker_metrics=True)
    servicer = ScalerServicer(config, cluster=None)
    monkeypatch.setattr(servicer, "_launch", launch)
    servicer.step(0.0)
    assert len(ports) == 6 and len(set(ports)) == 6, ports
