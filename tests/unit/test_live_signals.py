"""Parsing the scheduler's and router's /metrics into autoscaling signals (no processes)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from services.scaler.live_signals import Window, parse


def pages(verdicts: dict, slo: dict, queue: int, placed: dict) -> tuple[str, str]:
    sched, router = CollectorRegistry(), CollectorRegistry()
    v = Counter("hfx_scheduler_verdicts", "", ["policy", "verdict", "reason"], registry=sched)
    for (verdict, reason), n in verdicts.items():
        v.labels("hfx", verdict, reason).inc(n)
    Gauge("hfx_scheduler_queue_depth", "", ["policy"], registry=sched).labels("hfx").set(queue)
    g = Gauge("hfx_instance_placed_requests", "", ["instance"], registry=sched)
    for iid, n in placed.items():
        g.labels(iid).set(n)
    s = Counter("hfx_router_slo", "", ["task_class", "result"], registry=router)
    for (cls, result), n in slo.items():
        s.labels(cls, result).inc(n)
    return generate_latest(sched).decode(), generate_latest(router).decode()


def test_rates_and_attainment_over_the_window():
    w = Window(30.0)
    w.add(parse(0.0, *pages({("admit", "placed"): 10}, {("chat", "met"): 5}, 0, {"w0": 1})))
    c = parse(20.0, *pages({("admit", "placed"): 50, ("reject", "slo_unreachable"): 10},
                           {("chat", "met"): 35, ("chat", "missed"): 10}, 3, {"w0": 4, "w1": 2}))
    w.add(c)
    assert w.arrival_rps() == (60 - 10) / 20
    att = w.attainment()["chat"]
    assert (att.met, att.total) == (30, 40)
    assert w.rejections() == {"slo_unreachable": 10}
    assert c.queue_depth == 3 and c.placed == {"w0": 4, "w1": 2}


def test_old_samples_leave_the_window_and_a_counter_reset_is_not_negative():
    w = Window(10.0)
    for t, n in ((0, 0), (5, 100), (20, 110), (25, 120)):
        w.add(parse(float(t), *pages({("admit", "placed"): n}, {}, 0, {})))
    # The oldest sample kept is the last one at or before the window start (t=5), so the
    # difference spans the whole window.
    assert w.arrival_rps() == (120 - 100) / 20
    w.add(parse(30.0, *pages({("admit", "placed"): 3}, {}, 0, {})))   # the scheduler restarted
    assert w.arrival_rps() >= 0
