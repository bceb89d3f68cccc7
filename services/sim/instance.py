"""One simulated engine instance: continuous batching with chunked prefill and KV in tokens.

Pure and clock-free: the caller asks for the next step's duration, then ends the step at a time
it chooses; both the discrete-event simulator and a real-time "sim" worker engine can drive it.
Behaves like vLLM's scheduler: FCFS engine queue, a token budget per step shared by decodes
(one token each) and prefill chunks, a prompt is admitted only when its KV fits, and when KV runs
out during decode the newest running request is preempted and recomputed later.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from services.common.domain import LatencyModel


@dataclass
class SimSeq:
    """A request's progress on an instance (what the engine knows of it)."""

    request_id: str
    prompt_tokens: int          # to prefill (a recomputed sequence includes its generated tokens)
    output_tokens: int          # tokens it will generate here before it stops
    prefilled: int = 0
    generated: int = 0

    @property
    def held_kv_tokens(self) -> int:
        """KV reserved on the instance: the whole prompt from admission, plus generated tokens."""
        return self.prompt_tokens + self.generated

    @property
    def in_prefill(self) -> bool:
        return self.prefilled < self.prompt_tokens


@dataclass
class StepResult:
    duration_ms: float
    first_tokens: list[str] = field(default_factory=list)   # emitted their first token this step
    tokens: list[str] = field(default_factory=list)         # emitted a later token this step
    finished: list[str] = field(default_factory=list)


class SimInstance:
    def __init__(self, instance_id: str, model: LatencyModel, kv_capacity_tokens: int, chunk_tokens: int,
                 max_num_seqs: int, step_noise: float = 0.0, seed: int = 0) -> None:
        self.instance_id = instance_id
        self.model = model
        self.kv_capacity_tokens = kv_capacity_tokens
        self.chunk_tokens = chunk_tokens
        self.max_num_seqs = max_num_seqs
        self.step_noise = step_noise
        self._rng = random.Random(seed)
        self.waiting: deque[SimSeq] = deque()
        self.running: list[SimSeq] = []
        self.kv_used_tokens = 0
        self.engine_preemptions = 0
        self.last_step_ms = 0.0
        # (prefill tokens, decode sequences, KV tokens) of the step last planned: what the model
        # was evaluated on, so a driver can report the step's composition with its duration.
        self.last_step_shape: tuple[int, int, int] = (0, 0, 0)
        self._plan: list[tuple[SimSeq, int]] = []   # (seq, prefill tokens) of the step in flight

    @property
    def busy(self) -> bool:
        return bool(self._plan)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, seq: SimSeq) -> None:
        self.waiting.append(seq)

    def remove(self, request_id: str) -> SimSeq | None:
        """Take a request off (policy preemption). Mid-step it also leaves the step in flight:
        what that step would have produced for it is discarded, as an engine abort does."""
        for seq in self.running:
            if seq.request_id == request_id:
                self.running.remove(seq)
                self.kv_used_tokens -= seq.held_kv_tokens
                self._plan = [(s, take) for s, take in self._plan if s is not seq]
                return seq
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return seq
        return None

    def begin_step(self) -> float:
        """Plan the next step and return its duration in ms (0 when there is nothing to do)."""
        decodes = [s for s in self.running if not s.in_prefill]
        # Each decode needs one more KV slot; preempt newest first when they do not all fit.
        while decodes and self.kv_used_tokens + len(decodes) > self.kv_capacity_tokens:
            victim = self.running.pop()
            self.kv_used_tokens -= victim.held_kv_tokens
            if not victim.in_prefill:
                decodes.remove(victim)
            # Recompute: its generated tokens become prompt, so none is lost.
            victim.prompt_tokens, victim.output_tokens = victim.held_kv_tokens, victim.output_tokens - victim.generated
            victim.prefilled = victim.generated = 0
            self.waiting.appendleft(victim)
            self.engine_preemptions += 1
        budget = self.chunk_tokens - len(decodes)
        plan: list[tuple[SimSeq, int]] = [(s, 0) for s in decodes]
        for seq in self.running:
            if seq.in_prefill and budget > 0:
                take = min(budget, seq.prompt_tokens - seq.prefilled)
                plan.append((seq, take))
                budget -= take
        # Admit from the engine queue while the whole prompt's KV fits (vLLM reserves it).
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if self.kv_used_tokens + seq.prompt_tokens > self.kv_capacity_tokens:
                break
            self.waiting.popleft()
            self.running.append(seq)
            self.kv_used_tokens += seq.prompt_tokens
            take = min(budget, seq.prompt_tokens - seq.prefilled)   # an imported prompt: its last token
            plan.append((seq, take))
            budget -= take
        self._plan = plan
        if not plan:
            return 0.0
        prefill = sum(t for _, t in plan)
        ms = self.model.step_ms(prefill, len(decodes), self.kv_used_tokens)
        self.last_step_shape = (prefill, len(decodes), self.kv_used_tokens)
        if self.step_noise > 0:
            ms *= math.exp(self._rng.gauss(0.0, self.step_noise))
        self.last_step_ms = ms
        return ms

    def end_step(self) -> StepResult:
        out = StepResult(self.last_step_ms)
        for seq, take in self._plan:
            if take == 0:  # a decode: KV for its previous token was already reserved
                seq.generated += 1
                self.kv_used_tokens += 1
                out.tokens.append(seq.request_id)
            else:
                seq.prefilled += take
                if not seq.in_prefill:  # prompt done: the first token comes out of this step
                    seq.generated = 1
                    self.kv_used_tokens += 1
                    out.first_tokens.append(seq.request_id)
            if seq.generated >= seq.output_tokens:
                self.running.remove(seq)
                self.kv_used_tokens -= seq.held_kv_tokens
                out.finished.append(seq.request_id)
        self._plan = []
        return out
