"""HFX's autoscaling policy: scale on predicted demand against SLO capacity, drain to shrink.

Per tick (docs/AUTOSCALING.md has the worked numbers):
1. A draining instance with nothing in flight is removed; nothing in flight is ever aborted.
2. Capacity per instance is the median SLO capacity of warmed-up instances (`capacity.py`); new
   instances' warm-up samples do not count. Starting instances count (they will be ready soon),
   draining ones do not.
3. Demand is the larger of the measured arrival rate and its forecast at now + the ready time
   of the quickest way to start an instance (a decision later than that cannot help in time),
   plus the scheduler's backlog spread over that time. Needed = ceil(demand / (capacity *
   target_utilization)). SLO pressure (attainment below target while requests queue, run late or
   are turned away) adds one more, once the last added capacity has warmed up.
4. Short: undrain draining instances first (no start time, no new cost), then start the
   cheapest (device, start kind) that is ready in time (`cost.py`).
5. Otherwise shrink, by draining, only when: past the cool-down since the last action,
   nothing starting or draining, SLOs met, no backlog, and the survivors are predicted to carry
   max(now, forecast over ready time + horizon) at or below scale_down_utilization of their SLO
   capacity; as many instances at once as keep that true (after a spike, all the extra ones).
   The gap up to target_utilization is the hysteresis that stops a steady boundary
   load from flapping.
"""

from __future__ import annotations

import math

from services.scaler.autoscale.actions import Action, Drain, Plan, Remove, Start, Undrain
from services.scaler.autoscale.capacity import estimate_capacity, warmed_up
from services.scaler.autoscale.config import AutoscaleConfig
from services.scaler.autoscale.cost import Option, choose, fleet_cost
from services.scaler.autoscale.forecast import HoltForecast, RateTracker
from services.scaler.autoscale.signals import InstanceSignal, Phase, Signals

NEVER = -math.inf
CEILING_STEP = 0.03      # below the gain of a removal that cost SLOs


