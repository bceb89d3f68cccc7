from services.common import convert
from services.common.domain import Decision, InstanceLoad, Role, Sampling, Slo, StepInFlight, Verdict
from services.common.pb.hfx.v1 import scheduler_pb2
from tests.unit.helpers import make_spec


def test_spec_round_trips():
    spec = make_spec(tenant="acme", priority=3, task_class="code", arrival_s=12.5)
    assert convert.spec_from_pb(convert.spec_to_pb(spec)) == spec


def test_sampling_round_trips_with_and_without_seed():
    for s in (Sampling(max_tokens=5, temperature=0.75, top_p=0.5, seed=7, stop=("x",), ignore_eos=True),
              Sampling(max_tokens=5)):
        assert convert.sampling_from_pb(convert.sampling_to_pb(s)) == s


def test_load_round_trips():
    load = InstanceLoad(running_requests=3, waiting_requests=1, kv_usage=0.25, kv_capacity_tokens=4096,
                        recent_step_ms=(2.0, 3.5), reported_s=99.0, draining=True)
    assert convert.load_from_pb(convert.load_to_pb("i0", load)) == load


def test_the_step_in_flight_round_trips_and_between_steps_stays_none():
    running = InstanceLoad(reported_s=99.0, reports_step=True, step_in_flight=StepInFlight(98.995, 480, 3, 1200))
    assert convert.load_from_pb(convert.load_to_pb("i0", running)) == running
    between = InstanceLoad(reported_s=99.0, reports_step=True)
    assert convert.load_from_pb(convert.load_to_pb("i0", between)).step_in_flight is None
    # An engine that does not report its step: not "between steps".
    assert not convert.load_from_pb(convert.load_to_pb("i0", InstanceLoad(reported_s=99.0))).reports_step


def test_enums_round_trip():
    for role in Role:
        assert convert.role_from_pb(convert.role_to_pb(role)) is role
    for verdict in Verdict:
        assert convert.verdict_from_pb(convert.verdict_to_pb(verdict)) is verdict


def test_placement_carries_the_reason():
    d = Decision("r1", Verdict.REJECT, "queue full", retry_after_ms=500)
    pb = convert.decision_to_placement(d, "", "hfx")
    assert pb.verdict == scheduler_pb2.VERDICT_REJECT and pb.reason == "queue full" and pb.retry_after_ms == 500
    assert convert.slo_from_pb(convert.slo_to_pb(Slo(1, 2))) == Slo(1, 2)
