"""When to flip an instance between prefill and decode, and which one (pure: a snapshot, the
queue and the time in; a decision with its reason out).

Per tick:
1. Smooth each stage's pressure (signals.py) with an EWMA, so one burst does not flip anything;
   but requests turned away since the last tick that an idle P would have served press the
   prefill stage at once (they are SLO lost, not a sample).
2. Nothing to do while both stages are below `high`, or while no request waits at the scheduler
   for the pressed stage (a request rejected since the last tick that an idle P would have
   prefilled in time counts as waiting for prefill, and presses it to at least 1.0) (admission fills each stage up to its SLO limit, so a pressure near 1
   with nothing waiting is a full stage serving in time, not one falling behind), or while fewer than 2
   instances serve the stage that would give one up (a stage is never emptied; and
   role_change_gap, the scheduler's serving_gap rule, must pass).
3. Gain: how much the worse stage's pressure drops, max(p, d) - max(p', d'), with (p', d')
   predicted for each flip (signals.after_flip: decode work over one D more / fewer, prefill work
   over the prefill capacity left, which counts D's spare time when D may prefill); the flip with
   the larger gain is the candidate (under prefill pressure that may be P -> D). Cost: the flip takes
   `change_s` plus the time the chosen instance needs to finish the work of its old role
   (it finishes it where it is), over `horizon_s`: the share of the horizon that instance is
   worth less. Flip when gain > min_gain + cost.
4. Hysteresis: no instance flips twice within `hold_s`; the cluster flips at most once per
   `cooldown_s` (the next tick then sees the effect); and a flip against the direction of the last
   one waits `reverse_s` after it. So an alternating signal cannot flap roles.
5. The instance: of the donor stage, not flipped within hold_s, the one with the least old-role
   work left (cheapest to hand over; ties: lowest id).

Colocated instances (C) beside P and D: C is a third stage (signals.py: its pressure, and its
free share counted as prefill capacity). A pressed P or D stage may also take a C (C -> P or
C -> D: it gives up no P/D capacity, only the C's own; a busy last C is never taken, its work
would have nowhere to go); a pressed C stage takes a P or a D (P/D keep at least one each).
Nothing flips into C unless C is pressed, so a P/D cluster without C never gets one, and a
colocated-only cluster is left alone (the signals do not model prefill-decode interference,
which is what splitting it would buy). Hysteresis as above: a flip back into the role the last
flip took an instance from waits reverse_s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

from services.common.domain import ClusterSnapshot, InstanceView, RequestSpec, Role
from services.scheduler.policy.base import PolicyConfig, latency_model_of, role_change_gap
from services.scheduler.roles.signals import StagePressure, stage_pressure


@dataclass(frozen=True)
class RoleConfig:
    # A stage this pressed (1.0 = its SLOs just held) asks for help... (0.9, not 1.0: admission
    # turns away what a stage cannot serve in time, so the signal rarely climbs far past 1.0; in
    # the simulator, benchmarks/roles.py --no-local-prefill 4:12, the first 4 flips came at
    # 5-16 s instead of 6-20 s, prompt-heavy attainment 80.6% instead of 73.7%.)
    high: float = 0.9
    min_waiting: int = 1       # ...when at least this many requests wait at the scheduler for it
    # The worse stage's pressure must drop by at least this (plus the cost). Was 0.05: with 11-14 D
    # one more D lowers decode pressure by 0.07-0.08, so a pressed decode stage never got an
    # instance back (cost alone is >= change_s / horizon_s = 0.05). At 0.02, benchmarks/roles.py
    # sim, live-mix flags 2:14 at 4.5 req/s: decode-heavy phase 72.4% -> 83.5%, overall 83.0% ->
    # 89.7% (with turned-away requests pressing at once, on_tick); 8:8 and 4:12 equal or up to 1.1
    # points better.
    min_gain: float = 0.02
    change_s: float = 0.5      # a flip's own time (registry, link warm-up) until the new role serves
    horizon_s: float = 10.0    # the time a flip is meant to help over (cost = seconds lost / horizon)
    hold_s: float = 30.0       # an instance flips at most once per hold_s
    cooldown_s: float = 3.0    # between any two flips of the cluster
    # A flip back into the role the last flip took an instance from waits this long (was hold_s,
    # 30 s: a mix shift 20 s after the last flip then waited 10 s; the per-instance hold already
    # keeps any one instance from flapping).
    reverse_s: float = 10.0
    smoothing: float = 0.5     # EWMA weight of the newest pressure sample
    tick_s: float = 1.0        # how often the adapters run on_tick


@dataclass(frozen=True)
class RoleDecision:
    instance_id: str           # "" = no change
    from_role: Role | None
    to_role: Role | None
    reason: str
    gain: float = 0.0
    cost: float = 0.0
    held_by: str = ""          # no change: which rule held it (a short, bounded name for metrics)

    @property
    def flip(self) -> bool:
        return bool(self.instance_id)


@dataclass
class RolePolicy:
    config: RoleConfig = field(default_factory=RoleConfig)
    policy_config: PolicyConfig = field(default_factory=PolicyConfig)
    flipped_s: dict[str, float] = field(default_factory=dict)   # instance -> its last flip
    last_flip: tuple[float, Role | None] = (-math.inf, None)    # (when, from which role: a flip back waits)
    smoothed: tuple[float, float, float] | None = None   # (prefill, decode, colocated)

    def on_tick(self, cluster: ClusterSnapshot, waiting: Sequence[RequestSpec], now_s: float,
                refused: Sequence[RequestSpec] = ()) -> RoleDecision:
        """`refused`: the requests the scheduler rejected for their SLO since the last tick."""
        raw = stage_pressure(cluster, waiting, self.policy_config, refused)
        a = self.config.smoothing
        now = (raw.prefill, raw.decode, raw.colocated)
        p, d, c = now if self.smoothed is None else tuple(a * x + (1 - a) * y for x, y in zip(now, self.smoothed))
        if raw.turned_away:
            # Requests lost this tick are not a sample to average away: refusals come a few
            # seconds apart, so smoothed they kept the stage under `high` for 15-30 s live
            # (benchmarks/roles.py live-mix, 2:14 at 4.5 req/s: 18 rejections in the prompt-heavy
            # phase before the first flip, which came 27 s after the first of them).
            p = max(p, raw.prefill)
        self.smoothed = (p, d, c)
        pressure = replace(raw, prefill=p, decode=d, colocated=c)
        return self._decide(cluster, pressure, now_s)

    def _decide(self, cluster: ClusterSnapshot, s: StagePressure, now_s: float) -> RoleDecision:
        cfg = self.config
        said = f"pressure prefill {s.prefill:.2f} / decode {s.decode:.2f}" + (
            f" / colocated {s.colocated:.2f}" if s.n_colocated else "")
        if not s.n_prefill or not s.n_decode:
            return _none(f"{said}: not a P/D cluster", "not_pd")
        stages = [r for r in (Role.DECODE, Role.PREFILL, Role.COLOCATED) if s.count(r)]
        pressed = max(stages, key=s.pressure)   # a tie goes to decode, then prefill
        worst = s.pressure(pressed)
        if worst < cfg.high:
            return _none(f"{said}: {'all' if s.n_colocated else 'both'} below {cfg.high}", "below_high")
        if s.waiting(pressed) < cfg.min_waiting:
            return _none(f"{said}: {pressed.value} is full but nothing waits for it", "nothing_waits")
        # Each move that may help the pressed stage (a D also prefills when D may prefill
        # locally; a C serves whole what no pair takes): the one that lowers the worst pressure
        # most, on a tie the one that leaves the next-worst lowest.
        options = [(sorted(s.after_move(f, t), reverse=True), f, t) for f, t in _moves(pressed)
                   if s.count(f) >= _KEEP[f] + 1]
        if not options:
            return _none(f"{said}: {pressed.value} is short but no stage can give up an instance", "no_donor_stage")
        ranked, from_role, to_role = min(options, key=lambda o: o[0])
        gain = worst - ranked[0]
        since = now_s - self.last_flip[0]
        if since < cfg.cooldown_s:
            return _none(f"{said}: cool-down ({since:.1f} of {cfg.cooldown_s:.0f} s since the last flip)", "cooldown")
        if self.last_flip[1] is to_role and since < cfg.reverse_s:
            return _none(f"{said}: a flip back to {to_role.value} waits {cfg.reverse_s:.0f} s after the last one "
                         f"({since:.1f} s so far)", "reverse_wait")
        after = s.after_move(from_role, to_role)
        donors = [i for i in cluster.instances if i.role is from_role and i.accepting
                  and now_s - self.flipped_s.get(i.instance_id, -math.inf) >= cfg.hold_s]
        if not donors:
            return _none(f"{said}: every {from_role.value} instance flipped within {cfg.hold_s:.0f} s", "hold")
        pick = min(donors, key=lambda i: (self._left_ms(i, now_s), i.instance_id))
        cost = (cfg.change_s + self._left_ms(pick, now_s) / 1000.0) / cfg.horizon_s
        if gain <= cfg.min_gain + cost:
            return _none(f"{said}: flipping a {from_role.value} gains {gain:.2f} <= {cfg.min_gain} + cost {cost:.2f}",
                         "gain_below_cost")
        gap = role_change_gap(cluster, pick.instance_id, to_role, self.policy_config)
        if gap:
            return _none(f"{said}: {gap}", "serving_gap")
        self.flipped_s[pick.instance_id] = now_s
        self.last_flip = (now_s, from_role)
        predicted = " / ".join(f"{x:.2f}" for x in (after if s.n_colocated else after[:2]))
        return RoleDecision(pick.instance_id, from_role, to_role,
                            f"{pressed.value} pressed, to {to_role.value}: {said} -> predicted {predicted} "
                            f"(gain {gain:.2f} > {cfg.min_gain} + cost {cost:.2f}); {pick.instance_id} has the "
                            f"least {from_role.value} work left ({self._left_ms(pick, now_s):.0f} ms)", gain, cost)

    def _left_ms(self, inst: InstanceView, now_s: float) -> float:
        """The old-role work `inst` finishes after a flip: on P its queued prefill; on D its
        longest decode left, at the expected output length (the policy's prior, not the cap)
        less the steps since it was placed."""
        model = latency_model_of(inst, self.policy_config)
        if inst.role is Role.PREFILL:
            return sum(r.spec.prompt_tokens for r in inst.running) * model.c1_ms_per_prefill_token
        legs = [r for r in inst.running if r.role is not Role.PREFILL]
        step_ms = model.step_ms(0, len(legs), 0)
        expected = self.policy_config.prior_output_tokens
        left = (min(r.spec.max_tokens, expected) - (now_s - r.placed_s) * 1000.0 / step_ms for r in legs)
        return max(max(left, default=0.0), 0.0) * step_ms


# A stage keeps at least this many instances: P and D one each (a P/D cluster stays one; and
# role_change_gap must pass), C may be emptied (its whole requests then split or go to D).
_KEEP = {Role.PREFILL: 1, Role.DECODE: 1, Role.COLOCATED: 0}


def _moves(pressed: Role) -> list[tuple[Role, Role]]:
    """(from, to) flips that may relieve `pressed`, in the order that wins a tie: from C first
    (it gives up no P/D capacity, only its own), then the P/D flips either way (a D that also
    prefills may help more as a D). Never into C unless C is pressed, so a P/D cluster without C
    stays one."""
    if pressed is Role.COLOCATED:
        return [(Role.PREFILL, Role.COLOCATED), (Role.DECODE, Role.COLOCATED)]
    return [(Role.COLOCATED, pressed), (Role.DECODE, Role.PREFILL), (Role.PREFILL, Role.DECODE)]


def _none(reason: str, held_by: str) -> RoleDecision:
    return RoleDecision("", None, None, reason, held_by=held_by)
