"""Per-instance latency models as the scheduler keeps them: started from the profile a worker
stored at start, refined online from the engine steps it reports. Pure: the service does the
Redis reads and hands documents and load reports in."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.domain import InstanceLoad, LatencyModel
from services.scheduler.latency import OnlineLatencyModel

# The model handed to policies changes only when a coefficient moved by more than this share:
# policies cache per-instance budgets on the model's identity, so needless churn costs passes.
PUBLISH_CHANGE = 0.02


def model_from_profile(doc: dict) -> LatencyModel:
    """The model of a profile document (`hfx profile`, a worker's stored profile). Its optional
    kv_transfer_ms_per_token (a prefill worker's measured KV transfer) is 0 when absent."""
    m = doc["model"]
    return LatencyModel(float(m["c0_ms"]), float(m["c1_ms_per_prefill_token"]), float(m["c2_ms_per_decode_seq"]),
                        float(m["c3_ms_per_kv_token"]), float(m.get("kv_transfer_ms_per_token", 0.0)))


@dataclass
class InstanceModels:
    refine: bool = True
    online: dict[str, OnlineLatencyModel] = field(default_factory=dict)
    published: dict[str, LatencyModel] = field(default_factory=dict)
    _seen_steps: dict[str, int] = field(default_factory=dict)

    def has(self, instance_id: str) -> bool:
        return instance_id in self.online

    def set_profile(self, instance_id: str, doc: dict) -> LatencyModel:
        model = model_from_profile(doc)
        self.online[instance_id] = OnlineLatencyModel(model)
        self.published[instance_id] = model
        return model

    def observe(self, instance_id: str, load: InstanceLoad) -> LatencyModel | None:
        """Feeds the steps of a load report not seen before; returns the model to publish."""
        online = self.online.get(instance_id)
        if online is None:
            return None
        seen = self._seen_steps.get(instance_id, 0)
        if load.steps_total < seen:  # the engine restarted under the same id
            seen = 0
        new = min(len(load.recent_steps), load.steps_total - seen)
        if self.refine and new > 0:
            for step in load.recent_steps[len(load.recent_steps) - new:]:
                online.observe(step.prefill_tokens, step.decode_seqs, step.kv_tokens, step.step_ms)
            current = online.model
            if _moved(self.published[instance_id], current):
                self.published[instance_id] = current
        self._seen_steps[instance_id] = load.steps_total
        return self.published[instance_id]

    def forget(self, live: set[str]) -> None:
        for iid in set(self.online) - live:
            self.online.pop(iid, None)
            self.published.pop(iid, None)
            self._seen_steps.pop(iid, None)


def _moved(old: LatencyModel, new: LatencyModel) -> bool:
    pairs = ((old.c0_ms, new.c0_ms), (old.c1_ms_per_prefill_token, new.c1_ms_per_prefill_token),
             (old.c2_ms_per_decode_seq, new.c2_ms_per_decode_seq), (old.c3_ms_per_kv_token, new.c3_ms_per_kv_token))
    return any(abs(b - a) > PUBLISH_CHANGE * max(abs(a), 1e-9) for a, b in pairs)
