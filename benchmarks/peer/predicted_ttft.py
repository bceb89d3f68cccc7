"""The scheduler's predicted TTFT against what happened, per task class, from a local span store.

For every request admitted with a prediction (a `scheduler.place` span whose verdict is admit: its
`hfx.predicted_ttft_ms`, or the "predicted TTFT N ms" of a ticket's reason), the time from the
end of that place span to the first token (the router's `router.generate` span start plus its
`hfx.ttft_ms`): the part of the TTFT the prediction is about (the queue wait before placement is
not). Whether the scheduler's online-refined latency models read the engines right under load
(issue 9, tenth session): a model that drifted up for nothing predicts more than happens.

  python -m benchmarks.peer.predicted_ttft HOME/traces [--since UNIX_S] [--until UNIX_S]

Timestamps come from different processes on one machine (one clock).
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict
from pathlib import Path

from services.common import spanstore, tracing

_TICKET = re.compile(r"predicted TTFT (\d+(?:\.\d+)?) ms")


def pairs(spans: list[spanstore.SpanRecord]) -> dict[str, list[tuple[float, float]]]:
    """task class -> [(predicted TTFT ms, placement end to first token ms)], admitted requests only."""
    placed: dict[str, tuple[float, float]] = {}
    for s in spans:
        a = s.attributes
        if s.name != tracing.SPAN_PLACE or a.get(tracing.ATTR_VERDICT) != "admit":
            continue
        predicted = a.get(tracing.ATTR_PREDICTED_TTFT_MS)
        if predicted is None:   # a ticket's redemption: the prediction is in its reason
            m = _TICKET.search(str(a.get(tracing.ATTR_REASON, "")))
            predicted = m.group(1) if m else None
        if predicted is not None:
            placed[str(a.get(tracing.ATTR_REQUEST_ID, ""))] = (float(predicted), s.end_unix_s)
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in spans:
        a = s.attributes
        hit = placed.get(str(a.get(tracing.ATTR_REQUEST_ID, "")))
        if s.name != tracing.SPAN_ROUTER or hit is None or a.get(tracing.ATTR_TTFT_MS) is None:
            continue
        predicted, placed_s = hit
        first_token_s = s.start_unix_s + float(a[tracing.ATTR_TTFT_MS]) / 1000.0
        out[str(a.get(tracing.ATTR_TASK_CLASS, ""))].append((predicted, (first_token_s - placed_s) * 1000.0))
    return out


def report(by_class: dict[str, list[tuple[float, float]]]) -> str:
    lines = ["class       requests  predicted p50 ms  actual p50 ms  actual/predicted p50  actual <= predicted"]
    for task_class, xs in sorted(by_class.items()):
        ratios = [actual / max(predicted, 1e-3) for predicted, actual in xs]
        lines.append(f"{task_class:10s} {len(xs):9d} {statistics.median(p for p, _ in xs):17.1f} "
                     f"{statistics.median(a for _, a in xs):14.1f} {statistics.median(ratios):21.2f} "
                     f"{sum(a <= p for p, a in xs) / len(xs):19.0%}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("traces", type=Path, help="a span store directory (HOME/traces)")
    p.add_argument("--since", type=float, default=0.0, help="only router spans starting at/after this unix time")
    p.add_argument("--until", type=float, default=float("inf"), help="only router spans starting before this unix time")
    args = p.parse_args()
    if not args.traces.is_dir():
        p.error(f"{args.traces} is not a directory: give a cluster's span store, HOME/traces")
    spans = [s for s in spanstore.read_spans(args.traces)
             if s.name != tracing.SPAN_ROUTER or args.since <= s.start_unix_s < args.until]
    if not spans:
        p.error(f"no spans in {args.traces}: is it a span store (HOME/traces) of a cluster that served requests?")
    print(report(pairs(spans)))


if __name__ == "__main__":
    main()
