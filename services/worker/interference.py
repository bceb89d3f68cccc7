"""Which other requests' prefills ran alongside a request on this worker. Pure (times passed in).

The worker sees every request it runs start, produce its first token and end, whatever the
engine; a request's prefill is taken as [start, first token]. For request r, the prefills of the
others that were ahead of it (started first, or reached their first token first) and overlap its
wait for its first token delayed it (a tight TTFT behind a long prompt); those that overlap r's
decode shared its steps (each such step is
slower, so r's TPOT grows). The overlap is time in flight together, not engine time spent on the
other prefill: an engine-agnostic measure, exact for neither vLLM's nor the simulator's batching,
but it names the requests that got in the way and how long they did. It goes on the worker's
span (tracing.ATTR_PREFILL_*), where `hfx explain` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Prefill:
    prompt_tokens: int
    start_s: float
    first_s: float | None = None
    end_s: float | None = None

    def prefill_end(self, now_s: float) -> float:
        return self.first_s if self.first_s is not None else (self.end_s if self.end_s is not None else now_s)


@dataclass(frozen=True)
class Interference:
    before_first_ms: float = 0.0      # union of the others' prefills during r's wait for its first token
    before_first_tokens: int = 0      # their prompt tokens
    during_decode_ms: float = 0.0     # union of the others' prefills during r's decode
    during_decode_tokens: int = 0
    requests: tuple[str, ...] = ()    # the others, largest overlap first


class PrefillLedger:
    def __init__(self) -> None:
        self._seen: dict[str, _Prefill] = {}

    def started(self, request_id: str, prompt_tokens: int, now_s: float) -> None:
        self._prune()
        self._seen[request_id] = _Prefill(prompt_tokens, now_s)

    def first_token(self, request_id: str, now_s: float) -> None:
        entry = self._seen.get(request_id)
        if entry is not None and entry.first_s is None:
            entry.first_s = now_s

    def ended(self, request_id: str, now_s: float) -> Interference:
        """Marks r ended and returns what overlapped it."""
        entry = self._seen.get(request_id)
        if entry is None:
            return Interference()
        entry.end_s = now_s
        return self._overlaps(request_id, entry, now_s)

    def _overlaps(self, request_id: str, r: _Prefill, now_s: float) -> Interference:
        """r ended at now_s."""
        first = r.first_s if r.first_s is not None else now_s
        before, during, weight = [], [], {}
        tokens_before = tokens_during = 0
        for other_id, q in self._seen.items():
            if other_id == request_id:
                continue
            span = (q.start_s, q.prefill_end(now_s))
            # Before r's first token, only a prefill ahead of r counts: one that started first, or
            # that got its first token first (it overtook r or shared its steps). One that merely
            # waited behind r did not delay it.
            ahead = q.start_s <= r.start_s or q.prefill_end(now_s) <= first
            b = _clip(span, (r.start_s, first)) if ahead else None
            d = _clip(span, (first, now_s))
            if b:
                before.append(b)
                tokens_before += q.prompt_tokens
            if d:
                during.append(d)
                tokens_during += q.prompt_tokens
            if b or d:
                weight[other_id] = _length([b] if b else []) + _length([d] if d else [])
        return Interference(
            before_first_ms=_length(before) * 1000.0, before_first_tokens=tokens_before,
            during_decode_ms=_length(during) * 1000.0, during_decode_tokens=tokens_during,
            requests=tuple(sorted(weight, key=lambda k: -weight[k])))

    def _prune(self) -> None:
        """Drops ended requests that no live request overlaps any more."""
        live_starts = [e.start_s for e in self._seen.values() if e.end_s is None]
        horizon = min(live_starts) if live_starts else float("inf")
        for rid in [rid for rid, e in self._seen.items() if e.end_s is not None and e.end_s < horizon]:
            del self._seen[rid]

    def __len__(self) -> int:
        return len(self._seen)


def _clip(span: tuple[float, float], window: tuple[float, float]) -> tuple[float, float] | None:
    lo, hi = max(span[0], window[0]), min(span[1], window[1])
    return (lo, hi) if hi > lo else None


def _length(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of intervals."""
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total
