"""The scheduler's running set against the workers' lists (services/scheduler/inflight.py)."""

from __future__ import annotations

from services.common.domain import ReportedRun, RunningRequest, Slo
from services.scheduler.inflight import reconcile
from tests.unit.helpers import make_spec


def _reported(rid: str, output: int = 0, started: float = 10.0) -> ReportedRun:
    return ReportedRun(rid, prompt_tokens=100, max_tokens=50, output_tokens=output, slo=Slo(500, 40), priority=2,
                       started_s=started)


def test_a_restarted_scheduler_adopts_what_the_worker_runs_resumed_after_its_tokens():
    adopt, gone = reconcile({}, [_reported("a"), _reported("b", output=20)], reported_s=12.0)
    assert gone == []
    by_id = {r.spec.request_id: r for r in adopt}
    assert by_id["a"].spec.prompt_tokens == 100 and by_id["a"].spec.max_tokens == 50
    assert by_id["a"].spec.resumed_tokens == 0 and by_id["a"].placed_s == 10.0
    b = by_id["b"].spec       # 20 tokens streamed: they are prompt now, and 30 are left
    assert (b.prompt_tokens, b.max_tokens, b.resumed_tokens, b.priority) == (120, 30, 20, 2)
    assert b.slo.tpot_ms == 40 and b.slo.ttft_ms == 500 + 20 * 40


def test_a_counted_request_no_worker_runs_is_let_go_after_the_grace_only():
    known = {"old": RunningRequest(make_spec(request_id="old"), placed_s=1.0),
             "new": RunningRequest(make_spec(request_id="new"), placed_s=11.5),
             "kept": RunningRequest(make_spec(request_id="kept"), placed_s=1.0)}
    adopt, gone = reconcile(known, [_reported("kept")], reported_s=12.0, grace_s=3.0)
    assert adopt == [] and gone == ["old"]   # "new" may not have reached its worker yet


def test_an_adopted_request_goes_as_soon_as_no_report_lists_it_and_one_without_slo_protects_nothing():
    direct = ReportedRun("direct", prompt_tokens=8, max_tokens=2, output_tokens=0, slo=Slo(0, 0), priority=0,
                         started_s=11.99)
    (adopted,), _ = reconcile({}, [direct], reported_s=12.0)
    assert adopted.spec.slo.ttft_ms == float("inf") and adopted.spec.slo.tpot_ms == float("inf")
    known = {"direct": adopted}
    assert reconcile(known, [], reported_s=12.2, adopted={"direct"}) == ([], ["direct"])
    assert reconcile(known, [], reported_s=12.2) == ([], [])   # a placement of ours would wait out the grace