class Autoscaler:
    name = "hfx"

    def __init__(self, config: AutoscaleConfig, id_prefix: str = "hfx") -> None:
        self.config = config
        self.id_prefix = id_prefix
        self.forecast = HoltForecast(config.forecast_alpha, config.forecast_beta)
        self.rate = RateTracker(config.rate_noise_z)
        self.gain = 1.0            # learnt from SLO attainment: what an instance carries / its SLO capacity
        self._gain_s: float | None = None
        # The gain may not climb back to one at which a removal cost SLOs: that removal would
        # come again and the fleet would cycle. The ceiling only falls (at worst to 1: no feedback).
        self.gain_ceiling = config.max_capacity_gain
        self._gain_at_drain: float | None = None   # the gain of the latest removal, while it is the latest action
        self._drain_line_rps = math.inf            # the rate its survivors were judged to carry (at target utilization)
        self._seq = 0
        self.last_action_s = NEVER
        self.last_slo_start_s = NEVER
        self._capacity: dict[str, float] = {}      # last measured, kept while no warmed sample exists

    def _id(self) -> str:
        self._seq += 1
        return f"{self.id_prefix}-{self._seq}"

    # -- helpers ---------------------------------------------------------------------------------

    def _capacity_of(self, signals: Signals, device: str, now_s: float) -> float:
        return self._measured_capacity(signals, device, now_s) * self.gain

    def _measured_capacity(self, signals: Signals, device: str, now_s: float) -> float:
        hint = signals.capacity_hint_rps if device == self.config.device else None
        fallback = hint if hint is not None else self._capacity.get(device, self.config.default_capacity(device))
        cap, samples = estimate_capacity(signals.instances, device, now_s, self.config.warmup_s, fallback)
        if samples:
            self._capacity[device] = cap
        return cap

    def _instance_capacity(self, inst: InstanceSignal, signals: Signals, now_s: float) -> float:
        if inst.capacity_rps and warmed_up(inst, now_s, self.config.warmup_s):
            return inst.capacity_rps * self.gain
        return self._capacity_of(signals, inst.device, now_s)

    def _options(self, signals: Signals, now_s: float) -> list[Option]:
        cfg = self.config
        return [Option(device, kind, signals.ready_times_s.get(kind, cfg.ready_times_s.get(kind, 0.0)), price,
                       self._capacity_of(signals, device, now_s))
                for device, price in cfg.prices.items() for kind in signals.start_kinds]

    # -- the tick --------------------------------------------------------------------------------

    def on_tick(self, signals: Signals, now_s: float) -> Plan:
        cfg = self.config
        rate = self.rate.observe(signals.arrival_rps, signals.rate_window_s, now_s)
        self.forecast.observe(rate, now_s)
        self._learn_gain(signals, now_s, rate)
        ready, starting = signals.of(Phase.READY), signals.of(Phase.STARTING)
        draining = signals.of(Phase.DRAINING)
        active = ready + starting
        options = self._options(signals, now_s)
        lead_s = min((o.ready_s for o in options), default=0.0)
        cap = self._capacity_of(signals, cfg.device, now_s)
        caps = {i.instance_id: self._instance_capacity(i, signals, now_s) for i in active}
        total_cap = sum(caps.values())
        predicted = max(rate, min(self.forecast.at(lead_s), rate * (1 + cfg.forecast_max_growth_per_min * lead_s / 60.0)))
        gain_note = f" (x{self.gain:.2f}, learnt from attainment)" if self.gain != 1.0 else ""
        rate_note = "" if rate == signals.arrival_rps else f", measured {signals.arrival_rps:.2f}"
        backlog_rps = signals.queue_depth / max(lead_s, cfg.backlog_drain_s, 1.0)
        demand = predicted + backlog_rps
        # What the instances in service (or on their way) carry at the target utilization; the
        # shortfall is bought in instances of the default device's measured capacity.
        shortfall = demand / cfg.target_utilization - total_cap
        needed = len(active) + max(0, math.ceil(shortfall / cap - 1e-9))
        why_needed = (f"predicted {predicted:.2f} req/s in {lead_s:.0f}s (now {rate:.2f}{rate_note}) + backlog "
                      f"{signals.queue_depth}: {total_cap:.2f} req/s of SLO capacity{gain_note} in {len(active)} at <= "
                      f"{cfg.target_utilization:.0%} -> {needed}")
        slo = self._slo_pressure(signals, now_s, ready, starting)
        if slo and needed <= len(active):
            needed = len(active) + 1
            why_needed = f"{slo}; {len(active)} active -> {needed}"
        needed = max(cfg.min_replicas, min(cfg.max_replicas, needed))
        paid, cost_per_s = fleet_cost(cfg.prices, signals.instances, signals.standby_equivalents, cfg.device)
        details = {"predicted_rps": predicted, "capacity_rps": cap, "active": len(active), "needed": needed,
                   "lead_s": lead_s, "utilization": demand / total_cap if total_cap else None,
                   "paid_instances": paid, "standby_equivalents": signals.standby_equivalents,
                   "cost_per_s": cost_per_s, "capacity_gain": self.gain}

        actions: list[Action] = []
        if needed > len(active):
            actions += self._grow(needed - len(active), shortfall, draining, options, signals, total_cap, why_needed)
            if slo:
                self.last_slo_start_s = now_s
        grew = bool(actions)
        # A drained instance is removed unless it was just taken back into service.
        undrained = {a.instance_id for a in actions if isinstance(a, Undrain)}
        for inst in draining:
            if inst.inflight == 0 and inst.instance_id not in undrained:
                actions.append(Remove(self._id(), f"remove {inst.instance_id}: drained, nothing in flight "
                                      f"(draining for {max(0.0, now_s - inst.since_s):.0f} s)", inst.instance_id))
        hold = ""
        if needed <= len(active) and not grew:
            shrink = self._shrink(signals, ready, starting, draining, caps, predicted, lead_s, now_s)
            if isinstance(shrink, str):
                hold = shrink
            else:
                actions[:0] = shrink
        elif not grew:
            hold = f"hold at {len(active)}: {why_needed}"
        if any(not isinstance(a, Remove) for a in actions):
            self.last_action_s = now_s
            drained = any(isinstance(a, Drain) for a in actions)
            self._gain_at_drain = self.gain if drained and self.gain > 1.0 else None
            if drained:
                survivors = sum(c for i, c in caps.items() if i not in {a.instance_id for a in actions
                                                                         if isinstance(a, Drain)})
                self._drain_line_rps = survivors * cfg.target_utilization
        reason = "; ".join([hold] * bool(hold) + [a.reason for a in actions])
        starts = sum(isinstance(a, (Start, Undrain)) for a in actions)
        drains = sum(isinstance(a, Drain) for a in actions)
        return Plan(tuple(actions), len(active) + starts - drains, reason, predicted, cap, details)

    def _learn_gain(self, signals: Signals, now_s: float, rate: float) -> None:
        """SLO feedback: raise the capacity gain while attainment is above target + margin with
        nothing queued or turned away; lower it toward 1 while attainment is below that mark."""
        cfg = self.config
        last, self._gain_s = self._gain_s, now_s
        if cfg.slo_feedback_s <= 0 or last is None:
            return
        att = signals.overall_attainment()
        if att.total < cfg.min_attainment_samples or att.share is None:
            return
        dt = now_s - last
        err = att.share - min(1.0, cfg.target_attainment + cfg.attainment_margin)
        if err > 0 and (signals.queue_depth or sum(signals.rejections.values())):
            return
        # Misses count against the latest removal when they take attainment below the target
        # itself (the margin is for the gain's aim, and a short window's share is noisy), once a
        # warm-up has passed since it (the window then holds requests the survivors served, not
        # those of a spike before it), and only at a rate its survivors were judged to carry: misses
        # under a load grown past that line are the growth's, which starts answer (on a bursty
        # trace, blaming them on the removal capped the gain at ~1 for good).
        if (att.share < cfg.target_attainment and self._gain_at_drain is not None
                and now_s - self.last_action_s >= cfg.warmup_s
                and max(rate, signals.arrival_rps) <= self._drain_line_rps):
            self.gain_ceiling = min(self.gain_ceiling, max(1.0, self._gain_at_drain * (1.0 - CEILING_STEP)))
            self._gain_at_drain = None
        # A sustained 5-point error moves the gain by about 10% per time constant.
        self.gain *= math.exp(2.0 * err * dt / cfg.slo_feedback_s)
        self.gain = max(1.0, min(self.gain_ceiling, self.gain))

    def _slo_pressure(self, signals: Signals, now_s: float, ready: list[InstanceSignal],
                      starting: list[InstanceSignal]) -> str:
        """Why the SLOs ask for more than demand does ("" when they do not): attainment below
        target while requests queue, run late or are turned away. Waits for capacity already
        added to start and warm up, so one shortfall does not buy several instances."""
        cfg = self.config
        att = signals.overall_attainment()
        share = att.share  # None: nothing finished in the window, so no verdict whatever the minimum
        if att.total < cfg.min_attainment_samples or share is None or share >= cfg.target_attainment:
            return ""
        rejected = sum(signals.rejections.values())
        if not (signals.queue_depth or signals.slack_deficit_ms > 0 or rejected):
            return ""
        if starting or any(not warmed_up(i, now_s, cfg.warmup_s) for i in ready):
            return ""
        if now_s - self.last_slo_start_s < cfg.scale_up_cooldown_s:
            return ""
        return (f"SLO attainment {att.share:.1%} < {cfg.target_attainment:.0%} with {signals.queue_depth} queued, "
                f"{signals.slack_deficit_ms:.0f} ms late, {rejected} turned away")

    def _grow(self, deficit: int, shortfall_rps: float, draining: list[InstanceSignal], options: list[Option],
              signals: Signals, total_cap: float, why: str) -> list[Action]:
        """`deficit` instances of the default device's capacity; fewer when a bigger kind wins."""
        out: list[Action] = []
        undrain_cap = 0.0
        # Warmest first: the one with most in flight has its caches fullest.
        for inst in sorted(draining, key=lambda i: -i.inflight)[:deficit]:
            out.append(Undrain(self._id(), f"undrain {inst.instance_id} (ready now, no start cost): {why}",
                               inst.instance_id))
            undrain_cap += inst.capacity_rps or 0.0
        deficit -= len(out)
        if deficit <= 0:
            return out
        # How soon the capacity is needed: now if demand already exceeds what is active,
        # else when the forecast trend reaches it.
        limit = total_cap * self.config.target_utilization
        trend = self.forecast.trend_per_s
        if signals.arrival_rps >= limit:
            deadline_s = 0.0
        elif trend > 0:
            deadline_s = (limit - self.forecast.at(0.0)) / trend
        else:
            deadline_s = math.inf
        option, how = choose(options, deadline_s)
        if option.capacity_rps > 0 and shortfall_rps > undrain_cap:
            # Min/max and SLO pressure set `deficit`; a bigger device covers it with fewer.
            deficit = min(deficit, max(1, math.ceil((shortfall_rps - undrain_cap) / option.capacity_rps - 1e-9)))
        for _ in range(deficit):
            out.append(Start(self._id(), f"start {how}: {why}", option.device, option.start_kind))
        return out

    def _shrink(self, signals: Signals, ready: list[InstanceSignal], starting: list[InstanceSignal],
                draining: list[InstanceSignal], caps: dict[str, float], predicted: float, lead_s: float,
                now_s: float) -> list[Drain] | str:
        """Drains (as many as the survivors can spare at once), or why not (a "hold ..." string)."""
        cfg = self.config
        n = len(ready) + len(starting)
        victims = self._victims(ready)
        if n > cfg.max_replicas and ready:
            return [Drain(self._id(), f"drain {v.instance_id}: {n} active > max {cfg.max_replicas}", v.instance_id)
                    for v in victims[:n - cfg.max_replicas]]
        if n <= cfg.min_replicas:
            return f"hold at {n}: at min {cfg.min_replicas}"
        if starting or [d for d in draining if d.inflight > 0]:
            return f"hold at {n}: a start or a drain is under way"
        wait = cfg.scale_down_cooldown_s - (now_s - self.last_action_s)
        if wait > 0:
            return f"hold at {n}: cool-down, {wait:.0f}s left"
        att = signals.overall_attainment()
        share = att.share
        if att.total >= cfg.min_attainment_samples and share is not None and share < cfg.target_attainment:
            return f"hold at {n}: SLO attainment {share:.1%} below {cfg.target_attainment:.0%}"
        if signals.queue_depth or signals.slack_deficit_ms > 0:
            return f"hold at {n}: {signals.queue_depth} queued, {signals.slack_deficit_ms:.0f} ms late"
        # The survivors must carry the load predicted over a restart's lead time and the horizon
        # beyond it: if we are wrong, capacity comes back no sooner than that.
        horizon = max(predicted, self.forecast.at(lead_s + cfg.scale_down_horizon_s))
        # ... and stay under the scale-up line if the rate is `drain_noise_z` deviations of a
        # window's counting noise above it: else the next window's draw can undo the drain.
        bound = horizon + cfg.drain_noise_z * _window_noise(horizon, signals.rate_window_s)
        total = sum(caps[i.instance_id] for i in ready)
        removed, removed_cap = [], 0.0
        for v in victims[:max(0, n - max(cfg.min_replicas, 1 if horizon > 0 else 0))]:
            survivors_cap = total - removed_cap - caps[v.instance_id]
            util = _util(horizon, survivors_cap)
            if util > cfg.scale_down_utilization or _util(bound, survivors_cap) > cfg.target_utilization:
                break
            removed.append((v, util, survivors_cap))
            removed_cap += caps[v.instance_id]
        noise_note = (f"; {bound:.2f} req/s ({cfg.drain_noise_z:g} deviations of a {signals.rate_window_s:.0f}s window's "
                      f"noise above) at <= {cfg.target_utilization:.0%}") if bound > horizon else ""
        if not removed:
            survivors_cap = total - caps[victims[0].instance_id] if victims else 0.0
            util = _util(horizon, survivors_cap)
            if util <= cfg.scale_down_utilization:
                return (f"hold at {n}: survivors would run at {_util(bound, survivors_cap):.0%} of SLO capacity for "
                        f"{bound:.2f} req/s, predicted {horizon:.2f} + {cfg.drain_noise_z:g} deviations of a "
                        f"{signals.rate_window_s:.0f}s window's noise (> {cfg.target_utilization:.0%})")
            return (f"hold at {n}: survivors would run at {util:.0%} of SLO capacity for {horizon:.2f} req/s "
                    f"(> {cfg.scale_down_utilization:.0%})")
        _, util, survivors_cap = removed[-1]
        why = (f"{n - len(removed)} survivors carry predicted {horizon:.2f} req/s at {util:.0%} of their SLO "
               f"capacity {survivors_cap:.2f} (<= {cfg.scale_down_utilization:.0%}{noise_note})")
        return [Drain(self._id(), f"drain {v.instance_id}: {why}", v.instance_id) for v, _, _ in removed]

    def _victims(self, ready: list[InstanceSignal]) -> list[InstanceSignal]:
        """Removal order: the dearest per unit of capacity, then the quickest to drain, then the newest."""
        cfg = self.config
        return sorted(ready, reverse=True, key=lambda i: (
            cfg.prices.get(i.device, 0.0) / (i.capacity_rps or cfg.default_capacity(i.device)), -i.inflight, i.since_s))


def _util(rps: float, capacity: float) -> float:
    return rps / capacity if capacity > 0 else (0.0 if rps <= 0 else math.inf)


def _window_noise(rps: float, window_s: float) -> float:
    """One standard deviation of the rate a `window_s` window measures at `rps` (Poisson counts);
    0 when the window is unknown."""
    return math.sqrt(max(rps, 1.0 / window_s) / window_s) if window_s > 0 else 0.0
