"""Named latency profiles for simulated instances. Illustrative placeholders until an instance
is calibrated by `hfx profile`; never a claim about a real engine."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.domain import LatencyModel


@dataclass(frozen=True)
class Profile:
    name: str
    model: LatencyModel
    kv_capacity_tokens: int
    chunk_tokens: int          # token budget per step (vLLM max_num_batched_tokens)
    max_num_seqs: int          # running sequences per instance
    step_noise: float          # lognormal sigma of step time around the model
    note: str


PROFILES: dict[str, Profile] = {
    "cpu-tiny": Profile(
        "cpu-tiny", LatencyModel(3.0, 0.02, 0.15, 0.0005), kv_capacity_tokens=65_536,
        chunk_tokens=512, max_num_seqs=128, step_noise=0.03,
        note="placeholder for a tiny Llama on this CPU until calibrated by `hfx profile`"),
    "gpu-7b": Profile(
        "gpu-7b", LatencyModel(8.0, 0.06, 0.25, 0.00005), kv_capacity_tokens=200_000,
        chunk_tokens=2048, max_num_seqs=256, step_noise=0.03,
        note="illustrative A100/H100-class numbers for a 7B model; not measured"),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown latency profile {name!r}; choose one of {', '.join(sorted(PROFILES))}") from None
