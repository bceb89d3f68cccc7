"""benchmarks.peer.placement: the split and the decode crowding read from worker.generate spans."""

from __future__ import annotations

from benchmarks.peer.placement import legs, main, summarise
from services.common import tracing
from services.common.spanstore import SpanEvent, SpanRecord


def _span(rid: str, instance: str, start: float, first: float | None, end: float, name: str = tracing.SPAN_WORKER):
    events = () if first is None else (SpanEvent(tracing.EVENT_FIRST_TOKEN, first),)
    return SpanRecord("t" + rid, "s" + rid, "", name, "hfx-worker", start, end,
                      {tracing.ATTR_INSTANCE: instance}, events)


def test_split_and_running_beside_each_decode():
    spans = [
        _span("a", "w0", 0.0, 1.0, 3.0),    # decodes 1-3; b runs beside it 1-2: mean 1.5
        _span("b", "w0", 0.5, 1.5, 2.0),    # decodes 1.5-2 with a running: 2
        _span("c", "w1", 0.0, 0.5, 1.5),    # alone: 1
        _span("d", "w1", 5.0, None, 5.1),   # never streamed: not a leg
        _span("e", "w0", 0.0, 0.1, 9.0, name=tracing.SPAN_ROUTER),   # not a worker span
    ]
    found = legs(spans)
    assert [leg.instance for leg in found] == ["w0", "w0", "w1"]
    row = summarise(found)
    assert row["requests"] == 3
    assert row["instances"]["w0"] == {"requests": 2, "mean_running_while_decoding": (1.5 + 2.0) / 2}
    assert row["instances"]["w1"]["mean_running_while_decoding"] == 1.0
    assert abs(row["mean_running_while_decoding"] - (1.5 + 2.0 + 1.0) / 3) < 1e-12


def test_a_missing_directory_is_a_usage_error(tmp_path, capsys):
    try:
        main([str(tmp_path / "nope")])
    except SystemExit as exit_:
        assert exit_.code == 2
    else:
        raise AssertionError("expected a usage error")
    assert "not a directory" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 0
    assert "0 requests" in capsys.readouterr().out


def test_until_keeps_only_legs_started_before_it():
    spans = [_span("a", "w0", 0.0, 1.0, 3.0), _span("b", "w1", 4.0, 4.5, 5.0)]
    assert [leg.instance for leg in legs(spans, until_unix_s=3.5)] == ["w0"]
