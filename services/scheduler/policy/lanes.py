"""What the task classes seen say about HFX's lanes (docs/SCHEDULING.md "While a TPOT is tight",
"While a first token is tight"): per class, its latest SLOs and its mean prompt, and from them
the tightest TPOT that switches the TPOT lane on and the prompt length the first-token lane keeps
off its instance. A pure summary of the requests seen; the policy reads it once per pass."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.domain import LatencyModel, RequestSpec
from services.scheduler.policy.budget import prefill_ms
from services.scheduler.policy.estimate import OutputLengthEstimator


@dataclass
class ClassSeen:
    """A task class as the requests seen of it describe it: its latest SLOs and its mean prompt."""
    tpot_ms: float = 0.0
    ttft_ms: float = 0.0
    prompt_sum: float = 0.0
    count: int = 0

    def add(self, spec: RequestSpec) -> None:
        self.tpot_ms, self.ttft_ms = spec.slo.tpot_ms, spec.slo.ttft_ms
        self.prompt_sum += spec.prompt_tokens
        self.count += 1

    @property
    def mean_prompt(self) -> float:
        return self.prompt_sum / self.count


@dataclass
class ClassesSeen:
    """Every task class seen, by name."""
    classes: dict[str, ClassSeen] = field(default_factory=dict)

    def add(self, spec: RequestSpec) -> None:
        self.classes.setdefault(spec.task_class, ClassSeen()).add(spec)

    def tight_tpot_ms(self, m: LatencyModel, estimator: OutputLengthEstimator, lane_tightness: float) -> float | None:
        """The tightest TPOT among the task classes seen that is at most lane_tightness x the
        class's own unloaded decode step (c0 + c2 + c3 x (mean prompt + half its estimated
        output)) and that an unloaded instance can still meet: one more of it fits only beside a
        small batch, so placement goes by SLO affinity (FitTable.tight_tpot_ms). None if none."""
        if lane_tightness <= 0:
            return None
        tight: float | None = None
        for task_class, seen in self.classes.items():
            kv_tokens = seen.mean_prompt + estimator.mean_tokens(task_class) / 2.0
            step_ms = m.c0_ms + m.c2_ms_per_decode_seq + m.c3_ms_per_kv_token * kv_tokens
            if step_ms <= seen.tpot_ms <= lane_tightness * step_ms and (tight is None or seen.tpot_ms < tight):
                tight = seen.tpot_ms
        return tight

    def tight_ttft(self, m: LatencyModel, chunk: int, tpot_lane_on: bool) -> float | None:
        """While some task class seen has a tight first token, the prompt length (chunk: a
        prompt that fills whole chunk steps) that keeps off the instance kept for it
        (FitTable.lane_prompt_tokens); None if none. Tight: its TTFT is reachable on an idle
        instance (at least its mean prompt's unloaded prefill) but not behind one full-chunk step
        in flight (below that prefill plus c0 + c2 + c1 x chunk): one arrival of it meets its
        first token only where no long prompt is being prefilled (issue 17, seventh pass:
        s3-w029, a 7.5-ms TTFT beside 3,000-4,000-token prompts whose chunk steps take 13 ms).
        None while a TPOT is tight (tpot_lane_on): its lane already keeps loose requests, long
        prompts among them, off an instance with short steps, where a tight first token (placed
        by least predicted TTFT) finds no chunk ahead of it; a second kept instance only crowded
        the long prompts onto the rest (issue 17, eighth pass: s3-w009 at 17 req/s, 85.5% with
        both lanes, 90.0% with the TPOT lane alone)."""
        if tpot_lane_on:
            return None
        step_ms = m.c0_ms + m.c2_ms_per_decode_seq + m.c1_ms_per_prefill_token * chunk
        for seen in self.classes.values():
            alone_ms = prefill_ms(m, seen.mean_prompt, chunk)
            if alone_ms <= seen.ttft_ms < alone_ms + step_ms and seen.mean_prompt < chunk:
                return float(chunk)
        return None
