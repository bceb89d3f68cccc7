"""Where a request's time went, from its spans alone. Pure: spans in, an Explanation out.

The request's clock starts at its arrival (the router span's start). Its spans become labelled
intervals on that clock (queue wait in the scheduler, its own prefill, other requests' prefills
alongside, a preemption stall, KV transfer, decode); where intervals overlap the higher-priority
label counts (a resumed request's re-placement and recompute count as preemption, not as queue
and prefill). The TTFT window (arrival to the first token the client saw) and the decode window
(first to last token) are then split among the labels; what no span covers is relay time between
services. Each missed SLO's largest slice of its window is its cause; the request's largest cause
is that of the SLO it missed by the larger fraction of its target.

Worker spans carry the other requests' prefills as totals, not as intervals
(services/worker/interference.py), so they are laid at the start of the prefill or decode they
overlapped: the totals are exact to the span data, their place in the picture is not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from services.common import tracing as t
from services.common.spanstore import SpanRecord

# label -> (priority, what it means). Higher priority wins where intervals overlap.
LABELS = {
    "preemption": (6, "preempted, placed again and recomputed"),
    "kv_transfer": (5, "KV cache transfer"),
    "queue": (4, "waiting in the scheduler's queue"),
    "prefill_interference": (4, "behind or alongside other requests' prefills"),
    "decode_interference": (4, "decode steps shared with other requests' prefills"),
    "prefill": (3, "its own prefill"),
    "decode": (3, "decode"),
    "admission": (2, "admission at the router (validation, tokenisation)"),
    "relay": (0, "between services (dispatch, relay)"),
}


@dataclass(frozen=True)
class Interval:
    label: str
    start_s: float
    end_s: float
    lane: str  # where it happened, for the picture: router, scheduler, or an instance id


@dataclass(frozen=True)
class Placement:
    """One scheduler.place span: the decision and what it saw."""

    verdict: str
    instance_id: str
    policy: str
    reason: str
    queue_wait_ms: float
    predicted_ttft_ms: float | None
    slack_ms: float | None
    budget_ms: float | None
    resumed_tokens: int
    load: dict


@dataclass(frozen=True)
class Leg:
    """One worker.generate span: a run of the request on one instance."""

    instance_id: str
    start_s: float
    end_s: float
    first_token_s: float | None
    tokens: int
    preempted: bool
    prefill_interference_ms: float
    prefill_interference_tokens: int
    decode_interference_ms: float
    decode_interference_tokens: int
    interfering_requests: tuple[str, ...]


@dataclass
class Explanation:
    request_id: str
    trace_id: str
    arrival_unix_s: float
    outcome: str
    slo: dict                 # ttft_ms, tpot_ms: the targets
    measured: dict            # ttft_ms, tpot_ms, output_tokens, prompt_tokens
    met: bool
    missed: dict              # "ttft"/"tpot" -> ms over the target
    ttft_breakdown_ms: dict   # label -> ms of the TTFT window
    decode_breakdown_ms: dict  # label -> ms of the decode window
    placements: list[Placement]
    legs: list[Leg]
    preemptions: list[dict]   # instance, reason
    cause: str                # a label, or "rejected", or "" when met
    cause_text: str
    intervals: list[Interval] = field(default_factory=list)
    services: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class NotFound(LookupError):
    pass


def request_ids(spans: Iterable[SpanRecord], missed_only: bool = False) -> list[str]:
    """The requests whose router span is in `spans` (missed ones only if asked), oldest first."""
    roots = [s for s in spans if s.name == t.SPAN_ROUTER and s.attributes.get(t.ATTR_REQUEST_ID)]
    if missed_only:
        roots = [s for s in roots if s.attributes.get(t.ATTR_SLO_MET) is False]
    return [s.attributes[t.ATTR_REQUEST_ID] for s in sorted(roots, key=lambda s: s.start_unix_s)]


def explain(spans: Sequence[SpanRecord], request_id: str) -> Explanation:
    """The explanation of `request_id` from any collection of spans that holds its trace.
    Raises NotFound when its router span is not there."""
    root = next((s for s in spans if s.name == t.SPAN_ROUTER and s.attributes.get(t.ATTR_REQUEST_ID) == request_id),
                None)
    if root is None:
        raise NotFound(f"no router span of request {request_id!r} in the spans read")
    mine = [s for s in spans if s.trace_id == root.trace_id or s.attributes.get(t.ATTR_REQUEST_ID) == request_id]
    a = root.attributes
    arrival = root.start_unix_s
    slo = {"ttft_ms": float(a.get(t.ATTR_TTFT_SLO_MS, 0.0)), "tpot_ms": float(a.get(t.ATTR_TPOT_SLO_MS, 0.0))}
    tokens = int(a.get(t.ATTR_OUTPUT_TOKENS, 0))
    measured = {"ttft_ms": float(a.get(t.ATTR_TTFT_MS, 0.0)), "tpot_ms": float(a.get(t.ATTR_TPOT_MS, 0.0)),
                "output_tokens": tokens, "prompt_tokens": int(a.get(t.ATTR_PROMPT_TOKENS, 0))}
    placements = [_placement(s) for s in _named(mine, t.SPAN_PLACE)]
    legs = [_leg(s) for s in _named(mine, t.SPAN_WORKER)]
    preemptions = [{"instance_id": s.attributes.get(t.ATTR_INSTANCE, ""), "reason": s.attributes.get(t.ATTR_REASON, ""),
                    "at_ms": (s.start_unix_s - arrival) * 1000.0} for s in _named(mine, t.SPAN_PREEMPT)]
    intervals = _intervals(root, _named(mine, t.SPAN_PLACE), legs, [s for s in mine if s.name.startswith(t.SPAN_KV_PREFIX)])
    rejected = a.get(t.ATTR_VERDICT) == "reject"
    first_s = arrival + measured["ttft_ms"] / 1000.0 if tokens else None
    last_s = first_s + measured["tpot_ms"] * max(0, tokens - 1) / 1000.0 if first_s is not None else None
    ttft_end = first_s if first_s is not None else root.end_unix_s
    # Decode cannot be part of the TTFT, nor prefill of the decode (a resumed leg's recompute is
    # preemption): where a worker's leg edge and the router's clock disagree, that is relay.
    ttft_split = _split(intervals, arrival, ttft_end, exclude={"decode", "decode_interference"})
    decode_split = (_split(intervals, first_s, last_s, exclude={"prefill", "prefill_interference"})
                    if first_s is not None and last_s is not None and last_s > first_s else {})
    met = a.get(t.ATTR_SLO_MET) is True
    missed = {} if met else t.slo_misses(slo["ttft_ms"], slo["tpot_ms"], measured["ttft_ms"], measured["tpot_ms"],
                                         tokens)
    exp = Explanation(
        request_id=request_id, trace_id=root.trace_id, arrival_unix_s=arrival,
        outcome="REJECTED" if rejected else str(a.get(t.ATTR_OUTCOME, "")), slo=slo, measured=measured, met=met,
        missed=missed, ttft_breakdown_ms=ttft_split, decode_breakdown_ms=decode_split, placements=placements,
        legs=legs, preemptions=preemptions, cause="", cause_text="", intervals=intervals,
        services=sorted({s.service for s in mine if s.service}))
    exp.cause, exp.cause_text = _cause(exp, a)
    return exp


def _named(spans: Iterable[SpanRecord], name: str) -> list[SpanRecord]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_unix_s)


def _num(attrs: dict, key: str) -> float | None:
    value = attrs.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _placement(s: SpanRecord) -> Placement:
    a = s.attributes
    load = {k.removeprefix("hfx.load."): a[k] for k in (t.ATTR_LOAD_RUNNING, t.ATTR_LOAD_WAITING, t.ATTR_LOAD_KV_USAGE,
                                                          t.ATTR_LOAD_AGE_MS) if k in a}
    return Placement(
        verdict=str(a.get(t.ATTR_VERDICT, "")), instance_id=str(a.get(t.ATTR_INSTANCE, "")),
        policy=str(a.get(t.ATTR_POLICY, "")), reason=str(a.get(t.ATTR_REASON, "")),
        queue_wait_ms=_num(a, t.ATTR_QUEUE_WAIT_MS) or s.duration_ms, predicted_ttft_ms=_num(a, t.ATTR_PREDICTED_TTFT_MS),
        slack_ms=_num(a, t.ATTR_SLACK_MS), budget_ms=_num(a, t.ATTR_BUDGET_MS),
        resumed_tokens=int(a.get(t.ATTR_RESUMED_TOKENS, 0)), load=load)


def _leg(s: SpanRecord) -> Leg:
    a = s.attributes
    first = s.event(t.EVENT_FIRST_TOKEN)
    return Leg(
        instance_id=str(a.get(t.ATTR_INSTANCE, "")), start_s=s.start_unix_s, end_s=s.end_unix_s,
        first_token_s=first.time_unix_s if first else None, tokens=int(a.get(t.ATTR_OUTPUT_TOKENS, 0)),
        preempted=s.event(t.EVENT_PREEMPTED) is not None,
        prefill_interference_ms=_num(a, t.ATTR_PREFILL_BEFORE_MS) or 0.0,
        prefill_interference_tokens=int(a.get(t.ATTR_PREFILL_BEFORE_TOKENS, 0)),
        decode_interference_ms=_num(a, t.ATTR_PREFILL_DURING_MS) or 0.0,
        decode_interference_tokens=int(a.get(t.ATTR_PREFILL_DURING_TOKENS, 0)),
        interfering_requests=tuple(a.get(t.ATTR_PREFILL_REQUESTS, ()) or ()))


def _intervals(root: SpanRecord, places: list[SpanRecord], legs: list[Leg], kv: list[SpanRecord]) -> list[Interval]:
    out = []
    if places:
        out.append(Interval("admission", root.start_unix_s, places[0].start_unix_s, "router"))
    for p in places:
        resumed = int(p.attributes.get(t.ATTR_RESUMED_TOKENS, 0)) > 0
        out.append(Interval("preemption" if resumed else "queue", p.start_unix_s, p.end_unix_s, "scheduler"))
    for i, leg in enumerate(legs):
        first = leg.first_token_s if leg.first_token_s is not None else leg.end_s
        pre_end = min(first, leg.start_s + leg.prefill_interference_ms / 1000.0)
        out.append(Interval("prefill_interference", leg.start_s, pre_end, leg.instance_id))
        out.append(Interval("prefill", leg.start_s, first, leg.instance_id))
        out.append(Interval("decode_interference", first, min(leg.end_s, first + leg.decode_interference_ms / 1000.0),
                            leg.instance_id))
        out.append(Interval("decode", first, leg.end_s, leg.instance_id))
        if leg.preempted:
            # The stall: from this leg's end to the next leg's first token (re-placement, recompute).
            nxt = legs[i + 1] if i + 1 < len(legs) else None
            resumed_at = (nxt.first_token_s or nxt.end_s) if nxt else root.end_unix_s
            out.append(Interval("preemption", leg.end_s, resumed_at, leg.instance_id))
    out.extend(Interval("kv_transfer", s.start_unix_s, s.end_unix_s, s.attributes.get(t.ATTR_INSTANCE, "kv"))
               for s in kv)
    return [iv for iv in out if iv.end_s > iv.start_s]


def _split(intervals: list[Interval], lo: float, hi: float, exclude: set[str]) -> dict[str, float]:
    """ms of [lo, hi] under each label but `exclude` (highest priority wins); the rest is relay."""
    if hi is None or lo is None or hi <= lo:
        return {}
    intervals = [iv for iv in intervals if iv.label not in exclude]
    cuts = sorted({lo, hi, *(x for iv in intervals for x in (iv.start_s, iv.end_s) if lo < x < hi)})
    out: dict[str, float] = {}
    for a, b in zip(cuts, cuts[1:]):
        mid = (a + b) / 2
        covering = [iv.label for iv in intervals if iv.start_s <= mid < iv.end_s]
        label = max(covering, key=lambda k: LABELS[k][0]) if covering else "relay"
        out[label] = out.get(label, 0.0) + (b - a) * 1000.0
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def _cause(exp: Explanation, root_attrs: dict) -> tuple[str, str]:
    if exp.outcome == "REJECTED":
        return "rejected", f"rejected at admission: {root_attrs.get(t.ATTR_REASON, '')}"
    if exp.met:
        return "", "met its SLOs"
    if not exp.missed:
        return exp.outcome.lower() or "unfinished", f"did not finish ({exp.outcome or 'no outcome recorded'})"
    worst = max(exp.missed, key=lambda k: exp.missed[k] / max(exp.slo[f"{k}_ms"], 1e-9))
    split = exp.ttft_breakdown_ms if worst == "ttft" else exp.decode_breakdown_ms
    if not split:
        return "", f"missed {worst.upper()}; its spans hold no breakdown"
    label = max(split, key=lambda k: split[k])
    return label, f"{worst.upper()} missed by {exp.missed[worst]:.0f} ms; largest cause: {describe(exp, label, split[label])}"


def describe(exp: Explanation, label: str, ms: float) -> str:
    """One line naming a cause with its numbers."""
    first = exp.placements[0] if exp.placements else None
    if label == "queue" and first:
        return f"{ms:.0f} ms waiting in the scheduler's queue (policy {first.policy}: {first.reason})"
    if label == "prefill_interference":
        others = sorted({r for leg in exp.legs for r in leg.interfering_requests})
        tokens = sum(leg.prefill_interference_tokens for leg in exp.legs)
        return f"{ms:.0f} ms behind or alongside the prefill of {', '.join(others) or 'other requests'} ({tokens} prompt tokens)"
    if label == "decode_interference":
        others = sorted({r for leg in exp.legs for r in leg.interfering_requests})
        return f"{ms:.0f} ms of decode sharing steps with the prefill of {', '.join(others) or 'other requests'}"
    if label == "preemption":
        how = "; ".join(f"on {p['instance_id']}: {p['reason']}" for p in exp.preemptions) or "by its worker"
        return f"{ms:.0f} ms stalled by preemption ({how}) until it resumed"
    if label == "prefill":
        return f"{ms:.0f} ms in its own prefill ({exp.measured['prompt_tokens']} prompt tokens)"
    if label == "decode":
        return f"{ms:.0f} ms of decode steps ({exp.measured['output_tokens']} tokens)"
    return f"{ms:.0f} ms {LABELS.get(label, (0, label))[1]}"
