"""Per-instance budgets from the step-time model: the arithmetic behind the HFX fit test.

Notation (docs/SCHEDULING.md): model step_ms = c0 + c1*p + c2*n + c3*kv; n decode sequences;
C' = max(1, chunk_tokens - n) prefill tokens per step (decodes share the step's token budget);
chunk_tokens is the instance's own (base.chunk_tokens_of).
- steady step s = c0 + c2*n + c3*kv.
- a prefill of L tokens on an instance with B tokens of prefill queued ahead (FIFO) yields its
  first token after  ttft = ceil((B+L)/C') * s + c1*(B+L)  ms.
- running prefills slow every decoding request by exactly c1 * L (the prefill share of steps).
- bank_r = (O_r - 1) * (TPOT_r - s) - c1 * (prompt tokens placed after r): the extra delay r can
  still absorb and keep its mean TPOT within its SLO. The instance budget is min_r bank_r; each
  protected r's own (bank_r, O_r - 1) is kept too, because a newcomer that decodes x steps slows
  r for min(x, O_r - 1) of them (fit test (2)): charging the shortest request's bank for the
  longest one's remaining steps refused newcomers that harmed nobody.
Legs of P/D requests (RunningRequest.role): a PREFILL leg prefills L tokens and holds L+1 tokens
of KV until it is handed off, but never decodes here (no TPOT to protect, not in n); a DECODE leg
decodes and holds L+O of KV but prefills nothing here (its prompt's KV arrives from P).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from services.common.domain import InstanceView, LatencyModel, RequestSpec, Role, RunningRequest
from services.scheduler.policy.base import PolicyConfig, chunk_tokens_of, kv_capacity_of, latency_model_of
from services.scheduler.policy.estimate import OutputLengthEstimator


def chunk_tokens_for(chunk_tokens: int, decode_seqs: int) -> int:
    return max(1, chunk_tokens - decode_seqs)


def steady_step_ms(model: LatencyModel, decode_seqs: int, kv_tokens: float) -> float:
    return model.c0_ms + model.c2_ms_per_decode_seq * decode_seqs + model.c3_ms_per_kv_token * kv_tokens


def prefill_ms(model: LatencyModel, prompt_tokens: float, chunk_tokens: int,
               decode_seqs: int = 0, kv_tokens: float = 0.0) -> float:
    """Time until the last chunk of `prompt_tokens` (queued ones included) completes."""
    per_step = chunk_tokens_for(chunk_tokens, decode_seqs)
    steps = math.ceil(prompt_tokens / per_step) if prompt_tokens > 0 else 0
    return steps * steady_step_ms(model, decode_seqs, kv_tokens) + model.c1_ms_per_prefill_token * prompt_tokens


@dataclass
class InstanceBudget:
    """What the fit test needs of one instance; mutated in place as a schedule pass places."""

    instance_id: str
    model: LatencyModel
    kv_capacity_tokens: int
    chunk_tokens: int                     # the engine's token budget per step (chunk_tokens_of)
    decode_seqs: int = 0
    kv_mean_tokens: float = 0.0          # sum(L + O/2): average KV the running set holds
    kv_peak_tokens: float = 0.0          # sum(L + O): KV if every request runs to its estimate
    min_tpot_ms: float = math.inf
    backlog_anchor_tokens: float = -math.inf  # prefill queued at now_s = A - rate * now_s
    prefill_rate_tps: float = 1.0
    bank_ms: float = math.inf
    # Per protected decoding request, in one order: its bank (ms) and its remaining decode steps.
    # Replaced, never mutated, by add(): copies of a budget share these tuples.
    banks_ms: tuple[float, ...] = ()
    remaining: tuple[float, ...] = ()
    tpots_ms: tuple[float, ...] = ()      # and its TPOT SLO (lastchance.py weighs a miss by it)
    victim_id: str = ""                   # the running request to preempt first
    victim_bank_ms: float = 0.0

    def copy(self) -> "InstanceBudget":
        """A shallow copy, as copy.copy makes (the tuples are shared: add() replaces them), at
        about a fifth of its cost: every pass copies every instance's budget (Hfx._budget), and
        copy.copy's generic path was ~12% of the policy's time in the simulator (issue 9,
        thirteenth session)."""
        twin = object.__new__(InstanceBudget)
        twin.__dict__.update(self.__dict__)
        return twin

    def steady_ms(self) -> float:
        return steady_step_ms(self.model, self.decode_seqs, self.kv_mean_tokens)

    def backlog_tokens(self, now_s: float) -> float:
        return max(0.0, self.backlog_anchor_tokens - self.prefill_rate_tps * now_s)

    def add(self, spec: RequestSpec, output_tokens: int, now_s: float, protected: bool = True,
            role: Role = Role.COLOCATED) -> None:
        """Account for a request (or one leg of it) just placed here (it queues last for prefill)."""
        s_old = self.steady_ms()
        prefill, output_tokens = leg_shape(role, spec.prompt_tokens, output_tokens)
        backlog = self.backlog_tokens(now_s) + prefill
        if role is not Role.PREFILL:
            self.decode_seqs += 1
        self.kv_mean_tokens += spec.prompt_tokens + output_tokens / 2
        self.kv_peak_tokens += spec.prompt_tokens + output_tokens
        s_new = self.steady_ms()
        # Each running request is slowed for the steps this one decodes beside it (at most its own).
        interference_ms = self.model.c1_ms_per_prefill_token * prefill
        self.banks_ms = tuple(b - min(float(output_tokens), rem) * (s_new - s_old) - interference_ms
                              for b, rem in zip(self.banks_ms, self.remaining))
        if protected and role is not Role.PREFILL and keeps_tpot(spec, output_tokens):
            self.min_tpot_ms = min(self.min_tpot_ms, spec.slo.tpot_ms)
            self.banks_ms += ((output_tokens - 1) * (spec.slo.tpot_ms - s_new),)
            self.remaining += (float(output_tokens - 1),)
            self.tpots_ms += (spec.slo.tpot_ms,)
        self.bank_ms = min(self.banks_ms, default=math.inf)
        self.backlog_anchor_tokens = backlog + self.prefill_rate_tps * now_s


def keeps_tpot(spec: RequestSpec, output_tokens: int) -> bool:
    """Whether a decoding request has a TPOT for newcomers to keep: decode steps left (output
    beyond its first token) and a TPOT SLO. One with neither (a single token left; no SLO: sent to
    a worker directly and adopted from its load report) is load, never a deadline: its bank
    would be 0 (or 0 x inf = NaN) and fail fit test (2) for every newcomer until it ended (issue
    9, eleventh session: each direct probe a load report caught held the router's probes 40-210 ms)."""
    return output_tokens > 1 and math.isfinite(spec.slo.tpot_ms)


def decode_bank_ms(spec: RequestSpec, output_tokens: int, step_ms: float) -> float:
    """(O - 1) x (TPOT - s): the delay its decode steps may still absorb; inf with no TPOT SLO,
    0 with no decode steps left (never NaN)."""
    steps = output_tokens - 1
    return steps * (spec.slo.tpot_ms - step_ms) if steps > 0 else 0.0


def leg_shape(role: Role, prompt_tokens: int, output_tokens: int) -> tuple[int, int]:
    """(prefill tokens run here, output tokens held here) of a leg of `role`."""
    if role is Role.PREFILL:
        return prompt_tokens, 1
    if role is Role.DECODE:
        return 0, output_tokens
    return prompt_tokens, output_tokens


def summarise(inst: InstanceView, config: PolicyConfig, estimator: OutputLengthEstimator,
              unprotected_ids: Iterable[str] = ()) -> InstanceBudget:
    """Budget of one instance from its running set (O(n log n); cached by the caller).

    Requests in `unprotected_ids` (best effort) hold KV and decode slots but have no deadlines.
    """
    model = latency_model_of(inst, config)
    out = InstanceBudget(inst.instance_id, model, kv_capacity_of(inst, config), chunk_tokens_of(inst, config))
    running = sorted(inst.running, key=lambda r: (r.placed_s, r.spec.request_id))
    unprotected = set(unprotected_ids)
    shapes = [leg_shape(r.role, r.spec.prompt_tokens, estimator.estimate(r.spec)) for r in running]
    outputs = [o for _, o in shapes]
    out.decode_seqs = sum(1 for r in running if r.role is not Role.PREFILL)
    out.kv_mean_tokens = sum(r.spec.prompt_tokens + o / 2 for r, o in zip(running, outputs))
    out.kv_peak_tokens = sum(r.spec.prompt_tokens + o for r, o in zip(running, outputs))
    s = out.steady_ms()
    per_step = chunk_tokens_for(out.chunk_tokens, out.decode_seqs)
    step_with_chunk_ms = s + model.c1_ms_per_prefill_token * per_step
    out.prefill_rate_tps = per_step / step_with_chunk_ms * 1000.0
    # Walk newest to oldest: suffix sums give both the FIFO backlog anchor and the interference
    # each request suffers from prefills placed after it.
    total_prefill = sum(p for p, _ in shapes)
    if total_prefill:   # none of it started before the last prefill leg here ended
        out.backlog_anchor_tokens = total_prefill + out.prefill_rate_tps * inst.prefill_done_s
    after_tokens = 0.0
    banks: list[float] = []
    remaining: list[float] = []
    tpots: list[float] = []
    victim_key: tuple = ()
    for r, (prefill, o) in zip(reversed(running), reversed(shapes)):
        after_tokens += prefill
        out.backlog_anchor_tokens = max(out.backlog_anchor_tokens,
                                        after_tokens + out.prefill_rate_tps * r.placed_s)
        if r.role is Role.PREFILL:   # no decode here: nothing to protect, nothing to preempt for
            continue
        interference_ms = model.c1_ms_per_prefill_token * (after_tokens - prefill)
        bank = decode_bank_ms(r.spec, o, s) - interference_ms
        is_protected = r.spec.request_id not in unprotected
        if is_protected and keeps_tpot(r.spec, o):
            out.bank_ms = min(out.bank_ms, bank)
            banks.append(bank)
            remaining.append(float(o - 1))
            tpots.append(r.spec.slo.tpot_ms)
            out.min_tpot_ms = min(out.min_tpot_ms, r.spec.slo.tpot_ms)
        # Best effort first, then lowest priority, then most slack.
        key = (is_protected, r.spec.priority, -bank, r.spec.request_id)
        if not victim_key or key < victim_key:
            victim_key, out.victim_id, out.victim_bank_ms = key, r.spec.request_id, bank
    out.banks_ms, out.remaining, out.tpots_ms = tuple(banks), tuple(remaining), tuple(tpots)
    return out


def carry_backlog(budget: InstanceBudget, previous: InstanceBudget, previous_running: Iterable[RunningRequest],
                  inst: InstanceView, now_s: float) -> None:
    """Keep the prefill queue `previous` (the budget of the running set before) predicted, across
    a change of the running set: `budget` was summarised from scratch, and that walk assumes each
    request's prefill began no earlier than its placement, so when a request that held the queue
    before them leaves (it finished: its own prefill was done long ago), the ones behind it
    would look as if they had been prefilling since they were placed (issue 17, fifth pass:
    s1-w012, a 3,644-token prompt predicted 162 ms, first token after 286 ms, behind a prompt
    placed 140 ms earlier that had waited behind a third, finished one). A finish removes no
    queued prefill, so the queue left at the change is the previous one's, plus what was placed
    since (FIFO, behind it); it never exceeds the prefill the running set still holds."""
    before = {r.spec.request_id for r in previous_running}
    new = [r for r in inst.running if r.spec.request_id not in before]
    since_s = min((r.placed_s for r in new), default=now_s)
    added = sum(leg_shape(r.role, r.spec.prompt_tokens, 1)[0] for r in new)
    carried = previous.backlog_tokens(since_s) + added
    if carried <= 0:
        return
    held = sum(leg_shape(r.role, r.spec.prompt_tokens, 1)[0] for r in inst.running)
    rate = budget.prefill_rate_tps
    budget.backlog_anchor_tokens = max(budget.backlog_anchor_tokens,
                                       min(carried + rate * since_s, held + rate * now_s))
