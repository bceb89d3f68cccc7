"""P/D autoscaling in the simulator (SIMULATED): `PDAutoscaler` (services/scaler/autoscale/pd.py)
on the virtual clock, the same object the live scaler runs for a P/D cluster.

Every tick the driver builds PDSignals from the simulation: each instance with its role and phase;
the prefill side's mean prompt length (arrivals over `rate_window_s`), TTFT attainment and the
scheduler's queue (requests waiting for a first token) with how late it runs; the decode side's
mean output length (finished requests over `window_s`), TPOT attainment and the requests queued in
decode engines. A start becomes an instance of its role after its ready time, a drain and a
removal work as in the colocated driver, and a flip changes a ready instance's role at once
(legs placed before it finish where they are), unless the change would leave a stage empty (the
scheduler's role_change_gap, the rule the live SetRole applies).
"""

from __future__ import annotations

import bisect

from services.common.domain import ClusterSnapshot, Role
from services.report.metrics import tpot_ms, ttft_ms
from services.scaler.autoscale import Flip, InstanceSignal, Phase, Start
from services.scaler.autoscale.pd import PDSignals, RoleLoad
from services.scaler.autoscale.signals import Attainment, StartKind
from services.scheduler.policy.base import PolicyConfig, role_change_gap
from services.sim.scaling import ScalingDriver, ScalingSetup


class PDScalingDriver(ScalingDriver):
    def __init__(self, autoscaler, setup: ScalingSetup, policy_config: PolicyConfig = PolicyConfig()) -> None:
        """policy_config: the scheduling policy's (its pd_local_prefill decides what a stage gap is)."""
        super().__init__(autoscaler, setup)
        self.policy_config = policy_config
        self.roles: dict[str, Role] = {}               # instance id -> its role (starting ones included)
        self._prompts: list[tuple[float, int, int]] = []  # (arrival, prompt tokens, max tokens), by arrival
        self.role_timeline: list[tuple[float, int, int]] = []   # (t, prefill, decode) paid for, per tick
        self.flips_refused: list[tuple[float, str]] = []

    def begin(self, sim) -> None:
        self._prompts = sorted((r.spec.arrival_s, r.spec.prompt_tokens, r.spec.max_tokens) for r in sim.records.values())
        for node in sim.nodes:
            self.roles[node.sim.instance_id] = node.role
        super().begin(sim)

    def on_finish(self, rec, now_s: float) -> None:
        self._ended.append((now_s, rec))

    def count(self, role: Role) -> int:
        return sum(1 for iid, r in self.roles.items() if r is role and iid in self.phase)

    def _ready(self, sim, instance_id: str) -> None:
        launched, kind = self.starting.pop(instance_id)
        self.measured.setdefault(kind, []).append(sim.now_s - launched)
        sim.add_node(sim.new_node(int(instance_id.rsplit("-", 1)[1]), self.roles[instance_id]))
        self.phase[instance_id] = (Phase.READY, sim.now_s)

    def signals(self, sim) -> PDSignals:
        now, rw = sim.now_s, self.setup.rate_window_s
        lo, hi = bisect.bisect_right(self._prompts, (now - rw, 2**62)), bisect.bisect_right(self._prompts, (now, 2**62))
        recent = self._prompts[lo:hi]
        while self._ended and self._ended[0][0] < now - self.setup.window_s:
            self._ended.popleft()
        records = [rec for _, rec in self._ended if rec.verdict not in ("reject", "failed")]
        ttft = [t <= r.spec.slo.ttft_ms for r in records if (t := ttft_ms(r)) is not None]
        tpot = [t <= r.spec.slo.tpot_ms for r in records if (t := tpot_ms(r)) is not None]
        mean_prompt = sum(p for _, p, _ in recent) / len(recent) if recent else 0.0
        outputs = [r.output_tokens for r in records] or [m for _, _, m in recent]
        insts = []
        for node in sim.nodes:
            iid = node.sim.instance_id
            phase, since = self.phase[iid]
            insts.append(InstanceSignal(iid, phase, since, "cpu", len(node.placed), len(node.sim.waiting),
                                        role=node.role.value))
        for iid, (launched, _) in self.starting.items():
            insts.append(InstanceSignal(iid, Phase.STARTING, launched, role=self.roles[iid].value))
        late_ms = sum(max(0.0, now - spec.ttft_deadline_s) for spec in sim.waiting) * 1000.0
        decode_queue = sum(len(n.sim.waiting) for n in sim.nodes if n.role is Role.DECODE)
        kinds = [StartKind.COLD]
        if self.setup.peer_start and any(p is Phase.READY for p, _ in self.phase.values()):
            kinds.append(StartKind.PEER)
        return PDSignals(tuple(insts), len(recent) / (min(rw, now) or 1.0),
                         RoleLoad(mean_prompt, Attainment(sum(ttft), len(ttft)), len(sim.waiting), late_ms),
                         RoleLoad(sum(outputs) / len(outputs) if outputs else 0.0, Attainment(sum(tpot), len(tpot)),
                                  decode_queue),
                         {k: sum(v) / len(v) for k, v in self.measured.items() if v}, tuple(kinds))

    def _tick(self, sim) -> None:
        super()._tick(sim)
        self.role_timeline.append((sim.now_s, self.count(Role.PREFILL), self.count(Role.DECODE)))

    def _apply(self, sim, action) -> None:
        if isinstance(action, Start):
            self.roles[f"sim-{self._next_index:02d}"] = Role(action.role)
        if not isinstance(action, Flip):
            super()._apply(sim, action)
            return
        iid, role = action.instance_id, Role(action.to_role)
        if self.phase.get(iid, (None,))[0] is not Phase.READY:
            return
        gap = role_change_gap(ClusterSnapshot(tuple(n.view for n in sim.nodes)), iid, role, self.policy_config)
        if gap:
            self.flips_refused.append((sim.now_s, gap))
            return
        sim.set_role(iid, role)
        self.roles[iid] = role
        self.phase[iid] = (Phase.READY, sim.now_s)
