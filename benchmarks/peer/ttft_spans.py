"""Where each request's TTFT went, from a cluster's local span store (issue 9).

For every `router.generate` span: how it was placed (a ticket, or a place with its queue wait
at the scheduler), when its worker span started after the router's, the engine's own time to
the first token (worker span start -> its first_token event), how much of that the engine spent
on other requests' prefills (the worker's interference attributes), and what is left between
the worker's first token and the router's TTFT (the session message, the router's loop).
Prints the slowest requests and a split of the ones over --ttft-ms; with --by-class, the same
split per task class (HFX's multi-class workload), each request counted against its own TTFT SLO
and how it ended (which SLOs it missed; refused ones have no TTFT and are counted apart).

  python -m benchmarks.peer.ttft_spans HOME/traces [--ttft-ms 200] [--since UNIX_S] [--until UNIX_S] [--by-class]

Timestamps come from different processes on one machine (one clock).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass

from services.common import spanstore, tracing


@dataclass
class Row:
    request_id: str
    start_s: float
    ttft_ms: float            # the router's (hfx.ttft_ms)
    placed_by: str            # "ticket" | "place"
    queue_wait_ms: float      # at the scheduler (place only)
    to_worker_ms: float       # router span start -> worker span start
    engine_ms: float          # worker span start -> its first_token event
    prefill_other_ms: float   # other requests' prefill before this one's first token
    after_ms: float           # worker first token -> router TTFT (session message, router loop)
    instance: str
    reason: str
    task_class: str = ""
    ttft_slo_ms: float = float("nan")
    missed: str = ""          # the router's hfx.slo.missed: "ttft", "tpot", "ttft,tpot" or ""


def rows(spans: list[spanstore.SpanRecord]) -> list[Row]:
    by_trace: dict[str, list[spanstore.SpanRecord]] = defaultdict(list)
    for s in spans:
        by_trace[s.trace_id].append(s)
    out = []
    for group in by_trace.values():
        for r in (s for s in group if s.name == tracing.SPAN_ROUTER):
            ttft = r.attributes.get(tracing.ATTR_TTFT_MS)
            if ttft is None:
                continue
            place = next((s for s in group if s.name == tracing.SPAN_PLACE), None)
            worker = next((s for s in group if s.name == tracing.SPAN_WORKER), None)
            first = worker.event(tracing.EVENT_FIRST_TOKEN) if worker is not None else None
            wait = float(place.attributes.get(tracing.ATTR_QUEUE_WAIT_MS, 0.0)) if place is not None else 0.0
            to_worker = (worker.start_unix_s - r.start_unix_s) * 1000 if worker is not None else float("nan")
            engine = (first.time_unix_s - worker.start_unix_s) * 1000 if first is not None and worker is not None \
                else float("nan")
            other = float(worker.attributes.get(tracing.ATTR_PREFILL_BEFORE_MS, 0.0)) if worker is not None else 0.0
            reason = str(place.attributes.get(tracing.ATTR_REASON, "")) if place is not None else ""
            out.append(Row(
                request_id=str(r.attributes.get(tracing.ATTR_REQUEST_ID, "")), start_s=r.start_unix_s,
                ttft_ms=float(ttft), placed_by="place" if tracing.ATTR_QUEUE_WAIT_MS in (place.attributes if place else {})
                else "ticket", queue_wait_ms=wait, to_worker_ms=to_worker, engine_ms=engine,
                prefill_other_ms=other, after_ms=float(ttft) - to_worker - engine,
                instance=str(r.attributes.get(tracing.ATTR_INSTANCE, "")), reason=reason,
                task_class=str(r.attributes.get(tracing.ATTR_TASK_CLASS, "")),
                ttft_slo_ms=float(r.attributes.get(tracing.ATTR_TTFT_SLO_MS, float("nan"))),
                missed=str(r.attributes.get(tracing.ATTR_SLO_MISSED, ""))))
    return sorted(out, key=lambda x: x.start_s)


def _fmt(r: Row) -> str:
    return (f"{r.ttft_ms:8.1f} {r.placed_by:>6} {r.queue_wait_ms:8.1f} {r.to_worker_ms:9.1f} {r.engine_ms:8.1f} "
            f"{r.prefill_other_ms:9.1f} {r.after_ms:7.1f}  {r.instance:<10} {r.reason[:70]}")


def _p(values: list[float], q: float) -> float:
    values = sorted(v for v in values if v == v)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def report(rs: list[Row], ttft_ms: float, top: int) -> str:
    lines = [f"{len(rs)} requests; {sum(r.placed_by == 'ticket' for r in rs)} on a ticket"]
    head = "    ttft placed  q-wait  to-worker   engine  prefill-oth  after  instance   reason"
    for name, get in (("ttft", lambda r: r.ttft_ms), ("queue wait", lambda r: r.queue_wait_ms),
                      ("to worker", lambda r: r.to_worker_ms), ("engine", lambda r: r.engine_ms),
                      ("after", lambda r: r.after_ms)):
        vals = [get(r) for r in rs]
        lines.append(f"  {name:<11} p50 {_p(vals, 0.5):7.1f}  p90 {_p(vals, 0.9):7.1f}  p99 {_p(vals, 0.99):7.1f}  "
                     f"max {max(vals, default=float('nan')):7.1f} ms")
    missed = [r for r in rs if r.ttft_ms > ttft_ms]
    lines.append(f"\nover {ttft_ms:g} ms: {len(missed)}")
    if missed:
        for name, get in (("queue wait", lambda r: r.queue_wait_ms), ("to worker", lambda r: r.to_worker_ms),
                          ("engine", lambda r: r.engine_ms), ("  of it others' prefill", lambda r: r.prefill_other_ms),
                          ("after", lambda r: r.after_ms)):
            lines.append(f"  mean {name:<24} {statistics.fmean(get(r) for r in missed):7.1f} ms")
    lines.append(f"\nslowest {top}:\n{head}")
    lines += [_fmt(r) for r in sorted(rs, key=lambda r: -r.ttft_ms)[:top]]
    return "\n".join(lines)


def refused(spans: list[spanstore.SpanRecord]) -> dict[str, int]:
    """Requests refused per task class (router spans with a reject verdict: no TTFT)."""
    out: dict[str, int] = defaultdict(int)
    for s in spans:
        if s.name == tracing.SPAN_ROUTER and s.attributes.get(tracing.ATTR_VERDICT) == "reject":
            out[str(s.attributes.get(tracing.ATTR_TASK_CLASS, ""))] += 1
    return dict(out)


def by_class(rs: list[Row], refusals: dict[str, int]) -> str:
    """Per task class: how the served ones ended, and where the TTFT of those over their own SLO went."""
    lines = []
    for cls in sorted({r.task_class for r in rs} | set(refusals)):
        mine = [r for r in rs if r.task_class == cls]
        ends = defaultdict(int)
        for r in mine:
            ends[r.missed or "met"] += 1
        late = [r for r in mine if r.ttft_ms > r.ttft_slo_ms]
        lines.append(f"{cls or '-'}: {len(mine)} served ({', '.join(f'{k} {v}' for k, v in sorted(ends.items()))}), "
                     f"{refusals.get(cls, 0)} refused; TTFT SLO {_p([r.ttft_slo_ms for r in mine], 0.5):.0f} ms, "
                     f"{len(late)} over it")
        for name, get in (("ttft", lambda r: r.ttft_ms), ("queue wait", lambda r: r.queue_wait_ms),
                          ("to worker", lambda r: r.to_worker_ms), ("engine", lambda r: r.engine_ms),
                          ("others' prefill", lambda r: r.prefill_other_ms), ("after", lambda r: r.after_ms)):
            both = [get(r) for r in mine]
            over = [get(r) for r in late]
            lines.append(f"  {name:<16} p50 {_p(both, 0.5):7.1f}  p90 {_p(both, 0.9):7.1f} ms"
                         + (f";  over SLO: mean {statistics.fmean(over):7.1f} ms" if over else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("traces", help="a span store directory (HOME/traces)")
    p.add_argument("--ttft-ms", type=float, default=200.0, help="count requests over this TTFT (default %(default)s)")
    p.add_argument("--since", type=float, default=None, help="only router spans starting at/after this unix time")
    p.add_argument("--until", type=float, default=None, help="only router spans starting before this unix time")
    p.add_argument("--top", type=int, default=15, help="slowest requests to list (default %(default)s)")
    p.add_argument("--by-class", action="store_true", help="split per task class, each against its own TTFT SLO")
    args = p.parse_args(argv)
    spans = [s for s in spanstore.read_spans(args.traces)
             if (args.since is None or s.start_unix_s >= args.since) and (args.until is None or s.start_unix_s < args.until)]
    rs = rows(spans)
    print(by_class(rs, refused(spans)) if args.by_class else report(rs, args.ttft_ms, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
