"""hfx explain's analysis over hand-built spans: each scenario's numbers are worked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common import tracing as t
from services.explain import analysis, render
from services.explain.sources import SourceError, parse_jaeger
from tests.unit.explain_helpers import place, router, span, worker

DATA = Path(__file__).parent / "data"


def test_tight_ttft_behind_a_long_prefill_names_the_other_request():
    # TTFT 1000 ms of 300: 5 ms admission, 5 ms queue, then 988 ms on w0 before the first token,
    # 950 of them alongside r-long's prefill.
    spans = [router("r-b", 1.5, ttft_ms=1000.0, tpot_ms=10.0, tokens=11), place("r-b", 0.005, 0.010),
             worker("r-b", 0.012, 1.1, first=1.0, tokens=11, before_ms=950.0, others=["r-long"])]
    exp = analysis.explain(spans, "r-b")
    assert exp.missed == {"ttft": 700.0} and not exp.met
    assert exp.cause == "prefill_interference" and "r-long" in exp.cause_text and "1900 prompt tokens" in exp.cause_text
    split = exp.ttft_breakdown_ms
    assert split["prefill_interference"] == pytest.approx(950.0)
    assert split["prefill"] == pytest.approx(38.0)        # 988 - 950
    assert split["queue"] == pytest.approx(5.0) and split["admission"] == pytest.approx(5.0)
    assert split["relay"] == pytest.approx(2.0)           # dispatch 10->12 ms; first token at 1000 ms exactly
    assert sum(split.values()) == pytest.approx(1000.0)
    assert exp.placements[0].budget_ms == 40.0 and exp.placements[0].load == {"running_requests": 1}


def test_long_queue_wait_is_the_cause():
    spans = [router("r-q", 1.0, ttft_ms=850.0, tpot_ms=5.0, tokens=4), place("r-q", 0.002, 0.802),
             worker("r-q", 0.805, 0.9, first=0.85, tokens=4)]
    exp = analysis.explain(spans, "r-q")
    assert exp.cause == "queue" and exp.ttft_breakdown_ms["queue"] == pytest.approx(800.0)
    assert "policy hfx" in exp.cause_text and "TTFT missed by 550 ms" in exp.cause_text


def test_preemption_stall_is_the_cause_of_a_tpot_miss():
    # 60 tokens: 20 on w0 (first at 20 ms), preempted at 200 ms, re-placed 210..1200 ms, resumed on
    # w1 (first token there at 1250 ms), done at 1500 ms. TPOT = (1500 - 20) / 59 = 25.08 ms > 10.
    tpot = (1500.0 - 20.0) / 59
    spans = [router("r-p", 1.6, ttft_ms=20.0, tpot_ms=tpot, tokens=60, slo=(300.0, 10.0)),
             place("r-p", 0.001, 0.002), worker("r-p", 0.003, 0.2, first=0.02, tokens=20, preempted=True),
             span(t.SPAN_PREEMPT, 0.199, 0.201, **{t.ATTR_REQUEST_ID: "r-p", t.ATTR_INSTANCE: "w0",
                                                 t.ATTR_REASON: "budget -80 ms < -50 ms"}),
             place("r-p", 0.21, 1.2, instance="w1", resumed=20),
             worker("r-p", 1.21, 1.5, first=1.25, tokens=40, instance="w1")]
    exp = analysis.explain(spans, "r-p")
    assert set(exp.missed) == {"tpot"}
    assert exp.cause == "preemption" and "budget -80 ms" in exp.cause_text
    decode = exp.decode_breakdown_ms
    assert decode["preemption"] == pytest.approx(1050.0)   # 200 ms -> 1250 ms
    assert decode["decode"] == pytest.approx(180.0 + 250.0)  # 20..200 on w0, 1250..1500 on w1
    assert [p.resumed_tokens for p in exp.placements] == [0, 20]
    assert exp.preemptions[0]["instance_id"] == "w0"


def test_decode_sharing_steps_with_prefills_is_the_cause_of_a_tpot_miss():
    spans = [router("r-d", 2.1, ttft_ms=50.0, tpot_ms=40.0, tokens=51, slo=(300.0, 20.0)),
             place("r-d", 0.001, 0.002), worker("r-d", 0.003, 2.05, first=0.05, tokens=51, during_ms=1500.0,
                                                  others=["r-x", "r-y"])]
    exp = analysis.explain(spans, "r-d")
    assert exp.cause == "decode_interference" and "r-x, r-y" in exp.cause_text
    assert exp.decode_breakdown_ms["decode_interference"] == pytest.approx(1500.0)


def test_kv_transfer_spans_count_where_they_fall():
    spans = [router("r-k", 1.0, ttft_ms=700.0, tpot_ms=5.0, tokens=3), place("r-k", 0.001, 0.002),
             worker("r-k", 0.003, 0.05, first=0.04, tokens=1, instance="p0"),
             span("kv.transfer", 0.05, 0.65, **{t.ATTR_REQUEST_ID: "r-k", t.ATTR_INSTANCE: "p0->d0"}),
             worker("r-k", 0.65, 0.8, first=0.7, tokens=2, instance="d0")]
    exp = analysis.explain(spans, "r-k")
    assert exp.cause == "kv_transfer" and exp.ttft_breakdown_ms["kv_transfer"] == pytest.approx(600.0)


def test_met_and_rejected_requests():
    met = analysis.explain([router("r-m", 0.2, ttft_ms=20.0, tpot_ms=5.0, tokens=10), place("r-m", 0.001, 0.002),
                            worker("r-m", 0.003, 0.1, first=0.02, tokens=10)], "r-m")
    assert met.met and met.cause == "" and not met.missed
    rej = router("r-r", 0.01, ttft_ms=0.0, tpot_ms=0.0, tokens=0, met=False,
                 **{t.ATTR_VERDICT: "reject", t.ATTR_REASON: "queue full (64 waiting)"})
    exp = analysis.explain([rej], "r-r")
    assert exp.cause == "rejected" and "queue full" in exp.cause_text and exp.outcome == "REJECTED"


def test_request_ids_and_not_found():
    a = router("r-1", 0.5, ttft_ms=900.0, tpot_ms=5.0, tokens=3)
    b = router("r-2", 0.5, ttft_ms=20.0, tpot_ms=5.0, tokens=3, trace="cd" * 16)
    assert sorted(analysis.request_ids([b, a])) == ["r-1", "r-2"]
    assert analysis.request_ids([a, b], missed_only=True) == ["r-1"]
    with pytest.raises(analysis.NotFound):
        analysis.explain([a], "r-3")


def test_text_and_json_say_the_same():
    spans = [router("r-b", 1.5, ttft_ms=1000.0, tpot_ms=10.0, tokens=11), place("r-b", 0.005, 0.010),
             worker("r-b", 0.012, 1.1, first=1.0, tokens=11, before_ms=950.0, others=["r-long"])]
    exp = analysis.explain(spans, "r-b")
    out = render.text(exp)
    assert "MISSED TTFT by 700 ms" in out and "prefill_interference" in out and "r-long" in out
    assert "budget 40 ms" in out
    doc = json.loads(json.dumps(exp.to_dict()))
    assert doc["cause"] == "prefill_interference" and doc["missed"] == {"ttft": 700.0}


def test_waterfall_png(tmp_path):
    from services.explain.plot import waterfall

    spans = [router("r-b", 1.5, ttft_ms=1000.0, tpot_ms=10.0, tokens=11), place("r-b", 0.005, 0.010),
             worker("r-b", 0.012, 1.1, first=1.0, tokens=11, before_ms=950.0, others=["r-long"])]
    path = waterfall(analysis.explain(spans, "r-b"), tmp_path / "w.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_jaeger_json_is_read_into_the_same_spans():
    """tests/unit/data/jaeger_trace.json is written after Jaeger's /api/traces format (v1 query
    API, as its UI reads it): microsecond times, typed tags, logs with an `event` field."""
    spans = parse_jaeger(json.loads((DATA / "jaeger_trace.json").read_text()))
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {t.SPAN_ROUTER, t.SPAN_PLACE, t.SPAN_WORKER, t.SPAN_COMPLETE}
    root, work = by_name[t.SPAN_ROUTER], by_name[t.SPAN_WORKER]
    assert root.service == "hfx-router" and work.service == "hfx-worker"
    assert work.parent_id == root.span_id and root.parent_id == ""
    assert root.attributes[t.ATTR_SLO_MET] is False and root.attributes[t.ATTR_OUTPUT_TOKENS] == 11
    assert work.attributes[t.ATTR_PREFILL_REQUESTS] == ["r-long"]
    assert work.event(t.EVENT_FIRST_TOKEN).time_unix_s == pytest.approx(1764720000.0 + 1.0)
    exp = analysis.explain(spans, "r-b")
    assert exp.cause == "prefill_interference" and exp.missed == {"ttft": pytest.approx(700.0)}


def test_jaeger_json_of_another_shape_is_an_error():
    with pytest.raises(SourceError):
        parse_jaeger({"data": [{"spans": [{"traceID": "x"}]}]})
