"""benchmarks/peer/predicted_ttft.py: the scheduler's predicted TTFT against placement-to-first-token."""

from __future__ import annotations

import pytest

from benchmarks.peer import predicted_ttft
from services.common import tracing
from services.common.spanstore import SpanRecord


def _span(name: str, start: float, end: float, attrs: dict) -> SpanRecord:
    return SpanRecord(trace_id="t", span_id=f"{name}-{attrs.get(tracing.ATTR_REQUEST_ID)}", parent_id="", name=name,
                      service="x", start_unix_s=start, end_unix_s=end, attributes=attrs, events=())


def test_the_prediction_is_held_against_the_time_from_placement_to_the_first_token():
    spans = [
        # placed after 100 ms in the queue, predicted 30 ms: first token 40 ms after placement
        _span(tracing.SPAN_ROUTER, 10.000, 11.0, {tracing.ATTR_REQUEST_ID: "a", tracing.ATTR_TTFT_MS: 140.0,
                                                  tracing.ATTR_TASK_CLASS: "code"}),
        _span(tracing.SPAN_PLACE, 10.001, 10.100, {tracing.ATTR_REQUEST_ID: "a", tracing.ATTR_VERDICT: "admit",
                                                   tracing.ATTR_PREDICTED_TTFT_MS: 30.0}),
        # a ticket: the prediction is in its reason
        _span(tracing.SPAN_ROUTER, 20.000, 21.0, {tracing.ATTR_REQUEST_ID: "b", tracing.ATTR_TTFT_MS: 12.0,
                                                  tracing.ATTR_TASK_CLASS: "code"}),
        _span(tracing.SPAN_PLACE, 20.000, 20.002, {tracing.ATTR_REQUEST_ID: "b", tracing.ATTR_VERDICT: "admit",
                                                   tracing.ATTR_REASON: "ticket: ... (predicted TTFT 17 ms, budget inf ms)"}),
        # refused: no prediction to hold
        _span(tracing.SPAN_PLACE, 30.0, 30.0, {tracing.ATTR_REQUEST_ID: "c", tracing.ATTR_VERDICT: "reject"}),
        _span(tracing.SPAN_ROUTER, 30.0, 30.1, {tracing.ATTR_REQUEST_ID: "c", tracing.ATTR_TASK_CLASS: "code"}),
    ]
    (a, b), = predicted_ttft.pairs(spans).values()
    assert a[0] == 30.0 and round(a[1], 6) == 40.0
    assert b[0] == 17.0 and round(b[1], 6) == 10.0
    assert "50%" in predicted_ttft.report(predicted_ttft.pairs(spans))


def test_a_path_that_holds_no_span_store_is_a_clear_error_not_an_empty_table(tmp_path, monkeypatch, capsys):
    for path in (tmp_path / "missing", tmp_path):
        monkeypatch.setattr("sys.argv", ["predicted_ttft", str(path)])
        with pytest.raises(SystemExit) as ended:
            predicted_ttft.main()
        assert ended.value.code == 2
        assert str(path) in capsys.readouterr().err
