"""Named latency profiles for simulated instances. Illustrative placeholders until an instance
is calibrated by `hfx profile`; never a claim about a real engine."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.common.domain import LatencyModel
from services.scheduler.models import model_from_profile


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
        # KV transfer: DEFAULT_KV_TRANSFER_MS_PER_TOKEN (services/scheduler/policy/base.py).
        "cpu-tiny", LatencyModel(3.0, 0.02, 0.15, 0.0005, 0.0029), kv_capacity_tokens=65_536,
        chunk_tokens=512, max_num_seqs=128, step_noise=0.03,
        note="placeholder for a tiny Llama on this CPU until calibrated by `hfx profile`"),
    "gpu-7b": Profile(
        # KV transfer: 512 KiB per token (32 layers x 32 KV heads x 128 x fp16, K and V) at 25 GB/s.
        "gpu-7b", LatencyModel(8.0, 0.06, 0.25, 0.00005, 0.021), kv_capacity_tokens=200_000,
        chunk_tokens=2048, max_num_seqs=256, step_noise=0.03,
        note="illustrative A100/H100-class numbers for a 7B model; not measured"),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown latency profile {name!r}; choose one of {', '.join(sorted(PROFILES))}") from None


# -- profile files (written by `hfx profile`, read by `hfx sim --profile FILE` and sim workers) --

def profile_to_dict(profile: Profile, **extra) -> dict:
    """The JSON form of a profile; `extra` (fit error, engine, model) is kept alongside."""
    m = profile.model
    return {"name": profile.name, "note": profile.note,
            "model": {"c0_ms": m.c0_ms, "c1_ms_per_prefill_token": m.c1_ms_per_prefill_token,
                      "c2_ms_per_decode_seq": m.c2_ms_per_decode_seq, "c3_ms_per_kv_token": m.c3_ms_per_kv_token,
                      "kv_transfer_ms_per_token": m.kv_transfer_ms_per_token},
            "kv_capacity_tokens": profile.kv_capacity_tokens, "chunk_tokens": profile.chunk_tokens,
            "max_num_seqs": profile.max_num_seqs, "step_noise": profile.step_noise, **extra}


def profile_from_dict(doc: dict, where: str = "profile") -> Profile:
    try:
        model = model_from_profile(doc)
        return Profile(str(doc.get("name", where)), model, int(doc["kv_capacity_tokens"]), int(doc["chunk_tokens"]),
                       int(doc["max_num_seqs"]), float(doc.get("step_noise", 0.0)), str(doc.get("note", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not a latency profile ({type(exc).__name__}: {exc})") from None


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a profile JSON file written by `hfx profile`."""
    if name_or_path in PROFILES:
        return PROFILES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"{name_or_path!r} is neither a built-in latency profile "
                         f"({', '.join(sorted(PROFILES))}) nor a profile JSON file")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    return profile_from_dict(doc, str(path))
