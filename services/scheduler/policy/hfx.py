"""HFX: budget estimation, least-slack ranking, demotion, best-fit placement, in-flight protection.

One pass (docs/SCHEDULING.md): mirror the queue incrementally; summarise each instance's budget
(cached while its running set is unchanged); preempt where a budget is below -margin; demote or
reject requests whose first token can no longer be on time; then try the least-slack requests,
at most `max_attempts_per_call`, each against every instance at once (numpy), placing on the
best fitting one; best-effort requests only take room no SLO request could use.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from services.common.domain import (ClusterSnapshot, Decision, Grant, InstanceView, LatencyModel, Preemption,
                                    RequestSpec, ScheduleResult, TicketBound, Verdict)
from services.scheduler.policy.base import PolicyConfig, chunk_tokens_of, latency_model_of
from services.scheduler.policy.budget import InstanceBudget, carry_backlog, prefill_ms, summarise
from services.scheduler.policy.estimate import OutputLengthEstimator
from services.scheduler.policy.fit import FitTable
from services.scheduler.policy.lanes import ClassesSeen
from services.scheduler.policy.lastchance import weighed_admit
from services.scheduler.policy.pressure import Pressure
from services.scheduler.policy.pd import SPLIT, fastest_prefill_ms, legs_of, options, plan, prefill_models
from services.scheduler.policy.ranking import Entry, RankedQueue
from services.scheduler.policy.why import Miss

MAX_DEMOTIONS_PER_CALL = 256
# Rejections of expired best-effort requests per pass: each is a Decision with a reason string, so
# this bounds decision latency (the rest wait for the next pass, which comes with the next event).
MAX_EXPIRIES_PER_CALL = 16


class Hfx:
    name = "hfx"

    def __init__(self, config: PolicyConfig) -> None:
        if config.placement not in ("best_fit", "spread"):
            raise ValueError(f"placement must be best_fit or spread, not {config.placement!r}")
        if config.on_miss not in ("best_effort", "reject"):
            raise ValueError(f"on_miss must be best_effort or reject, not {config.on_miss!r}")
        self.config = config
        self.estimator = OutputLengthEstimator(config.prior_output_tokens)
        self.queue = RankedQueue()
        self._budgets: dict[str, tuple[tuple, InstanceBudget]] = {}
        self._pass_budgets: dict[str, InstanceBudget] = {}  # this pass's copies, after its placements
        self._best_effort_ids: set[str] = set()   # placed best effort, still running
        self._ref_model = config.default_latency_model
        self._ref_chunk = config.chunk_tokens      # the step token budget of _ref_model's instance
        self._prefill_models: tuple[tuple[LatencyModel, int], ...] = ()   # pd.prefill_models: the unloaded-prefill bound
        self._models_seen: tuple = ()   # (latency_model, chunk_tokens, role) per instance they were taken from
        self.pressure = Pressure(config)          # see PolicyConfig.defer_slack_ms
        self._release_free_s = float("-inf")     # the next paced release after pressure (release_spacing)
        self.deferrals = 0
        self._classes = ClassesSeen()   # per task class seen: _tight_tpot_ms, _tight_ttft

    def observe_completion(self, task_class: str, output_tokens: int, request_id: str = "") -> None:
        """Called by the service (or simulator) when a request finishes: learn its class's length."""
        self.estimator.observe(task_class, output_tokens)
        self._best_effort_ids.discard(request_id)

    def budgets_ms(self) -> dict[str, float]:
        """Each instance's budget as of its last pass (inf: nothing protected runs there), for
        the scheduler's hfx_instance_budget_ms gauge."""
        return {iid: budget.bank_ms for iid, budget in self._pass_budgets.items()}

    def tickets(self, cluster: ClusterSnapshot, bounds: Sequence[TicketBound], now_s: float) -> list[Grant]:
        """Standing placements while nothing waits (IssuesTickets): per instance, the widest bound
        whose every request fits it by tests (1)-(5) (FitTable.fits_every_output: the guarantee
        a router relies on). Ranked as a pass would choose."""
        if not cluster.instances or not bounds:
            return []
        budgets = [self._budget(inst, now_s) for inst in cluster.instances]
        # Tickets are spent later, behind whatever step runs then: the estimated in-flight charge.
        table = FitTable(cluster.instances, budgets, self.config, now_s, banned=set(), reported_step=False)
        granted: dict[int, Grant] = {}
        keys: dict[int, float] = {}   # each grant's place in a pass's order (FitTable.preference)
        for bound in bounds:
            probe = bound.probe("ticket-probe", now_s)
            if options(table, probe, self.config)[0][:1] == [SPLIT]:
                continue   # requests this long are split over P and D; a ticket runs one whole
            ok, ttft_ms = table.fits_every_output(probe, now_s)
            order = table.preference(ok, bound.min_tpot_ms)
            for idx in map(int, np.flatnonzero(ok)):
                if idx not in granted:
                    keys[idx] = float(order[idx])
                    granted[idx] = Grant(
                        table.ids[idx], bound, float(ttft_ms[idx]), 0,
                        f"ticket: up to {bound.max_prompt_tokens}+{bound.max_tokens} tokens with TTFT >= "
                        f"{bound.min_ttft_ms:.0f} ms and TPOT >= {bound.min_tpot_ms:.1f} ms fits {table.ids[idx]} "
                        f"(predicted TTFT {float(ttft_ms[idx]):.0f} ms, budget {table.bank_ms[idx]:.0f} ms)")
        # The rank is the grant's position in that order, not the key itself: the key's fraction
        # (spread's steps of queued prefill) is what tells apart two instances decoding as many
        # sequences, and an integer rank cut it off, so ties went to the first instance listed
        # while its last ticket's prefill was still queued (issue 9, sixteenth session).
        ranked = sorted(granted, key=lambda idx: (keys[idx], idx))
        return [dataclasses.replace(granted[idx], rank=rank) for rank, idx in enumerate(ranked)]

    # -- one pass -------------------------------------------------------------------------------

    def schedule(self, waiting: Sequence[RequestSpec], cluster: ClusterSnapshot, now_s: float) -> ScheduleResult:
        models = tuple((inst.latency_model, inst.chunk_tokens, inst.role) for inst in cluster.instances)
        if cluster.instances and models != self._models_seen:
            # "Unloaded" is on the fastest instance: a TPOT below one decode step there can be met
            # nowhere, but one the first-listed instance cannot meet may fit another (issue 9,
            # seventh session: a contended instance's step made every tight-TPOT request best
            # effort at arrival, and refused, while the other one could have served it).
            # Recomputed only when an instance's model, step budget or role changed: they are all
            # it reads, and a pass per event made this ~5% of the policy's time in the simulator.
            self._ref_model, self._ref_chunk = min(
                ((latency_model_of(inst, self.config), chunk_tokens_of(inst, self.config)) for inst in cluster.instances),
                key=lambda mc: mc[0].c0_ms + mc[0].c2_ms_per_decode_seq)
            self._prefill_models = prefill_models(cluster.instances, self.config)
            self._models_seen = models
        if len(self._budgets) > len(cluster.instances):  # instances left: drop their cached budgets
            live = {inst.instance_id for inst in cluster.instances}
            self._budgets = {iid: hit for iid, hit in self._budgets.items() if iid in live}
        self.queue.sync(waiting, self._entry)
        decisions: list[Decision] = []
        budgets = [self._budget(inst, now_s) for inst in cluster.instances]
        self._pass_budgets = {inst.instance_id: b for inst, b in zip(cluster.instances, budgets)}
        preemptions = self._protect(cluster.instances, budgets)
        banned = {p.instance_id for p in preemptions}
        self._demote(now_s, decisions)
        self._expire_best_effort(now_s, decisions)
        if not self.queue.known:   # nothing to place (protection still ran): skip the fit table
            return ScheduleResult(decisions=tuple(decisions), preemptions=tuple(preemptions))
        table = FitTable(cluster.instances, budgets, self.config, now_s, banned, reserve=self._strained(now_s, cluster),
                         links=cluster.links, unprotected=self._best_effort_ids)
        table.tight_tpot_ms = self._tight_tpot_ms()
        table.lane_prompt_tokens = self._tight_ttft()
        if table.any_open():
            self._place(table, now_s, decisions)
        return ScheduleResult(decisions=tuple(decisions), preemptions=tuple(preemptions))

    def _entry(self, spec: RequestSpec) -> Entry:
        cfg = self.config
        unloaded_ms = (fastest_prefill_ms(self._prefill_models, spec.prompt_tokens)
                       if self._prefill_models else prefill_ms(self._ref_model, spec.prompt_tokens, self._ref_chunk))
        hopeless_at_s = spec.ttft_deadline_s - unloaded_ms / 1000.0
        credit_s = (spec.priority - 1) * cfg.priority_credit_ms / 1000.0
        entry = Entry(spec, hopeless_at_s - credit_s, hopeless_at_s, self.estimator.estimate(spec), unloaded_ms)
        self._classes.add(spec)
        # A TPOT below one unloaded decode step can never be met: best effort from the start.
        if not spec.resumed_tokens and spec.slo.tpot_ms < self._ref_model.c0_ms + self._ref_model.c2_ms_per_decode_seq:
            entry.best_effort = True
            entry.demoted_s = spec.arrival_s
        return entry

    def _tight_tpot_ms(self) -> float | None:
        """The TPOT lane's tightest TPOT, or None (lanes.ClassesSeen.tight_tpot_ms)."""
        return self._classes.tight_tpot_ms(self._ref_model, self.estimator, self.config.lane_tightness)

    def _tight_ttft(self) -> float | None:
        """The prompt length the first-token lane keeps off its instance, or None (lanes.ClassesSeen.tight_ttft)."""
        return self._classes.tight_ttft(self._ref_model, self._ref_chunk, self._tight_tpot_ms() is not None)

    def _budget(self, inst: InstanceView, now_s: float) -> InstanceBudget:
        """This pass's budget of `inst`: a copy, because the pass mutates it as it places
        (FitTable.place). The cached original must stay as the snapshot showed the instance:
        an idle instance's running set is the one empty tuple in every snapshot, so a mutated
        cache entry would carry the requests placed there in earlier passes forever."""
        # Cached while the running set, model and capacity are the same objects/values: a
        # snapshot producer that keeps unchanged tuples makes a pass O(instances), not O(running).
        sig = (inst.running, inst.latency_model, inst.load.kv_capacity_tokens, inst.prefill_done_s, inst.chunk_tokens)
        hit = self._budgets.get(inst.instance_id)
        if hit is not None and hit[0][0] is sig[0] and hit[0][1:] == sig[1:]:
            return hit[1].copy()
        budget = summarise(inst, self.config, self.estimator, self._best_effort_ids)
        if hit is not None:   # the running set changed: the prefill queued before stays queued
            carry_backlog(budget, hit[1], hit[0][0], inst, now_s)
        self._budgets[inst.instance_id] = (sig, budget)
        return budget.copy()

    def _protect(self, instances: Sequence[InstanceView], budgets: list[InstanceBudget]) -> list[Preemption]:
        if not self.config.preempt:
            return []
        out = []
        for inst, b in zip(instances, budgets):
            if b.bank_ms < -self.config.preempt_margin_ms and b.victim_id and b.decode_seqs > 1:
                out.append(Preemption(inst.instance_id, b.victim_id,
                                      f"budget {b.bank_ms:.0f} ms < -{self.config.preempt_margin_ms:.0f} ms; "
                                      f"preempt {b.victim_id} (most slack {b.victim_bank_ms:.0f} ms / lowest priority)"))
        return out

    def _strained(self, now_s: float, cluster: ClusterSnapshot) -> bool:
        """Under pressure, or more requests queued than there are instances: the fit test keeps
        room back for what comes next (FitTable reserve) and a tight first token waits its turn.
        Otherwise the cluster keeps up, and holding a request back buys nobody anything (issue 17:
        on the default workload the exact charge and the early last chance under overload cost
        2-5 points at 24-32 req/s; at light load they won back points lost to the baselines)."""
        return self.pressure.on(now_s) or len(self.queue.known) > len(cluster.instances)

    def _demote(self, now_s: float, decisions: list[Decision]) -> None:
        cfg = self.config
        for _ in range(MAX_DEMOTIONS_PER_CALL):
            entry = self.queue.pop_hopeless(now_s)
            if entry is None:
                return
            spec = entry.spec
            slack_ms = entry.slack_ms(now_s)
            if entry.hopeless_at_s > spec.arrival_s or spec.resumed_tokens:
                # It waited until it was hopeless: the cluster did not keep up. One that was out of
                # reach on arrival (its first token late even on an idle instance) says nothing of
                # the load: its pressure deferred loose requests and held best effort, its own
                # included, for a window each such arrival renewed (issue 17, fifth pass).
                self.pressure.press(spec.request_id, now_s)
            if spec.resumed_tokens:
                # Preempted after streaming tokens: never turned away now. It keeps its place at
                # the head of the ranking (least slack) and is placed as soon as room appears.
                continue
            if cfg.on_miss == "reject" or spec.task_class in cfg.reject_classes:
                self.queue.settle(entry)
                wait_ms = len(self.queue.known) * entry.unloaded_prefill_ms  # crude drain estimate
                decisions.append(Decision(
                    spec.request_id, Verdict.REJECT,
                    f"cannot meet TTFT {spec.slo.ttft_ms:.0f} ms: slack {slack_ms:.0f} ms after "
                    f"unloaded prefill {entry.unloaded_prefill_ms:.0f} ms" + _tried(entry),
                    slack_ms=slack_ms, retry_after_ms=max(cfg.retry_after_ms, wait_ms)))
            else:
                self.queue.demote(entry, now_s)

    def _expire_best_effort(self, now_s: float, decisions: list[Decision]) -> None:
        limit_ms = self.config.best_effort_max_wait_ms
        if limit_ms <= 0:
            return
        for _ in range(MAX_EXPIRIES_PER_CALL):
            entry = self.queue.pop_expired_best_effort(now_s - limit_ms / 1000.0)
            if entry is None:
                return
            if entry.spec.resumed_tokens:  # never turned away after streaming: back to the ranking
                entry.best_effort = False
                self.queue.requeue(entry)
                continue
            waited_ms = (now_s - entry.demoted_s) * 1000.0
            decisions.append(Decision(
                entry.spec.request_id, Verdict.REJECT,
                f"best effort for {waited_ms:.0f} ms > limit {limit_ms:.0f} ms without spare room "
                f"(slack {entry.slack_ms(now_s):.0f} ms)" + _tried(entry),
                slack_ms=entry.slack_ms(now_s), retry_after_ms=self.config.retry_after_ms))

    def _loose(self, entry: Entry, now_s: float) -> bool:
        """It can still wait: both its credited slack (the heap's order) and its own slack exceed
        defer_slack_ms. Its own slack bounds it so that a low priority never turns deferral into
        a miss: once it is due it competes like any other."""
        limit = self.config.defer_slack_ms
        return limit > 0 and entry.rank_slack_ms(now_s) > limit and entry.slack_ms(now_s) > limit

    def _deferrable(self, entry: Entry, now_s: float) -> bool:
        """Under pressure a loose request waits; just after it, it waits for its paced release
        (the one before it was placed less than release_spacing x that one's prefill /
        instances ago), so that what pressure held back does not land on every instance at once."""
        if not self._loose(entry, now_s):
            return False
        return self.pressure.on(now_s) or (self.pressure.releasing(now_s) and now_s < self._release_free_s)

    def _place(self, table: FitTable, now_s: float, decisions: list[Decision]) -> None:
        cfg = self.config
        skipped: list[Entry] = []
        deferred: Entry | None = None
        tried: set[str] = set()
        stopped_early = False
        for _ in range(cfg.max_attempts_per_call):
            if not table.any_open() or len(skipped) >= cfg.max_misses_per_call:
                stopped_early = True
                break
            entry = self.queue.pop_ranked()
            if entry is None:
                break
            if self._deferrable(entry, now_s):
                # Everything behind it in the heap has at least as much credited slack; the ones
                # among them that are due (low priority, little slack of their own) come next.
                deferred = entry
                self.deferrals += 1
                break
            tried.add(entry.spec.request_id)
            paced = self._loose(entry, now_s) and self.pressure.releasing(now_s)
            spacing_ms = self.config.release_spacing * entry.unloaded_prefill_ms / len(table.ids) if paced else 0.0
            note = f"released after pressure, the next loose one in {spacing_ms:.0f} ms" if paced else ""
            if not self._attempt(entry, table, now_s, decisions, note):
                skipped.append(entry)
            elif paced:
                self._release_free_s = now_s + spacing_ms / 1000.0
        else:
            stopped_early = True
        for entry in skipped:
            self.queue.push_back(entry)
        if deferred is not None:
            self.queue.push_back(deferred)
        if deferred is not None or stopped_early:
            skipped += self._place_due(table, now_s, decisions, tried)
        # Best effort (one per pass keeps it gentle) only after every SLO request tried this pass
        # fitted, and not while the cluster is under pressure that another request caused (one
        # turned away in the last pressure window): its SLO is already lost, so it must not take
        # room from one that can still be met. Pressure it alone caused (it was due, fit nowhere,
        # then turned hopeless) holds nobody else's first token: waiting it out is a sure miss.
        # Nor after a deferral: the room is the deferred SLO request's next (placing best effort
        # while its own pressure deferred a loose request was 0.4-2.3 points lower on the
        # default workload at 16-24 and 32 req/s in the simulator; BENCHMARKS.md, issue 9 eighth session).
        entry = self.queue.next_best_effort()
        if entry is None or skipped or not table.any_open():
            return
        rid = entry.spec.request_id
        if self.pressure.by_others(rid, now_s) or deferred is not None:
            return
        self._try(entry, table, now_s, decisions, best_effort=True)

    def _attempt(self, entry: Entry, table: FitTable, now_s: float, decisions: list[Decision], note: str = "") -> bool:
        """Try an SLO request (a resumed one past its deadline goes best effort); a failure of
        one that is due (own slack <= defer_slack_ms), or any failure while more are queued than
        there are instances, puts the cluster under pressure."""
        late_resume = entry.spec.resumed_tokens > 0 and entry.slack_ms(now_s) < 0
        if self._try(entry, table, now_s, decisions, best_effort=late_resume, note=note) is not None:
            return True
        # Last chance: it becomes hopeless before the next pass is likely, or its first token is
        # tight (slack at most (tight_ttft_factor - 1) x its unloaded prefill) while the cluster is
        # not strained: waiting for a step to end costs it about as much as the step in flight it
        # would wait behind. Rejecting,
        # demoting or holding it is a likely miss that buys nothing if it fits once the step in
        # flight is not charged (tests 2-6 still protect everyone else): place it at its own risk.
        # What a load report says is left of that step is charged still (FitTable.ttft_ms).
        slack_ms = entry.slack_ms(now_s)
        tight_ms = 0.0 if table.reserve else (self.config.tight_ttft_factor - 1.0) * entry.unloaded_prefill_ms
        if not late_resume and slack_ms <= max(table.longest_step_ms(), tight_ms):
            if self._try(entry, table, now_s, decisions, best_effort=False, optimistic=True) is not None:
                return True
            # Still refused by a running request's bank: weigh that against its own sure miss.
            weighed = weighed_admit(table, entry.spec, entry.output_tokens, now_s, slack_ms, self.config.last_chance_slip)
            if weighed is not None:
                self.queue.settle(entry)
                decisions.append(weighed)
                return True
        entry.last_miss = Miss(table, entry.spec, entry.output_tokens, now_s)
        # Pressure when one that cannot wait does not fit, or a queue has formed (more queued than
        # instances). A loose request (own slack above defer_slack_ms) that fits nowhere yet while
        # the cluster keeps up will get its turn: deferring others for it held requests back at a
        # load where everyone fits (issue 17, fourth pass).
        if slack_ms <= self.config.defer_slack_ms or len(self.queue.known) > len(table.ids):
            self.pressure.press(entry.spec.request_id, now_s)
        return False

    def _place_due(self, table: FitTable, now_s: float, decisions: list[Decision], tried: set[str]) -> list[Entry]:
        """Requests whose own slack is at most defer_slack_ms and that the ranked pass did not reach
        (behind a deferred entry or past its attempt limit: in practice low-priority ones) get
        one try each, least slack first: priority orders who goes first, it never decides alone
        that a request misses. Returns the ones that did not fit."""
        cfg = self.config
        due_before_s = now_s + cfg.defer_slack_ms / 1000.0
        popped: list[Entry] = []
        failed: list[Entry] = []
        for _ in range(cfg.max_attempts_per_call):
            if not table.any_open() or len(failed) >= cfg.max_misses_per_call:
                break
            entry = self.queue.pop_due(due_before_s)
            if entry is None:
                break
            popped.append(entry)
            if entry.spec.request_id not in tried and not self._attempt(entry, table, now_s, decisions):
                failed.append(entry)
        for entry in popped:
            self.queue.push_due(entry)   # placed ones are settled and skipped as stale later
        return failed

    def _try(self, entry: Entry, table: FitTable, now_s: float, decisions: list[Decision],
             best_effort: bool, optimistic: bool = False, note: str = "") -> Decision | None:
        spec = entry.spec
        where = plan(table, spec, entry.output_tokens, now_s, self.config, best_effort, optimistic)
        if where is None:
            return None
        last_idx = where.legs[-1][1]          # the decode leg's instance: whose budget it joins
        budget_ms = table.bank_ms[last_idx]
        for role, idx in where.legs:
            table.place(idx, spec, entry.output_tokens, now_s, protected=not best_effort, role=role)
        self.queue.settle(entry)
        slack_ms = entry.slack_ms(now_s)
        first_id = table.ids[where.legs[0][1]]
        mode = f"{where.why}; " if where.why else ""
        if best_effort:
            self._best_effort_ids.add(spec.request_id)
            reason = (f"best effort (slack {slack_ms:.0f} ms, SLO out of reach): {mode}spare room: {where.how}, "
                      f"budget {budget_ms:.0f} ms")
            verdict = Verdict.BEST_EFFORT
        else:
            reason = (f"slack {slack_ms:.0f} ms; predicted TTFT {where.ttft_ms:.0f} of {spec.slo.ttft_ms:.0f} ms; "
                      f"budget {budget_ms:.0f} ms; {mode}{where.how}"
                      + ("; last chance, not counting the step in flight" if optimistic else "")
                      + (f"; {note}" if note else ""))
            verdict = Verdict.ADMIT
        decision = Decision(spec.request_id, verdict, reason, instance_id=first_id,
                            predicted_ttft_ms=where.ttft_ms, slack_ms=slack_ms, budget_ms=budget_ms,
                            legs=legs_of(where, table))
        decisions.append(decision)
        return decision


def _tried(entry: Entry) -> str:
    """The refusal's account of the last time its SLO was tried (why.py), if it was."""
    why = entry.last_miss.text() if entry.last_miss is not None else ""
    return f"; last tried with its SLO: {why}" if why else ""
