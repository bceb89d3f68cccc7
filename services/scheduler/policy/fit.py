"""The HFX fit test for one request against every instance at once (vectorised over instances).

A request fits instance m when, by m's latency model (notation in budget.py):
 (1) own first token:   w + ceil((B+L)/C') * s + c1*(B+L)  <=  ttft_deadline - now (B: the
                        queued prefill as estimated; while not `reserve`, at least the Q tokens
                        test (6) sees queued), where
                        w = what is left of the step in flight (which it cannot join) when the
                        load report says which step runs (inflight_left_ms), else
                        inflight_step_share * (s + c1*min(B, C')) on a busy instance, 0 on an idle one
 (2) running requests:  bank_r - min(O, remaining_r)*(s' - s) - c1*L  >=  0  for every protected
                        running r (its chunked prefill and the slower step s' eat into r's bank;
                        the slower step lasts only while both decode: min(O, r's remaining steps))
 (3) steady decode:     s' = c0 + c2*(n+1) + c3*(kv + L + O/2)  <=  min(TPOT of running, own TPOT)
 (4) KV:                kv_peak + L + O  <=  capacity * (1 - watermark)
 (5) own mean TPOT:     (O-1) * (TPOT - s')  >=  c1*B  (config.backlog_interferes, the default):
                        vLLM's priority scheduling may run its prefill ahead of the B queued
                        prefill tokens, which then run during its decode
 (6) queued first tokens: where the load report names the step in flight, the requests placed on m
                        after it began wait for the next step (Q tokens queued, FIFO); where it says
                        m is between steps, so do the last `waiting_requests` placed. A newcomer's
                        prefill rides in the last of those steps when it has room left,
                        R = C'*ceil(Q/C') - Q, and slows it by c1*min(L, R) + c3*L (its chunk, and
                        its prompt's KV): every protected request whose first token comes out of
                        that step must keep that much margin,
                        deadline - now - (w + k*s + c1*Q) >= c1*min(L, R) + c3*L
                        (k: that step's number). Applies to best effort too (it is someone else's
                        first token); only while the cluster keeps up (not `reserve`)
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from services.common.domain import InstanceView, LatencyModel, RequestSpec, Role, RunningRequest
from services.scheduler.policy.base import PolicyConfig, outstanding
from services.scheduler.policy.budget import InstanceBudget


def queued_since_step(inst: InstanceView) -> list[RunningRequest] | None:
    """The requests whose whole prompt waits for `inst`'s next steps, in FIFO (placement) order:
    those placed after its step in flight began (none of them is in that step) or, when the report
    says it is between steps, the last `waiting_requests` placed before the report (its engine
    queue) and any placed since. None when the engine does not say which step it runs."""
    load, step = inst.load, inst.load.step_in_flight
    if not load.reports_step:
        return None
    placed = sorted(inst.running, key=lambda r: (r.placed_s, r.spec.request_id))
    if step is not None:
        queued = [r for r in placed if r.placed_s > step.started_s]
    else:
        before = [r for r in placed if r.placed_s <= load.reported_s]
        queued = before[max(0, len(before) - load.waiting_requests):] if load.waiting_requests > 0 else []
        queued += [r for r in placed if r.placed_s > load.reported_s]
    return [r for r in queued if r.role is not Role.DECODE]


def inflight_left_ms(inst: InstanceView, model: LatencyModel, now_s: float, max_age_ms: float) -> float | None:
    """How long `inst` still runs the engine step in flight at now_s, by its load report (a new
    prefill cannot join that step), or None when the report cannot tell: the engine does not say
    which step it runs; the reported step should have ended by its latency model (it ran long, or
    the report is older than the step); or the report says "between steps" but is older than
    max_age_ms (a worker with work starts its next step at once)."""
    load = inst.load
    if not load.reports_step:
        return None
    step = load.step_in_flight
    if step is None:
        age_ms = (now_s - load.reported_s) * 1000.0
        return 0.0 if 0.0 <= age_ms <= max_age_ms else None
    elapsed_ms = (now_s - step.started_s) * 1000.0
    predicted_ms = model.step_ms(step.prefill_tokens, step.decode_seqs, step.kv_tokens)
    return predicted_ms - elapsed_ms if 0.0 <= elapsed_ms <= predicted_ms else None


class FitTable:
    def __init__(self, instances: Sequence[InstanceView], budgets: list[InstanceBudget],
                 config: PolicyConfig, now_s: float, banned: set[str], reserve: bool = False,
                 links: frozenset[tuple[str, str]] | None = None, reported_step: bool = True,
                 unprotected: frozenset[str] | set[str] = frozenset()) -> None:
        """reserve: test (2) charges each instance's least bank for its longest remaining run
        (bank - min(O, max_r remaining_r)*(s' - s)), a conservative bound that keeps room back
        for arrivals to come (HFX sets it while the cluster is under pressure or a queue forms);
        otherwise each running request is charged for its own remaining steps only. links: the
        P-D pairs that may split a request (None: any pair). reported_step: test (1) waits for
        the step in flight as the load report tells it (inflight_left_ms) where it can; False
        (tickets, which are spent later, whatever step runs then) always charges the estimate,
        and has no test (6). unprotected: ids of running requests placed best effort (no first
        token to protect in test (6))."""
        self.config = config
        self.budgets = budgets
        self.reserve = reserve
        # Set by the policy while a task class seen has a tight TPOT (PolicyConfig lane_tightness):
        # that TPOT, ms; placement then goes by SLO affinity with tolerance lane_tolerance.
        self.tight_tpot_ms: float | None = None
        # Set by the policy while a task class seen has a tight first token (Hfx._tight_ttft):
        # requests prefilling at least this many tokens keep off the instance with the least
        # queued prefill (ttft_keep), so that one arrival of that class does not wait behind
        # full-chunk steps.
        self.lane_prompt_tokens: float | None = None
        self.now_s = now_s
        self.ids = [i.instance_id for i in instances]
        f = lambda xs: np.array(xs, dtype=float)  # noqa: E731
        self.c0 = f([b.model.c0_ms for b in budgets])
        self.c1 = f([b.model.c1_ms_per_prefill_token for b in budgets])
        self.c2 = f([b.model.c2_ms_per_decode_seq for b in budgets])
        self.c3 = f([b.model.c3_ms_per_kv_token for b in budgets])
        self.chunk = f([b.chunk_tokens for b in budgets])        # each engine's own step budget
        self.kv_limit = f([b.kv_capacity_tokens for b in budgets]) * (1.0 - config.kv_watermark)
        self.max_len = f([i.max_model_len for i in instances])
        self.has_max_len = bool((self.max_len > 0).any())
        self.outstanding = f([outstanding(i) for i in instances])
        self.allowed = np.array([i.accepting and i.instance_id not in banned for i in instances], dtype=bool)
        # Roles (candidates() in base.py, vectorised): whole requests go to colocated rows, P/D
        # legs to prefill and decode rows (stages.py).
        self.role_rows = {role: np.array([i.role is role for i in instances], dtype=bool) for role in Role}
        # P-D links: linked[p, d] when prefill row p may hand KV to decode row d (None: any pair).
        self.linked = None if links is None else np.array(
            [[(p, d) in links for d in self.ids] for p in self.ids], dtype=bool).reshape(len(self.ids), len(self.ids))
        self.xfer = f([b.model.kv_transfer_ms_per_token or config.default_kv_transfer_ms_per_token for b in budgets])
        self.n = np.zeros(len(budgets))
        self.kv_mean = np.zeros(len(budgets))
        self.kv_peak = np.zeros(len(budgets))
        self.min_tpot = np.zeros(len(budgets))
        self.bank_ms = np.zeros(len(budgets))
        self.backlog = np.zeros(len(budgets))
        self.queued_tokens = np.zeros(len(budgets))
        # What the load reports say is left of each step in flight (nan: they cannot tell).
        left = [inflight_left_ms(i, b.model, now_s, config.step_report_max_age_ms) if reported_step else None
                for i, b in zip(instances, budgets)]
        self.step_left_ms = f([np.nan if x is None else x for x in left])
        # Test (6): per instance whose next step is known, the first tokens queued for it:
        # (prefill tokens, TTFT deadline in s or None when unprotected), FIFO; [] elsewhere.
        self.queued_first: list[list[tuple[float, float | None]]] = []
        self.behind_step = np.zeros(len(budgets), dtype=bool)   # what runs next is known
        for idx, (i, x) in enumerate(zip(instances, left)):
            queued = queued_since_step(i) if x is not None else None
            self.behind_step[idx] = queued is not None
            self.queued_first.append([] if queued is None else [
                (float(r.spec.prompt_tokens), None if r.spec.request_id in unprotected else r.spec.ttft_deadline_s)
                for r in queued])
        self.first_room = np.zeros(len(budgets))                 # R per instance (0: no test)
        self.first_margin_ms = np.full(len(budgets), np.inf)     # least margin among the affected
        for idx in range(len(budgets)):
            self._load_row(idx, now_s)
        self._flatten()
        self._derive()
        self._before_change: list[Callable[[], object]] = []

    def when_changing(self, read: Callable[[], object]) -> None:
        """Call `read` before this table next changes (place): a lazy reading of the table as it
        stands (why.Miss) is taken then, or never if the table is not changed again."""
        self._before_change.append(read)

    def _flatten(self) -> None:
        """Every instance's protected requests' (bank, remaining steps) in one flat array each, for
        test (2) on all instances at once (bank_after)."""
        sizes = np.array([len(b.banks_ms) for b in self.budgets], dtype=int)
        self.flat_bank = np.array([x for b in self.budgets for x in b.banks_ms], dtype=float)
        self.flat_rem = np.array([x for b in self.budgets for x in b.remaining], dtype=float)
        self.flat_tpot = np.array([x for b in self.budgets for x in b.tpots_ms], dtype=float)
        self.flat_row = np.repeat(np.arange(len(self.budgets)), sizes)
        self.banked = sizes > 0
        self.bank_starts = (np.cumsum(sizes) - sizes)[self.banked]
        self.max_rem = np.zeros(len(self.budgets))
        if self.flat_rem.size:
            self.max_rem[self.banked] = np.maximum.reduceat(self.flat_rem, self.bank_starts)

    def bank_after(self, output_tokens: float, step_delta_ms: np.ndarray) -> np.ndarray:
        """Per instance: the least bank left to any protected running request once a newcomer
        decoding `output_tokens` steps makes each step `step_delta_ms` slower (its prefill not
        counted); inf where nothing is protected. With `reserve`, the conservative bound instead."""
        if self.reserve:
            return self.bank_ms - np.minimum(output_tokens, self.max_rem) * step_delta_ms
        out = np.full(len(self.budgets), np.inf)
        if self.flat_bank.size:
            left = self.flat_bank - np.minimum(output_tokens, self.flat_rem) * step_delta_ms[self.flat_row]
            out[self.banked] = np.minimum.reduceat(left, self.bank_starts)
        return out

    def _derive(self) -> None:
        """Terms of the fit test that do not depend on the request (recomputed after a placement)."""
        self.s = self.c0 + self.c2 * self.n + self.c3 * self.kv_mean
        self.s_plus_c2 = self.s + self.c2
        self.per_step = np.maximum(1.0, self.chunk - self.n)
        self.kv_room = self.kv_limit - self.kv_peak
        busy = (self.n > 0) | (self.backlog > 0)
        estimate_ms = np.where(busy, self.config.inflight_step_share
                               * (self.s + self.c1 * np.minimum(self.backlog, self.per_step)), 0.0)
        self.inflight_ms = np.where(np.isnan(self.step_left_ms), estimate_ms, self.step_left_ms)
        for idx in range(len(self.budgets)):
            self._queued_first_row(idx)
        self.open = self._open()

    def _queued_first_row(self, idx: int) -> None:
        """Test (6)'s room R and least margin on one instance (see the module docstring)."""
        queued = self.queued_first[idx]
        self.first_room[idx], self.first_margin_ms[idx] = 0.0, np.inf
        if not queued:
            return
        per_step = self.per_step[idx]
        total = sum(tokens for tokens, _ in queued)
        last = np.ceil(total / per_step)
        room = last * per_step - total
        if room <= 0:
            return
        # The queued requests whose prompt ends in that last step: the newcomer's chunk delays them.
        end_ms = self.inflight_ms[idx] + last * self.s[idx] + self.c1[idx] * total
        through = 0.0
        margin = np.inf
        for tokens, deadline_s in queued:
            through += tokens
            if deadline_s is not None and np.ceil(through / per_step) == last:
                margin = min(margin, (deadline_s - self.now_s) * 1000.0 - end_ms)
        self.first_room[idx], self.first_margin_ms[idx] = room, margin

    def queued_first_ok(self, prefill_tokens: float) -> np.ndarray:
        """Test (6) per instance: a newcomer prefilling `prefill_tokens` leaves every queued first
        token it would share a step with on time."""
        # Its chunk adds c1 per token it puts in that step, and its whole prompt's KV (admitted
        # with the chunk, as vLLM reserves it) adds c3 per token to that step.
        delay_ms = np.where(self.first_room > 0, self.c1 * np.minimum(prefill_tokens, self.first_room)
                            + self.c3 * prefill_tokens, 0.0)
        return delay_ms <= self.first_margin_ms

    def _load_row(self, idx: int, now_s: float) -> None:
        b = self.budgets[idx]
        self.n[idx], self.kv_mean[idx], self.kv_peak[idx] = b.decode_seqs, b.kv_mean_tokens, b.kv_peak_tokens
        self.min_tpot[idx], self.bank_ms[idx] = b.min_tpot_ms, b.bank_ms
        self.backlog[idx] = b.backlog_tokens(now_s)
        # The estimate drains from each placement on, but the prompts test (6) sees queued (behind
        # the step in flight, or between steps in the engine queue) have not started.
        self.queued_tokens[idx] = sum(tokens for tokens, _ in self.queued_first[idx])

    def _open(self) -> np.ndarray:
        """Instances that could take some request at all: skip the pass when none can."""
        step_plus_one = self.s + self.c2
        return (self.allowed & (self.outstanding < self.config.max_requests_per_instance)
                & (self.bank_ms > 0) & (self.kv_peak < self.kv_limit) & (step_plus_one <= self.min_tpot))

    def longest_step_ms(self) -> float:
        """The slowest steady step among open instances: about the longest gap between passes
        while anything runs (each step end brings a pass)."""
        return float(self.s[self.open].max()) if self.open.any() else 0.0

    def any_open(self) -> bool:
        return bool(self.open.any())

    def has(self, role: Role) -> bool:
        return bool(self.role_rows[role].any())

    def ttft_ms(self, prefill_tokens: float, optimistic: bool) -> np.ndarray:
        """(1) per instance: until a prefill of `prefill_tokens` queued last yields its first token.
        optimistic: without the estimated wait for the step in flight (it may be about to end);
        what the load report says is left of it still counts (docs/SCHEDULING.md "Last chance")."""
        # At least the prompts known to be queued, while the cluster keeps up (not `reserve`, as for
        # test (6)): under strain too the family lost two wins and gained one (issue 17, tenth pass).
        queued = (self.backlog if self.reserve else np.maximum(self.backlog, self.queued_tokens)) + prefill_tokens
        ttft_ms = np.ceil(queued / self.per_step) * self.s + self.c1 * queued
        return ttft_ms + (np.nan_to_num(self.step_left_ms) if optimistic else self.inflight_ms)

    def fits_len(self, spec: RequestSpec) -> np.ndarray | bool:
        if not self.has_max_len:
            return True
        return (self.max_len <= 0) | (spec.prompt_tokens + spec.max_tokens <= self.max_len)

    def fit(self, spec: RequestSpec, output_tokens: int, now_s: float,
            best_effort: bool, optimistic: bool = False, role: Role = Role.COLOCATED) -> tuple[int, float, int, str] | None:
        """A whole request on an instance of `role`: (instance index, predicted TTFT ms, how many
        fit, how it was chosen) or None. optimistic: see ttft_ms."""
        ok, ttft_ms = self.fits(spec, output_tokens, now_s, best_effort, optimistic, role)
        n_fit = int(ok.sum())
        if n_fit == 0:
            return None
        budget_ms = (spec.ttft_deadline_s - now_s) * 1000.0
        if not best_effort and budget_ms < self.config.tight_ttft_factor * float(ttft_ms[ok].min()):
            # Tight first token: the least predicted TTFT wins (the prediction is a mean; the
            # spare is too small to trade for balance).
            idx, how = int(np.argmin(np.where(ok, ttft_ms, np.inf))), "least TTFT"
        else:
            idx, how = self.choose(ok, spec.slo.tpot_ms, spec.prompt_tokens), self.config.placement
            if self.tight_tpot_ms is not None and self.config.affinity_tolerance <= 1.0:
                how += f" by TPOT affinity (a class's TPOT {self.tight_tpot_ms:.1f} ms is tight)"
            if self.lane_prompt_tokens is not None and spec.prompt_tokens >= self.lane_prompt_tokens:
                how += " off the instance kept for a tight first token"
        return idx, float(ttft_ms[idx]), n_fit, how

    def fits(self, spec: RequestSpec, output_tokens: int, now_s: float, best_effort: bool,
             optimistic: bool = False, role: Role = Role.COLOCATED, bank_test: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Tests (1)-(6) on every instance of `role` (False elsewhere): (fits, predicted TTFT ms),
        one entry per instance. bank_test False: without test (2)'s banks (lastchance.py weighs them)."""
        L, O = float(spec.prompt_tokens), float(output_tokens)
        x = L + O / 2
        ttft_ms = self.ttft_ms(L, optimistic)
        s_new = self.s_plus_c2 + self.c3 * x
        ok = self.open & self.role_rows[role]
        if bank_test:
            ok &= self.bank_after(O, s_new - self.s) - self.c1 * L >= 0
        ok &= s_new <= self.min_tpot
        ok &= (self.kv_room >= L + O) & self.fits_len(spec)
        if not self.reserve:
            # (6) only while the cluster keeps up: under strain a refused newcomer waits behind a
            # queue and misses instead (the default workload lost 1.6-2.0 points at 24-28 req/s).
            ok &= self.queued_first_ok(L)
        if not best_effort:
            ok &= (ttft_ms <= (spec.ttft_deadline_s - now_s) * 1000.0) & (s_new <= spec.slo.tpot_ms)
            if self.config.backlog_interferes and O > 1:
                ok &= (O - 1) * (spec.slo.tpot_ms - s_new) >= self.c1 * self.backlog
        return ok, ttft_ms

    def fits_every_output(self, spec: RequestSpec, now_s: float) -> tuple[np.ndarray, np.ndarray]:
        """fits(), for the request with any output from 1 to spec.max_tokens tokens. Tests (1)-(4)
        only get harder as the output grows, so they run at max_tokens; test (5) does not, so
        it runs in a form that holds for every output of 2 or more: (TPOT - s'(max)) >= c1*B."""
        ok, ttft_ms = self.fits(spec, spec.max_tokens, now_s, best_effort=False)
        if self.config.backlog_interferes:
            s_max = self.s_plus_c2 + self.c3 * (spec.prompt_tokens + spec.max_tokens / 2)
            ok &= (spec.slo.tpot_ms - s_max) >= self.c1 * self.backlog
        return ok, ttft_ms

    def affinity_band(self, tpot_ms: float) -> np.ndarray:
        """0 where the instance's tightest running TPOT is within a factor `affinity_tolerance` of
        tpot_ms (same SLO class), 1 for an instance with no protected request, 2+ for mismatches
        (one more per further factor of tolerance). All zero when affinity is off (tolerance <= 1).

        E.g. tolerance 1.25, request TPOT 10 ms: instance capped at 10.4 ms -> |ln 1.04|/ln 1.25 =
        0.18 -> band 0; empty -> 1; capped at 18.7 ms -> 1 + floor(|ln 1.87|/ln 1.25) = 1 + 2 = 3.
        """
        tol = self.config.affinity_tolerance
        if tol <= 1.0 and self.tight_tpot_ms is not None:
            return self.tight_band(tpot_ms)
        if tol <= 1.0:
            return np.zeros(len(self.n))
        empty = ~np.isfinite(self.min_tpot)
        ratio = np.abs(np.log(np.where(empty, tpot_ms, self.min_tpot) / tpot_ms)) / np.log(tol)
        return np.where(empty, 1.0, np.where(ratio < 1.0, 0.0, 1.0 + np.floor(ratio)))

    def tight_band(self, tpot_ms: float) -> np.ndarray:
        """Bands while a class's TPOT is tight (tight_tpot_ms, T): a request is tight when its TPOT
        is below lane_factor x T, and so is an instance running such a request (its min_tpot).
        A loose request: band 0 on instances with no tight request (empty or loose), 1 on those
        with one (it would grow their steps) and, while no instance runs one, on the allowed
        instance with the shortest step (kept for the next tight arrival). A tight request: band
        0 where tight ones run, 1 on empty instances, 2 where only loose ones run. Loose requests
        still spread among each other; the tight class keeps instances whose steps stay short."""
        assert self.tight_tpot_ms is not None
        limit = self.config.lane_factor * self.tight_tpot_ms
        empty = ~np.isfinite(self.min_tpot)
        hosts_tight = self.min_tpot < limit
        if tpot_ms >= limit:
            keep = hosts_tight.copy()
            if not keep.any() and self.allowed.sum() > 1:
                # None runs one yet: keep the instance with the shortest step for the next.
                keep[int(np.argmin(np.where(self.allowed, self.s, np.inf)))] = True
            return np.where(keep, 1.0, 0.0)
        return np.where(hosts_tight, 0.0, np.where(empty, 1.0, 2.0))

    def ttft_keep(self, prompt_tokens: float) -> np.ndarray:
        """1 on the instance kept for a tight first token (the allowed one with the least queued
        prefill, then the fewest decoding sequences) for a request prefilling at least
        lane_prompt_tokens; 0 elsewhere, and everywhere while no class's first token is tight,
        for shorter prompts, or with a single allowed instance. Only a preference (choose)."""
        keep = np.zeros(len(self.n))
        if self.lane_prompt_tokens is None or prompt_tokens < self.lane_prompt_tokens or self.allowed.sum() < 2:
            return keep
        key = np.where(self.allowed, self.backlog * 1e3 + self.n, np.inf)
        keep[int(np.argmin(key))] = 1.0
        return keep

    def choose(self, ok: np.ndarray, tpot_ms: float, prompt_tokens: float = 0.0) -> int:
        """Among fitting instances: lowest affinity band first (a long prompt off the instance kept
        for a tight first token next), then spread (fewest decoding sequences plus steps of queued
        prefill) or best fit (most decoding sequences: consolidates so the scaler can release the
        idle ones). Ties go to the lower index (deterministic)."""
        return int(np.argmin(self.preference(ok, tpot_ms, prompt_tokens)))

    def preference(self, ok: np.ndarray, tpot_ms: float, prompt_tokens: float = 0.0) -> np.ndarray:
        """choose()'s order as a key per instance (lower first; inf where not ok)."""
        band = self.affinity_band(tpot_ms) + 0.5 * self.ttft_keep(prompt_tokens)
        # spread counts the steps of prefill queued as load too: an instance still prefilling a
        # long prompt is not idle because nothing decodes there yet (issue 17, third pass).
        load = self.n + self.backlog / self.per_step if self.config.placement == "spread" else -self.n
        return np.where(ok, band * 1e6 + load, np.inf)

    def place(self, idx: int, spec: RequestSpec, output_tokens: int, now_s: float, protected: bool,
              role: Role = Role.COLOCATED) -> None:
        if self._before_change:
            reads, self._before_change = self._before_change, []
            for read in reads:
                read()
        self.budgets[idx].add(spec, output_tokens, now_s, protected, role)
        if self.behind_step[idx] and role is not Role.DECODE:
            # Placed now, behind the step in flight: it queues for the next steps (test (6)).
            self.queued_first[idx].append((float(spec.prompt_tokens), spec.ttft_deadline_s if protected else None))
        self._load_row(idx, now_s)
        self.outstanding[idx] += 1
        self._flatten()
        self._derive()
